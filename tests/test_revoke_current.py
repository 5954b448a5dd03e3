"""Revoking the requester's own session, on every adapter: the request goes on without it.

After ``revoke_all(owner, keep_current=False)`` or a revoke of the visitor's own
reference, the view sees an empty session at once, the response expires the cookie,
and anything the view stores afterwards goes into a new session: the same on Flask,
Starlette/FastAPI and Quart (issue 22's first difference between adapters).
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import httpx
import pytest
from flask import Flask, session
from flask import session as flask_session
from quart import Quart
from quart import session as quart_session
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from satchel import Satchel, current_session
from satchel.admin import current_reference
from satchel.asgi import SessionMiddleware, get_session
from satchel.asgi import revoke as asgi_revoke
from satchel.asgi import revoke_all as asgi_revoke_all
from satchel.quart import Satchel as QuartSatchel
from satchel.quart import current_session as quart_current
from satchel.stores import MemoryStore, Store
from satchel.stores.aio import to_async

from .conftest import SECRET, stored_keys
from .support.flask_apps import (
    client_with,
    logged_in,
    owner_app,
    run_together,
)

ORIGIN = "http://testserver"


def cookie_header(response: Any) -> str:
    values = (
        response.headers.get_list("set-cookie")
        if hasattr(response.headers, "get_list")
        else (response.headers.getlist("Set-Cookie"))
    )
    return "; ".join(v for v in values if v.lower().startswith("session="))


def flask_run(store: Store, how: str, then_write: bool) -> tuple[dict[str, Any], str, str]:
    app = Flask("revoke-current")
    app.config.update(SECRET_KEY=SECRET)
    Satchel(app, store=store)

    @app.get("/login")
    def login() -> str:
        current_session().regenerate(owner="ada")
        flask_session["user"] = "ada"
        return "ok"

    @app.get("/end")
    def end() -> dict[str, Any]:
        if how == "revoke_all":
            Satchel.revoke_all("ada", keep_current=False)
        else:
            reference = current_reference(current_session())
            assert reference is not None
            Satchel.revoke(reference)
        seen = dict(flask_session)
        if then_write:
            flask_session["after"] = "kept"
        return {"seen": seen}

    client = app.test_client()
    client.get("/login")
    before = client.get_cookie("session")
    assert before is not None
    response = client.get("/end")
    return response.get_json(), cookie_header(response), before.value


def asgi_run(store: Store, how: str, then_write: bool) -> tuple[dict[str, Any], str, str]:
    async def login(request: Request) -> JSONResponse:
        get_session(request).regenerate(owner="ada")
        request.session["user"] = "ada"
        return JSONResponse({})

    async def end(request: Request) -> JSONResponse:
        if how == "revoke_all":
            await asgi_revoke_all(request, "ada", keep_current=False)
        else:
            reference = current_reference(get_session(request))
            assert reference is not None
            await asgi_revoke(request, reference)
        seen = dict(request.session)
        if then_write:
            request.session["after"] = "kept"
        return JSONResponse({"seen": seen})

    app = SessionMiddleware(
        Starlette(routes=[Route("/login", login), Route("/end", end)]),
        secret_key=SECRET, store=to_async(store),
    )  # fmt: skip

    async def go() -> tuple[dict[str, Any], str, str]:
        transport = httpx.ASGITransport(app)
        try:
            async with httpx.AsyncClient(transport=transport, base_url=ORIGIN) as client:
                await client.get("/login")
                before = client.cookies["session"]
                response = await client.get("/end")
                return response.json(), cookie_header(response), before
        finally:
            if not isinstance(store, MemoryStore):  # closing a memory store empties it
                await app.store.close()

    return asyncio.run(go())


def quart_run(store: Store, how: str, then_write: bool) -> tuple[dict[str, Any], str, str]:
    app = Quart("revoke-current")
    app.config["SECRET_KEY"] = SECRET
    QuartSatchel(app, store=store)

    @app.get("/login")
    async def login() -> str:
        quart_current().regenerate(owner="ada")
        quart_session["user"] = "ada"
        return "ok"

    @app.get("/end")
    async def end() -> dict[str, Any]:
        if how == "revoke_all":
            await QuartSatchel.revoke_all("ada", keep_current=False)
        else:
            reference = current_reference(quart_current())
            assert reference is not None
            await QuartSatchel.revoke(reference)
        seen = dict(quart_session)
        if then_write:
            quart_session["after"] = "kept"
        return {"seen": seen}

    async def go() -> tuple[dict[str, Any], str, str]:
        try:
            return await visit()
        finally:
            if not isinstance(store, MemoryStore):  # closing a memory store empties it
                await app.extensions["satchel"].store.close()

    async def visit() -> tuple[dict[str, Any], str, str]:
        client = app.test_client()
        await client.get("/login")
        before = next(c.value for c in client.cookie_jar if c.name == "session")  # type: ignore[union-attr]
        response = await client.get("/end")
        return await response.get_json(), cookie_header(response), before

    return asyncio.run(go())


RUNS = {"flask": flask_run, "asgi": asgi_run, "quart": quart_run}


@pytest.mark.parametrize("then_write", [False, True], ids=["nothing-after", "write-after"])
@pytest.mark.parametrize("how", ["revoke_all", "revoke"])
@pytest.mark.parametrize("adapter", sorted(RUNS))
def test_revoking_my_own_session_ends_it_in_this_request_too(
    store: Store, adapter: str, how: str, then_write: bool
) -> None:
    """The view sees nothing of the ended session; the cookie is expired, or replaced by a
    new session's when the view stores something afterwards; the old record is gone."""
    body, cookie, before = RUNS[adapter](store, how, then_write)
    assert body == {"seen": {}}
    if then_write:
        assert cookie and "Max-Age=0" not in cookie and before not in cookie
        (key,) = stored_keys(store)
        record = store.load(key)
        assert record is not None and set(record.fields) == {"after"}
    else:
        assert "Max-Age=0" in cookie or "expires=Thu, 01 Jan 1970" in cookie.lower()
        assert stored_keys(store) == []


# -- regenerate() racing an end ---------------------------------------------------------


def test_regenerate_in_flight_does_not_revive_a_cleared_session(store: Store) -> None:
    """a session cleared while a login regenerates it stays ended."""
    app = owner_app(store, "eve")
    loaded, cleared = threading.Event(), threading.Event()

    @app.get("/slow-login")
    def slow_login() -> str:
        dict(session)
        loaded.set()
        assert cleared.wait(10)
        current_session().regenerate(owner="eve")
        return "ok"

    @app.get("/logout")
    def logout() -> str:
        session.clear()
        return "ok"

    _client, cookie = logged_in(app)

    def log_out() -> Any:
        assert loaded.wait(10)
        response = client_with(app, cookie).get("/logout")
        cleared.set()
        return response

    slow, _ = run_together(lambda: client_with(app, cookie).get("/slow-login"), log_out)
    assert slow.status_code == 200
    assert "Max-Age=0" in slow.headers["Set-Cookie"]  # ended: no new session
    assert stored_keys(store) == []
    with app.app_context():
        assert Satchel.list_sessions("eve") == []
