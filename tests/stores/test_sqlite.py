"""SQLite specifics: WAL mode, purging, and one file shared by several processes."""

from __future__ import annotations

import logging
import multiprocessing
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
from flask import Flask, session

from satchel import Satchel
from satchel.stores import SQLiteStore
from satchel.stores.base import Change, SaveResult

from ..conftest import SECRET, true_in_a_forked_child

WRITES_PER_PROCESS = 30


def test_wal_mode_and_schema(tmp_path: Path) -> None:
    """The file is in WAL mode and holds the two satchel tables."""
    store = SQLiteStore(tmp_path / "s.sqlite3")
    conn = sqlite3.connect(tmp_path / "s.sqlite3")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"satchel_sessions", "satchel_lock"} <= tables
    conn.close()
    store.close()


def test_purge_walks_the_table_in_batches(tmp_path: Path) -> None:
    """purge_expired deletes every expired row, batch by batch, and keeps the live ones."""
    store = SQLiteStore(tmp_path / "s.sqlite3", purge_batch=7)
    now = time.time()
    for i in range(20):
        change = Change(set={"a": b"1", "b": b"2"}, created_at=now, expires_at=now + 0.2)
        store.save(f"old{i}", change, create=True)
    store.save("live", Change(set={"a": b"1"}, expires_at=now + 60), create=True)
    time.sleep(0.3)
    assert store.purge_expired() == 20
    conn = sqlite3.connect(tmp_path / "s.sqlite3")
    rows = conn.execute("SELECT key FROM satchel_sessions").fetchall()
    assert rows == [("live",)]
    conn.close()
    store.close()


def _app(path: str) -> Flask:
    app = Flask("multi")
    app.config.update(SECRET_KEY=SECRET, SATCHEL_STORE=f"sqlite:///{path}")

    @app.get("/write/<key>")
    def write(key: str) -> str:
        session[key] = key
        return "ok"

    @app.get("/read")
    def read() -> dict[str, object]:
        return dict(session)

    Satchel(app)
    return app


def _worker(path: str, cookie: str, name: str, ready: Any, spans: Any) -> None:
    app = _app(path)
    client = app.test_client()
    client.set_cookie("session", cookie)
    ready.wait(60)  # both processes begin together, however long each took to start
    first = time.time()
    for i in range(WRITES_PER_PROCESS):
        response = client.get(f"/write/{name}-{i}")
        assert response.status_code == 200, response.data
    spans.put((first, time.time()))


def test_two_processes_share_one_file(tmp_path: Path) -> None:
    """Two processes writing different keys of one session to one file lose nothing."""
    path = str(tmp_path / "shared.sqlite3")
    app = _app(path)
    client = app.test_client()
    client.get("/write/origin")
    cookie = client.get_cookie("session")
    assert cookie is not None
    context = multiprocessing.get_context("spawn")
    ready, spans = context.Barrier(2), context.Queue()
    workers = [
        context.Process(target=_worker, args=(path, cookie.value, name, ready, spans))
        for name in ("left", "right")
    ]
    for worker in workers:
        worker.start()
    (a_start, a_end), (b_start, b_end) = spans.get(timeout=120), spans.get(timeout=120)
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    assert a_start < b_end and b_start < a_end  # their writes did overlap in time
    data = client.get("/read").json
    assert data is not None
    written = {f"{n}-{i}" for n in ("left", "right") for i in range(WRITES_PER_PROCESS)}
    expected = {"origin"} | written
    assert set(data) == expected
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()


def test_periodic_purge_visits_the_whole_table(tmp_path: Path) -> None:
    """Saves purge one batch every purge_interval, walking on until every row was seen."""
    store = SQLiteStore(tmp_path / "s.sqlite3", purge_interval=0, purge_batch=5)
    now = time.time()
    for i in range(23):
        change = Change(set={"a": b"1"}, created_at=now, expires_at=now + 0.2)
        store.save(f"old{i}", change, create=True)
    time.sleep(0.3)
    for i in range(8):  # each save runs one batch of 5 rowids
        store.save(f"new{i}", Change(set={"a": b"1"}, expires_at=now + 60), create=True)
    conn = sqlite3.connect(tmp_path / "s.sqlite3")
    left = {r[0] for r in conn.execute("SELECT key FROM satchel_sessions")}
    conn.close()
    store.close()
    assert left == {f"new{i}" for i in range(8)}


def _expired_and_live(store: SQLiteStore, pattern: list[bool]) -> set[str]:
    """File one record per entry of ``pattern`` (True: already expired); the live keys."""
    now = time.time()
    with store._connection() as conn:
        conn.execute("BEGIN")
        for n, expired in enumerate(pattern):
            conn.execute(
                "INSERT INTO satchel_sessions (key, created_at, touched_at, expires_at, data)"
                " VALUES (?, ?, ?, ?, '{}')",
                (f"k{n}", now, now, now - 10 if expired else now + 600),
            )
        conn.execute("COMMIT")
    return {f"k{n}" for n, expired in enumerate(pattern) if not expired}


def _stored(store: SQLiteStore) -> set[str]:
    rows, _ = store._run("SELECT key FROM satchel_sessions", ())
    return {row[0] for row in rows}


def test_a_purge_batch_deletes_no_more_rows_than_its_hold_allows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every batch whose delete takes longer than PURGE_HOLD halves the next one's rows
    (at 2 KB a session, a batch of 2,000 held every writer up for 85 ms); the purge
    still removes every expired row and no live one."""
    from satchel.stores import _sqlite_purge as module

    monkeypatch.setattr(module, "PURGE_HOLD", 0.0)  # every batch counts as too long
    store = SQLiteStore(tmp_path / "s.sqlite3", purge_batch=1000)
    live = _expired_and_live(store, [n % 5 != 0 for n in range(300)])
    deleted: list[int] = []
    run = store._run

    def counting(sql: str, args: tuple[object, ...]) -> tuple[list[Any], int]:
        rows, changed = run(sql, args)
        if sql.startswith("DELETE FROM satchel_sessions"):
            deleted.append(changed)
        return rows, changed

    monkeypatch.setattr(store, "_run", counting)
    assert store.purge_expired() == 240
    store.close()
    assert _stored(store) == live
    first = module.PURGE_FIRST_LIMIT
    halving = [first >> n for n in range(first.bit_length())]
    assert deleted[: len(halving)] == halving  # 64, 32, ..., 1
    assert set(deleted[len(halving) :]) == {1}


@pytest.mark.parametrize("seed", range(12))
def test_a_purge_removes_exactly_the_expired_rows_whatever_the_batches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed: int
) -> None:
    """Rows expired and live in any order, batches of any width and row limit (adapting
    up or down): the walk removes every expired row once and never a live one."""
    import random

    from satchel.stores import _sqlite_purge as module

    rng = random.Random(seed)
    monkeypatch.setattr(module, "PURGE_HOLD", rng.choice([0.0, 1e-9, 10.0]))
    monkeypatch.setattr(module, "PURGE_FIRST_LIMIT", rng.randint(1, 9))
    store = SQLiteStore(tmp_path / "s.sqlite3", purge_batch=rng.randint(1, 40))
    pattern = [rng.random() < rng.choice([0.1, 0.5, 0.9]) for _ in range(rng.randint(1, 250))]
    live = _expired_and_live(store, pattern)
    assert store.purge_expired() == sum(pattern)
    assert _stored(store) == live
    store.close()


def test_the_periodic_purge_walks_on_shortly_until_the_table_is_clean(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A walk that began goes on a batch every PURGE_STEP_SECONDS, not a batch every
    purge_interval (2,000 rows every five minutes fell behind any site creating more
    than seven sessions a second); once it has walked the table, the next walk waits
    purge_interval."""
    from satchel.stores import _sqlite_purge as module

    monkeypatch.setattr(module, "PURGE_STEP_SECONDS", 0.0)
    store = SQLiteStore(tmp_path / "s.sqlite3", purge_batch=10)
    live = _expired_and_live(store, [n % 4 != 0 for n in range(100)])
    store._next_purge = 0.0  # the interval is up
    saves = 0
    while _stored(store) - {"new"} != live:
        now = time.time()
        change = Change(set={"n": str(saves).encode()}, created_at=now, expires_at=now + 60)
        assert store.save("new", change, create=saves == 0) is SaveResult.SAVED
        saves += 1
        assert saves <= 20, "the walk stopped before the table was clean"
    assert saves >= 100 // 10 - 1  # one batch a save, each walking ten rowids at most
    assert store._next_purge > time.time() + 299  # the walk is over: next in 300 s
    store.close()


def test_non_utf8_bytes_and_json_look_alikes_survive(tmp_path: Path) -> None:
    """Field values are opaque bytes: binary, null-looking and marker-looking ones round-trip."""
    store = SQLiteStore(tmp_path / "s.sqlite3")
    fields = {"bin": b"\xff\x00\xfe", "null": b"null", "eq": b"=x", "tilde": b"~eA==", "e": b""}
    now = time.time()
    store.save("k", Change(set=fields, created_at=now, expires_at=now + 60), create=True)
    store.save("k", Change(set={"null": b"\x80"}, delete=["e"], expires_at=now + 60), create=False)
    record = store.load("k")
    store.close()
    assert record is not None
    expected = {**fields, "null": b"\x80"}
    del expected["e"]
    assert dict(record.fields) == expected


def test_a_forked_child_opens_its_own_connection(tmp_path: Path) -> None:
    """A connection never crosses a fork: the child makes its own and still reads."""
    store = SQLiteStore(tmp_path / "s.sqlite3")
    now = time.time()
    change = Change(set={"x": b"1"}, created_at=now, touched_at=now, expires_at=now + 60)
    assert store.save("k" * 64, change, create=True) == SaveResult.SAVED
    with store._connection() as parent_conn:
        pass
    assert true_in_a_forked_child(
        lambda: (
            store.load("k" * 64) is not None
            and list(store._connections.idle) not in ([], [parent_conn])
        )
    )
    assert list(store._connections.idle) == [parent_conn] and store.load("k" * 64) is not None
    store.close()


def test_a_thread_per_request_reuses_connections(tmp_path: Path) -> None:
    """Threads share idle connections: a server that starts a thread per request leaks none."""
    import os
    import threading

    store = SQLiteStore(tmp_path / "s.sqlite3")
    store.load("k" * 64)
    open_files = len(os.listdir("/proc/self/fd"))
    for _ in range(50):
        thread = threading.Thread(target=store.load, args=("k" * 64,))
        thread.start()
        thread.join()
    assert len(store._connections.made) == 1
    assert len(os.listdir("/proc/self/fd")) == open_files
    store.close()


def test_a_burst_of_threads_leaves_few_connections_open(tmp_path: Path) -> None:
    """Hardening item 13: 300 threads at once, then quiet: idle connections shrink to a bound."""
    import os
    import threading

    store = SQLiteStore(tmp_path / "s.sqlite3", max_idle=4)
    store.load("k" * 64)
    before = len(os.listdir("/proc/self/fd"))
    holding = threading.Semaphore(0)
    hold = threading.Event()

    def burst() -> None:
        with store._connection():  # each thread holds one connection at the same time
            holding.release()
            hold.wait(10)

    threads = [threading.Thread(target=burst) for _ in range(300)]
    for t in threads:
        t.start()
    for _ in threads:
        assert holding.acquire(timeout=10)
    during = len(os.listdir("/proc/self/fd"))
    hold.set()
    for t in threads:
        t.join()
    after = len(os.listdir("/proc/self/fd"))
    assert during >= before + 299  # the burst really opened them
    assert len(store._connections.made) <= 4
    assert after <= before  # the first connection's files were let go of too
    assert store.load("k" * 64) is None  # and the store still works
    assert len(store._connections.made) == 1
    store.close()


def test_a_file_deleted_under_the_app_answers_503(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Hardening item 13: deleting the SQLite file while running gives 503s, not lost writes."""
    path = tmp_path / "s.sqlite3"
    app = Flask("deleted")
    app.config.update(SECRET_KEY=SECRET)
    Satchel(app, store=SQLiteStore(path))
    app.add_url_rule("/w", "w", lambda: session.update(x=1) or "ok")
    client = app.test_client()
    assert client.get("/w").status_code == 200
    for name in ("s.sqlite3", "s.sqlite3-wal", "s.sqlite3-shm"):
        (tmp_path / name).unlink(missing_ok=True)
    time.sleep(1.1)  # the file is looked at once a second
    with caplog.at_level(logging.ERROR, logger="satchel"):
        statuses = {app.test_client().get("/w").status_code for _ in range(5)}
    assert statuses == {503}
    assert "changed under the running app" in caplog.text
