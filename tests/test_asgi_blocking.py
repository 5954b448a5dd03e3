"""Nothing satchel's ASGI middleware does blocks the event loop, from its construction on.

Starlette builds an app's middleware stack lazily, on the event loop, at the app's
first call; an app whose tests run with a blocking-call detector (blockbuster, as
Starlette's own suite does) fails at its first request if a middleware reads a file
or a socket there. These run the middleware under blockbuster, on asyncio and on
trio, on every store, through a whole session's life.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from blockbuster import BlockingError, blockbuster, blockbuster_ctx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import satchel.asgi
from satchel.asgi import SessionMiddleware, get_session
from satchel.errors import ConfigError
from satchel.stores import Store

SECRET = "a fairly long and random secret key, 0123456789"


class _Loops:
    """What blockbuster asks to learn whether a loop runs: asyncio's answer, or trio's."""

    def __getattr__(self, name: str) -> Any:
        return getattr(asyncio, name)

    @staticmethod
    def get_running_loop() -> Any:
        trio = sys.modules.get("trio")
        if trio is not None:
            try:
                return trio.lowlevel.current_task()
            except RuntimeError:
                pass
        return asyncio.get_running_loop()


@pytest.fixture
def detector(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """blockbuster on for the test; on trio's thread too (it only knows asyncio's loop)."""
    monkeypatch.setattr(blockbuster, "asyncio", _Loops())
    with blockbuster_ctx():
        yield


async def counter(request: Request) -> JSONResponse:
    session = request.session
    session["n"] = session.get("n", 0) + 1
    session.setdefault("items", []).append(session["n"])
    return JSONResponse({"n": session["n"]})


async def login(request: Request) -> JSONResponse:
    session = get_session(request)
    session.regenerate(owner="ada")
    return JSONResponse({"owner": session.owner})


async def everywhere(request: Request) -> JSONResponse:
    ended = await satchel.asgi.revoke_all(request, "ada", keep_current=False)
    return JSONResponse({"ended": ended, "left": dict(request.session)})


async def untouched(request: Request) -> JSONResponse:
    return JSONResponse({})


def make_app(store: Store | None) -> Starlette:
    """An app whose middleware Starlette builds at its first call, on the loop."""
    app = Starlette(
        routes=[
            Route("/", counter),
            Route("/login", login),
            Route("/everywhere", everywhere),
            Route("/untouched", untouched),
        ]
    )
    app.add_middleware(SessionMiddleware, secret_key=SECRET, store=store)
    return app


async def a_whole_session(app: Starlette) -> list[Any]:
    """First visit, writes, a read, a login, an untouched request, log out everywhere."""
    seen: list[Any] = []
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        for _ in range(3):
            seen.append((await client.get("/")).json())
        seen.append((await client.get("/login")).json())
        untouched = await client.get("/untouched")
        seen.append("set-cookie" in untouched.headers)
        seen.append((await client.get("/")).json())
        seen.append((await client.get("/everywhere")).json())
        seen.append((await client.get("/")).json())
    await middleware_of(app).store.close()  # on the loop it ran on
    return seen


def middleware_of(app: Starlette) -> SessionMiddleware:
    """The SessionMiddleware in the stack Starlette built."""
    layer: Any = app.middleware_stack
    while not isinstance(layer, SessionMiddleware):
        layer = layer.app
    return layer


EXPECTED = [
    {"n": 1}, {"n": 2}, {"n": 3}, {"owner": "ada"}, False, {"n": 4},
    {"ended": 1, "left": {}}, {"n": 1},
]  # fmt: skip


@pytest.mark.parametrize("library", ["asyncio", "trio"])
def test_a_session_s_life_blocks_nothing_on_any_store(
    detector: None, store: Store, library: str
) -> None:
    """Every store, under blockbuster: the lazily built middleware serves a session's life."""
    assert anyio.run(a_whole_session, make_app(store), backend=library) == EXPECTED


@pytest.mark.parametrize("library", ["asyncio", "trio"])
def test_the_default_sqlite_store_is_opened_off_the_loop(
    detector: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, library: str
) -> None:
    """No store given: the SQLite file is made (a directory, a file, a schema) on a thread."""
    monkeypatch.chdir(tmp_path)
    assert anyio.run(a_whole_session, make_app(None), backend=library) == EXPECTED
    assert (tmp_path / satchel.asgi.DEFAULT_SQLITE_PATH).exists()


@pytest.mark.parametrize("library", ["asyncio", "trio"])
def test_a_middleware_built_before_the_loop_serves_either_loop(
    detector: None, store: Store, library: str
) -> None:
    """Built directly, off any loop (its store checked there), then served on asyncio or
    trio: on trio a store's asyncio twin gives way to the sync store on threads."""
    inner = make_app(None)
    inner.user_middleware.clear()
    middleware = SessionMiddleware(inner, secret_key=SECRET, store=store)

    async def run() -> list[Any]:
        seen: list[Any] = []
        transport = httpx.ASGITransport(app=middleware)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            for _ in range(2):
                seen.append((await client.get("/")).json())
        await middleware.store.close()
        return seen

    assert anyio.run(run, backend=library) == [{"n": 1}, {"n": 2}]


def test_the_detector_sees_blocking_calls_on_both_loops(detector: None) -> None:
    """The detector itself: a file read on the loop is caught on asyncio and on trio."""

    async def read() -> None:
        Path(__file__).read_bytes()

    for library in ("asyncio", "trio"):
        with pytest.raises(BlockingError):
            anyio.run(read, backend=library)


def test_a_middleware_built_off_the_loop_checks_its_store_there(tmp_path: Path) -> None:
    """Built directly (no loop runs), a bad store fails at construction, as before."""
    with pytest.raises(ConfigError, match="store"):
        SessionMiddleware(Starlette(), secret_key=SECRET, store="nosuch://x")


@pytest.mark.parametrize("library", ["asyncio", "trio"])
def test_a_store_that_fails_its_check_fails_the_app_s_start_up(
    detector: None, tmp_path: Path, library: str
) -> None:
    """check_store with a store that cannot work: lifespan start-up fails, with the cause."""
    app = Starlette()
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    app.add_middleware(
        SessionMiddleware,
        secret_key=SECRET,
        store=f"sqlite:///{blocked}/sessions.sqlite3",
        check_store=True,
    )
    sent: list[dict[str, Any]] = []
    messages = iter([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])

    async def receive() -> dict[str, Any]:
        return next(messages)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def start() -> None:
        await app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, receive, send)

    anyio.run(start, backend=library)
    assert sent and sent[0]["type"] == "lifespan.startup.failed", sent
    assert "sessions.sqlite3" in sent[0]["message"] or "store" in sent[0]["message"]
