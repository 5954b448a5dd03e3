"""Real load on gunicorn (4 workers × 4 threads): overlap, strict mode, faults, restarts.

Figures are printed (run with ``-s`` to see them) and quoted in docs/reliability.md.
"""

from __future__ import annotations

import json
import multiprocessing
import sqlite3
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from .load import Gunicorn, load, read_session, request, start_session
from .postgres import PostgresServer
from .valkey import ValkeyServer

WRITES = 300
INCREMENTS = 200


def report(capsys: Any, line: str) -> None:
    with capsys.disabled():
        print(f"\n[load] {line}")


@pytest.fixture(params=["sqlite", "valkey", "valkey-cached", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A persistent store: a SQLite file, a private Valkey (with the record cache on, or
    not), or PostgreSQL under a fresh prefix."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/sessions.sqlite3"
        return
    if request.param == "postgres":
        yield f"{request.getfixturevalue('postgres').url}?prefix={tmp_path.name}:"
        return
    server = ValkeyServer(tmp_path)
    server.start()
    yield server.url + ("?cache=8MB" if request.param == "valkey-cached" else "")
    server.kill()


@pytest.fixture
def app_server(store_url: str) -> Iterator[Gunicorn]:
    server = Gunicorn({"LOADAPP_STORE": store_url})
    server.start()
    yield server
    server.stop()


def test_overlapping_writes_lose_nothing(app_server: Gunicorn, capsys: Any) -> None:
    """300 overlapping requests of one session, each writing its own key: all 300 kept."""
    cookie = start_session(app_server.port, "solo")
    result = load(app_server.port, [(f"/write/k{i}", cookie) for i in range(WRITES)])
    assert result.statuses == {200: WRITES}
    data = read_session(app_server.port, cookie)
    lost = sum(1 for i in range(WRITES) if f"k{i}" not in data)
    report(capsys, f"{app_server.env}: {WRITES} overlapping writes, 16 clients, lost {lost}")
    assert lost == 0


def test_overlapping_appends_to_one_list_lose_nothing(app_server: Gunicorn, capsys: Any) -> None:
    """60 overlapping `session["cart"].append(item)` requests, no strict mode: all 60 kept."""
    cookie = start_session(app_server.port, "cart")
    items = [f"item{i}" for i in range(60)]
    result = load(app_server.port, [(f"/cart/{item}", cookie) for item in items])
    assert result.statuses == {200: len(items)}
    cart = read_session(app_server.port, cookie)["cart"]
    lost = len(set(items) - set(cart))
    report(capsys, f"{app_server.env}: {len(items)} overlapping appends to one list, lost {lost}")
    assert lost == 0 and sorted(cart) == sorted(items)


def test_overlapping_nested_key_updates_lose_nothing(app_server: Gunicorn, capsys: Any) -> None:
    """60 overlapping `session["prefs"]["ui"][k] = v` requests, different k: all 60 kept."""
    cookie = start_session(app_server.port, "prefs")
    result = load(app_server.port, [(f"/pref/k{i}/v{i}", cookie) for i in range(60)])
    assert result.statuses == {200: 60}
    ui = read_session(app_server.port, cookie)["prefs"]["ui"]
    lost = sum(1 for i in range(60) if ui.get(f"k{i}") != f"v{i}")
    report(capsys, f"{app_server.env}: 60 overlapping nested-key updates, lost {lost}")
    assert lost == 0


def test_strict_mode_counter(app_server: Gunicorn, capsys: Any) -> None:
    """200 overlapping read-modify-writes of one counter in a @locked view: exactly 200."""
    cookie = start_session(app_server.port, "counter")
    result = load(app_server.port, [("/incr-locked", cookie)] * INCREMENTS)
    assert result.statuses == {200: INCREMENTS}
    count = read_session(app_server.port, cookie)["count"]
    report(capsys, f"{app_server.env}: {INCREMENTS} locked increments -> {count}")
    assert count == INCREMENTS


def test_sessions_survive_an_app_restart(app_server: Gunicorn) -> None:
    """Stopping and starting the app servers keeps every session."""
    cookie = start_session(app_server.port, "durable")
    request(app_server.port, "/write/kept", cookie)
    app_server.stop()
    app_server.start()
    assert read_session(app_server.port, cookie) == {"owner": "durable", "count": 0, "kept": True}


def test_emptying_requests_never_delete_overlapping_writes(
    app_server: Gunicorn, capsys: Any, tmp_path: Path
) -> None:
    """300 rounds: one request pops the only flash while another stores a cart.

    The order is made, not hoped for: the emptying request loads and empties its
    view, then the cart is written and acknowledged, and only then does the
    emptying request save (it waits for a marker file the test creates). Every
    acknowledged cart must be in the session the browser holds afterwards: the
    emptying save deletes only the keys its request removed. (A request told its
    session ended, by an expired cookie, would not count as acknowledged.)
    """
    rounds = 300

    def one_round(n: int) -> tuple[int, str | None, bool]:
        status, cookie, _ = request(app_server.port, f"/flash/hello{n}")
        assert status == 200 and cookie
        popped, go = tmp_path / f"popped{n}", tmp_path / f"go{n}"
        path = f"/show-flashes-slowly?popped={popped}&go={go}"
        popper = threading.Thread(target=request, args=(app_server.port, path, cookie))
        popper.start()
        deadline = time.monotonic() + 30
        while not popped.exists():  # the popper has loaded and emptied its view
            assert time.monotonic() < deadline, "the emptying request never ran"
            time.sleep(0.001)
        written, set_cookie, _ = request(app_server.port, f"/write/cart{n}", cookie)
        go.touch()  # only now may the emptying request save
        popper.join()
        held = set_cookie or cookie  # what a browser holds after this response
        return written, set_cookie, f"cart{n}" in read_session(app_server.port, held)

    # Three rounds at a time: a waiting emptying request holds a worker's thread, and
    # fewer of them than a worker has threads (4) can never leave a write stuck behind.
    with ThreadPoolExecutor(3) as pool:
        outcomes = list(pool.map(one_round, range(rounds)))
    assert all(status == 200 for status, _, _ in outcomes)
    kept_cookie = [kept for _, set_cookie, kept in outcomes if set_cookie != ""]
    told = [kept for _, set_cookie, kept in outcomes if set_cookie == ""]
    lost = kept_cookie.count(False)
    summary = f"cookie kept {len(kept_cookie)}, of which lost {lost}; expired {len(told)}"
    report(capsys, f"{app_server.env}: {rounds} emptying rounds; {summary}")
    assert lost == 0
    assert not any(told), "a write told its session ended was not stored either"


@pytest.fixture
def durable_valkey(tmp_path: Path) -> Iterator[ValkeyServer]:
    """A Valkey that writes every acknowledged command to disk before answering."""
    server = ValkeyServer(tmp_path, None, "--appendonly", "yes", "--appendfsync", "always")
    server.start()
    yield server
    server.kill()


def faulty_run(
    server: ValkeyServer | PostgresServer, fault: str, capsys: Any, query: str = ""
) -> tuple[Gunicorn, list[str], list[tuple[str, str | None]], Any]:
    app = Gunicorn({"LOADAPP_STORE": server.url + query})
    app.start()
    markers = [f"s{n}" for n in range(20)]
    cookies = {m: start_session(app.port, m) for m in markers}
    jobs: list[tuple[str, str | None]] = [
        (f"/write/{m}-{i}", cookies[m]) for i in range(30) for m in markers
    ]
    # The fault comes once a sixth of the writes have been answered, with the rest
    # still to send and some in flight, however fast this machine serves them (after a
    # fixed half second, a fast run had sent all 600 before it).
    under_way = threading.Event()

    def answered(count: int) -> None:
        if count == len(jobs) // 6:
            under_way.set()

    def inject() -> None:
        assert under_way.wait(60), "the load never got under way"
        if fault == "kill":
            server.kill()
            time.sleep(1.5)
            server.start()
        else:
            server.freeze()
            time.sleep(2.5)
            server.thaw()

    injector = threading.Thread(target=inject)
    injector.start()
    result = load(app.port, jobs, answered=answered)
    injector.join()
    report(
        capsys,
        f"{type(server).__name__} {fault}: {len(jobs)} requests from 20 sessions, "
        f"statuses {result.statuses}, "
        f"no answer {result.no_answer}, slowest 503 {result.slowest_503:.2f}s",
    )
    return app, markers, jobs, (result, cookies)


def recovered(port: int, cookies: dict[str, str], within: float = 30.0) -> dict[str, Any]:
    """Each session as the app reads it once it answers for it again, by itself.

    Only a 503 is waited out (a worker whose breaker is still open, or whose pool
    is reconnecting, answers one until its next try); any other status fails.
    Each session is asked until it answers, so every worker that serves one has
    recovered, however the kernel spreads the connections among them.
    """
    deadline = time.monotonic() + within
    sessions: dict[str, Any] = {}
    for marker, cookie in cookies.items():
        while True:
            status, _, body = request(port, "/read", cookie)
            if status == 200:
                sessions[marker] = json.loads(body)
                break
            assert status == 503, body
            assert time.monotonic() < deadline, "the app did not recover by itself"
            time.sleep(0.05)
    return sessions


@pytest.fixture(params=["valkey", "valkey-cached", "postgres"])
def durable_server(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[ValkeyServer | PostgresServer, str]]:
    """A server that keeps every acknowledged write across a kill: Valkey (with the record
    cache on, or not) or PostgreSQL; and what the store URL adds to the server's."""
    if request.param.startswith("valkey"):
        query = "?cache=8MB" if request.param == "valkey-cached" else ""
        yield request.getfixturevalue("durable_valkey"), query
        return
    server = PostgresServer(tmp_path)
    server.start()
    yield server, ""
    server.kill()


@pytest.mark.parametrize("fault", ["kill", "freeze"])
def test_store_fault_under_load(
    durable_server: tuple[ValkeyServer | PostgresServer, str], fault: str, capsys: Any
) -> None:
    """Killed-and-restarted or frozen server: only 200s and 503s, nothing acknowledged lost."""
    server, query = durable_server
    app, markers, jobs, (result, cookies) = faulty_run(server, fault, capsys, query)
    try:
        assert result.no_answer == 0, "no request hung past the client's timeout"
        assert set(result.statuses) <= {200, 503}
        assert result.count(503) > 0, "the fault was felt"
        assert result.count(200) > 0
        # Recovered without a restart of the app, sessions intact and unmixed:
        sessions = recovered(app.port, cookies)
        for marker in markers:
            data = sessions[marker]
            assert data["owner"] == marker
            assert all(k.startswith(marker + "-") for k in data if k not in ("owner", "count"))
        for (path, cookie), status in zip(jobs, result.each, strict=True):
            if status == 200:
                key = path.rsplit("/", 1)[1]
                owner = key.split("-")[0]
                assert key in sessions[owner], "acknowledged write kept"
                assert cookie == cookies[owner]
    finally:
        app.stop()


def _hold_lock(path: str, seconds: float, ready: Any) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN EXCLUSIVE")
    ready.set()
    time.sleep(seconds)
    conn.execute("COMMIT")
    conn.close()


def test_sqlite_file_locked_by_another_process(tmp_path: Path, capsys: Any) -> None:
    """A writer holding the file: writes wait the busy timeout then 503; reads go on (WAL)."""
    path = tmp_path / "sessions.sqlite3"
    app = Gunicorn({"LOADAPP_STORE": f"sqlite:///{path}?timeout=1"}, workers=2, threads=2)
    app.start()
    try:
        cookie = start_session(app.port, "locked")
        context = multiprocessing.get_context("spawn")
        ready = context.Event()
        holder = context.Process(target=_hold_lock, args=(str(path), 4.0, ready))
        holder.start()
        assert ready.wait(20)
        started = time.monotonic()
        write_status, _, body = request(app.port, "/write/during", cookie)
        waited = time.monotonic() - started
        read_status, _, _ = request(app.port, "/read", cookie)
        holder.join(30)
        report(capsys, f"sqlite locked: write -> {write_status} after {waited:.2f}s, "
                       f"read -> {read_status}")  # fmt: skip
        assert write_status == 503 and b"session store" in body
        assert read_status == 200
        assert request(app.port, "/write/after", cookie)[0] == 200
        data = read_session(app.port, cookie)
        assert "after" in data and "during" not in data
    finally:
        app.stop()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()
