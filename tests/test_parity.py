"""The parity matrix: one list of scenarios, run on every adapter and every store.

Each scenario is a short script of requests made through one uniform client,
the same for Flask, Starlette, FastAPI (the session handed to views by
``Depends``) and Quart; each step records what a browser and a cache would see:
the status, the body (what the view saw), whether the response sets, expires or
leaves the session cookie, and whether it varies on the cookie. The same
scenario must give the same record on every adapter and store. The framework
differences a cell may show are listed in ``FRAMEWORK_DIFFERENCES`` (and in
docs/asgi.md, "What differs by framework"), each with its reason.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any

import httpx
import pytest
from fastapi import Depends, FastAPI
from flask import Flask, flash, get_flashed_messages, jsonify
from flask import session as flask_session
from quart import Quart
from quart import flash as quart_flash
from quart import get_flashed_messages as quart_flashed
from quart import jsonify as quart_jsonify
from quart import session as quart_session
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import satchel.asgi
import satchel.quart
from satchel.admin import current_reference
from satchel.asgi import SessionMiddleware, get_session
from satchel.errors import StoreUnavailable
from satchel.flask import Satchel, current_session
from satchel.session import AsyncSession, Session
from satchel.stores import MemoryStore, Store

#: The session, handed to a FastAPI view by its dependency.
SessionDep = Annotated[AsyncSession, Depends(get_session)]

SECRET = "parity matrix secret key, long and random 4f9c1e"
OLD_SECRET = "the key before the rotation, long and random too 7d2a"
ADAPTERS = ["flask", "starlette", "fastapi", "quart"]
#: The encryption keys every app of the running cell seals its records under (empty:
#: encryption off); the encrypted half of the matrix sets them.
ENCRYPTION_KEYS: list[str] = []

#: Cells where an adapter must differ, because its framework makes it: (adapter,
#: scenario) -> why. The matrix checks the difference is exactly this one.
FRAMEWORK_DIFFERENCES = {
    ("starlette", "flash"): "Starlette and FastAPI have no flash messages",
    ("fastapi", "flash"): "Starlette and FastAPI have no flash messages",
    ("starlette", "migration import"): "the ASGI middleware imports no old sessions (yet)",
    ("fastapi", "migration import"): "the ASGI middleware imports no old sessions (yet)",
}


#: Sends a GET of a path with a cookie value; answers status, body, Set-Cookie headers, Vary.
Sender = Callable[[str, str | None], Awaitable[tuple[int, Any, list[str], str]]]


@dataclass(frozen=True)
class Seen:
    """What one response showed: status, body, the cookie's fate, and Vary."""

    status: int
    body: Any
    cookie: str  # "set", "expired" or "-"
    vary: bool


class Client:
    """One browser: a cookie jar of its own, over any adapter's app."""

    def __init__(self, send: Sender) -> None:
        self._send = send
        self.cookie: str | None = None

    async def get(self, path: str, cookie: str | None = None) -> Seen:
        """GET ``path`` with the jar's cookie (or ``cookie``); the jar keeps what is set."""
        status, body, set_cookies, vary = await self._send(path, cookie or self.cookie)
        fate = "-"
        for header in set_cookies:
            name, _, rest = header.partition("=")
            if name.strip() != "session":
                continue
            value = rest.split(";", 1)[0].strip('"')
            lowered = header.lower()
            if not value or "max-age=0" in lowered or "1970" in lowered:
                fate, self.cookie = "expired", None
            else:
                fate, self.cookie = "set", value
        return Seen(status, body, fate, "cookie" in vary.lower())


# -- the same views on every adapter ---------------------------------------------------


@dataclass
class Options:
    """How a scenario configures each adapter's app, in each framework's own words."""

    secret: str = SECRET
    fallbacks: tuple[str, ...] = ()
    absolute_timeout: float = 86400.0
    locking: bool = False
    lock_timeout: float = 5.0
    max_size: int = 1 << 20
    migrate: bool = False
    #: Two overlapping requests meet here after changing the session, before saving.
    barrier: Any = None
    #: Set by /hold once it holds the session; /hold ends when the scenario sets release.
    held: Any = None
    release: Any = None


def _flask_config(options: Options) -> dict[str, Any]:
    config: dict[str, Any] = {
        "SECRET_KEY": options.secret,
        "SECRET_KEY_FALLBACKS": list(options.fallbacks),
        "SATCHEL_IDLE_TIMEOUT": 3600,
        "SATCHEL_ABSOLUTE_TIMEOUT": options.absolute_timeout,
        "SATCHEL_LOCKING": options.locking,
        "SATCHEL_LOCK_TIMEOUT": options.lock_timeout,
        "SATCHEL_MAX_SIZE": options.max_size,
        "SATCHEL_ENCRYPTION_KEYS": list(ENCRYPTION_KEYS) or None,
    }
    if options.migrate:
        config["SATCHEL_MIGRATE_FROM"] = "flask-cookie"
    return config


def flask_app(store: Store, options: Options) -> Flask:
    app = Flask("parity")
    app.config.update(_flask_config(options))
    Satchel(app, store=store)

    @app.get("/regenerate")
    def regenerate() -> Any:
        current_session().regenerate()
        return jsonify(dict(flask_session))

    @app.get("/overlap/<key>/<value>")
    def overlap(key: str, value: str) -> Any:
        flask_session.setdefault(key, []).append(value)
        options.barrier.wait()
        return jsonify({})

    @app.get("/incr-slowly")
    def incr_slowly() -> Any:
        flask_session["n"] = flask_session.get("n", 0) + 1
        time.sleep(0.2)
        return jsonify({})

    @app.get("/stats")
    def stats() -> Any:
        return jsonify(Satchel.stats())

    @app.get("/pop/<key>")
    def pop(key: str) -> Any:
        flask_session.pop(key, None)
        return jsonify(dict(flask_session))

    @app.get("/big/<int:size>")
    def big(size: int) -> Any:
        flask_session["big"] = "x" * size
        return jsonify({})

    @app.get("/hold")
    def hold() -> Any:
        flask_session["held"] = True
        options.held.set()
        options.release.wait(10)
        return jsonify({})

    @app.get("/untouched")
    def untouched() -> Any:
        return jsonify({})

    @app.get("/read")
    def read() -> Any:
        return jsonify(dict(flask_session))

    @app.get("/set/<key>/<value>")
    def set_(key: str, value: str) -> Any:
        flask_session[key] = value
        return jsonify(dict(flask_session))

    @app.get("/append/<key>/<value>")
    def append(key: str, value: str) -> Any:
        flask_session.setdefault(key, []).append(value)
        return jsonify(dict(flask_session))

    @app.get("/clear")
    def clear() -> Any:
        flask_session.clear()
        return jsonify(dict(flask_session))

    @app.get("/login/<owner>")
    def login(owner: str) -> Any:
        current_session().regenerate(owner=owner)
        return jsonify(dict(flask_session))

    @app.get("/revoke-me")
    def revoke_me() -> Any:
        Satchel.revoke(current_reference(current_session()) or "")
        return jsonify(dict(flask_session))

    @app.get("/revoke-all/<owner>/<int:keep>")
    def revoke_all(owner: str, keep: int) -> Any:
        ended = Satchel.revoke_all(owner, keep_current=bool(keep))
        return jsonify({"ended": ended, "left": dict(flask_session)})

    @app.get("/after-revoke/<owner>")
    def after_revoke(owner: str) -> Any:
        Satchel.revoke_all(owner, keep_current=False)
        flask_session["after"] = "yes"
        return jsonify(dict(flask_session))

    @app.get("/flash/<message>")
    def flash_(message: str) -> Any:
        flash(message)
        return jsonify({})

    @app.get("/flashes")
    def flashes() -> Any:
        return jsonify({"flashes": get_flashed_messages()})

    return app


def quart_app(store: Store, options: Options) -> Quart:
    app = Quart("parity")
    app.config.update(_flask_config(options))
    satchel.quart.Satchel(app, store=store)

    @app.get("/regenerate")
    async def regenerate() -> Any:
        satchel.quart.current_session().regenerate()
        return quart_jsonify(dict(quart_session))

    @app.get("/overlap/<key>/<value>")
    async def overlap(key: str, value: str) -> Any:
        quart_session.setdefault(key, []).append(value)
        await asyncio.wait_for(options.barrier.wait(), 10)
        return quart_jsonify({})

    @app.get("/incr-slowly")
    async def incr_slowly() -> Any:
        quart_session["n"] = quart_session.get("n", 0) + 1
        await asyncio.sleep(0.2)
        return quart_jsonify({})

    @app.get("/stats")
    async def stats() -> Any:
        return quart_jsonify(satchel.quart.Satchel.stats())

    @app.get("/pop/<key>")
    async def pop(key: str) -> Any:
        quart_session.pop(key, None)
        return quart_jsonify(dict(quart_session))

    @app.get("/big/<int:size>")
    async def big(size: int) -> Any:
        quart_session["big"] = "x" * size
        return quart_jsonify({})

    @app.get("/hold")
    async def hold() -> Any:
        quart_session["held"] = True
        options.held.set()
        await asyncio.wait_for(options.release.wait(), 10)
        return quart_jsonify({})

    @app.get("/untouched")
    async def untouched() -> Any:
        return quart_jsonify({})

    @app.get("/read")
    async def read() -> Any:
        return quart_jsonify(dict(quart_session))

    @app.get("/set/<key>/<value>")
    async def set_(key: str, value: str) -> Any:
        quart_session[key] = value
        return quart_jsonify(dict(quart_session))

    @app.get("/append/<key>/<value>")
    async def append(key: str, value: str) -> Any:
        quart_session.setdefault(key, []).append(value)
        return quart_jsonify(dict(quart_session))

    @app.get("/clear")
    async def clear() -> Any:
        quart_session.clear()
        return quart_jsonify(dict(quart_session))

    @app.get("/login/<owner>")
    async def login(owner: str) -> Any:
        satchel.quart.current_session().regenerate(owner=owner)
        return quart_jsonify(dict(quart_session))

    @app.get("/revoke-me")
    async def revoke_me() -> Any:
        await satchel.quart.Satchel.revoke(current_reference(satchel.quart.current_session()) or "")
        return quart_jsonify(dict(quart_session))

    @app.get("/revoke-all/<owner>/<int:keep>")
    async def revoke_all(owner: str, keep: int) -> Any:
        ended = await satchel.quart.Satchel.revoke_all(owner, keep_current=bool(keep))
        return quart_jsonify({"ended": ended, "left": dict(quart_session)})

    @app.get("/after-revoke/<owner>")
    async def after_revoke(owner: str) -> Any:
        await satchel.quart.Satchel.revoke_all(owner, keep_current=False)
        quart_session["after"] = "yes"
        return quart_jsonify(dict(quart_session))

    @app.get("/flash/<message>")
    async def flash_(message: str) -> Any:
        await quart_flash(message)
        return quart_jsonify({})

    @app.get("/flashes")
    async def flashes() -> Any:
        return quart_jsonify({"flashes": quart_flashed()})

    return app


def _starlette_routes(session_of: Callable[[Request], Session], options: Options) -> list[Route]:
    """The views, written once for Starlette; FastAPI's take the session by Depends."""

    def body(session: Session, extra: dict[str, Any] | None = None) -> JSONResponse:
        return JSONResponse(extra if extra is not None else dict(session))

    async def untouched(request: Request) -> JSONResponse:
        return JSONResponse({})

    async def read(request: Request) -> JSONResponse:
        return body(session_of(request))

    async def set_(request: Request) -> JSONResponse:
        session = session_of(request)
        session[request.path_params["key"]] = request.path_params["value"]
        return body(session)

    async def append(request: Request) -> JSONResponse:
        session = session_of(request)
        session.setdefault(request.path_params["key"], []).append(request.path_params["value"])
        return body(session)

    async def clear(request: Request) -> JSONResponse:
        session = session_of(request)
        session.clear()
        return body(session)

    async def login(request: Request) -> JSONResponse:
        session = session_of(request)
        session.regenerate(owner=request.path_params["owner"])
        return body(session)

    async def revoke_me(request: Request) -> JSONResponse:
        session = session_of(request)
        await satchel.asgi.revoke(request, current_reference(session) or "")
        return body(session)

    async def revoke_all(request: Request) -> JSONResponse:
        session = session_of(request)
        keep = bool(int(request.path_params["keep"]))
        ended = await satchel.asgi.revoke_all(request, request.path_params["owner"], keep)
        return body(session, {"ended": ended, "left": dict(session)})

    async def after_revoke(request: Request) -> JSONResponse:
        session = session_of(request)
        await satchel.asgi.revoke_all(request, request.path_params["owner"], False)
        session["after"] = "yes"
        return body(session)

    async def regenerate(request: Request) -> JSONResponse:
        session = session_of(request)
        session.regenerate()
        return body(session)

    async def overlap(request: Request) -> JSONResponse:
        session = session_of(request)
        session.setdefault(request.path_params["key"], []).append(request.path_params["value"])
        await asyncio.wait_for(options.barrier.wait(), 10)
        return JSONResponse({})

    async def incr_slowly(request: Request) -> JSONResponse:
        session = session_of(request)
        session["n"] = session.get("n", 0) + 1
        await asyncio.sleep(0.2)
        return JSONResponse({})

    async def stats(request: Request) -> JSONResponse:
        return JSONResponse(satchel.asgi.stats(request))

    async def pop(request: Request) -> JSONResponse:
        session = session_of(request)
        session.pop(request.path_params["key"], None)
        return body(session)

    async def big(request: Request) -> JSONResponse:
        session_of(request)["big"] = "x" * int(request.path_params["size"])
        return JSONResponse({})

    async def hold(request: Request) -> JSONResponse:
        session_of(request)["held"] = True
        options.held.set()
        await asyncio.wait_for(options.release.wait(), 10)
        return JSONResponse({})

    return [
        Route("/pop/{key}", pop),
        Route("/big/{size}", big),
        Route("/hold", hold),
        Route("/regenerate", regenerate),
        Route("/overlap/{key}/{value}", overlap),
        Route("/incr-slowly", incr_slowly),
        Route("/stats", stats),
        Route("/untouched", untouched),
        Route("/read", read),
        Route("/set/{key}/{value}", set_),
        Route("/append/{key}/{value}", append),
        Route("/clear", clear),
        Route("/login/{owner}", login),
        Route("/revoke-me", revoke_me),
        Route("/revoke-all/{owner}/{keep}", revoke_all),
        Route("/after-revoke/{owner}", after_revoke),
    ]


def _middleware(app: Any, store: Store, options: Options) -> SessionMiddleware:
    """The middleware with the scenario's options (an ASGI app has no import of old
    sessions: ``options.migrate`` has no word here)."""
    return SessionMiddleware(
        app,
        secret_key=options.secret,
        secret_key_fallbacks=options.fallbacks,
        store=store,
        idle_timeout=3600,
        absolute_timeout=options.absolute_timeout,
        locking=options.locking,
        lock_timeout=options.lock_timeout,
        max_size=options.max_size,
        encryption_keys=list(ENCRYPTION_KEYS) or None,
    )


def starlette_app(store: Store, options: Options) -> Any:
    app = Starlette(routes=_starlette_routes(lambda request: request.session, options))
    return _middleware(app, store, options)


def fastapi_app(store: Store, options: Options) -> Any:
    api = FastAPI()

    @api.get("/regenerate")
    async def regenerate(session: SessionDep) -> dict[str, Any]:
        session.regenerate()
        return dict(session)

    @api.get("/overlap/{key}/{value}")
    async def overlap(key: str, value: str, session: SessionDep) -> dict[str, Any]:
        session.setdefault(key, []).append(value)
        await asyncio.wait_for(options.barrier.wait(), 10)
        return {}

    @api.get("/incr-slowly")
    async def incr_slowly(session: SessionDep) -> dict[str, Any]:
        session["n"] = session.get("n", 0) + 1
        await asyncio.sleep(0.2)
        return {}

    @api.get("/stats")
    async def stats(request: Request) -> dict[str, int]:
        return satchel.asgi.stats(request)

    @api.get("/pop/{key}")
    async def pop(key: str, session: SessionDep) -> dict[str, Any]:
        session.pop(key, None)
        return dict(session)

    @api.get("/big/{size}")
    async def big(size: int, session: SessionDep) -> dict[str, Any]:
        session["big"] = "x" * size
        return {}

    @api.get("/hold")
    async def hold(session: SessionDep) -> dict[str, Any]:
        session["held"] = True
        options.held.set()
        await asyncio.wait_for(options.release.wait(), 10)
        return {}

    @api.get("/untouched")
    async def untouched() -> dict[str, Any]:
        return {}

    @api.get("/read")
    async def read(session: SessionDep) -> dict[str, Any]:
        return dict(session)

    @api.get("/set/{key}/{value}")
    async def set_(key: str, value: str, session: SessionDep) -> dict[str, Any]:
        session[key] = value
        return dict(session)

    @api.get("/append/{key}/{value}")
    async def append(key: str, value: str, session: SessionDep) -> dict[str, Any]:
        session.setdefault(key, []).append(value)
        return dict(session)

    @api.get("/clear")
    async def clear(session: SessionDep) -> dict[str, Any]:
        session.clear()
        return dict(session)

    @api.get("/login/{owner}")
    async def login(owner: str, session: SessionDep) -> dict[str, Any]:
        session.regenerate(owner=owner)
        return dict(session)

    @api.get("/revoke-me")
    async def revoke_me(request: Request, session: SessionDep) -> dict[str, Any]:
        await satchel.asgi.revoke(request, current_reference(session) or "")
        return dict(session)

    @api.get("/revoke-all/{owner}/{keep}")
    async def revoke_all(
        request: Request, owner: str, keep: int, session: SessionDep
    ) -> dict[str, Any]:
        ended = await satchel.asgi.revoke_all(request, owner, bool(keep))
        return {"ended": ended, "left": dict(session)}

    @api.get("/after-revoke/{owner}")
    async def after_revoke(request: Request, owner: str, session: SessionDep) -> dict[str, Any]:
        await satchel.asgi.revoke_all(request, owner, False)
        session["after"] = "yes"
        return dict(session)

    return _middleware(api, store, options)


# -- sending a request to each kind of app ----------------------------------------------


def _vary(headers: Any) -> str:
    return ", ".join(v for k, v in headers.items() if k.lower() == "vary")


@dataclass
class Harness:
    """An adapter's app on a store, and how to send it a request."""

    send: Sender
    close: Callable[[], Awaitable[None]]

    def browser(self) -> Client:
        return Client(self.send)


def harness(adapter: str, store: Store, options: Options | None = None) -> Harness:
    options = options or Options()
    if options.barrier is None:
        options.barrier = (
            threading.Barrier(2, timeout=10) if adapter == "flask" else asyncio.Barrier(2)
        )
    if options.held is None:
        event = threading.Event if adapter == "flask" else asyncio.Event
        options.held, options.release = event(), event()
    if adapter == "flask":
        app = flask_app(store, options)
        client = app.test_client(use_cookies=False)

        async def send_flask(path: str, cookie: str | None) -> tuple[int, Any, list[str], str]:
            headers = {"Cookie": f"session={cookie}"} if cookie else {}
            # On a thread: two requests of a scenario may overlap, as under a threaded server.
            response = await asyncio.to_thread(client.get, path, headers=headers)
            return (
                response.status_code,
                response.get_json(silent=True),
                response.headers.getlist("Set-Cookie"),
                _vary(response.headers),
            )

        async def nothing() -> None:
            return None

        return Harness(send_flask, nothing)
    if adapter == "quart":
        qapp = quart_app(store, options)
        qclient = qapp.test_client(use_cookies=False)

        async def send_quart(path: str, cookie: str | None) -> tuple[int, Any, list[str], str]:
            headers = {"Cookie": f"session={cookie}"} if cookie else {}
            response = await qclient.get(path, headers=headers)
            body = await response.get_json() if response.mimetype == "application/json" else None
            return (
                response.status_code,
                body,
                response.headers.getlist("Set-Cookie"),
                _vary(response.headers),
            )

        async def close_quart() -> None:
            manager = qapp.extensions["satchel"]
            if manager.store is not store:
                await manager.store.close()

        return Harness(send_quart, close_quart)
    factory = starlette_app if adapter == "starlette" else fastapi_app
    middleware = factory(store, options)
    # As a server would: an exception the app raises is a 500, not raised in the client.
    transport = httpx.ASGITransport(app=middleware, raise_app_exceptions=False)

    async def send_asgi(path: str, cookie: str | None) -> tuple[int, Any, list[str], str]:
        headers = {"Cookie": f"session={cookie}"} if cookie else {}
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            response = await http.get(path, headers=headers)
        try:
            body = response.json()
        except ValueError:
            body = None
        return (
            response.status_code,
            body,
            response.headers.get_list("set-cookie"),
            _vary(response.headers),
        )

    async def close_asgi() -> None:
        if middleware.store is not store:
            await middleware.store.close()

    return Harness(send_asgi, close_asgi)


# -- the scenarios -------------------------------------------------------------------


def _records(store: Store) -> list[tuple[str, Any]]:
    return list(store.records())  # type: ignore[attr-defined]


async def first_visit_untouched(h: Harness, store: Store) -> list[Any]:
    """A first visit whose view never touches the session: no cookie, no Vary, no record."""
    seen = await h.browser().get("/untouched")
    return [seen, len(_records(store))]


async def first_visit_read(h: Harness, store: Store) -> list[Any]:
    """A first visit that reads the (empty) session: nothing stored, no cookie."""
    seen = await h.browser().get("/read")
    return [seen.status, seen.body, seen.cookie, len(_records(store))]


async def write_then_read(h: Harness, store: Store) -> list[Any]:
    """A write sets the cookie; a read-only visit sees the data and sets no cookie."""
    b = h.browser()
    return [await b.get("/set/a/1"), await b.get("/read"), await b.get("/untouched")]


async def nested_mutation(h: Harness, store: Store) -> list[Any]:
    """Appending to a list held in the session is saved without marking it modified."""
    b = h.browser()
    await b.get("/append/items/x")
    await b.get("/append/items/y")
    return [await b.get("/read")]


async def clear_ends(h: Harness, store: Store) -> list[Any]:
    """clear() ends the session: the cookie is expired and the old cookie opens nothing."""
    b = h.browser()
    await b.get("/set/a/1")
    old = b.cookie
    cleared = await b.get("/clear")
    replay = await h.browser().get("/read", cookie=old)
    return [cleared, replay.body, replay.cookie, len(_records(store))]


async def login_regenerates(h: Harness, store: Store) -> list[Any]:
    """regenerate(owner=...) moves the data to a new ID; the old cookie opens nothing."""
    b = h.browser()
    await b.get("/set/a/1")
    old = b.cookie
    login = await b.get("/login/ada")
    replay = await h.browser().get("/read", cookie=old)
    owners = [record.owner for _, record in _records(store)]
    return [login, b.cookie != old, replay.body, owners, (await b.get("/read")).body]


async def revoke_current(h: Harness, store: Store) -> list[Any]:
    """Revoking the requester's own session empties it in the request and expires the cookie."""
    b = h.browser()
    await b.get("/login/ada")
    await b.get("/set/a/1")
    revoked = await b.get("/revoke-me")
    return [revoked, (await b.get("/read")).body, len(_records(store))]


async def revoke_all_with_current(h: Harness, store: Store) -> list[Any]:
    """revoke_all(keep_current=False): every device is logged out, this one at once."""
    phone, laptop = h.browser(), h.browser()
    for b in (phone, laptop):
        await b.get("/login/ada")
        await b.get("/set/a/1")
    revoked = await laptop.get("/revoke-all/ada/0")
    return [revoked, (await phone.get("/read")).body, len(_records(store))]


async def revoke_all_but_current(h: Harness, store: Store) -> list[Any]:
    """revoke_all(keep_current=True): the other devices end, this one lives on."""
    phone, laptop = h.browser(), h.browser()
    for b in (phone, laptop):
        await b.get("/login/ada")
        await b.get("/set/a/1")
    revoked = await laptop.get("/revoke-all/ada/1")
    return [revoked, (await phone.get("/read")).body, (await laptop.get("/read")).body]


async def write_after_revoke(h: Harness, store: Store) -> list[Any]:
    """A write after the requester's own session was revoked goes to a new session."""
    b = h.browser()
    await b.get("/login/ada")
    await b.get("/set/a/1")
    after = await b.get("/after-revoke/ada")
    owners = [record.owner for _, record in _records(store)]
    return [after, (await b.get("/read")).body, owners]


async def idle_expiry(h: Harness, store: Store) -> list[Any]:
    """A session past its idle expiry is gone: an empty session and an expired cookie."""
    b = h.browser()
    await b.get("/set/a/1")
    ((key, record),) = _records(store)
    assert store.touch(key, record.touched_at, time.time() - 1)
    seen = await b.get("/read")
    return [seen, len(_records(store))]


async def hostile_cookies(h: Harness, store: Store) -> list[Any]:
    """Forged, truncated and oversized cookies give a fresh session, never a 500."""
    b = h.browser()
    await b.get("/set/a/1")
    assert b.cookie is not None
    genuine = b.cookie
    forged = genuine[:-4] + ("AAAA" if not genuine.endswith("AAAA") else "BBBB")
    answers = []
    for cookie in (forged, genuine[:20], "x" * 5000, "", "a.b.c", genuine + "x"):
        seen = await h.browser().get("/read", cookie=cookie or "-")
        answers.append((seen.status, seen.body))
    return answers


async def store_down(h: Harness, store: Store) -> list[Any]:
    """A store that fails to load answers 503, never a traceback (run on a failing store)."""
    b = h.browser()
    seen = await b.get("/read", cookie=COOKIE_OF_DOWN_STORE)
    return [seen.status]


async def flash_messages(h: Harness, store: Store) -> list[Any]:
    """A flash message survives to the next request, and only to it."""
    b = h.browser()
    await b.get("/flash/saved")
    return [(await b.get("/flashes")).body, (await b.get("/flashes")).body]


async def plain_regenerate(h: Harness, store: Store) -> list[Any]:
    """regenerate() without an owner: same data under a new ID; the old cookie is dead."""
    b = h.browser()
    await b.get("/set/a/1")
    old = b.cookie
    moved = await b.get("/regenerate")
    replay = await h.browser().get("/read", cookie=old)
    return [moved, b.cookie != old, replay.body, (await b.get("/read")).body]


async def overlapping_merges(h: Harness, store: Store) -> list[Any]:
    """Two requests of one session append to one list at once (both loaded before either
    saved, met at a barrier): both appends are kept."""
    b = h.browser()
    await b.get("/set/a/1")
    first, second = await asyncio.gather(b.get("/overlap/items/x"), b.get("/overlap/items/y"))
    items = (await b.get("/read")).body["items"]
    merges = (await b.get("/stats")).body["merges"]
    return [first.status, second.status, sorted(items), merges >= 1]


async def strict_mode(make: Callable[[Options], Harness], store: Store) -> list[Any]:
    """Strict mode: two overlapping read-modify-writes of one key run one after the other
    (the second waited for the first's lock), so the counter counts both."""
    h = make(Options(locking=True))
    try:
        b = h.browser()
        await b.get("/set/a/1")
        await asyncio.gather(b.get("/incr-slowly"), b.get("/incr-slowly"))
        n = (await b.get("/read")).body["n"]
        waits = (await b.get("/stats")).body["lock_waits"]
        return [n, waits >= 1]
    finally:
        await h.close()


async def absolute_expiry(make: Callable[[Options], Harness], store: Store) -> list[Any]:
    """Past the absolute timeout a session is gone, however active it was."""
    h = make(Options(absolute_timeout=0.5))
    try:
        b = h.browser()
        await b.get("/set/a/1")
        created = time.monotonic()  # the session began before this, however slow the set
        # Its idle timeout is an hour: only the absolute one can end it this soon.
        await asyncio.sleep(max(0.0, created + 0.8 - time.monotonic()))
        seen = await b.get("/read")
        return [seen, len(_records(store))]
    finally:
        await h.close()


async def key_rotation(make: Callable[[Options], Harness], store: Store) -> list[Any]:
    """A cookie signed with the previous key still opens its session once the key moved to
    the fallbacks, and the response re-signs it with the new key."""
    before = make(Options(secret=OLD_SECRET))
    after = make(Options(secret=SECRET, fallbacks=(OLD_SECRET,)))
    try:
        b = before.browser()
        await b.get("/set/a/1")
        carried = after.browser()
        carried.cookie = b.cookie
        first = await carried.get("/read")
        resigned = carried.cookie != b.cookie
        again = await carried.get("/read")
        return [first, resigned, again]
    finally:
        await before.close()
        await after.close()


async def migration_import(make: Callable[[Options], Harness], store: Store) -> list[Any]:
    """An app switching from Flask's own cookie session: the old cookie's data is imported
    into a new satchel session at the first request, and the visitor gets its cookie."""
    from flask.sessions import SecureCookieSessionInterface

    legacy = Flask("legacy")
    legacy.secret_key = SECRET
    old_cookie = (
        SecureCookieSessionInterface()
        .get_signing_serializer(legacy)
        .dumps({"user_id": 7, "cart": ["tea"]})
    )
    h = make(Options(migrate=True))
    try:
        b = h.browser()
        first = await b.get("/read", cookie=old_cookie)
        return [first, (await b.get("/read")).body, len(_records(store))]
    finally:
        await h.close()


async def emptying(h: Harness, store: Store) -> list[Any]:
    """A view that removes the last key ends the session: record gone, cookie expired."""
    b = h.browser()
    await b.get("/set/a/1")
    emptied = await b.get("/pop/a")
    return [emptied, len(_records(store))]


async def size_limit(make: Callable[[Options], Harness], store: Store) -> list[Any]:
    """A write over the size limit saves nothing (SessionTooLarge, a 500 unless the app
    handles it: docs/configuration.md); what was stored stays as it was."""
    h = make(Options(max_size=1000))
    try:
        b = h.browser()
        await b.get("/set/a/1")
        over = await b.get("/big/5000")
        return [over.status, (await b.get("/read")).body]
    finally:
        await h.close()


async def _wait(event: Any) -> None:
    if isinstance(event, threading.Event):
        assert await asyncio.to_thread(event.wait, 10)
    else:
        await asyncio.wait_for(event.wait(), 10)


async def lock_timeout(make: Callable[[Options], Harness], store: Store) -> list[Any]:
    """Strict mode: a request that waits longer than the lock timeout for another one
    holding the session answers 503 and changes nothing; the holder saves."""
    options = Options(locking=True, lock_timeout=0.2)
    h = make(options)
    try:
        b = h.browser()
        await b.get("/set/a/1")
        holder = asyncio.ensure_future(b.get("/hold"))
        await _wait(options.held)  # the first request holds the session's lock now
        refused = await b.get("/set/c/3")
        options.release.set()
        held = await holder
        return [held.status, refused.status, (await b.get("/read")).body]
    finally:
        await h.close()


SCENARIOS: dict[str, Callable[[Harness, Store], Awaitable[list[Any]]]] = {
    "emptying": emptying,
    "regenerate": plain_regenerate,
    "overlapping merges": overlapping_merges,
    "first visit, untouched": first_visit_untouched,
    "first visit, read": first_visit_read,
    "write, read, untouched": write_then_read,
    "nested mutation": nested_mutation,
    "clear": clear_ends,
    "regenerate with owner": login_regenerates,
    "revoke current": revoke_current,
    "revoke_all with current": revoke_all_with_current,
    "revoke_all but current": revoke_all_but_current,
    "write after revoke": write_after_revoke,
    "idle expiry": idle_expiry,
    "hostile cookies": hostile_cookies,
    "flash": flash_messages,
}

#: Scenarios that configure their apps themselves (one app, or two on one store).
CONFIGURED: dict[str, Callable[[Callable[[Options], Harness], Store], Awaitable[list[Any]]]] = {
    "strict mode": strict_mode,
    "absolute expiry": absolute_expiry,
    "key rotation": key_rotation,
    "migration import": migration_import,
    "size limit": size_limit,
    "lock timeout": lock_timeout,
}

#: What every adapter must show, scenario by scenario.
EXPECTED: dict[str, list[Any]] = {
    "regenerate": [Seen(200, {"a": "1"}, "set", True), True, {}, {"a": "1"}],
    "emptying": [Seen(200, {}, "expired", True), 0],
    "size limit": [500, {"a": "1"}],
    "lock timeout": [200, 503, {"a": "1", "held": True}],
    "overlapping merges": [200, 200, ["x", "y"], True],
    "strict mode": [2, True],
    "absolute expiry": [Seen(200, {}, "expired", True), 0],
    "key rotation": [Seen(200, {"a": "1"}, "set", True), True, Seen(200, {"a": "1"}, "-", True)],
    "migration import": [
        Seen(200, {"user_id": 7, "cart": ["tea"]}, "set", True),
        {"user_id": 7, "cart": ["tea"]},
        1,
    ],
    "first visit, untouched": [Seen(200, {}, "-", False), 0],
    "first visit, read": [200, {}, "-", 0],
    "write, read, untouched": [
        Seen(200, {"a": "1"}, "set", True),
        Seen(200, {"a": "1"}, "-", True),
        Seen(200, {}, "-", False),
    ],
    "nested mutation": [Seen(200, {"items": ["x", "y"]}, "-", True)],
    # The old cookie is genuine but names no session now: the response expires it.
    "clear": [Seen(200, {}, "expired", True), {}, "expired", 0],
    "regenerate with owner": [Seen(200, {"a": "1"}, "set", True), True, {}, ["ada"], {"a": "1"}],
    "revoke current": [Seen(200, {}, "expired", True), {}, 0],
    "revoke_all with current": [Seen(200, {"ended": 2, "left": {}}, "expired", True), {}, 0],
    "revoke_all but current": [
        Seen(200, {"ended": 1, "left": {"a": "1"}}, "-", True),
        {},
        {"a": "1"},
    ],
    "write after revoke": [Seen(200, {"after": "yes"}, "set", True), {"after": "yes"}, [None]],
    "idle expiry": [Seen(200, {}, "expired", True), 0],
    "hostile cookies": [(200, {})] * 6,
    "flash": [{"flashes": ["saved"]}, {"flashes": []}],
}


def _run(adapter: str, store: Store, scenario: str) -> list[Any]:
    async def go() -> list[Any]:
        if scenario in CONFIGURED:
            return await CONFIGURED[scenario](lambda o: harness(adapter, store, o), store)
        h = harness(adapter, store)
        try:
            return await SCENARIOS[scenario](h, store)
        finally:
            await h.close()

    return asyncio.run(go())


@pytest.mark.parametrize("scenario", [*SCENARIOS, *CONFIGURED])
@pytest.mark.parametrize("adapter", ADAPTERS)
def test_every_adapter_behaves_alike(store: Store, adapter: str, scenario: str) -> None:
    """One cell of the matrix: this adapter, on this store, shows the expected outcome."""
    seen = _run(adapter, store, scenario)
    if (adapter, scenario) in FRAMEWORK_DIFFERENCES:
        assert seen != EXPECTED[scenario]  # the listed difference is real
        return
    assert seen == EXPECTED[scenario]


#: Scenarios whose records encryption cannot change, left out of the encrypted half:
#: nothing is stored (an untouched first visit, hostile cookies), or only the record's
#: times decide (idle and absolute expiry; the latter is the matrix's one half-second
#: wait per cell).
NOT_SEALED = {"first visit, untouched", "hostile cookies", "idle expiry", "absolute expiry"}
#: The encrypted half's adapters: FastAPI's cells are Starlette's middleware and store
#: wrapper again (its views take the session by Depends), so they add no sealing path.
SEALED_ADAPTERS = ["flask", "starlette", "quart"]


@pytest.mark.parametrize("scenario", [s for s in [*SCENARIOS, *CONFIGURED] if s not in NOT_SEALED])
@pytest.mark.parametrize("adapter", SEALED_ADAPTERS)
def test_every_adapter_behaves_alike_with_encryption_on(
    store: Store, adapter: str, scenario: str
) -> None:
    """The same cell with the records sealed (SATCHEL_ENCRYPTION_KEYS, encryption_keys=):
    every scenario shows exactly what it shows in clear."""
    ENCRYPTION_KEYS[:] = [PARITY_KEY]
    try:
        seen = _run(adapter, store, scenario)
    finally:
        ENCRYPTION_KEYS.clear()
    if (adapter, scenario) in FRAMEWORK_DIFFERENCES:
        assert seen != EXPECTED[scenario]
        return
    assert seen == EXPECTED[scenario]
    assert _sealed_only(store), "a record was stored in clear"


#: The key the encrypted half of the matrix seals with.
PARITY_KEY = "q3Jq0mXcJ6bVnV1yWm0oX2fS0C5Pp8r3Ar0Jm5yqW9E"


def _sealed_only(store: Store) -> bool:
    """Whether every session record left in ``store`` is sealed (claims are not sessions)."""
    from satchel.stores._sealed import SEAL_FIELD

    records = getattr(store, "records", None)
    if records is None:
        return True
    return all(SEAL_FIELD in record.fields for _, record in records())


class _DownStore(MemoryStore):
    """A store that has stopped answering."""

    def load(self, key: str) -> Any:
        raise StoreUnavailable("down store", "connection refused")


COOKIE_OF_DOWN_STORE = ""


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_a_store_that_is_down_is_a_503_on_every_adapter(adapter: str) -> None:
    """The store fails to load a genuine cookie's session: 503 on every adapter."""
    from satchel.signing import CookieSigner, new_id

    global COOKIE_OF_DOWN_STORE
    COOKIE_OF_DOWN_STORE = CookieSigner(SECRET).sign(new_id())
    assert _run(adapter, _DownStore(), "store down") == [503]


def test_the_matrix_covers_every_scenario_with_an_expectation() -> None:
    """No scenario runs without an expected outcome, and no difference names an unknown cell."""
    assert (set(SCENARIOS) | set(CONFIGURED)) - {"store down"} <= set(EXPECTED)
    for adapter, scenario in FRAMEWORK_DIFFERENCES:
        assert adapter in ADAPTERS and (scenario in SCENARIOS or scenario in CONFIGURED)


SCENARIOS["store down"] = store_down
