"""The questionnaire demo, driven through Flask's test client and as a real server."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from satchel.demo import create_app
from satchel.stores import Store

from .conftest import stored_keys
from .valkey import free_port


@pytest.fixture
def demo(store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Flask:
    monkeypatch.delenv("FLASK_SECRET_KEY", raising=False)
    return create_app(store=store, instance_path=tmp_path / "instance")


def text(response: Any) -> str:
    return str(response.get_data(as_text=True))


def token(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "the page has a form with a CSRF token"
    return match.group(1)


def submit(client: FlaskClient, path: str, data: dict[str, str]) -> Any:
    """Post a form the way a browser does: fetch the page, send its token back."""
    page = text(client.get(path))
    return client.post(path, data={**data, "csrf_token": token(page)})


def footer(client: FlaskClient, slot: int = 1) -> str:
    page = text(client.get(f"/s/{slot}/"))
    return page[page.index("What the session holds") :]


def fill_in(client: FlaskClient, slot: int = 1, first: str = "Ada", colour: str = "green") -> None:
    submit(client, f"/s/{slot}/page1", {"firstName": first, "lastName": "Lovelace"})
    submit(client, f"/s/{slot}/page2", {"favoriteColor": colour})


def test_whole_flow(demo: Flask) -> None:
    """Home → Page 1 → Page 2 → Page 3 shows all answers; the footer follows along."""
    client = demo.test_client()
    assert client.get("/").headers["Location"].endswith("/s/1/")
    home = client.get("/s/1/")
    assert home.status_code == 200 and "What is a session?" in text(home)
    assert "no session is stored" in text(home)
    assert "so you have no session yet" in text(home)
    assert "Set-Cookie" not in home.headers  # reading creates nothing

    page1 = text(client.get("/s/1/page1"))
    assert 'name="firstName"' in page1 and 'name="lastName"' in page1
    response = submit(client, "/s/1/page1", {"firstName": "Ada", "lastName": "Lovelace"})
    assert response.status_code == 303 and response.headers["Location"].endswith("/s/1/page2")
    assert "Ada" in footer(client) and "Lovelace" in footer(client)

    page2 = text(client.get("/s/1/page2"))
    assert 'name="favoriteColor"' in page2 and "Hello, Ada" in page2
    response = submit(client, "/s/1/page2", {"favoriteColor": "green"})
    assert response.status_code == 303 and response.headers["Location"].endswith("/s/1/page3")

    page3 = text(client.get("/s/1/page3"))
    summary = re.sub(r"\s+", " ", page3[page3.index('id="summary"') :])
    assert "Ada Lovelace" in summary and "green" in summary
    assert "you have a session because another page stored something" in text(client.get("/s/1/"))
    held = footer(client)
    assert held.index("First name") < held.index("Last name") < held.index("Favourite colour")


def test_forms_without_a_token_are_refused_kindly(demo: Flask, store: Store) -> None:
    """A POST without a CSRF token saves nothing and redirects with a message, never a 400."""
    client = demo.test_client()
    client.get("/s/1/page1")
    response = client.post("/s/1/page1", data={"firstName": "Eve", "lastName": "X"})
    assert response.status_code == 303
    page = text(client.get(response.headers["Location"]))
    assert "That form had expired" in page
    assert "Eve" not in footer(client)


def test_start_over_forgets_everything(demo: Flask, store: Store) -> None:
    """Start over deletes the record; the old cookie is dead and the session page says so."""
    client = demo.test_client()
    fill_in(client)
    old = client.get_cookie("session-1")
    assert old is not None and stored_keys(store)
    confirm = text(client.get("/s/1/start-over"))
    assert "Start over?" in confirm
    response = client.post("/s/1/start-over", data={"csrf_token": token(confirm)})
    assert response.status_code == 303
    assert stored_keys(store) == []
    assert "no session is stored" in footer(client)
    replay = demo.test_client()
    replay.set_cookie("session-1", old.value)
    assert "no session is stored" in footer(replay)
    inspect = text(client.get("/s/1/session"))
    assert "nothing answers to it. It is dead." in inspect


def test_session_page_shows_cookie_and_record_never_the_id(demo: Flask) -> None:
    """The session page shows the cookie's shape and the stored record, not the raw ID."""
    client = demo.test_client()
    empty = text(client.get("/s/1/session"))
    assert "You have no session in slot 1 yet" in empty
    assert "Set-Cookie" not in client.get("/s/1/session").headers
    fill_in(client)
    cookie = client.get_cookie("session-1")
    assert cookie is not None
    raw_id = cookie.value.rsplit(".", 1)[0]
    page = text(client.get("/s/1/session"))
    assert raw_id not in page
    store = repr(client.application.extensions["satchel"].store)
    expected = ["You have a session in slot 1", "Ada", "green", "Created", "Last seen"]
    expected += ["Ends if unused", "Ends at the latest", store.replace("'", "&#39;")]
    for snippet in expected:
        assert snippet in page, snippet
    assert "None of your answers" in page and "when you close the browser" in page


def test_tampered_cookie_gives_a_fresh_session(demo: Flask) -> None:
    """The tamper button changes one character; the next page has a fresh session."""
    client = demo.test_client()
    fill_in(client)
    page = text(client.get("/s/1/session"))
    response = client.post("/s/1/tamper", data={"csrf_token": token(page)})
    assert response.status_code == 303
    result = client.get(response.headers["Location"])
    assert result.status_code == 200
    assert "Its signature no\nlonger matched" in text(result)
    assert "You have no session in slot 1 yet" in text(result)
    assert "Set-Cookie" not in result.headers  # ignored, and replaced by the next write


def test_slots_are_independent(demo: Flask) -> None:
    """Two slots in one client are two visitors, each with its own cookie."""
    client = demo.test_client()
    fill_in(client, slot=1, first="Ada", colour="green")
    fill_in(client, slot=2, first="Grace", colour="blue")
    assert "Ada" in footer(client, 1) and "Grace" not in footer(client, 1)
    assert "Grace" in footer(client, 2) and "Ada" not in footer(client, 2)
    assert client.get_cookie("session-1") and client.get_cookie("session-2")


@pytest.mark.parametrize("path", ["/s/1/tamper", "/s/1/start-over", "/s/2/session", "/"])
def test_every_url_answers_get_without_error(demo: Flask, path: str) -> None:
    """Every demo URL typed into the address bar answers 200 or a redirect."""
    assert demo.test_client().get(path).status_code in (200, 303)


def test_unknown_slot_goes_to_slot_one(demo: Flask) -> None:
    """A slot number out of range redirects rather than erring."""
    response = demo.test_client().get("/s/99/page1")
    assert response.status_code == 303 and response.headers["Location"].endswith("/s/1/")


@pytest.mark.parametrize("path", ["/s/1/page2", "/s/1/page3"])
def test_skipping_ahead_is_friendly(demo: Flask, path: str) -> None:
    """Going straight to Page 2 or 3 explains what is missing, with a link back."""
    response = demo.test_client().get(path)
    assert response.status_code == 200
    assert "needs your name first" in text(response)
    assert 'href="/s/1/page1"' in text(response)


def test_page3_without_colour_points_to_page2(demo: Flask) -> None:
    """With a name but no colour, Page 3 sends the visitor to Page 2."""
    client = demo.test_client()
    submit(client, "/s/1/page1", {"firstName": "Ada", "lastName": "Lovelace"})
    response = client.get("/s/1/page3")
    assert "favourite colour first" in text(response) and 'href="/s/1/page2"' in text(response)


@pytest.mark.parametrize(
    "form",
    [{}, {"firstName": "Ada"}, {"firstName": "  ", "lastName": "  "}],
)
def test_empty_forms_show_the_form_again(demo: Flask, form: dict[str, str]) -> None:
    """An empty or half-empty form redirects back to itself with a message (no 4xx)."""
    client = demo.test_client()
    response = submit(client, "/s/1/page1", form)
    assert response.status_code == 303 and response.headers["Location"] == "/s/1/page1"
    page = text(client.get("/s/1/page1"))
    assert 'role="alert"' in page and "first and last name" in page
    assert 'name="firstName"' in page
    assert "firstName" not in footer(client)


def test_empty_colour_shows_the_form_again(demo: Flask) -> None:
    """An empty colour redirects back to Page 2 with a message."""
    client = demo.test_client()
    submit(client, "/s/1/page1", {"firstName": "Ada", "lastName": "Lovelace"})
    response = submit(client, "/s/1/page2", {"favoriteColor": " "})
    assert response.status_code == 303
    assert "favourite colour" in text(client.get("/s/1/page2"))


def test_html_in_answers_is_escaped(demo: Flask) -> None:
    """Answers are shown escaped: a stored script tag is text, not markup."""
    client = demo.test_client()
    submit(client, "/s/1/page1", {"firstName": "<script>x</script>", "lastName": "L"})
    assert "<script>x</script>" not in footer(client)
    assert "&lt;script&gt;" in footer(client)


def test_secret_key_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """FLASK_SECRET_KEY is used when set, and no key file is written."""
    monkeypatch.setenv("FLASK_SECRET_KEY", "from-the-environment-" + "x" * 20)
    app = create_app(store="memory://", instance_path=tmp_path)
    assert app.secret_key == "from-the-environment-" + "x" * 20
    assert not (tmp_path / "demo-secret-key").exists()


def test_random_secret_key_is_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without FLASK_SECRET_KEY a random key is made once, kept private, and reused."""
    monkeypatch.delenv("FLASK_SECRET_KEY", raising=False)
    first = create_app(store="memory://", instance_path=tmp_path)
    key_file = tmp_path / "demo-secret-key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert len(str(first.secret_key)) == 64
    second = create_app(store="memory://", instance_path=tmp_path)
    assert second.secret_key == first.secret_key


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """``satchel demo`` run as a new user would, on a free port."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "FLASK_SECRET_KEY"}
    script = Path(sys.executable).with_name("satchel")
    process = subprocess.Popen(
        [str(script), "demo", "--port", str(port), "--instance", str(tmp_path / "inst")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=1).close()
            break
        except OSError:
            assert process.poll() is None, process.stdout.read() if process.stdout else ""
            time.sleep(0.1)
    yield url, process
    process.terminate()
    process.wait(10)


def test_satchel_demo_command_serves_the_questionnaire(
    served: tuple[str, subprocess.Popen[str]], tmp_path: Path
) -> None:
    """`satchel demo` serves the questionnaire over HTTP on the SQLite default."""
    url, process = served
    with urllib.request.urlopen(url, timeout=5) as response:
        assert response.status == 200
        assert response.url.endswith("/s/1/")
        assert "satchel questionnaire" in response.read().decode()
    assert (tmp_path / "inst" / "satchel-sessions.sqlite3").exists()
    process.terminate()
    output = process.communicate(timeout=10)[0]
    assert "No FLASK_SECRET_KEY set" in output
    assert "SQLiteStore" in output


def test_store_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SATCHEL_STORE in the environment picks the demo's store (as under gunicorn)."""
    monkeypatch.setenv("SATCHEL_STORE", "memory://")
    app = create_app(instance_path=tmp_path)
    assert repr(app.extensions["satchel"].store) == "MemoryStore()"


def test_workers_racing_for_the_key_file_agree(tmp_path: Path) -> None:
    """Several processes starting at once end up with one and the same key."""
    import concurrent.futures
    import multiprocessing

    from satchel.demo import load_secret_key

    with concurrent.futures.ProcessPoolExecutor(
        4, mp_context=multiprocessing.get_context("spawn")
    ) as pool:
        keys = list(pool.map(load_secret_key, [tmp_path] * 8))
    assert len({key for key, _ in keys}) == 1


def test_the_footer_speaks_to_people_not_to_python(demo: Flask) -> None:
    """Every key under a readable name, no raw key or Python repr: after a stale tab's
    submit the waiting message reads as text; the CSRF token has a name."""
    from satchel.demo import footer_rows

    client = demo.test_client()
    fill_in(client)
    page = footer(client)
    held = page[page.index('id="session-contents"') : page.index("</dl>")]
    assert "Form token (against forged forms)" in held and "csrf_token" not in held
    rows = footer_rows({"_flashes": [("message", "That form had expired.")], "csrf_token": "ab"})
    assert rows == [
        ("Messages waiting to be shown", "That form had expired."),
        ("Form token (against forged forms)", "ab… (random)"),
    ]
    assert "[(" not in held and "_flashes" not in held


def test_the_session_page_says_what_happens_to_each_kind_of_dead_cookie(demo: Flask) -> None:
    """A tampered cookie is ignored (and still sent), an ended one is deleted: the page
    says which, as it happens."""
    client = demo.test_client()
    fill_in(client)
    cookie = client.get_cookie("session-1")
    assert cookie is not None
    forged = cookie.value[:-2] + ("A" if cookie.value[-2] != "A" else "B") + cookie.value[-1]
    client.set_cookie("session-1", forged)
    page = client.get("/s/1/session")
    assert "fails its signature check" in text(page) and "ignored, not deleted" in text(page)
    assert "Set-Cookie" not in page.headers  # and indeed not deleted
    client.set_cookie("session-1", cookie.value)
    store = demo.extensions["satchel"].store
    for key in stored_keys(store):
        store.delete(key)  # the session ends on the server
    page = client.get("/s/1/session")
    assert "has ended or expired: this page's answer deletes it" in text(page)
    assert "Max-Age=0" in page.headers["Set-Cookie"]
