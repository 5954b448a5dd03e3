"""The demo in a real Chromium, driven by Playwright as a person would use it.

These tests need Debian's ``chromium`` (``.ci/run`` installs it). Without it they
skip with that reason, except under CI, where a missing browser is a failure.
Screenshots of every page go to ``build/screenshots`` (or ``$SATCHEL_SCREENSHOTS``).
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from werkzeug.serving import make_server

from satchel.demo import create_app

from .valkey import free_port

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
#: The servers running the ASGI demo: their screenshots are named asgi-*.png.
ASGI_SERVERS: set[str] = set()
DEFAULT_SHOTS = Path(__file__).parent.parent / "build" / "screenshots"
#: How recent a login the demo's sensitive action asks for here (a minute in the demo).
FRESH = 3.0
LAPTOP = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko)"
    " Chrome/131.0 Safari/537.36"
)
PHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15"
    " Version/17.0 Mobile/15E148 Safari/604.1"
)
SHOTS = Path(os.environ.get("SATCHEL_SCREENSHOTS", DEFAULT_SHOTS))

if not Path(CHROMIUM).exists():
    if os.environ.get("CI"):
        raise RuntimeError("CI must run the browser tests: install Debian's chromium")
    pytest.skip("Chromium is not installed (apt-get install chromium)", allow_module_level=True)

# After the CI guard: under CI a missing Playwright is a failure (an ImportError), never a skip.
if os.environ.get("CI"):
    import playwright.sync_api as playwright_sync
else:
    playwright_sync = pytest.importorskip("playwright.sync_api")


@pytest.fixture(scope="module", params=["flask", "asgi"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """The demo on the SQLite default, served over real HTTP on a free port.

    ``flask``: the Flask demo under Werkzeug's server; ``asgi``: the same pages as a
    FastAPI app (``satchel demo --asgi``) under uvicorn. Every test runs on both.
    """
    instance = tmp_path_factory.mktemp(f"demo-instance-{request.param}")
    port = free_port()
    if request.param == "asgi":
        import asyncio

        import uvicorn

        from satchel.demo.asgi import create_app as create_asgi_app

        asgi_app = create_asgi_app(instance_path=instance, fresh_login_seconds=FRESH)
        config = uvicorn.Config(asgi_app, host="127.0.0.1", port=port, log_level="warning")
        uv = uvicorn.Server(config)
        thread = threading.Thread(target=lambda: asyncio.run(uv.serve()), daemon=True)
        thread.start()
        while not uv.started:
            thread.join(0.05)
            assert thread.is_alive(), "uvicorn did not start"
        ASGI_SERVERS.add(f"http://127.0.0.1:{port}")
        yield f"http://127.0.0.1:{port}"
        uv.should_exit = True
        thread.join(10)
        return
    app = create_app(instance_path=instance, config={"DEMO_FRESH_LOGIN_SECONDS": FRESH})
    httpd = make_server("127.0.0.1", port, app, threaded=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{port}"
    httpd.shutdown()
    thread.join(10)
    app.extensions["satchel"].store.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with playwright_sync.sync_playwright() as p:
        chromium = p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        yield chromium
        chromium.close()


class Visitor:
    """One browser context (a person), recording every response it gets."""

    def __init__(self, browser: Any, base: str, **options: Any) -> None:
        self.context = browser.new_context(**options)
        self.page = self.context.new_page()
        self.base = base
        self.statuses: list[tuple[str, str, int]] = []
        self.page.on(
            "response", lambda r: self.statuses.append((r.request.method, r.url, r.status))
        )

    def go(self, path: str) -> Any:
        return self.page.goto(self.base + path)

    def shot(self, name: str) -> None:
        SHOTS.mkdir(parents=True, exist_ok=True)
        if self.base in ASGI_SERVERS:
            name = f"asgi-{name}"
        self.page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)

    def answer(self, first: str = "Ada", last: str = "Lovelace", colour: str = "green") -> None:
        self.page.get_by_label("First name").fill(first)
        self.page.get_by_label("Last name").fill(last)
        self.page.get_by_role("button", name="Next").click()
        self.page.wait_for_url("**/page2")
        self.page.get_by_label("Favourite colour").fill(colour)
        self.page.get_by_role("button", name="Next").click()
        self.page.wait_for_url("**/page3")

    def footer(self) -> str:
        return str(self.page.locator("#session-contents").inner_text())

    def errors(self) -> list[tuple[str, str, int]]:
        return [s for s in self.statuses if s[2] >= 400]


@pytest.fixture
def visitor(browser: Any, server: str) -> Iterator[Visitor]:
    person = Visitor(browser, server, viewport={"width": 900, "height": 900})
    yield person
    assert person.errors() == [], "no page answered 4xx or 5xx"
    person.context.close()


def test_whole_flow_by_clicking_and_typing(visitor: Visitor) -> None:
    """Home → Page 1 → Page 2 → Page 3 by clicks and typing; screenshots of each."""
    page = visitor.page
    visitor.go("/")
    assert page.url.endswith("/s/1/")
    assert visitor.context.cookies() == []
    visitor.shot("home")
    page.get_by_role("link", name="Start the questionnaire").click()
    page.wait_for_url("**/s/1/page1")
    visitor.shot("page1")
    page.get_by_label("First name").fill("Ada")
    page.get_by_label("Last name").fill("Lovelace")
    page.get_by_role("button", name="Next").click()
    page.wait_for_url("**/s/1/page2")
    assert "Hello, Ada!" in page.content()
    visitor.shot("page2")
    page.get_by_label("Favourite colour").fill("green")
    page.get_by_role("button", name="Next").click()
    page.wait_for_url("**/s/1/page3")
    assert page.locator("#summary").inner_text() == (
        "You are Ada Lovelace and your favourite colour is green."
    )
    assert "Ada" in visitor.footer() and "green" in visitor.footer()
    visitor.shot("page3")
    page.get_by_role("link", name="What's in my session?").first.click()
    page.wait_for_url("**/s/1/session")
    assert "You have a session in slot 1" in page.locator("#session-state").inner_text()
    assert "Ada" in page.locator("#record").inner_text()
    visitor.shot("session")


def test_reload_after_submit_resubmits_nothing(visitor: Visitor) -> None:
    """Post/redirect/get: reloading the page a form led to sends a GET, not the form again."""
    visitor.go("/s/1/page1")
    visitor.page.get_by_label("First name").fill("Ada")
    visitor.page.get_by_label("Last name").fill("Lovelace")
    visitor.page.get_by_role("button", name="Next").click()
    visitor.page.wait_for_url("**/s/1/page2")
    posts = [s for s in visitor.statuses if s[0] == "POST"]
    assert len(posts) == 1 and posts[0][2] == 303
    visitor.page.reload()
    visitor.page.reload()
    assert [s for s in visitor.statuses if s[0] == "POST"] == posts
    assert visitor.page.url.endswith("/s/1/page2")


def test_start_over(visitor: Visitor) -> None:
    """The footer's Start over forgets the answers; the old cookie no longer opens them."""
    visitor.go("/s/1/page1")
    visitor.answer()
    old = [c for c in visitor.context.cookies() if c["name"] == "session-1"]
    visitor.page.get_by_role("button", name="Start over").click()
    visitor.page.wait_for_url("**/s/1/")
    assert "Nothing" in visitor.footer()
    assert not [c for c in visitor.context.cookies() if c["name"] == "session-1"]
    visitor.context.add_cookies(old)  # replay the old cookie
    visitor.go("/s/1/page3")
    assert "needs your name first" in visitor.page.content()
    visitor.go("/s/1/session")
    assert "It is dead." in visitor.page.locator("#replay-result").inner_text()


def test_session_cookie_is_http_only(visitor: Visitor) -> None:
    """Page scripts cannot read the session cookie; the browser still holds it."""
    visitor.go("/s/1/page1")
    visitor.answer()
    assert visitor.page.evaluate("document.cookie") == ""
    (cookie,) = [c for c in visitor.context.cookies() if c["name"] == "session-1"]
    assert cookie["httpOnly"] is True and cookie["sameSite"] == "Lax"
    assert cookie["expires"] == -1  # a browser-session cookie
    assert "Ada" not in cookie["value"]


def test_edited_cookie_is_rejected_cleanly(visitor: Visitor) -> None:
    """A cookie edited in the browser gives a fresh session, not an error."""
    visitor.go("/s/1/page1")
    visitor.answer()
    (cookie,) = [c for c in visitor.context.cookies() if c["name"] == "session-1"]
    value = cookie["value"]
    cookie["value"] = value[:5] + ("x" if value[5] != "x" else "y") + value[6:]
    visitor.context.add_cookies([cookie])
    response = visitor.go("/s/1/page3")
    assert response.status == 200
    assert "needs your name first" in visitor.page.content()


def test_tamper_button(visitor: Visitor) -> None:
    """The session page's tamper button shows a refused cookie and a fresh session."""
    visitor.go("/s/1/page1")
    visitor.answer()
    visitor.go("/s/1/session")
    visitor.page.get_by_role("button", name="Tamper with my cookie").click()
    visitor.page.wait_for_url("**/s/1/session?tampered=1")
    assert "no longer matched" in visitor.page.locator("#tamper-result").inner_text()
    assert "no session in slot 1" in visitor.page.locator("#session-state").inner_text()
    visitor.shot("tampered")


def test_two_browser_contexts_are_isolated(browser: Any, server: str) -> None:
    """Two people (two contexts) never see each other's answers."""
    ada, grace = Visitor(browser, server), Visitor(browser, server)
    for person, name in ((ada, "Ada"), (grace, "Grace")):
        person.go("/s/1/page1")
        person.answer(first=name)
    ada.go("/s/1/page3")
    grace.go("/s/1/page3")
    assert "Ada" in ada.page.locator("#summary").inner_text()
    assert "Grace" in grace.page.locator("#summary").inner_text()
    assert "Grace" not in ada.footer() and "Ada" not in grace.footer()
    for person in (ada, grace):
        assert person.errors() == []
        person.context.close()


def test_two_slots_in_one_browser_are_isolated(visitor: Visitor) -> None:
    """Two tabs of one browser, in slots 1 and 2, are two different visitors."""
    tab1 = visitor.page
    tab2 = visitor.context.new_page()
    tab1.goto(visitor.base + "/s/1/page1")
    visitor.answer(first="Ada", colour="green")
    tab2.goto(visitor.base + "/s/2/page1")
    tab2.get_by_label("First name").fill("Grace")
    tab2.get_by_label("Last name").fill("Hopper")
    tab2.get_by_role("button", name="Next").click()
    tab2.wait_for_url("**/s/2/page2")
    tab2.get_by_label("Favourite colour").fill("blue")
    tab2.get_by_role("button", name="Next").click()
    tab2.wait_for_url("**/s/2/page3")
    tab1.reload()
    assert "Ada Lovelace" in tab1.locator("#summary").inner_text()
    assert "Grace Hopper" in tab2.locator("#summary").inner_text()
    names = sorted(c["name"] for c in visitor.context.cookies())
    assert names == ["session-1", "session-2"]
    tab2.screenshot(path=str(SHOTS / "slot2.png"), full_page=True)


def test_works_without_javascript(browser: Any, server: str) -> None:
    """Every step works with JavaScript disabled."""
    person = Visitor(browser, server, java_script_enabled=False)
    person.go("/s/1/page1")
    person.answer()
    assert person.page.url.endswith("/s/1/page3")
    person.page.get_by_role("button", name="Start over").click()
    person.page.wait_for_url("**/s/1/")
    assert "Nothing" in person.footer()
    assert person.errors() == []
    person.context.close()


def test_phone_screen_and_keyboard(browser: Any, server: str) -> None:
    """On a 360 px wide screen nothing scrolls sideways, and the forms work by keyboard."""
    person = Visitor(browser, server, viewport={"width": 360, "height": 740}, is_mobile=True)
    for path in ("/s/1/", "/s/1/page1", "/s/1/session"):
        person.go(path)
        overflow = person.page.evaluate(
            "document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 0, path
    person.go("/s/1/page1")
    person.page.get_by_label("First name").focus()
    person.page.keyboard.type("Ada")
    person.page.keyboard.press("Tab")
    person.page.keyboard.type("Lovelace")
    person.page.keyboard.press("Enter")
    person.page.wait_for_url("**/s/1/page2")
    person.shot("phone-page2")
    # The footer's labels ("Form token (against forged forms)", ...) break only between
    # words: no word of a label is split over two lines.
    split = person.page.evaluate(
        """() => [...document.querySelectorAll('#session-contents dt')].filter(dt => {
            const range = document.createRange();
            const words = [];
            const text = dt.firstChild;
            let start = 0;
            for (const word of text.textContent.split(' ')) {
                range.setStart(text, start);
                range.setEnd(text, start + word.length);
                if (range.getClientRects().length > 1) words.push(word);
                start += word.length + 1;
            }
            return words.length > 0;
        }).map(dt => dt.textContent)"""
    )
    assert person.page.locator("#session-contents dt").count() >= 2
    assert split == []
    person.go("/s/1/session")
    person.shot("phone-session")
    # The stored record's key names ("csrf_token", "lastName") stay whole, each one line.
    broken = person.page.evaluate(
        """() => [...document.querySelectorAll('#record td.key code')].filter(code => {
            const range = document.createRange();
            range.selectNodeContents(code);
            return range.getClientRects().length > 1;
        }).map(code => code.textContent)"""
    )
    assert person.page.locator("#record td.key").count() >= 3
    assert broken == []
    overflow = person.page.evaluate(
        "document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    assert overflow <= 0
    assert person.errors() == []
    person.context.close()


def test_back_button_and_empty_forms_never_error(visitor: Visitor) -> None:
    """Back, forward, empty submits and skipped steps all answer 200 or a redirect."""
    page = visitor.page
    visitor.go("/s/1/page3")
    visitor.go("/s/1/page2")
    visitor.go("/s/1/page1")
    page.get_by_role("button", name="Next").click()  # the browser refuses: fields required
    assert page.url.endswith("/s/1/page1") and not page.get_by_role("alert").count()
    page.get_by_label("First name").fill(" ")
    page.get_by_label("Last name").fill(" ")
    page.get_by_role("button", name="Next").click()  # blanks pass the browser, not the server
    page.wait_for_load_state()
    assert "first and last name" in page.get_by_role("alert").inner_text()
    visitor.answer()
    page.go_back()
    page.go_back()
    page.go_forward()
    page.get_by_role("button", name="Start over").click()
    page.wait_for_url("**/s/1/")
    page.wait_for_load_state()
    page.go_back()
    page.go_back()
    assert page.url.endswith("/s/1/page1")  # the session ended, the form still works
    visitor.answer(first="Again")
    assert "Again Lovelace" in page.locator("#summary").inner_text()
    assert visitor.errors() == []


@pytest.mark.parametrize(
    "viewport",
    [{"width": 1280, "height": 800}, {"width": 360, "height": 740}],
    ids=["desktop", "phone"],
)
def test_your_devices_with_two_browser_contexts(
    browser: Any, server: str, viewport: dict[str, int]
) -> None:
    """Two contexts log in as one person: each is a device the other can end; "Log out
    everywhere else" ends the other; an old login is asked for the name again (at phone
    width, where the forms are tightest)."""
    name = f"Ada{viewport['width']}"
    laptop = Visitor(browser, server, viewport=viewport, user_agent=LAPTOP)
    phone = Visitor(browser, server, viewport=viewport, user_agent=PHONE)

    def log_in(person: Visitor) -> None:
        person.go("/s/1/login")
        person.page.get_by_label("Your name").fill(name)
        person.page.get_by_role("button", name="Log in").click()
        person.page.wait_for_url("**/s/1/devices")

    def devices(person: Visitor) -> list[str]:
        person.go("/s/1/devices")
        return [str(t) for t in person.page.locator("li.device").all_inner_texts()]

    log_in(laptop)
    log_in(phone)
    seen = devices(laptop)
    assert len(seen) == 2
    assert "Chrome on Linux" in seen[0] and "(this device)" in seen[0]
    assert "Safari on iPhone" in seen[1] and "(this device)" not in seen[1]
    laptop.shot(f"devices-{viewport['width']}")
    overflow = laptop.page.evaluate(
        "document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    assert overflow <= 0  # nothing scrolls sideways, at phone width too
    laptop.page.get_by_role("button", name="End this device").click()
    laptop.page.wait_for_url("**/s/1/devices")
    assert len(laptop.page.locator("li.device").all()) == 1
    phone.go("/s/1/devices")  # the ended device's next request: logged out
    assert "You are not logged in here" in phone.page.locator("main").inner_text()

    log_in(phone)
    assert len(devices(phone)) == 2
    phone.page.get_by_role("button", name="Log out everywhere else").click()
    phone.page.wait_for_url("**/s/1/devices")
    assert "Logged out 1 other device(s)." in phone.page.locator("main").inner_text()
    laptop.go("/s/1/devices")
    assert "You are not logged in here" in laptop.page.locator("main").inner_text()

    if viewport["width"] > 400:  # the fresh-login part once, at phone width
        for person in (laptop, phone):
            assert person.errors() == []
            person.context.close()
        return
    phone.page.wait_for_timeout(FRESH * 1000 + 100)  # the login is now older than asked
    phone.page.get_by_role("link", name="A sensitive action").click()
    phone.page.wait_for_url("**/s/1/login?next=sensitive")
    assert "Confirm it is you" in phone.page.locator("h1").inner_text()
    phone.page.get_by_label("Your name").fill(name)
    phone.page.get_by_role("button", name="Confirm").click()
    phone.page.wait_for_url("**/s/1/sensitive")
    assert phone.page.locator("#sensitive-done").is_visible()
    phone.shot(f"sensitive-{viewport['width']}")
    for person in (laptop, phone):
        assert person.errors() == []
        person.context.close()
