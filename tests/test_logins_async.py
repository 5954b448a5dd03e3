"""Logins on the async adapters: ``await session.regenerate(owner=...)`` under the owner
limit, and the fresh-login helpers of Starlette, FastAPI and Quart."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Annotated, Any

import httpx
import pytest
from fastapi import Depends, FastAPI, Request
from quart import Quart, session
from starlette.applications import Starlette
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

import satchel.session
from satchel.asgi import SessionMiddleware, fresh_login, get_session, require_fresh_login
from satchel.errors import TooManySessions
from satchel.quart import Satchel, current_session, fresh_login_required
from satchel.session import AsyncSession
from satchel.stores import Store

from .conftest import SECRET

LIMIT = 2


def fastapi_app(store: Store, policy: str) -> SessionMiddleware:
    app = FastAPI()

    @app.post("/login/{user}")
    async def login(user: str, session: Annotated[AsyncSession, Depends(get_session)]) -> Any:
        try:
            await session.regenerate(owner=user)
        except TooManySessions:
            return PlainTextResponse("refused", 409)
        session["user"] = user
        return "ok"

    @app.post("/reauth")
    async def reauth(session: Annotated[AsyncSession, Depends(get_session)]) -> str:
        session.reauthenticated()
        return "ok"

    @app.get("/who")
    async def who(session: Annotated[AsyncSession, Depends(get_session)]) -> dict[str, Any]:
        return {"owner": session.owner, "at": session.authenticated_at, "cart": session.get("c")}

    @app.get("/cart")
    async def cart(request: Request) -> str:
        request.session["c"] = 1
        return "ok"

    @app.get("/sensitive", dependencies=[Depends(require_fresh_login(60))])
    async def sensitive() -> str:
        return "done"

    @app.get(
        "/sensitive-redirect", dependencies=[Depends(require_fresh_login(60, redirect_to="/re"))]
    )
    async def sensitive_redirect() -> str:
        return "done"

    return SessionMiddleware(
        app,
        secret_key=SECRET,
        store=store,
        max_sessions_per_owner=LIMIT,
        max_sessions_policy=policy,
    )


@contextlib.asynccontextmanager
async def clients(app: SessionMiddleware, n: int) -> AsyncIterator[list[httpx.AsyncClient]]:
    """``n`` browsers (each its own cookie jar) on ``app``; its store closed after."""
    transport = httpx.ASGITransport(app=app)
    try:
        yield [
            httpx.AsyncClient(transport=transport, base_url="http://testserver") for _ in range(n)
        ]
    finally:
        await app.store.close()


@pytest.mark.parametrize("policy", ["refuse", "evict-oldest"])
def test_fastapi_owner_limit(store: Store, policy: str) -> None:
    app = fastapi_app(store, policy)

    async def scenario() -> None:
        async with clients(app, LIMIT + 1) as devices:
            for device in devices[:LIMIT]:
                assert (await device.post("/login/ann")).text == '"ok"'
            late = devices[LIMIT]
            await late.get("/cart")
            answer = await late.post("/login/ann")
            owners = [(await d.get("/who")).json()["owner"] for d in devices]
            if policy == "refuse":
                assert answer.status_code == 409 and answer.text == "refused"
                assert owners == ["ann", "ann", None]
                assert (await late.get("/who")).json()["cart"] == 1  # kept as it was
            else:
                assert answer.status_code == 200
                assert owners == [None, "ann", "ann"]
            assert len(list(store.records("ann"))) == LIMIT  # type: ignore[attr-defined]

    asyncio.run(scenario())


def test_fastapi_fresh_login_dependency(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    later = [0.0]  # seconds added to the clock the session's login times are read by
    monkeypatch.setattr(
        satchel.session, "time", SimpleNamespace(time=lambda: time.time() + later[0])
    )

    async def scenario() -> None:
        async with clients(fastapi_app(store, "refuse"), 1) as (client,):
            assert (await client.get("/sensitive")).status_code == 401
            assert (await client.get("/sensitive-redirect")).headers["location"] == "/re"
            await client.post("/login/bea")
            at = (await client.get("/who")).json()["at"]
            assert at is not None and at <= time.time()
            assert (await client.get("/sensitive")).json() == "done"
            later[0] = 61.0  # a minute later: the login is older than asked
            assert (await client.get("/sensitive")).status_code == 401
            await client.post("/reauth")
            assert (await client.get("/who")).json()["at"] > at
            assert (await client.get("/sensitive")).json() == "done"

    asyncio.run(scenario())


def test_starlette_fresh_login(store: Store) -> None:
    async def login(request: Request) -> Response:
        await get_session(request).regenerate(owner="cid")
        return PlainTextResponse("ok")

    async def sensitive(request: Request) -> Response:
        answer = fresh_login(request, 60, redirect_to=lambda r: f"/re?next={r.url.path}")
        return answer if answer is not None else JSONResponse("done")

    app = SessionMiddleware(
        Starlette(
            routes=[Route("/login", login, methods=["POST"]), Route("/sensitive", sensitive)]
        ),
        secret_key=SECRET,
        store=store,
    )

    async def scenario() -> None:
        async with clients(app, 1) as (client,):
            stale = await client.get("/sensitive")
            assert stale.status_code == 303 and stale.headers["location"] == "/re?next=/sensitive"
            await client.post("/login")
            assert (await client.get("/sensitive")).json() == "done"

    asyncio.run(scenario())


def test_quart_owner_limit_and_fresh_login(store: Store) -> None:
    app = Quart("logins")
    app.config.update(
        SECRET_KEY=SECRET,
        SATCHEL_MAX_SESSIONS_PER_OWNER=LIMIT,
        SATCHEL_MAX_SESSIONS_POLICY="refuse",
    )
    Satchel(app, store=store)

    @app.post("/login/<user>")
    async def login(user: str) -> Any:
        try:
            await current_session().regenerate(owner=user)
        except TooManySessions:
            return "refused", 409
        return "ok"

    @app.get("/sensitive")
    @fresh_login_required(60, redirect_to="/re")
    async def sensitive() -> str:
        return "done"

    @app.get("/who")
    async def who() -> dict[str, Any]:
        return {"owner": session.owner, "at": session.authenticated_at}  # type: ignore[attr-defined]

    async def scenario() -> None:
        clients = [app.test_client() for _ in range(LIMIT + 1)]
        first = clients[0]
        stale = await first.get("/sensitive")
        assert stale.status_code == 303 and stale.headers["Location"] == "/re"
        statuses = [(await c.post("/login/dot")).status_code for c in clients]
        assert statuses == [200] * LIMIT + [409]
        assert await (await first.get("/sensitive")).get_data(as_text=True) == "done"
        who = await (await clients[LIMIT].get("/who")).get_json()
        assert who == {"owner": None, "at": None}
        assert len(list(store.records("dot"))) == LIMIT  # type: ignore[attr-defined]
        await app.extensions["satchel"].store.close()

    asyncio.run(scenario())
