"""A store that is down gives 503 with a short plain message, and the app recovers."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask, jsonify, session

from satchel import Satchel, SessionTooLarge
from satchel.errors import StoreUnavailable
from satchel.stores import RedisStore, SQLiteStore, Store
from satchel.stores._tracking import TRUST

from .conftest import SECRET, stored_keys
from .support.responses import assert_clean_503
from .valkey import ValkeyServer


def make(store: Store, server: ValkeyServer | None = None, **config: object) -> Flask:
    app = Flask("outage")
    app.config.update(SECRET_KEY=SECRET, **config)
    Satchel(app, store=store)

    @app.get("/read")
    def read() -> dict[str, object]:
        return dict(session)

    @app.get("/set/<key>/<value>")
    def set_(key: str, value: str) -> str:
        session[key] = value
        return "ok"

    @app.get("/kill-then-set")
    def kill_then_set() -> str:
        session["during"] = "outage"
        assert server is not None
        server.kill()
        return "the view finished"

    return app


@pytest.fixture(params=["uncached", "cached"])
def own_store(request: pytest.FixtureRequest, own_valkey: ValkeyServer) -> Iterator[RedisStore]:
    """A Redis store on a private server, with the record cache off and on."""
    store = RedisStore.from_url(own_valkey.url, cache="8MB" if request.param == "cached" else 0)
    yield store
    store.close()


def test_store_down_gives_503_then_recovers(
    own_valkey: ValkeyServer, own_store: RedisStore, caplog: pytest.LogCaptureFixture
) -> None:
    """Killed server: reads and writes get 503; after a restart the same app works again."""
    app = make(own_store)
    client = app.test_client()
    assert client.get("/set/a/1").status_code == 200
    own_valkey.kill()
    with caplog.at_level(logging.WARNING):
        assert_clean_503(client.get("/read"), caplog)
        assert_clean_503(client.get("/set/b/2"), caplog)
    assert any("answered 503" in r.getMessage() for r in caplog.records)
    assert Satchel.stats(app)["store_errors"] == 2
    own_valkey.start()  # same port, empty: the old session is gone, not corrupted
    assert client.get("/read").json == {}
    assert client.get("/set/c/3").status_code == 200
    assert client.get("/read").json == {"c": "3"}


def test_store_dies_between_load_and_save(
    own_valkey: ValkeyServer, own_store: RedisStore, caplog: pytest.LogCaptureFixture
) -> None:
    """A store lost while the view runs turns the response into a 503, not a silent loss."""
    app = make(own_store, own_valkey)
    client = app.test_client()
    client.get("/set/a/1")
    with caplog.at_level(logging.WARNING):
        response = client.get("/kill-then-set")
    assert_clean_503(response, caplog)
    assert b"the view finished" not in response.data


def test_frozen_store_gives_503(
    own_valkey: ValkeyServer, own_store: RedisStore, caplog: pytest.LogCaptureFixture
) -> None:
    """A server that stops answering (SIGSTOP) gives 503 by socket timeout, not a hang.

    With the record cache on, a read within ``TRUST`` of the last reply may come from
    memory (a frozen server completes no other write); past it, it goes to the server.
    """
    app = make(own_store)
    client = app.test_client()
    client.get("/set/a/1")
    own_valkey.freeze()
    try:
        if own_store.cache_stats() is not None:
            time.sleep(TRUST)
        assert_clean_503(client.get("/read"), caplog)
    finally:
        own_valkey.thaw()
    assert client.get("/read").json == {"a": "1"}


def test_store_unavailable_is_typed() -> None:
    """Store errors surface as StoreUnavailable naming the store."""
    store = RedisStore.from_url("redis://127.0.0.1:1/0")
    with pytest.raises(StoreUnavailable, match=r"127\.0\.0\.1:1") as info:
        store.load("k")
    assert info.value.reason
    store.close()


def test_unreadable_sqlite_file_gives_503(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A SQLite file that is not a database gives 503, not a 500."""
    path = tmp_path / "s.sqlite3"
    store = SQLiteStore(path)
    app = make(store)
    client = app.test_client()
    client.get("/set/a/1")
    store.close()
    for suffix in ("", "-wal", "-shm"):
        target = Path(str(path) + suffix)
        if target.exists():
            target.write_bytes(b"this is not a database" * 100)
    assert_clean_503(client.get("/read"), caplog)


def test_session_too_large_writes_nothing(store: Store) -> None:
    """Over SATCHEL_MAX_SIZE: SessionTooLarge, and the stored record is unchanged."""
    app = make(store, SATCHEL_MAX_SIZE=200, TESTING=True)
    client = app.test_client()
    client.get("/set/small/1")
    keys = stored_keys(store)
    with pytest.raises(SessionTooLarge, match="over the limit of 200 bytes") as info:
        client.get("/set/big/" + "x" * 300)
    assert info.value.limit == 200 and info.value.size > 200
    assert stored_keys(store) == keys
    assert client.get("/read").json == {"small": "1"}


def test_too_large_regenerate_keeps_the_old_session(store: Store) -> None:
    """A regenerate() whose session is over the limit deletes nothing: the old ID still works."""
    app = make(store, SATCHEL_MAX_SIZE=200, TESTING=True)

    @app.get("/grow-and-regenerate")
    def grow_and_regenerate() -> str:
        session["big"] = "x" * 300
        session.regenerate()  # type: ignore[attr-defined]
        return "ok"

    client = app.test_client()
    client.get("/set/small/1")
    keys = stored_keys(store)
    with pytest.raises(SessionTooLarge):
        client.get("/grow-and-regenerate")
    assert stored_keys(store) == keys
    assert client.get("/read").json == {"small": "1"}


# -- the app's error handler on save ----------------------------------------------------


class FailingSaves:
    """A store whose saves fail as a stopped server's would; loads work."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def save(self, key: str, change: Any, *, create: bool) -> Any:
        raise StoreUnavailable("FailingSaves", "refusing writes")

    def touch(self, key: str, touched_at: float, expires_at: float) -> bool:
        raise StoreUnavailable("FailingSaves", "refusing writes")


def test_a_custom_store_error_handler_answers_save_failures_too(store: Store) -> None:
    """@app.errorhandler(StoreUnavailable) shapes the answer to a failed save."""
    app = Flask("handler")
    app.config.update(SECRET_KEY=SECRET)
    Satchel(app, store=FailingSaves(store))  # type: ignore[arg-type]

    @app.errorhandler(StoreUnavailable)
    def unavailable(exc: StoreUnavailable) -> Any:
        response = jsonify(error="sessions are down", detail=exc.reason)
        response.status_code = 503
        response.headers["Retry-After"] = "7"
        return response

    @app.get("/write")
    def write() -> str:
        session["x"] = 1
        return "written"

    response = app.test_client().get("/write")
    assert response.status_code == 503
    assert response.is_json and response.json["error"] == "sessions are down"
    assert response.headers["Retry-After"] == "7"
    assert "Set-Cookie" not in response.headers
