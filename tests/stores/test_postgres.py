"""The PostgreSQL store's own behaviour, beyond the shared contract: faults, schema, pools."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from flask import Flask, session

from satchel import ConfigError, Satchel
from satchel.errors import StoreUnavailable
from satchel.stores import from_url
from satchel.stores.base import Change
from satchel.stores.postgres import SCHEMA, PostgresStore

from ..conftest import SECRET
from ..postgres import PostgresServer
from ..support.responses import assert_clean_503


def report(line: str) -> None:
    """A figure for docs/reliability.md, printed with -s."""
    print(f"\n[postgres] {line}")


@pytest.fixture
def own_postgres(tmp_path: Path) -> Iterator[PostgresServer]:
    """A private server that a test may stop, freeze or restart."""
    server = PostgresServer(tmp_path)
    server.start()
    yield server
    server.kill()


def app_on(store: PostgresStore) -> Flask:
    app = Flask("pg")
    app.config.update(SECRET_KEY=SECRET)
    Satchel(app, store=store)
    app.add_url_rule("/read", "read", lambda: dict(session))
    app.add_url_rule("/set/<k>/<v>", "set", lambda k, v: session.update({k: v}) or "ok")
    return app


def test_urls_build_postgres_stores(postgres: PostgresServer) -> None:
    """postgresql:// and postgres:// URLs; satchel's options are taken off, libpq's kept."""
    port = postgres.port
    for url in (
        postgres.url,
        f"postgres://postgres@127.0.0.1:{port}/satchel?timeout=2&prefix=app:",
        f"postgresql://postgres@127.0.0.1:{port}/satchel?sslmode=disable&create_schema=false",
    ):
        store = from_url(url)
        assert isinstance(store, PostgresStore)
        assert store.load("0" * 64) is None
        store.close()
    store = from_url(f"postgres://postgres@127.0.0.1:{port}/satchel?timeout=2&prefix=app:")
    assert (store.timeout, store.prefix) == (2.0, "app:")  # type: ignore[attr-defined]
    store.close()


def test_the_schema_is_created_once_by_workers_starting_together(
    own_postgres: PostgresServer,
) -> None:
    """Eight stores (as eight workers) creating the schema at once: no error, one schema."""
    stores = [PostgresStore.from_url(own_postgres.url) for _ in range(8)]
    barrier = threading.Barrier(8)
    errors: list[BaseException] = []

    def first_use(store: PostgresStore) -> None:
        barrier.wait()
        try:
            store.load("0" * 64)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=first_use, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    for store in stores:
        store.close()


def test_threads_of_one_worker_wait_for_the_schema_it_is_creating(
    own_postgres: PostgresServer,
) -> None:
    """Eight threads of one store (one worker's first requests at once) on a new
    database: none may run a statement before the schema the first one makes is there."""
    for attempt in range(5):  # a fresh database each time: the race is at first use
        name = f"threads{attempt}"
        with psycopg.connect(own_postgres.url, autocommit=True) as admin:
            admin.execute(f"CREATE DATABASE {name}")
        store = PostgresStore.from_url(own_postgres.url.rsplit("/", 1)[0] + "/" + name)
        barrier = threading.Barrier(8)
        errors: list[BaseException] = []

        def first_use(
            n: int,
            store: PostgresStore = store,
            barrier: threading.Barrier = barrier,
            errors: list[BaseException] = errors,
        ) -> None:
            barrier.wait()
            now = time.time()
            change = Change(set={"a": b"1"}, created_at=now, touched_at=now, expires_at=now + 60)
            try:
                store.save(f"{n:064d}", change, create=True)
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=first_use, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        store.close()
        assert errors == []


def test_without_auto_creation_the_documented_schema_is_used(own_postgres: PostgresServer) -> None:
    """create_schema=False touches no DDL; the SCHEMA text, run by hand, is all it needs."""
    store = PostgresStore.from_url(own_postgres.url, create_schema=False)
    with pytest.raises(Exception, match="satchel_sessions"):
        store.load("0" * 64)
    with psycopg.connect(own_postgres.url, autocommit=True) as conn:
        conn.execute(SCHEMA)  # type: ignore[arg-type]
    app = app_on(store)
    client = app.test_client()
    assert client.get("/set/a/1").status_code == 200
    assert client.get("/read").json == {"a": "1"}
    store.close()


def test_the_raw_id_is_never_stored(postgres_store: PostgresStore) -> None:
    """The table holds hashes of IDs only."""
    app = app_on(postgres_store)
    client = app.test_client()
    client.get("/set/a/1")
    raw = client.get_cookie("session").value.rsplit(".", 1)[0]  # type: ignore[union-attr]
    rows, _ = postgres_store._run("SELECT key, data::text, meta::text FROM satchel_sessions")
    assert rows and all(raw not in " ".join(row) for row in rows)


def test_stopped_server_gives_503_at_once_then_recovers(
    own_postgres: PostgresServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Stopped: 503s within about a second, no traceback; started again: back by itself."""
    store = PostgresStore.from_url(own_postgres.url)
    app = app_on(store)
    client = app.test_client()
    assert client.get("/set/a/1").status_code == 200
    own_postgres.stop()
    with caplog.at_level(logging.WARNING):
        slowest = 0.0
        for path in ("/read", "/set/b/2", "/read"):
            started = time.monotonic()
            assert_clean_503(client.get(path), caplog)
            slowest = max(slowest, time.monotonic() - started)
    report(f"postgres stopped: slowest 503 after {slowest:.3f}s")  # a figure, not a bound
    own_postgres.start()
    deadline = time.monotonic() + 30
    while client.get("/read").status_code != 200:  # the breaker lets a retry through soon
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert client.get("/read").json == {"a": "1"}  # nothing acknowledged was lost
    assert client.get("/set/c/3").status_code == 200
    store.close()


def test_frozen_server_gives_503_not_a_hang(own_postgres: PostgresServer) -> None:
    """Every backend SIGSTOPped: 503 within about a second, then the breaker answers at once."""
    store = PostgresStore.from_url(own_postgres.url)
    app = app_on(store)
    client = app.test_client()
    client.get("/set/a/1")
    own_postgres.freeze()
    try:
        timings = []
        for _ in range(3):
            started = time.monotonic()
            assert client.get("/read").status_code == 503
            timings.append(time.monotonic() - started)
        # Figures, not bounds (a loaded machine is slow): the first 503 comes from the
        # client's own bound on a statement, the next from the breaker (tested below).
        report(f"postgres frozen: first 503 after {timings[0]:.2f}s, then "
               f"{max(timings[1:]):.3f}s")  # fmt: skip
    finally:
        own_postgres.thaw()
    deadline = time.monotonic() + 30
    while client.get("/read").status_code != 200:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert client.get("/read").json == {"a": "1"}
    store.close()


def test_the_breaker_answers_without_touching_the_server(postgres: PostgresServer) -> None:
    """After a connection failure the store answers StoreUnavailable at once, asking
    for no connection at all, until the breaker's half second has passed."""
    store = PostgresStore.from_url(postgres.url)
    try:
        assert store.load("warm") is None
        store._down_until = time.monotonic() + 60  # as a failed connection leaves it

        def no_connection() -> None:
            raise AssertionError("the breaker let a call through to the server")

        store._connections.take = no_connection  # type: ignore[method-assign]
        with pytest.raises(StoreUnavailable, match="failed a moment ago"):
            store.load("warm")
    finally:
        store._down_until = 0.0
        store.close()


def test_a_forked_worker_opens_its_own_connections(postgres_store: PostgresStore) -> None:
    """A child made by fork() never uses the parent's connections."""
    from ..conftest import true_in_a_forked_child

    postgres_store.load("0" * 64)
    parent = list(postgres_store._connections.made)

    def child() -> bool:
        postgres_store.load("0" * 64)
        return postgres_store._connections.made != parent and len(parent) == 1

    assert true_in_a_forked_child(child)
    assert postgres_store.load("0" * 64) is None  # the parent's connection still works


def test_a_pool_object_is_used_as_given(postgres: PostgresServer) -> None:
    """PostgresStore(pool=ConnectionPool(...)): the store borrows from the app's own pool."""
    from psycopg_pool import ConnectionPool

    with ConnectionPool(postgres.url, min_size=1, max_size=4, open=True) as pool:
        store = PostgresStore(pool=pool, prefix="pooled:")
        app = app_on(store)
        client = app.test_client()
        assert client.get("/set/a/1").status_code == 200
        assert client.get("/read").json == {"a": "1"}
        assert pool.get_stats()["connections_num"] >= 1
        store.close()


def test_a_conninfo_or_a_pool_is_required() -> None:
    """Neither, or both, is a ConfigError."""
    with pytest.raises(ConfigError):
        PostgresStore()
    with pytest.raises(ConfigError):
        PostgresStore("dbname=x", pool=object())  # type: ignore[arg-type]


def test_purge_deletes_expired_rows_in_batches(postgres_store: PostgresStore) -> None:
    """purge_in_batches walks the expired rows by the expiry index and reports progress."""
    from satchel.stores.base import Change

    now = time.time()
    gone = Change(set={"a": b"1"}, created_at=now, touched_at=now, expires_at=now + 0.2)
    for i in range(2500):
        postgres_store.save(f"old{i:05d}", gone, create=True)
    live = Change(set={"a": b"1"}, created_at=now, touched_at=now, expires_at=now + 60)
    postgres_store.save("live", live, create=True)
    time.sleep(0.3)
    steps = list(postgres_store.purge_in_batches())
    assert [removed for _, _, removed in steps] == [2000, 500]
    assert steps[-1][:2] == (2500, 2500)
    assert postgres_store.load("live") is not None
    assert postgres_store.count() == (1, 0)


def test_a_full_server_is_back_pressure_not_an_outage(tmp_path: Path) -> None:
    """40 threads on a 12-connection server: calls wait for a connection, none fails."""
    server = PostgresServer(tmp_path, max_connections=12)
    server.start()
    store = PostgresStore.from_url(server.url, timeout=5)
    try:
        store.save("warm", Change(set={"a": b"1"}, expires_at=time.time() + 60), create=True)
        threads = 40
        barrier = threading.Barrier(threads)
        failures: list[BaseException] = []

        def work(n: int) -> None:
            barrier.wait()
            try:
                for i in range(15):
                    now = time.time()
                    change = Change(set={"n": str(i).encode()}, touched_at=now, expires_at=now + 60)
                    store.save(f"k{n}", change, create=i == 0)
                    assert store.load(f"k{n}") is not None
            except BaseException as exc:
                failures.append(exc)

        pool = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
        for t in pool:
            t.start()
        for t in pool:
            t.join()
        # The server really ran out of slots meanwhile, and every call still succeeded.
        log = (tmp_path / "server.log").read_text(errors="replace")
        assert "too many clients" in log
        assert failures == []
    finally:
        store.close()
        server.kill()


def test_saves_purge_expired_rows_now_and_then(postgres: PostgresServer) -> None:
    """A save past purge_interval removes a batch of expired rows (every namespace's)."""
    store = PostgresStore.from_url(postgres.url, purge_interval=0.0, prefix="purge:")
    store._run("DELETE FROM satchel_sessions WHERE ns = 'purge:'")
    try:
        now = time.time()
        for n in range(5):
            old = Change(set={"a": b"1"}, created_at=now, touched_at=now, expires_at=now + 0.1)
            store.save(f"old{n}", old, create=True)
        time.sleep(0.2)
        rows, _ = store._run("SELECT count(*) FROM satchel_sessions WHERE ns = 'purge:'")
        assert rows[0][0] == 5  # expired, but still stored until something purges them
        live = Change(set={"a": b"1"}, created_at=now, touched_at=now, expires_at=now + 60)
        store.save("live", live, create=True)  # a save: the interval is due, a batch runs
        rows, _ = store._run("SELECT key FROM satchel_sessions WHERE ns = 'purge:'")
        assert [row[0] for row in rows] == ["purge:live"]
    finally:
        store.close()


def test_a_full_purge_batch_makes_the_next_one_due_shortly(
    own_postgres: PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A request's batch deletes PURGE_STEP_ROWS rows at most (a few milliseconds of its
    time); while batches come back full the next is due after PURGE_STEP_SECONDS, not
    purge_interval, so purging keeps up with sessions that expire faster than a batch
    an interval; a batch that was not full waits the interval."""
    from satchel.stores import _postgres_rules

    monkeypatch.setattr(_postgres_rules, "PURGE_STEP_ROWS", 2)
    store = PostgresStore.from_url(own_postgres.url)  # a server of its own: purges are global
    try:
        now = time.time()
        for n in range(5):
            old = Change(set={"a": b"1"}, created_at=now, touched_at=now, expires_at=now - 1)
            store.save(f"old{n}", old, create=True)
        live = Change(set={"a": b"1"}, created_at=now, touched_at=now, expires_at=now + 60)
        store.save("live", live, create=True)
        after = []
        for _ in range(3):
            store._next_purge = 0.0  # due: this save runs a batch
            store.save("live", Change(set={"a": b"2"}, expires_at=now + 60), create=False)
            rows, _ = store._run("SELECT count(*) FROM satchel_sessions", ())
            after.append((rows[0][0], store._next_purge - time.time()))
        assert [count for count, _ in after] == [4, 2, 1]
        assert all(due <= _postgres_rules.PURGE_STEP_SECONDS for _, due in after[:2])
        assert after[2][1] > 299
    finally:
        store.close()
