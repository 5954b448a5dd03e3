"""The Quart adapter on every store: the Flask adapter's keys and behaviour, awaited."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from flask import Flask
from flask import session as flask_session
from quart import Quart, session

from satchel import Satchel as FlaskSatchel
from satchel.errors import ConfigError
from satchel.quart import Satchel, current_session, locked
from satchel.stores import MemoryStore, Store
from satchel.stores.aio import to_async

from .conftest import SECRET, stored_keys
from .valkey import ValkeyServer


def make_quart(store: Any, **config: Any) -> Quart:
    app = Quart("satchel_quart_test")
    app.config.update({"SECRET_KEY": SECRET, **config})
    Satchel(app, store=store)

    @app.get("/")
    async def read() -> dict[str, Any]:
        return dict(session)

    @app.get("/incr")
    async def incr() -> str:
        session["n"] = session.get("n", 0) + 1
        return str(session["n"])

    app.add_url_rule("/incr-locked", "incr_locked", locked(incr))

    @app.get("/incr-slow")
    async def incr_slow() -> str:
        n = session.get("n", 0)
        await asyncio.sleep(0.01)  # other requests run meanwhile: they overlap for real
        session["n"] = n + 1
        return str(n + 1)

    app.add_url_rule("/incr-slow-locked", "incr_slow_locked", locked(incr_slow))

    @app.get("/cart-slow/<item>")
    async def cart_slow(item: str) -> str:
        cart = session.setdefault("cart", [])
        await asyncio.sleep(0.01)
        cart.append(item)
        return "ok"

    @app.get("/cart/<item>")
    async def cart(item: str) -> str:
        session.setdefault("cart", []).append(item)
        return "ok"

    @app.get("/login/<user>")
    async def login(user: str) -> str:
        current_session().regenerate(owner=user)
        return "ok"

    @app.get("/whoami")
    async def whoami() -> dict[str, Any]:
        infos = await Satchel.list_sessions(current_session().owner)
        return {"owner": current_session().owner, "sessions": len(infos)}

    @app.get("/logout-everywhere")
    async def logout_everywhere() -> dict[str, int]:
        owner = current_session().owner
        assert owner is not None
        return {"ended": await Satchel.revoke_all(owner, keep_current=False)}

    @app.get("/permanent")
    async def permanent() -> str:
        session.permanent = True
        session["p"] = 1
        return "ok"

    @app.get("/clear")
    async def clear() -> str:
        session.clear()
        return "ok"

    @app.websocket("/socket")
    async def socket() -> None:
        from quart import websocket

        await websocket.accept()
        session["seen"] = session.get("seen", 0) + 1
        await websocket.send_json(dict(session))
        await websocket.receive()  # the client's goodbye: the handler then ends, and saves

    return app


def run(check: Callable[[], Any]) -> Any:
    return asyncio.run(check())


def set_cookie_of(response: Any) -> str:
    return ";".join(response.headers.getlist("Set-Cookie"))


async def closed(app: Quart) -> None:
    """Close the app's async store on the loop it ran on."""
    await app.extensions["satchel"].store.close()


def test_writes_persist_and_merge_under_overlap(store: Store) -> None:
    app = make_quart(store)

    async def check() -> None:
        client = app.test_client()
        try:
            first = await client.get("/incr")
            assert "HttpOnly" in set_cookie_of(first) and "SameSite=Lax" in set_cookie_of(first)
            assert await (await client.get("/incr")).get_data(as_text=True) == "2"
            items = [f"i{n}" for n in range(10)]
            await asyncio.gather(*(client.get(f"/cart-slow/{item}") for item in items))
            data = await (await client.get("/")).get_json()
            assert data["n"] == 2 and sorted(data["cart"]) == items
            assert len(stored_keys(store)) == 1
            # The requests overlapped: saves found others' appends and merged with them.
            assert Satchel.stats(app)["merges"] > 0
        finally:
            await closed(app)

    run(check)


def test_locked_views_and_strict_mode(store: Store) -> None:
    app = make_quart(store)

    async def check() -> None:
        client = app.test_client()
        try:
            await client.get("/incr-slow-locked")
            await asyncio.gather(*(client.get("/incr-slow-locked") for _ in range(12)))
            assert (await (await client.get("/")).get_json()) == {"n": 13}
            # They contended for the lock (a locked() that did nothing would lose updates
            # here, and wait for nothing).
            assert Satchel.stats(app)["lock_waits"] > 0
        finally:
            await closed(app)

    run(check)


def test_login_listing_revoking_and_clear(store: Store) -> None:
    app = make_quart(store)

    async def check() -> None:
        laptop, phone = app.test_client(), app.test_client()
        try:
            for client in (laptop, phone):
                await client.get("/incr")
                await client.get("/login/7")
            assert await (await laptop.get("/whoami")).get_json() == {"owner": "7", "sessions": 2}
            assert await (await laptop.get("/logout-everywhere")).get_json() == {"ended": 2}
            assert await (await phone.get("/")).get_json() == {}
            await laptop.get("/incr")
            response = await laptop.get("/clear")
            assert "Max-Age=0" in set_cookie_of(response) or "Expires=Thu, 01 Jan 1970" in (
                set_cookie_of(response)
            )
            assert stored_keys(store) == []
        finally:
            await closed(app)

    run(check)


def test_permanent_sessions_get_an_expiry(store: Store) -> None:
    app = make_quart(store, PERMANENT_SESSION_LIFETIME=timedelta(days=2))

    async def check() -> None:
        client = app.test_client()
        try:
            assert "Expires=" in set_cookie_of(await client.get("/permanent"))
            assert "Expires=" not in set_cookie_of(await make_quart_client_write(app))
        finally:
            await closed(app)

    async def make_quart_client_write(app: Quart) -> Any:
        return await app.test_client().get("/incr")

    run(check)


def test_websockets_share_the_session(store: Store) -> None:
    app = make_quart(store)

    async def check() -> None:
        client = app.test_client()
        try:
            await client.get("/incr")
            for seen in (1, 2):
                async with client.websocket("/socket") as socket:
                    assert await socket.receive_json() == {"n": 1, "seen": seen}
                    await socket.send("bye")
                    # The socket's session is saved as its handler ends.
                    for _ in range(300):
                        if (await (await client.get("/")).get_json()).get("seen") == seen:
                            break
                        await asyncio.sleep(0.01)
            assert await (await client.get("/")).get_json() == {"n": 1, "seen": 2}
        finally:
            await closed(app)

    run(check)


def test_hostile_cookies_get_a_fresh_session(store: Store) -> None:
    app = make_quart(store)

    async def check() -> None:
        try:
            for value in ("forged.value", "x" * 8000, "", "a.b.c"):
                client = app.test_client()
                response = await client.get("/incr", headers={"Cookie": f"session={value}"})
                assert response.status_code == 200
                assert await response.get_data(as_text=True) == "1"
        finally:
            await closed(app)

    run(check)


def test_store_down_answers_503(own_valkey: ValkeyServer) -> None:
    app = make_quart(own_valkey.url)

    async def check() -> None:
        client = app.test_client()
        try:
            await client.get("/incr")
            own_valkey.kill()
            for path in ("/", "/incr"):
                response = await client.get(path)
                assert response.status_code == 503
                assert response.headers["Retry-After"] == "1"
        finally:
            await closed(app)

    run(check)


def test_flask_and_quart_share_one_session(store: Store) -> None:
    flask_app = Flask("shared")
    flask_app.config.update(SECRET_KEY=SECRET)
    FlaskSatchel(flask_app, store=store)

    @flask_app.get("/flask/cart/<item>")
    def flask_cart(item: str) -> str:
        flask_session.setdefault("cart", []).append(item)
        return "ok"

    flask = flask_app.test_client()
    app = make_quart(store)

    async def check() -> None:
        client = app.test_client()
        try:
            response = await client.get("/cart/from-quart")
            cookie = set_cookie_of(response).split(";", 1)[0].removeprefix("session=")
            flask.set_cookie("session", cookie)
            flask.get("/flask/cart/from-flask")
            data = await (await client.get("/")).get_json()
            assert data == {"cart": ["from-quart", "from-flask"]}
        finally:
            await closed(app)

    run(check)


def test_config_is_checked_as_the_flask_adapter_does() -> None:
    app = Quart("bad")
    with pytest.raises(ConfigError, match="SECRET_KEY"):
        Satchel(app, store=MemoryStore())
    app = Quart("bad")
    app.config.update(SECRET_KEY=SECRET, SATCHEL_MAX_SIZE=-1)
    with pytest.raises(ConfigError, match="SATCHEL_MAX_SIZE"):
        Satchel(app, store=MemoryStore())
    app = Quart("migrate")
    app.config.update(SECRET_KEY=SECRET, SATCHEL_MIGRATE_FROM="flask-cookie")
    with pytest.raises(ConfigError, match="sync store"):
        Satchel(app, store=to_async(MemoryStore()))  # type: ignore[arg-type]
    app = Quart("twice")
    app.config.update(SECRET_KEY=SECRET)
    Satchel(app, store=MemoryStore())
    with pytest.raises(ConfigError, match="already"):
        Satchel(app, store=MemoryStore())


def test_a_flask_cookie_session_is_imported_once(store: Store) -> None:
    """SATCHEL_MIGRATE_FROM on Quart: the old cookie's data, a new cookie, once only."""
    from .support.old_sessions import cookie_session

    old_cookie = cookie_session(SECRET, {"user": "ada", "cart": ["tea"]})
    app = make_quart(store, SATCHEL_MIGRATE_FROM="flask-cookie", SATCHEL_MIGRATE_OVERLAP=0)

    async def check() -> None:
        try:
            client = app.test_client()
            response = await client.get("/", headers={"Cookie": f"session={old_cookie}"})
            data = await response.get_json()
            assert data["user"] == "ada" and data["cart"] == ["tea"]
            new_cookie = set_cookie_of(response).split(";", 1)[0].removeprefix("session=")
            assert new_cookie and new_cookie != old_cookie
            again = await client.get("/", headers={"Cookie": f"session={new_cookie}"})
            assert (await again.get_json())["user"] == "ada"
            await asyncio.sleep(0.05)  # the import has settled; the window (0 s) is shut
            replay = await app.test_client().get("/", headers={"Cookie": f"session={old_cookie}"})
            assert await replay.get_json() == {}
            figures = Satchel.stats(app)
            assert figures["migrated"] == 1 and figures["migration_replays"] == 1
        finally:
            await closed(app)

    run(check)


def test_quarts_own_cookie_sessions_are_imported_as_flask_cookies() -> None:
    """A Quart app switching to satchel keeps its visitors: Quart signs cookies as Flask does."""
    old = Quart("before_satchel")
    old.config["SECRET_KEY"] = SECRET

    @old.get("/set")
    async def set_() -> str:
        session["user"] = "grace"
        return "ok"

    async def old_cookie() -> str:
        response = await old.test_client().get("/set")
        return set_cookie_of(response).split(";", 1)[0].removeprefix("session=")

    cookie = asyncio.run(old_cookie())
    app = make_quart(MemoryStore(), SATCHEL_MIGRATE_FROM="flask-cookie")

    async def check() -> None:
        response = await app.test_client().get("/", headers={"Cookie": f"session={cookie}"})
        assert await response.get_json() == {"user": "grace"}
        assert Satchel.stats(app)["migrated"] == 1

    run(check)


def test_keys_read_again_when_changed_even_in_place() -> None:
    """SECRET_KEY_FALLBACKS appended to after init_app: cookies of the old key still open."""
    memory = MemoryStore()
    old_key = "an-older-secret-key-0123456789-abcdefghij"
    before = make_quart(memory, SECRET_KEY=old_key)
    app = make_quart(memory, SECRET_KEY_FALLBACKS=[])

    async def check() -> None:
        response = await before.test_client().get("/incr")
        cookie = set_cookie_of(response).split(";", 1)[0].removeprefix("session=")
        client = app.test_client()
        refused = await client.get("/", headers={"Cookie": f"session={cookie}"})
        assert await refused.get_json() == {}
        app.config["SECRET_KEY_FALLBACKS"].append(old_key)
        accepted = await client.get("/", headers={"Cookie": f"session={cookie}"})
        assert await accepted.get_json() == {"n": 1}

    run(check)
