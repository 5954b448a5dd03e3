"""The demo on ASGI (``satchel demo --asgi``): the Flask demo's pages and rules, from FastAPI."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from satchel.demo.asgi import create_app
from satchel.stores import MemoryStore

from .valkey import free_port

ORIGIN = "http://demo.test"


def run(check: Callable[[httpx.AsyncClient], Any], tmp_path: Path, **options: Any) -> Any:
    app = create_app(instance_path=tmp_path, store=MemoryStore(), **options)

    async def go() -> Any:
        transport = httpx.ASGITransport(app)
        async with httpx.AsyncClient(
            transport=transport, base_url=ORIGIN, follow_redirects=True
        ) as client:
            return await check(client)

    return asyncio.run(go())


def token(page: httpx.Response) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert found is not None, page.text
    return found.group(1)


def footer(page: httpx.Response) -> str:
    return page.text.split("What the session holds", 1)[1]


def test_whole_flow(tmp_path: Path) -> None:
    async def check(client: httpx.AsyncClient) -> None:
        home = await client.get("/")
        assert str(home.url).endswith("/s/1/") and "Nothing: no session" in footer(home)
        assert "session-1" not in client.cookies  # reading stores nothing
        page1 = await client.get("/s/1/page1")
        assert "session-1" in client.cookies  # the form's token created the session
        form = {"csrf_token": token(page1), "firstName": "Ada", "lastName": "Lovelace"}
        page2 = await client.post("/s/1/page1", data=form)
        assert str(page2.url).endswith("/s/1/page2") and "Ada" in footer(page2)
        page3 = await client.post(
            "/s/1/page2", data={"csrf_token": token(page2), "favoriteColor": "green"}
        )
        assert str(page3.url).endswith("/s/1/page3")
        assert all(text in page3.text for text in ("Ada", "Lovelace", "green"))

    run(check, tmp_path)


def test_forms_without_a_genuine_token_are_refused_kindly(tmp_path: Path) -> None:
    async def check(client: httpx.AsyncClient) -> None:
        await client.get("/s/1/page1")
        page = await client.post("/s/1/page1", data={"firstName": "Eve", "lastName": "X"})
        assert page.status_code == 200 and "That form had expired" in page.text
        assert "Eve" not in footer(page)

    run(check, tmp_path)


def test_start_over_forgets_everything_and_the_old_cookie_is_dead(tmp_path: Path) -> None:
    async def check(client: httpx.AsyncClient) -> None:
        page1 = await client.get("/s/1/page1")
        form = {"csrf_token": token(page1), "firstName": "Ada", "lastName": "L"}
        await client.post("/s/1/page1", data=form)
        home = await client.post("/s/1/start-over", data={"csrf_token": token(page1)})
        assert "Nothing: no session" in footer(home)
        inspect = await client.get("/s/1/session")
        assert "nothing answers to it. It is dead." in inspect.text

    run(check, tmp_path)


def test_the_tamper_button_gives_a_fresh_session(tmp_path: Path) -> None:
    async def check(client: httpx.AsyncClient) -> None:
        page1 = await client.get("/s/1/page1")
        form = {"csrf_token": token(page1), "firstName": "Ada", "lastName": "L"}
        await client.post("/s/1/page1", data=form)
        inspect = await client.get("/s/1/session")
        assert "fingerprint" in inspect.text
        result = await client.post("/s/1/tamper", data={"csrf_token": token(inspect)})
        assert "Its signature no\nlonger matched" in result.text
        assert "Ada" not in footer(result)

    run(check, tmp_path)


def test_slots_are_independent_sessions(tmp_path: Path) -> None:
    async def check(client: httpx.AsyncClient) -> None:
        for slot, name in ((1, "Ada"), (2, "Grace")):
            page1 = await client.get(f"/s/{slot}/page1")
            form = {"csrf_token": token(page1), "firstName": name, "lastName": "X"}
            await client.post(f"/s/{slot}/page1", data=form)
        assert {"session-1", "session-2"} <= set(client.cookies)
        one, two = await client.get("/s/1/"), await client.get("/s/2/")
        assert "Ada" in footer(one) and "Grace" not in footer(one)
        assert "Grace" in footer(two) and "Ada" not in footer(two)
        assert str((await client.get("/s/9/")).url).endswith("/s/1/")

    run(check, tmp_path)


@pytest.mark.parametrize(
    "path", ["/", "/s/1/", "/s/1/page1", "/s/1/page2", "/s/1/page3", "/s/1/session",
             "/s/1/start-over", "/s/1/tamper", "/s/2/", "/s/3/session"],
)  # fmt: skip
def test_every_url_answers_get_without_error(tmp_path: Path, path: str) -> None:
    async def check(client: httpx.AsyncClient) -> None:
        response = await client.get(path)
        assert response.status_code == 200 and "satchel questionnaire" in response.text

    run(check, tmp_path)


def test_html_in_answers_is_escaped(tmp_path: Path) -> None:
    async def check(client: httpx.AsyncClient) -> None:
        page1 = await client.get("/s/1/page1")
        form = {"csrf_token": token(page1), "firstName": "<b>x</b>", "lastName": "y"}
        page = await client.post("/s/1/page1", data=form)
        assert "<b>x</b>" not in page.text and "&lt;b&gt;x&lt;/b&gt;" in page.text

    run(check, tmp_path)


def test_satchel_demo_asgi_serves_the_questionnaire(tmp_path: Path) -> None:
    """`satchel demo --asgi` runs it under uvicorn on the SQLite default, as a new user would."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "FLASK_SECRET_KEY"}
    script = Path(sys.executable).with_name("satchel")
    process = subprocess.Popen(
        [str(script), "demo", "--asgi", "--port", str(port), "--instance", str(tmp_path / "i")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    url = f"http://127.0.0.1:{port}/s/1/page1"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(url, timeout=1) as response:
                    body = response.read().decode()
                    cookie = response.headers["Set-Cookie"]
                break
            except OSError:
                assert process.poll() is None and time.monotonic() < deadline
                time.sleep(0.1)
        assert "Page 1: your name" in body and cookie.startswith("session-1=")
        assert (tmp_path / "i" / "satchel-sessions.sqlite3").exists()
    finally:
        process.terminate()
        output = process.communicate(timeout=10)[0]
    assert "No FLASK_SECRET_KEY set" in output and "FastAPI on uvicorn" in output


def test_the_session_page_names_the_store_as_the_flask_demo_does(tmp_path: Path) -> None:
    """The store itself (SQLiteStore(...)), not the ASGI wrapper around it; the footer
    gives the form token its readable name."""
    app = create_app(instance_path=tmp_path)

    async def go() -> None:
        transport = httpx.ASGITransport(app)
        async with httpx.AsyncClient(
            transport=transport, base_url=ORIGIN, follow_redirects=True
        ) as client:
            await client.get("/s/1/page1")  # stores the form token: a session exists
            page = await client.get("/s/1/session")
            assert "SQLiteStore(" in page.text and "SQLiteLoopStore" not in page.text
            assert "Form token (against forged forms)" in footer(page)

    asyncio.run(go())
