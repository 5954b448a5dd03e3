"""What a save keeps and what it refuses: emptying a session, and the size limit, each
under overlapping requests, on every store."""

from __future__ import annotations

import threading
from typing import Any

from flask import Flask, flash, get_flashed_messages, session

from satchel import Satchel
from satchel.signing import store_key
from satchel.stores import Store

from .conftest import SECRET, session_id_of, stored_keys
from .support.flask_apps import (
    change_settings,
    client_with,
    cookie_of,
    logged_in,
    owner_app,
    run_together,
)

# -- an emptying save ------------------------------------------------------------------


def test_emptying_a_session_keeps_what_an_overlapping_request_stored(store: Store) -> None:
    """popping the last flash while another request stores a cart loses no cart."""
    app = Flask("flashes")
    app.config.update(SECRET_KEY=SECRET)
    Satchel(app, store=store)
    loaded, stored = threading.Event(), threading.Event()

    @app.get("/flash")
    def flash_view() -> str:
        flash("hello")
        return "ok"

    @app.get("/show")
    def show() -> str:
        messages = get_flashed_messages()  # the session is empty after this pop...
        loaded.set()
        assert stored.wait(10)  # ...but the cart was stored meanwhile
        return ",".join(messages)

    @app.get("/cart")
    def cart() -> str:
        session["cart"] = ["book"]
        return "ok"

    @app.get("/read")
    def read() -> dict[str, Any]:
        return dict(session)

    client = app.test_client()
    client.get("/flash")
    cookie = cookie_of(client)

    def show_flashes() -> Any:
        return client_with(app, cookie).get("/show")

    def add_to_cart() -> Any:
        assert loaded.wait(10)
        response = client_with(app, cookie).get("/cart")
        stored.set()
        return response

    shown, carted = run_together(show_flashes, add_to_cart)
    assert shown.status_code == carted.status_code == 200
    assert shown.text == "hello"
    assert "Set-Cookie" not in shown.headers  # the cookie still names a live session
    assert client_with(app, cookie).get("/read").json == {"cart": ["book"]}


def test_an_emptied_session_is_deleted_with_its_cookie(store: Store) -> None:
    """with nothing stored meanwhile, emptying still deletes record and cookie."""
    app = Flask("flashes")
    app.config.update(SECRET_KEY=SECRET)
    Satchel(app, store=store)
    app.add_url_rule("/flash", "flash", lambda: flash("x") or "ok")
    app.add_url_rule("/show", "show", lambda: ",".join(get_flashed_messages()))
    client = app.test_client()
    client.get("/flash")
    assert len(stored_keys(store)) == 1
    response = client.get("/show")
    assert "Max-Age=0" in response.headers["Set-Cookie"]
    assert stored_keys(store) == []


# -- the size limit under overlap --------------------------------------------------------


def test_size_limit_holds_for_overlapping_requests(store: Store) -> None:
    """8 overlapping 9 KB writes under a 10,000-byte limit: one kept, the rest refused."""
    app = owner_app(store, "x")
    change_settings(app, max_size=10_000)
    barrier = threading.Barrier(8, timeout=10)

    @app.errorhandler(Exception)
    def too_large(exc: Exception) -> tuple[str, int]:
        return type(getattr(exc, "original_exception", exc)).__name__, 500

    @app.get("/big/<int:n>")
    def big(n: int) -> str:
        dict(session)
        barrier.wait()
        session[f"blob{n}"] = "x" * 9000
        return "ok"

    _client, cookie = logged_in(app)
    jobs = [lambda n=n: client_with(app, cookie).get(f"/big/{n}") for n in range(8)]
    responses = run_together(*jobs)
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] + [500] * 7
    assert {r.text for r in responses if r.status_code == 500} == {"SessionTooLarge"}
    record = store.load(store_key(session_id_of(cookie)))
    assert record is not None
    assert sum(len(k) + len(v) for k, v in record.fields.items()) <= 10_000
    assert client_with(app, cookie).get("/login").status_code == 200  # later writes work


def test_a_session_over_a_lowered_limit_stays_readable_and_shrinkable(store: Store) -> None:
    """after SATCHEL_MAX_SIZE is lowered, an oversized session reads and shrinks."""
    app = owner_app(store, "x")

    @app.get("/grow")
    def grow() -> str:
        session["a"] = "x" * 5000
        session["b"] = "x" * 5000
        return "ok"

    @app.get("/shrink")
    def shrink() -> str:
        del session["a"]
        return "ok"

    client = app.test_client()
    client.get("/grow")
    change_settings(app, max_size=2000)
    assert set(client.get("/read").json) == {"a", "b"}
    assert client.get("/shrink").status_code == 200
    assert set(client.get("/read").json) == {"b"}


def test_replacing_a_value_counts_only_its_new_size_against_the_limit(store: Store) -> None:
    """A key rewritten with a smaller value, in a session near the limit, saves: the
    check counts what the session will hold, never the old and the new value both."""
    app = owner_app(store, "x")
    change_settings(app, max_size=1000)

    @app.get("/set/<int:n>")
    def set_(n: int) -> str:
        session["a"] = "x" * n
        return "ok"

    client = app.test_client()
    assert client.get("/set/600").status_code == 200
    assert client.get("/set/500").status_code == 200  # 500 B, not 600 + 500
    assert client.get("/read").json == {"a": "x" * 500}
    assert client.get("/set/1000").status_code == 500  # SessionTooLarge: nothing saved
    assert client.get("/read").json == {"a": "x" * 500}
