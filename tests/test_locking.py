"""Strict mode: requests of one session serialised by a leased, store-side lock."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from flask import Flask, session

from satchel import ConfigError, Satchel, locked
from satchel.signing import store_key
from satchel.stores import Store
from satchel.stores.base import Change, Record

from .conftest import SECRET, session_id_of
from .support.flask_apps import (
    change_settings,
    client_with,
    logged_in,
    owner_app,
    run_together,
)

THREADS, PER_THREAD = 8, 25


def build(store: Store, **config: Any) -> Flask:
    app = Flask("strict")
    app.config.update({"SECRET_KEY": SECRET, "SATCHEL_LOCK_TIMEOUT": 30, **config})
    Satchel(app, store=store)

    @app.get("/start")
    def start() -> str:
        session["count"] = 0
        return "ok"

    @app.get("/count")
    def count() -> str:
        return str(session["count"])

    @app.get("/increment")
    def increment() -> str:
        count = session["count"]
        time.sleep(0.001)  # let other threads run between the read and the write
        session["count"] = count + 1
        return "ok"

    @app.get("/increment-locked")
    @locked
    def increment_locked() -> str:
        count = session["count"]
        time.sleep(0.001)
        session["count"] = count + 1
        return "ok"

    @app.get("/fail")
    @locked
    def fail() -> str:
        session["count"] += 1000
        raise RuntimeError("the view failed")

    return app


def hammer(app: Flask, cookie: str, path: str) -> list[int]:
    """THREADS × PER_THREAD overlapping requests of one session; their statuses."""
    statuses: list[int] = []
    barrier = threading.Barrier(THREADS)

    def work() -> None:
        client = app.test_client()
        client.set_cookie("session", cookie)
        barrier.wait()
        for _ in range(PER_THREAD):
            statuses.append(client.get(path).status_code)

    pool = [threading.Thread(target=work) for _ in range(THREADS)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return statuses


def started(app: Flask) -> tuple[Any, str]:
    client = app.test_client()
    client.get("/start")
    cookie = client.get_cookie("session")
    assert cookie is not None
    return client, cookie.value


def test_app_wide_strict_mode_loses_no_increment(store: Store) -> None:
    """With SATCHEL_LOCKING, 200 overlapping increments of one counter make 200."""
    app = build(store, SATCHEL_LOCKING=True)
    client, cookie = started(app)
    statuses = hammer(app, cookie, "/increment")
    assert statuses == [200] * THREADS * PER_THREAD
    assert client.get("/count").data == str(THREADS * PER_THREAD).encode()
    assert Satchel.stats(app)["lock_waits"] > 0  # the requests really did overlap


def test_without_strict_mode_overlapping_increments_are_lost(store: Store) -> None:
    """The same load without the lock loses increments: what strict mode is for."""
    app = build(store)
    client, cookie = started(app)
    hammer(app, cookie, "/increment")
    assert int(client.get("/count").data) < THREADS * PER_THREAD


def test_locked_view_loses_no_increment(store: Store) -> None:
    """@locked on one view gives it strict mode without SATCHEL_LOCKING."""
    app = build(store)
    client, cookie = started(app)
    hammer(app, cookie, "/increment-locked")
    assert client.get("/count").data == str(THREADS * PER_THREAD).encode()


def test_waiting_too_long_gives_503(store: Store) -> None:
    """A request that cannot get the lock in SATCHEL_LOCK_TIMEOUT gets 503, not a write."""
    app = build(store)
    app.config["SATCHEL_LOCK_TIMEOUT"] = 30
    inside, leave = threading.Event(), threading.Event()

    @app.get("/hold")
    @locked
    def hold() -> str:
        session["count"] += 100
        inside.set()
        assert leave.wait(10)
        return "ok"

    client, cookie = started(app)
    impatient = Flask("impatient")
    impatient.config.update(SECRET_KEY=SECRET, SATCHEL_LOCK_TIMEOUT=0.3)
    Satchel(impatient, store=store)
    impatient.add_url_rule("/increment", view_func=locked(lambda: _increment()))
    holder = threading.Thread(target=lambda: client.get("/hold"))
    holder.start()
    assert inside.wait(10)
    other = impatient.test_client()
    other.set_cookie("session", cookie)
    response = other.get("/increment")
    leave.set()
    holder.join()
    assert response.status_code == 503
    assert b"another request of this session" in response.data
    assert client.get("/count").data == b"100"


def _increment() -> str:
    session["count"] += 1
    return "ok"


def test_lock_of_a_crashed_worker_lapses(store: Store) -> None:
    """A lock left by a worker that died is taken over once its lease lapses."""
    app = build(store, SATCHEL_LOCK_TIMEOUT=5)
    client, cookie = started(app)
    key = store_key(session_id_of(cookie))
    assert store.acquire(key, "a-worker-that-died", 0.5)  # type: ignore[attr-defined]
    assert client.get("/increment-locked").status_code == 200
    assert client.get("/count").data == b"1"


def test_failed_view_releases_the_lock(store: Store) -> None:
    """A view that raises still releases the lock: the next request does not wait."""
    app = build(store, SATCHEL_LOCK_TIMEOUT=0.5)
    client, _ = started(app)
    assert client.get("/fail").status_code == 500
    assert client.get("/increment-locked").status_code == 200


class NoLocks:
    """A store with no lock support."""

    def load(self, key: str) -> Record | None:
        return None

    def save(self, key: str, change: Change, *, create: bool) -> bool:
        return True

    def touch(self, key: str, touched_at: float, expires_at: float) -> bool:
        return True

    def delete(self, key: str) -> None:
        pass

    def purge_expired(self) -> int:
        return 0

    def close(self) -> None:
        pass


def test_strict_mode_needs_a_locking_store() -> None:
    """SATCHEL_LOCKING on a store without locks is refused at start-up."""
    app = Flask("nolocks")
    app.config.update(SECRET_KEY=SECRET, SATCHEL_LOCKING=True)
    with pytest.raises(ConfigError, match="strict mode"):
        Satchel(app, store=NoLocks())  # type: ignore[arg-type]


# -- strict mode's lease ---------------------------------------------------------------


def test_a_view_outliving_its_lease_cannot_overwrite(store: Store) -> None:
    """the slow request's lease lapses and another takes the lock: 503, no loss."""
    app = owner_app(store, "x")
    change_settings(app, lock_lease=0.3)
    started, fast_done = threading.Event(), threading.Event()

    @app.get("/slow")
    @locked
    def slow() -> str:
        session["count"] = session.get("count", 0) + 100
        started.set()
        # The other request gets the lock only once this one's lease has lapsed; this
        # view outlives its lease for sure by waiting for that request to finish.
        assert fast_done.wait(30)
        return "ok"

    @app.get("/fast")
    @locked
    def fast() -> str:
        session["count"] = session.get("count", 0) + 1
        return "ok"

    _client, cookie = logged_in(app)

    def second() -> Any:
        assert started.wait(10)
        response = client_with(app, cookie).get("/fast")
        fast_done.set()
        return response

    slow_r, fast_r = run_together(lambda: client_with(app, cookie).get("/slow"), second)
    assert fast_r.status_code == 200
    assert slow_r.status_code == 503 and "another request" in slow_r.text
    assert client_with(app, cookie).get("/read").json["count"] == 1
