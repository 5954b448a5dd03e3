"""The ASGI adapter in process: Starlette and FastAPI apps driven by httpx, on every store."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

import httpx
import pytest
from fastapi import Depends, FastAPI
from flask import Flask, session
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from satchel import Satchel
from satchel.asgi import (
    SessionMiddleware,
    get_session,
    list_sessions,
    revoke,
    revoke_all,
    stats,
)
from satchel.errors import ConfigError, SessionTooLarge
from satchel.session import AsyncSession
from satchel.stores import MemoryStore, Store
from satchel.stores.aio import InlineStore

from .conftest import SECRET, session_id_of, stored_keys
from .valkey import ValkeyServer

ORIGIN = "http://testserver"


async def _json(request: Request) -> JSONResponse:
    return JSONResponse(dict(request.session))


async def _incr(request: Request) -> PlainTextResponse:
    request.session["n"] = request.session.get("n", 0) + 1
    return PlainTextResponse(str(request.session["n"]))


async def _set(request: Request) -> PlainTextResponse:
    request.session[request.path_params["key"]] = request.path_params["value"]
    return PlainTextResponse("ok")


async def _incr_slow(request: Request) -> PlainTextResponse:
    n = request.session.get("n", 0)
    await asyncio.sleep(0.01)  # other requests run meanwhile: they overlap for real
    request.session["n"] = n + 1
    return PlainTextResponse(str(n + 1))


async def _cart_slow(request: Request) -> PlainTextResponse:
    cart = request.session.setdefault("cart", [])
    await asyncio.sleep(0.01)
    cart.append(request.path_params["item"])
    return PlainTextResponse("ok")


async def _cart(request: Request) -> PlainTextResponse:
    request.session.setdefault("cart", []).append(request.path_params["item"])
    return PlainTextResponse("ok")


async def _nested(request: Request) -> PlainTextResponse:
    request.session.setdefault("prefs", {})[request.path_params["name"]] = "on"
    return PlainTextResponse("ok")


async def _login(request: Request) -> PlainTextResponse:
    get_session(request).regenerate(owner=request.path_params["user"])
    return PlainTextResponse("ok")


async def _whoami(request: Request) -> JSONResponse:
    return JSONResponse({"owner": get_session(request).owner})


async def _clear(request: Request) -> PlainTextResponse:
    request.session.clear()
    return PlainTextResponse("ok")


async def _sessions(request: Request) -> JSONResponse:
    infos = await list_sessions(request, get_session(request).owner)
    return JSONResponse([[info.reference, info.current] for info in infos])


async def _revoke_others(request: Request) -> JSONResponse:
    owner = get_session(request).owner
    assert owner is not None
    return JSONResponse({"ended": await revoke_all(request, owner)})


async def _revoke(request: Request) -> JSONResponse:
    return JSONResponse({"ended": await revoke(request, request.path_params["ref"])})


async def _big(request: Request) -> PlainTextResponse:
    request.session["big"] = "x" * 5000
    return PlainTextResponse("ok")


async def _stats(request: Request) -> JSONResponse:
    return JSONResponse(stats(request))


async def _socket(websocket: WebSocket) -> None:
    await websocket.accept()
    websocket.session["seen"] = websocket.session.get("seen", 0) + 1
    await websocket.send_json(dict(websocket.session))
    await websocket.close()


ROUTES = [
    Route("/", _json),
    Route("/incr", _incr),
    Route("/incr-slow", _incr_slow),
    Route("/cart-slow/{item}", _cart_slow),
    Route("/set/{key}/{value}", _set),
    Route("/cart/{item}", _cart),
    Route("/prefs/{name}", _nested),
    Route("/login/{user}", _login),
    Route("/whoami", _whoami),
    Route("/clear", _clear),
    Route("/sessions", _sessions),
    Route("/revoke-others", _revoke_others),
    Route("/revoke/{ref}", _revoke),
    Route("/big", _big),
    Route("/stats", _stats),
    WebSocketRoute("/socket", _socket),
]


@contextlib.asynccontextmanager
async def browser(
    store: Any, *, keep_store: bool = False, **options: Any
) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    """An httpx client (with its cookie jar) on a Starlette app wrapped in the middleware.

    The middleware's store is closed at the end unless ``keep_store``.
    """
    options.setdefault("secret_key", SECRET)
    app = SessionMiddleware(Starlette(routes=ROUTES), store=store, **options)
    transport = httpx.ASGITransport(app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url=ORIGIN) as client:
            yield client, app
    finally:
        if not keep_store:
            await app.store.close()


def run(check: Callable[[], Any]) -> Any:
    return asyncio.run(check())


def as_cookie(value: str) -> list[tuple[bytes, bytes]]:
    """Headers that send ``value`` as the session cookie, whatever the client's jar holds."""
    return [(b"cookie", b"session=" + value.encode("utf-8"))]


def cookie_of(response: httpx.Response) -> str | None:
    """The session cookie's value a response set (``""`` when it expired it)."""
    for header in response.headers.get_list("set-cookie"):
        name, _, rest = header.partition("=")
        if name == "session":
            return rest.split(";", 1)[0]
    return None


def test_a_request_without_a_cookie_touches_no_store_and_sets_none(store: Store) -> None:
    async def check() -> None:
        async with browser(store) as (client, app):
            response = await client.get("/")
            assert response.json() == {} and cookie_of(response) is None
            assert "vary" in response.headers  # it read the session
            assert app.manager.counters.snapshot()["loads"] == 0
            assert stored_keys(store) == []

    run(check)


def test_writes_persist_with_starlettes_cookie(store: Store) -> None:
    async def check() -> None:
        async with browser(store, max_age=3600, https_only=True, domain="testserver") as (
            client,
            _,
        ):
            first = await client.get("/incr")
            header = first.headers["set-cookie"]
            # Starlette's own format, attribute for attribute and in its order.
            assert header.split("=", 1)[1].split("; ", 1)[1] == (
                "path=/; Max-Age=3600; httponly; samesite=lax; secure; domain=testserver"
            )
            cookie = cookie_of(first)
            assert cookie is not None
            for n in (2, 3):
                response = await client.get("/incr", headers=as_cookie(cookie))
                assert response.text == str(n)
            assert (await client.get("/", headers=as_cookie(cookie))).json() == {"n": 3}
            # Only a hash of the ID is stored, never the ID itself.
            (key,) = stored_keys(store)
            assert session_id_of(cookie) not in key

    run(check)


def test_nested_changes_and_overlapping_requests_all_survive(store: Store) -> None:
    async def check() -> None:
        async with browser(store) as (client, _):
            await client.get("/set/start/1")
            items = [f"i{n}" for n in range(12)]
            await asyncio.gather(*(client.get(f"/cart-slow/{item}") for item in items))
            await asyncio.gather(*(client.get(f"/prefs/p{n}") for n in range(6)))
            data = (await client.get("/")).json()
            merges = (await client.get("/stats")).json()["merges"]
        assert sorted(data["cart"]) == sorted(items)
        assert merges > 0  # the appends overlapped for real, and merged
        assert data["prefs"] == {f"p{n}": "on" for n in range(6)}

    run(check)


def test_strict_mode_serialises_read_modify_write(store: Store) -> None:
    async def check() -> None:
        async with browser(store, locking=True) as (client, _):
            await client.get("/incr-slow")
            await asyncio.gather(*(client.get("/incr-slow") for _ in range(15)))
            assert (await client.get("/")).json() == {"n": 16}
            # They contended for the lock: without it these overlapping increments lose.
            assert (await client.get("/stats")).json()["lock_waits"] > 0

    run(check)


def test_regenerate_owner_listing_and_revoking(store: Store) -> None:
    async def check() -> None:
        async with browser(store) as (client, _):
            await client.get("/set/a/1")
            before = client.cookies["session"]
            response = await client.get("/login/ada")
            after = cookie_of(response)
            assert after is not None and after != before
            assert (await client.get("/whoami")).json() == {"owner": "ada"}
            assert (await client.get("/")).json() == {"a": "1"}
            # The cookie from before the login names nothing now (asked by another
            # client, whose jar the expired cookie may empty).
            transport = client._transport
            async with httpx.AsyncClient(transport=transport, base_url=ORIGIN) as attacker:
                old = await attacker.get("/", headers=as_cookie(before))
                assert old.json() == {} and cookie_of(old) == ""
            # A second device of the same user, then "log out my other devices".
            async with httpx.AsyncClient(transport=transport, base_url=ORIGIN) as phone:
                await phone.get("/set/device/phone")
                await phone.get("/login/ada")
                listed = (await client.get("/sessions")).json()
                assert len(listed) == 2 and sum(current for _, current in listed) == 1
                assert (await client.get("/revoke-others")).json() == {"ended": 1}
                assert (await phone.get("/whoami")).json() == {"owner": None}
                listed = (await client.get("/sessions")).json()
                assert (await client.get(f"/revoke/{listed[0][0]}")).json() == {"ended": True}
                assert (await client.get("/")).json() == {}

    run(check)


def test_clear_ends_the_session_for_good(store: Store) -> None:
    async def check() -> None:
        async with browser(store) as (client, _):
            await client.get("/set/a/1")
            cookie = client.cookies["session"]
            response = await client.get("/clear")
            assert cookie_of(response) == "" and "Max-Age=0" in response.headers["set-cookie"]
            replay = await client.get("/", headers=as_cookie(cookie))
            assert replay.json() == {}
            assert stored_keys(store) == []

    run(check)


@pytest.mark.parametrize(
    "cookie",
    [
        "not-a-cookie",
        "x" * 10_000,
        "a.b.c",
        "\u00e9t\u00e9",
        "",
        "AAAA.BBBB",
    ],
)
def test_hostile_cookies_get_a_fresh_session_never_a_500(store: Store, cookie: str) -> None:
    async def check() -> None:
        async with browser(store) as (client, _):
            genuine = cookie_of(await client.get("/set/a/1"))
            assert genuine is not None
            forged = genuine[:-2] + ("AA" if not genuine.endswith("AA") else "BB")
            client.cookies.clear()
            for value in (cookie, forged, genuine[:20]):
                headers = [(b"cookie", b"session=" + value.encode("utf-8"))]
                response = await client.get("/incr", headers=headers)
                assert response.status_code == 200 and response.text == "1"

    run(check)


def test_an_oversized_session_is_refused_and_nothing_saved(store: Store) -> None:
    async def check() -> None:
        async with browser(store, max_size=1000) as (client, _):
            await client.get("/set/a/1")
            with pytest.raises(SessionTooLarge):
                await client.get("/big")  # a bug in the app: a 500 from the server
            assert (await client.get("/")).json() == {"a": "1"}

    run(check)


async def socket_visit(app: Any, cookie: str | None) -> list[dict[str, Any]]:
    """Open /socket as a browser would (with ``cookie``); every message the app sent."""
    incoming = [{"type": "websocket.connect"}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if incoming:
            return incoming.pop(0)
        await asyncio.sleep(3600)  # the app closes first
        raise AssertionError("the socket stayed open")

    async def send(message: Any) -> None:
        sent.append(dict(message))

    headers = [] if cookie is None else as_cookie(cookie)
    scope = {
        "type": "websocket", "asgi": {"version": "3.0"}, "scheme": "ws", "path": "/socket",
        "raw_path": b"/socket", "query_string": b"", "headers": headers, "root_path": "",
        "client": ("127.0.0.1", 5000), "server": ("testserver", 80), "subprotocols": [],
    }  # fmt: skip
    await app(scope, receive, send)
    return sent


def test_websockets_read_and_save_the_session(store: Store) -> None:
    async def check() -> None:
        async with browser(store) as (client, app):
            await client.get("/set/a/1")
            cookie = client.cookies["session"]
            for seen in (1, 2):
                accept, text, close = await socket_visit(app, cookie)
                assert accept["type"] == "websocket.accept" and close["type"] == "websocket.close"
                assert text["text"] == f'{{"a":"1","seen":{seen}}}'
            assert (await client.get("/")).json() == {"a": "1", "seen": 2}
            # A socket without a session: its changes after the accept have no cookie to
            # go out with, so they are not stored (and it says so in the log).
            accept, text, _ = await socket_visit(app, None)
            assert text["text"] == '{"seen":1}' and not accept.get("headers")
            assert len(stored_keys(store)) == 1

    run(check)


def test_fastapi_dependency_and_add_middleware() -> None:
    api = FastAPI()
    api.add_middleware(SessionMiddleware, secret_key=SECRET, store=MemoryStore())

    @api.get("/login")
    async def login(session: Annotated[AsyncSession, Depends(get_session)]) -> dict[str, Any]:
        session["user"] = "ada"
        session.regenerate(owner="ada")
        return {"owner": session.owner}

    @api.get("/me")
    async def me(session: Annotated[AsyncSession, Depends(get_session)]) -> dict[str, Any]:
        return {"user": session.get("user"), "owner": session.owner}

    async def check() -> None:
        transport = httpx.ASGITransport(api)
        async with httpx.AsyncClient(transport=transport, base_url=ORIGIN) as client:
            assert (await client.get("/login")).json() == {"owner": "ada"}
            assert (await client.get("/me")).json() == {"user": "ada", "owner": "ada"}

    run(check)


def test_a_store_that_is_down_answers_503_at_once(own_valkey: ValkeyServer) -> None:
    async def check() -> None:
        async with browser(own_valkey.url) as (client, app):
            await client.get("/set/a/1")
            own_valkey.kill()
            read = await client.get("/")
            write = await client.get("/set/b/2")
            for response in (read, write):
                assert response.status_code == 503
                assert response.headers["retry-after"] == "1"
                assert "session store" in response.text
            assert app.manager.counters.snapshot()["store_errors"] >= 2
            fresh = await client.get(
                "/", headers=[(b"cookie", b"other=1")]
            )  # no cookie: no store, no 503
            assert fresh.status_code == 200

    run(check)


def test_a_frozen_store_gives_503_in_about_a_second_and_the_loop_runs_on(
    own_valkey: ValkeyServer,
) -> None:
    """While one request waits on a frozen server, others are answered at once."""

    async def check() -> None:
        async with browser(own_valkey.url) as (client, _):
            await client.get("/set/a/1")
            transport = client._transport
            own_valkey.freeze()
            try:
                waiting = asyncio.create_task(client.get("/"))
                await asyncio.sleep(0.05)
                async with httpx.AsyncClient(transport=transport, base_url=ORIGIN) as other:
                    assert (await other.get("/stats")).status_code == 200
                    # Answered while the first request still waits on the frozen server:
                    # the loop ran on (an event, not a bound on the machine's speed).
                    assert not waiting.done()
                response = await waiting
                assert response.status_code == 503  # the store's own timeout gave up
            finally:
                own_valkey.thaw()
            assert (await client.get("/")).json() == {"a": "1"}

    run(check)


def test_signed_with_a_fallback_key_is_accepted_and_signed_anew() -> None:
    memory = MemoryStore()

    async def check() -> None:
        old_key = "old-key-0123456789-abcdefghijklmnop"
        async with browser(memory, keep_store=True, secret_key=old_key) as (old, _):
            await old.get("/set/a/1")
            cookie = old.cookies["session"]
        async with browser(memory, secret_key=SECRET, secret_key_fallbacks=[old_key]) as (new, _):
            response = await new.get("/", headers=as_cookie(cookie))
            assert response.json() == {"a": "1"}
            renewed = cookie_of(response)
            assert renewed is not None and renewed != cookie

    run(check)


def test_bad_settings_are_refused_at_start() -> None:
    inner = Starlette()
    with pytest.raises(ConfigError, match=r"^secret_key is not set"):  # its own word
        SessionMiddleware(inner, secret_key="", store="memory://")
    with pytest.raises(ConfigError, match="same_site"):
        SessionMiddleware(inner, secret_key=SECRET, same_site="sideways", store="memory://")
    with pytest.raises(ConfigError, match="max_age"):
        SessionMiddleware(inner, secret_key=SECRET, max_age="a week", store="memory://")
    with pytest.raises(ConfigError, match="session_cookie"):
        SessionMiddleware(inner, secret_key=SECRET, session_cookie="a b", store="memory://")
    with pytest.raises(ConfigError, match="idle_timeout"):
        SessionMiddleware(inner, secret_key=SECRET, idle_timeout=-1, store="memory://")
    with pytest.raises(ConfigError, match="strict mode"):
        SessionMiddleware(inner, secret_key=SECRET, store=_NoLocks(), locking=True)
    with pytest.raises(ConfigError, match="store must be a store URL"):
        SessionMiddleware(inner, secret_key=SECRET, store=42)
    with pytest.raises(ConfigError, match="key_prefix is 'b:' but the store URL says prefix='a:'"):
        SessionMiddleware(inner, secret_key=SECRET, store="memory://?prefix=a:", key_prefix="b:")
    async_store = InlineStore(MemoryStore(prefix="a:"))
    with pytest.raises(ConfigError, match="key_prefix is 'b:' but the store object"):
        SessionMiddleware(inner, secret_key=SECRET, store=async_store, key_prefix="b:")
    kept = SessionMiddleware(inner, secret_key=SECRET, store=async_store, key_prefix="a:")
    assert kept.store is async_store  # an async store is used as it is


class _NoLocks(MemoryStore):
    """A store without strict mode's locks."""

    acquire = None  # type: ignore[assignment]
    release = None  # type: ignore[assignment]


def test_flask_and_starlette_share_one_session(store: Store) -> None:
    """What one app writes the other reads; merges hold across both; a clear ends both."""
    flask_app = Flask("shared")
    flask_app.config.update(SECRET_KEY=SECRET)
    Satchel(flask_app, store=store)

    @flask_app.get("/flask/cart/<item>")
    def flask_cart(item: str) -> str:
        session.setdefault("cart", []).append(item)
        return "ok"

    @flask_app.get("/flask/read")
    def flask_read() -> dict[str, Any]:
        return dict(session)

    flask = flask_app.test_client()

    def flask_get(path: str, cookie: str) -> Any:
        flask.set_cookie("session", cookie)
        return flask.get(path)

    async def check() -> None:
        async with browser(store, max_age=None) as (client, _):
            await client.get("/cart/from-asgi")
            cookie = client.cookies["session"]
            assert flask_get("/flask/read", cookie).json == {"cart": ["from-asgi"]}
            flask_get("/flask/cart/from-flask", cookie)
            assert (await client.get("/")).json() == {"cart": ["from-asgi", "from-flask"]}
            # Overlapping writes from both apps to one list: every item survives.
            loop = asyncio.get_running_loop()
            flask_items = [f"f{n}" for n in range(5)]
            asgi_items = [f"a{n}" for n in range(5)]
            await asyncio.gather(
                *(client.get(f"/cart/{item}") for item in asgi_items),
                *(
                    loop.run_in_executor(None, flask_get, f"/flask/cart/{item}", cookie)
                    for item in flask_items
                ),
            )
            cart = (await client.get("/")).json()["cart"]
            assert sorted(cart) == sorted(["from-asgi", "from-flask", *flask_items, *asgi_items])
            await client.get("/clear")
            assert flask_get("/flask/read", cookie).json == {}

    run(check)


def test_no_store_configured_means_sqlite_in_the_working_directory(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)

    async def check() -> None:
        async with browser(None) as (client, app):
            await client.get("/set/a/1")
            assert "SQLiteStore" in repr(app.store)
            assert (await client.get("/")).json() == {"a": "1"}

    run(check)
    assert (tmp_path / "satchel-sessions.sqlite3").exists()


def test_counters_and_security_log(caplog: pytest.LogCaptureFixture) -> None:
    async def check() -> None:
        async with browser(MemoryStore()) as (client, _):
            await client.get("/set/a/1")
            with caplog.at_level(logging.WARNING, logger="satchel.security"):
                await client.get("/", headers=as_cookie("forged.value"))
            figures = (await client.get("/stats")).json()
            assert figures["creates"] == 1 and figures["rejected_cookies"] == 1

    run(check)
    assert "failed verification" in caplog.text


def test_view_errors_from_the_store_answer_503() -> None:
    """A store error raised inside a view (an admin call, say) is a 503, not a 500."""
    from satchel.errors import StoreUnavailable

    async def broken(request: Request) -> Response:
        raise StoreUnavailable("test store", "down for the test")

    middleware = [Middleware(SessionMiddleware, secret_key=SECRET, store="memory://")]
    app = Starlette(routes=[Route("/", broken)], middleware=middleware)

    async def check() -> None:
        transport = httpx.ASGITransport(app)
        async with httpx.AsyncClient(transport=transport, base_url=ORIGIN) as client:
            response = await client.get("/")
            assert response.status_code == 503 and response.headers["retry-after"] == "1"

    run(check)


def test_request_session_is_a_dict_as_starlettes_is(store: Store) -> None:
    """JSONResponse(request.session), isinstance(..., dict) and C readers see the data."""
    import orjson

    async def view(request: Request) -> Response:
        session = request.session
        session["cart"] = [*session.get("cart", []), "tea"]
        session.pop("gone", None)
        assert isinstance(session, dict)
        assert orjson.loads(orjson.dumps(session)) == dict(session)
        assert session == dict(session)
        assert session != {"something": "else"}
        return JSONResponse(session)

    routes = [Route("/dict", view), *ROUTES]

    async def check() -> None:
        app = SessionMiddleware(Starlette(routes=routes), secret_key=SECRET, store=store)
        transport = httpx.ASGITransport(app)
        try:
            async with httpx.AsyncClient(transport=transport, base_url=ORIGIN) as client:
                await client.get("/set/gone/1")
                assert (await client.get("/dict")).json() == {"cart": ["tea"]}
                assert (await client.get("/dict")).json() == {"cart": ["tea", "tea"]}
        finally:
            await app.store.close()

    run(check)


def test_a_websocket_with_the_store_down_is_closed_with_1011(own_valkey: ValkeyServer) -> None:
    async def check() -> None:
        async with browser(own_valkey.url) as (client, app):
            await client.get("/set/a/1")
            cookie = client.cookies["session"]
            own_valkey.kill()
            sent = await socket_visit(app, cookie)
            assert [m["type"] for m in sent] == ["websocket.close"]
            assert sent[0]["code"] == 1011

    run(check)


def test_a_quoted_cookie_value_is_read_as_werkzeug_and_starlette_read_it(store: Store) -> None:
    """``session="<value>"`` (a client that quotes cookie values) keeps its session."""

    async def check() -> None:
        async with browser(store) as (client, _):
            cookie = cookie_of(await client.get("/set/k/v"))
            assert cookie is not None
            client.cookies.clear()
            quoted = await client.get("/", headers=as_cookie(f'"{cookie}"'))
            assert quoted.json() == {"k": "v"}
            assert cookie_of(quoted) in (None, cookie)  # the same session, not a new one

    run(check)


def test_key_errors_and_warnings_speak_the_middlewares_own_words(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """secret_key=, secret_key_fallbacks= and strict_secret= are named as such, never
    Flask's SECRET_KEY (which an ASGI app does not have)."""
    with pytest.raises(ConfigError, match=r"^secret_key is not set.*pass secret_key="):
        SessionMiddleware(Starlette(), secret_key=None, store=MemoryStore())
    with pytest.raises(ConfigError, match="secret_key_fallbacks must be a list"):
        SessionMiddleware(
            Starlette(), secret_key=SECRET, secret_key_fallbacks="old", store=MemoryStore()
        )
    with caplog.at_level(logging.WARNING, logger="satchel.security"):
        SessionMiddleware(Starlette(), secret_key="dev", store=MemoryStore())
    messages = [record.getMessage() for record in caplog.records]
    assert any(m.startswith("secret_key is a sample key") for m in messages), messages
    assert not any("SECRET_KEY" in m for m in messages)
    with pytest.raises(ConfigError, match=r"secret_key is .*\(strict_secret is set\)"):
        SessionMiddleware(Starlette(), secret_key="dev", strict_secret=True, store=MemoryStore())


async def _untouched(request: Request) -> PlainTextResponse:
    return PlainTextResponse("no session used")


def _starlette_style_app(store: Any, **options: Any) -> Any:
    routes = [*ROUTES, Route("/untouched", _untouched)]
    return SessionMiddleware(Starlette(routes=routes), secret_key=SECRET, store=store, **options)


def test_set_cookie_and_vary_only_when_starlette_would(store: Store) -> None:
    """A cookie on a create, a change, a regenerate, an end, or when the idle refresh is
    due, and on no other response; Vary: Cookie only when the view used the session."""
    import time as clock

    async def check() -> None:
        app = _starlette_style_app(store, idle_timeout=10)  # refreshes at most every 1 s
        transport = httpx.ASGITransport(app)
        async with httpx.AsyncClient(transport=transport, base_url=ORIGIN) as client:
            created = await client.get("/set/a/1")
            assert cookie_of(created) is not None and created.headers["vary"] == "Cookie"
            read = await client.get("/")
            assert read.json() == {"a": "1"}
            assert "set-cookie" not in read.headers and read.headers["vary"] == "Cookie"
            untouched = await client.get("/untouched")
            assert "set-cookie" not in untouched.headers and "vary" not in untouched.headers
            changed = await client.get("/set/b/2")
            assert cookie_of(changed) == cookie_of(created)  # renewed, same ID
            clock.sleep(1.1)  # the idle refresh is due now
            refreshed = await client.get("/")
            assert cookie_of(refreshed) == cookie_of(created)
            assert "set-cookie" not in (await client.get("/")).headers  # and not again
            renewed = await client.get("/login/ada")
            assert cookie_of(renewed) not in (None, "", cookie_of(created))
            ended = await client.get("/clear")
            assert "Max-Age=0" in ended.headers["set-cookie"]
        await app.store.close()

    run(check)


@pytest.mark.parametrize("max_age", [0, -10])
def test_max_age_zero_and_negative_mean_what_they_mean_to_starlette(max_age: int) -> None:
    """max_age=0 sends the cookie with Max-Age=0, a negative one an already expired cookie,
    as Starlette's own middleware does; neither is a ConfigError."""

    async def check() -> None:
        app = _starlette_style_app(MemoryStore(), max_age=max_age)
        transport = httpx.ASGITransport(app)
        async with httpx.AsyncClient(transport=transport, base_url=ORIGIN) as client:
            header = (await client.get("/set/a/1")).headers["set-cookie"]
            assert f"; path=/; Max-Age={max_age}; httponly; samesite=lax" in header
            # The browser drops that cookie at once: the session does not outlive the
            # response, so a replay of the cookie opens nothing.
            assert await app.store.records() == []
        await app.store.close()

    run(check)


def test_an_apps_own_starlette_style_cookie_assertions_pass() -> None:
    """What a FastAPI app's tests written against Starlette's middleware read, unchanged."""

    async def check() -> None:
        api = FastAPI()
        api.add_middleware(
            SessionMiddleware, secret_key=SECRET, store="memory://", https_only=True,
            domain="example.com", same_site="strict",
        )  # fmt: skip

        @api.get("/login")
        async def login(request: Request) -> dict[str, str]:
            request.session["user"] = "ada"
            return {"ok": "yes"}

        @api.get("/health")
        async def health() -> dict[str, str]:
            return {"status": "ok"}

        transport = httpx.ASGITransport(api)
        async with httpx.AsyncClient(transport=transport, base_url=ORIGIN) as client:
            response = await client.get("/login")
            cookie = response.headers["set-cookie"]
            for expected in ("path=/", "httponly", "samesite=strict", "secure",
                             "domain=example.com", "Max-Age=1209600"):  # fmt: skip
                assert expected in cookie.split("; "), (expected, cookie)
            health = await client.get("/health")
            assert "set-cookie" not in health.headers and "vary" not in health.headers

    run(check)
