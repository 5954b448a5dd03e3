"""Signals at a session's turning points, and the counters an operator reads."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask, session

from satchel import Satchel
from satchel.signals import (
    session_created,
    session_destroyed,
    session_expired,
    session_regenerated,
)
from satchel.signing import store_key
from satchel.stores import Store

from .conftest import SECRET, session_id_of


@pytest.fixture
def app(store: Store) -> Flask:
    app = Flask("signals")
    app.config.update(SECRET_KEY=SECRET, SATCHEL_IDLE_TIMEOUT=3600)
    Satchel(app, store=store)

    @app.get("/set")
    def set_() -> str:
        session["a"] = 1
        return "ok"

    @app.get("/read")
    def read() -> dict[str, Any]:
        return dict(session)

    @app.get("/regenerate")
    def regenerate() -> str:
        session.regenerate()  # type: ignore[attr-defined]
        return "ok"

    @app.get("/clear")
    def clear() -> str:
        session.clear()
        return "ok"

    return app


@pytest.fixture
def received(app: Flask) -> Iterator[list[tuple[str, Any, str]]]:
    log: list[tuple[str, Any, str]] = []
    receivers = {}
    for name, signal in (
        ("created", session_created),
        ("regenerated", session_regenerated),
        ("destroyed", session_destroyed),
        ("expired", session_expired),
    ):

        def receiver(sender: Any, name: str = name, **extra: Any) -> None:
            log.append((name, sender, extra["fingerprint"]))

        receivers[name] = receiver
        signal.connect(receiver, sender=app)
    yield log
    for name, signal in (
        ("created", session_created),
        ("regenerated", session_regenerated),
        ("destroyed", session_destroyed),
        ("expired", session_expired),
    ):
        signal.disconnect(receivers[name])


def fingerprint(client: Any) -> str:
    cookie = client.get_cookie("session")
    return store_key(session_id_of(cookie.value))[:8]


def test_lifecycle_signals(app: Flask, received: list[tuple[str, Any, str]]) -> None:
    """created, regenerated, destroyed and expired fire once each, from the app."""
    client = app.test_client()
    client.get("/set")
    first = fingerprint(client)
    client.get("/read")
    client.get("/regenerate")
    second = fingerprint(client)
    old_cookie = client.get_cookie("session")
    assert old_cookie is not None
    client.get("/clear")
    replay = app.test_client()
    replay.set_cookie("session", old_cookie.value)
    replay.get("/read")
    assert received == [
        ("created", app, first),
        ("regenerated", app, second),
        ("destroyed", app, second),
        ("expired", app, second),
    ]


def test_signals_never_carry_the_raw_id(app: Flask, received: list[tuple[str, Any, str]]) -> None:
    """The fingerprint is a short hash prefix, not a piece of the ID."""
    client = app.test_client()
    client.get("/set")
    raw = session_id_of(client.get_cookie("session").value)  # type: ignore[union-attr]
    (_, _, fp) = received[0]
    assert len(fp) == 8 and fp not in raw


def test_counters(app: Flask) -> None:
    """The counters follow what happened: loads, saves, creates, deletes, rejected cookies."""
    client = app.test_client()
    client.get("/set")
    client.get("/read")
    client.get("/read")
    client.get("/clear")
    bad = app.test_client(use_cookies=False)
    bad.get("/read", headers={"Cookie": "session=forged.cookie"})
    with app.app_context():
        stats = Satchel.stats()
    assert Satchel.stats(app) == stats
    cache = {name: stats.pop(name) for name in list(stats) if name.startswith("cache_")}
    if cache:  # the Redis store's record cache: the create left the record cached
        assert cache["cache_hits"] == 2 and cache["cache_misses"] == 0
        assert cache["cache_entries"] == 0  # clear() ended it
    # /set had no cookie and clear() needs no data, so only the two reads load.
    assert stats == {
        "loads": 2,
        "saves": 1,
        "creates": 1,
        "deletes": 1,
        "touches": 0,
        "rejected_cookies": 1,
        "store_errors": 0,
        "lock_waits": 0,
        "merges": 0,
        "migrated": 0,
        "migration_failures": 0,
        "migration_replays": 0,
        "login_waits": 0,
        "renewals": 0,
        "renewal_joins": 0,
        "evictions": 0,
        "refused_logins": 0,
        "tampered": 0,
    }


def test_regenerate_then_clear_is_a_destruction(
    app: Flask, received: list[tuple[str, Any, str]]
) -> None:
    """regenerate() then clear() in one request destroys the session, not regenerates it."""

    @app.get("/regenerate-then-clear")
    def regenerate_then_clear() -> str:
        session.regenerate()  # type: ignore[attr-defined]
        session.clear()
        return "ok"

    client = app.test_client()
    client.get("/set")
    fp = fingerprint(client)
    client.get("/regenerate-then-clear")
    assert [name for name, _, _ in received] == ["created", "destroyed"]
    assert received[1][2] == fp


def test_a_regenerate_counts_one_save_and_one_delete(app: Flask) -> None:
    """Moving a session to a new ID is one save and the old record's delete, not a create."""

    @app.get("/log-in")
    def log_in() -> str:
        session.regenerate(owner="ada")  # type: ignore[attr-defined]
        return "ok"

    client = app.test_client()
    client.get("/set")
    with app.app_context():
        before = Satchel.stats()
    client.get("/log-in")
    with app.app_context():
        after = Satchel.stats()
    changed = {
        name: after[name] - before[name]
        for name in after
        if after[name] != before[name] and not name.startswith("cache_")  # the cache's own
    }
    assert changed == {"loads": 1, "saves": 1, "deletes": 1}


def test_session_expired_fires_for_a_record_that_really_expired(
    app: Flask, store: Store, received: list[tuple[str, Any, str]]
) -> None:
    """A genuine cookie whose record ran past its idle expiry: session_expired, once."""
    import time

    client = app.test_client()
    client.get("/set")
    mine = fingerprint(client)
    key = store_key(session_id_of(client.get_cookie("session").value))  # type: ignore[union-attr]
    record = store.load(key)
    assert record is not None
    # Expire it at the store as idleness would (no clear, no revoke): its expiry in the past.
    now = time.time()
    store.touch(key, now, now + 0.05)
    time.sleep(0.1)
    assert store.load(key) is None
    assert client.get("/read").json == {}
    assert received == [("created", app, mine), ("expired", app, mine)]
