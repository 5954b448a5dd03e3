"""The ASGI apps the server tests run under uvicorn and hypercorn, configured by environment.

``ASGIAPP_STORE`` is the store URL (``memory://`` by default), ``ASGIAPP_LOCKING=1``
turns strict mode on. :func:`create_fastapi`, :func:`create_starlette` and
:func:`create_quart` serve the same routes as ``tests/apps/loadapp.py``'s Flask
app, with the same secret and cookie, so the two share sessions.
"""

# No "from __future__ import annotations": FastAPI reads the views' annotations,
# which name what create_fastapi() imports, at definition time.
import asyncio
import os
from typing import Annotated, Any

from .loadapp import SECRET


def _settings() -> dict[str, Any]:
    return {
        "secret_key": SECRET,
        "store": os.environ.get("ASGIAPP_STORE", "memory://"),
        "locking": os.environ.get("ASGIAPP_LOCKING") == "1",
        "lock_timeout": 20,
        "max_age": None,  # a browser-session cookie, as the Flask app's
        "max_sessions_per_owner": int(os.environ.get("ASGIAPP_MAX_SESSIONS", 0)) or None,
        "renewal_interval": float(os.environ.get("ASGIAPP_RENEWAL", 0)) or None,
    }


def create_fastapi() -> Any:
    from fastapi import Depends, FastAPI, Request

    from satchel.asgi import SessionMiddleware, get_session, revoke_all
    from satchel.asgi import stats as satchel_stats
    from satchel.session import AsyncSession

    app = FastAPI()
    app.add_middleware(SessionMiddleware, **_settings())

    @app.get("/start/{marker}")
    async def start(marker: str, session: Annotated[AsyncSession, Depends(get_session)]) -> str:
        session["owner"] = marker
        session["count"] = 0
        return "ok"

    @app.get("/write/{key}")
    async def write(key: str, request: Request) -> str:
        request.session[key] = True
        return "ok"

    @app.get("/incr")
    async def incr(request: Request) -> str:
        request.session["count"] = request.session.get("count", 0) + 1
        return "ok"

    @app.get("/read")
    async def read(request: Request) -> dict[str, Any]:
        return dict(request.session)

    @app.get("/read-slowly")
    async def read_slowly(request: Request) -> dict[str, Any]:
        data = dict(request.session)
        await asyncio.sleep(0.5)
        return data

    @app.get("/cart/{item}")
    async def add_to_cart(item: str, request: Request) -> str:
        request.session.setdefault("cart", []).append(item)
        return "ok"

    @app.get("/pref/{name}/{value}")
    async def set_preference(name: str, value: str, request: Request) -> str:
        request.session.setdefault("prefs", {}).setdefault("ui", {})[name] = value
        return "ok"

    @app.get("/login/{user}")
    async def login(user: str, session: Annotated[AsyncSession, Depends(get_session)]) -> str:
        await session.regenerate(owner=user)
        return "ok"

    @app.get("/stats")
    async def stats(request: Request) -> dict[str, int]:
        return {**satchel_stats(request), "pid": os.getpid()}  # which worker answered

    @app.get("/logout-everywhere")
    async def logout_everywhere(request: Request) -> dict[str, int]:
        owner = get_session(request).owner
        assert owner is not None
        return {"ended": await revoke_all(request, owner, keep_current=False)}

    @app.get("/clear")
    async def clear(request: Request) -> str:
        request.session.clear()
        return "ok"

    @app.get("/ping")
    async def ping() -> str:
        return "pong"

    return app


def create_starlette() -> Any:
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.requests import Request
    from starlette.responses import JSONResponse, PlainTextResponse
    from starlette.routing import Route

    from satchel.asgi import SessionMiddleware

    async def read(request: Request) -> JSONResponse:
        return JSONResponse(dict(request.session))

    async def write(request: Request) -> PlainTextResponse:
        request.session[request.path_params["key"]] = True
        return PlainTextResponse("ok")

    async def add_to_cart(request: Request) -> PlainTextResponse:
        request.session.setdefault("cart", []).append(request.path_params["item"])
        return PlainTextResponse("ok")

    return Starlette(
        routes=[
            Route("/read", read),
            Route("/write/{key}", write),
            Route("/cart/{item}", add_to_cart),
        ],
        middleware=[Middleware(SessionMiddleware, **_settings())],
    )


def create_quart() -> Any:
    from quart import Quart, session

    from satchel.quart import Satchel

    app = Quart("asgiapp")
    settings = _settings()
    app.config.update(
        SECRET_KEY=SECRET,
        SATCHEL_STORE=settings["store"],
        SATCHEL_LOCKING=settings["locking"],
        SATCHEL_LOCK_TIMEOUT=20,
    )
    Satchel(app)

    @app.get("/read")
    async def read() -> dict[str, Any]:
        return dict(session)

    @app.get("/write/<key>")
    async def write(key: str) -> str:
        session[key] = True
        return "ok"

    @app.get("/cart/<item>")
    async def add_to_cart(item: str) -> str:
        session.setdefault("cart", []).append(item)
        return "ok"

    @app.get("/incr")
    async def incr() -> str:
        session["count"] = session.get("count", 0) + 1
        return "ok"

    return app
