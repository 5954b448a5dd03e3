"""ASGI apps under real servers: uvicorn workers (FastAPI, Starlette, Quart) on SQLite, Valkey,
a Valkey Cluster and PostgreSQL, driven over TCP; one session shared with a Flask app under
gunicorn; faults; and a hypercorn smoke test.

Figures are printed (run with ``-s`` to see them).
"""

from __future__ import annotations

import random
import sqlite3
import string
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import redis

from .load import Gunicorn, Hypercorn, Uvicorn, load, read_session, request, start_session
from .valkey import ValkeyCluster, ValkeyServer

WRITES = 150
ITEMS = 40


def report(capsys: Any, line: str) -> None:
    with capsys.disabled():
        print(f"\n[asgi] {line}")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ValkeyCluster]:
    cluster = ValkeyCluster(tmp_path_factory.mktemp("asgi-cluster"))
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture(params=["sqlite", "valkey", "cluster", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A store every worker process shares, empty: each kind in turn."""
    kind = request.param
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path}/sessions.sqlite3"
    elif kind == "postgres":
        yield f"{request.getfixturevalue('postgres').url}?prefix={tmp_path.name}:"
    elif kind == "cluster":
        yield f"{request.getfixturevalue('cluster').url}?prefix={tmp_path.name}:"
    else:
        server = ValkeyServer(tmp_path)
        server.start()
        yield server.url
        server.kill()


def running(server: Any) -> Any:
    server.start()
    return server


def raw_ids_at_rest(store_url: str, ids: list[str]) -> int:
    """How many of ``ids`` appear anywhere in what the store holds (keys and values)."""
    if store_url.startswith("sqlite"):
        held = Path(store_url.removeprefix("sqlite:///")).read_bytes()
        wal = Path(store_url.removeprefix("sqlite:///") + "-wal")
        if wal.exists():
            held += wal.read_bytes()
        return sum(session_id.encode() in held for session_id in ids)
    if store_url.startswith("postgresql"):
        import psycopg

        with psycopg.connect(store_url.split("?", 1)[0]) as conn:
            rows = conn.execute("SELECT key, data::text, ns FROM satchel_sessions").fetchall()
        text = repr(rows)
        return sum(session_id in text for session_id in ids)
    if "+cluster" in store_url:
        from redis.cluster import RedisCluster

        client: Any = RedisCluster.from_url(store_url.replace("+cluster", "").split("?")[0])
    else:
        client = redis.Redis.from_url(store_url)
    dump = []
    for key in client.scan_iter(count=1000):
        dump.append(key)
        if client.type(key) == b"hash":
            dump.extend(v for pair in client.hgetall(key).items() for v in pair)
    client.close()
    blob = b"\0".join(dump)
    return sum(session_id.encode() in blob for session_id in ids)


@pytest.mark.parametrize("app", ["create_fastapi", "create_starlette", "create_quart"])
def test_overlapping_requests_lose_nothing_under_uvicorn_workers(
    store_url: str, app: str, capsys: Any
) -> None:
    """Two uvicorn workers: overlapping writes of distinct keys and appends to one list."""
    server = running(Uvicorn({"ASGIAPP_STORE": store_url}, app=app, workers=2))
    try:
        status, cookie, _ = request(server.port, "/write/first")
        assert status == 200 and cookie
        jobs: list[tuple[str, str | None]] = [(f"/write/k{i}", cookie) for i in range(WRITES)]
        jobs += [(f"/cart/item{i}", cookie) for i in range(ITEMS)]
        random.Random(7).shuffle(jobs)
        result = load(server.port, jobs)
        assert result.statuses == {200: len(jobs)}
        data = read_session(server.port, cookie)
        lost = sum(f"k{i}" not in data for i in range(WRITES))
        lost += len({f"item{i}" for i in range(ITEMS)} - set(data["cart"]))
        report(capsys, f"{app} on {store_url.split(':')[0]}: {len(jobs)} overlapping, lost {lost}")
        assert lost == 0 and len(data["cart"]) == ITEMS
        assert raw_ids_at_rest(store_url, [cookie.rsplit(".", 1)[0]]) == 0
    finally:
        server.stop()


def test_strict_mode_under_uvicorn_workers(store_url: str, capsys: Any) -> None:
    """locking=True: 100 overlapping read-modify-writes of one counter give exactly 100."""
    server = running(Uvicorn({"ASGIAPP_STORE": store_url, "ASGIAPP_LOCKING": "1"}))
    try:
        cookie = start_session(server.port, "counter")
        result = load(server.port, [("/incr", cookie)] * 100)
        assert result.statuses == {200: 100}
        count = read_session(server.port, cookie)["count"]
        report(capsys, f"strict mode on {store_url.split(':')[0]}: 100 increments -> {count}")
        assert count == 100
    finally:
        server.stop()


def test_flask_under_gunicorn_and_fastapi_under_uvicorn_share_sessions(
    store_url: str, capsys: Any
) -> None:
    """What one writes the other reads; merges hold across both; clear and revoke end both."""
    flask = running(Gunicorn({"LOADAPP_STORE": store_url}, workers=2, threads=4))
    fastapi = running(Uvicorn({"ASGIAPP_STORE": store_url}))
    try:
        cookie = start_session(flask.port, "shared")
        assert request(fastapi.port, "/write/from-fastapi", cookie)[0] == 200
        assert request(flask.port, "/write/from-flask", cookie)[0] == 200
        expected = {"owner": "shared", "count": 0, "from-fastapi": True, "from-flask": True}
        assert read_session(flask.port, cookie) == expected
        assert read_session(fastapi.port, cookie) == expected
        # Overlapping appends to one list and nested keys, through both servers at once.
        items = [f"i{n}" for n in range(40)]

        def send(n: int) -> int:
            port = (flask.port, fastapi.port)[n % 2]
            path = f"/cart/{items[n]}" if n % 3 else f"/pref/k{n}/v{n}"
            return request(port, path, cookie)[0]

        with ThreadPoolExecutor(16) as pool:
            statuses = list(pool.map(send, range(len(items))))
        assert statuses == [200] * len(items)
        data = read_session(fastapi.port, cookie)
        carted = {items[n] for n in range(len(items)) if n % 3}
        prefs = {f"k{n}": f"v{n}" for n in range(len(items)) if not n % 3}
        lost = len(carted - set(data["cart"])) + len(prefs.items() - data["prefs"]["ui"].items())
        report(
            capsys, f"gunicorn+uvicorn on {store_url.split(':')[0]}: 40 overlapping, lost {lost}"
        )
        assert lost == 0
        # A clear in the ASGI app ends the session in the Flask app too.
        assert request(fastapi.port, "/clear", cookie)[0] == 200
        assert read_session(flask.port, cookie) == {}
        # A login in FastAPI moves the session to a new ID: the old one is dead in Flask too.
        other = start_session(flask.port, "second")
        status, renewed, _ = request(fastapi.port, "/login/ada", other)
        assert status == 200 and renewed and renewed != other
        assert read_session(flask.port, other) == {}
        assert read_session(flask.port, renewed) == {"owner": "second", "count": 0}
        # "Log out everywhere" in FastAPI ends it in Flask.
        assert request(fastapi.port, "/logout-everywhere", renewed)[0] == 200
        assert read_session(flask.port, renewed) == {}
    finally:
        fastapi.stop()
        flask.stop()


def test_hostile_cookies_never_500_under_uvicorn(tmp_path: Path, capsys: Any) -> None:
    """Forged, truncated, oversized and garbage cookies: a fresh session every time."""
    server = running(Uvicorn({"ASGIAPP_STORE": f"sqlite:///{tmp_path}/s.sqlite3"}))
    try:
        genuine = start_session(server.port, "real")
        rng = random.Random(3)
        alphabet = string.ascii_letters + string.digits + "-_.=/+%"
        cookies = [genuine[:-1] + ("A" if genuine[-1] != "A" else "B"), genuine[:10], "x" * 4000]
        cookies += ["".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 200)))]
        cookies += ["".join(rng.choice(alphabet) for _ in range(60)) for _ in range(300)]
        result = load(server.port, [("/read", cookie) for cookie in cookies])
        report(capsys, f"{len(cookies)} hostile cookies under uvicorn: {result.statuses}")
        assert result.statuses == {200: len(cookies)}
        assert read_session(server.port, genuine) == {"owner": "real", "count": 0}
    finally:
        server.stop()


def test_a_frozen_valkey_gives_503_in_about_a_second(tmp_path: Path, capsys: Any) -> None:
    """SIGSTOP the server: requests with a session answer 503 within ~1 s; others at once."""
    valkey = ValkeyServer(tmp_path)
    valkey.start()
    server = running(Uvicorn({"ASGIAPP_STORE": valkey.url}))
    try:
        cookie = start_session(server.port, "frozen")
        valkey.freeze()
        try:
            with ThreadPoolExecutor(8) as pool:
                started = time.monotonic()
                waiting = [pool.submit(request, server.port, "/read", cookie) for _ in range(6)]
                time.sleep(0.1)
                pinged = time.monotonic()
                assert request(server.port, "/ping")[0] == 200
                ping = time.monotonic() - pinged
                # Answered while the session requests still wait on the frozen server.
                still_waiting = sum(not future.done() for future in waiting)
                statuses = [future.result()[0] for future in waiting]
                slowest = time.monotonic() - started
        finally:
            valkey.thaw()
        report(capsys, f"frozen Valkey: {statuses}, slowest {slowest:.2f}s, ping {ping:.3f}s")
        # The times are reported, not bounded (a loaded machine is slow): what must hold
        # is that every request got its 503 and the ping did not wait for them.
        assert statuses == [503] * 6 and still_waiting > 0
        assert read_session(server.port, cookie) == {"owner": "frozen", "count": 0}
    finally:
        server.stop()
        valkey.kill()


def test_a_locked_sqlite_file_gives_503_not_500(tmp_path: Path) -> None:
    """Another process holds the SQLite file's write lock: writes answer 503, reads go on."""
    path = tmp_path / "s.sqlite3"
    server = running(Uvicorn({"ASGIAPP_STORE": f"sqlite:///{path}?timeout=0.5"}))
    try:
        cookie = start_session(server.port, "locked")
        blocker = sqlite3.connect(path, isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")
        try:
            status, _, _ = request(server.port, "/write/blocked", cookie)
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        assert status == 503
        assert request(server.port, "/write/after", cookie)[0] == 200
    finally:
        server.stop()


def test_hypercorn_serves_the_quart_app(tmp_path: Path) -> None:
    """A smoke test on another ASGI server: the Quart app on SQLite under hypercorn."""
    server = running(Hypercorn({"ASGIAPP_STORE": f"sqlite:///{tmp_path}/s.sqlite3"}))
    try:
        status, cookie, _ = request(server.port, "/write/a")
        assert status == 200 and cookie
        assert request(server.port, "/cart/x", cookie)[0] == 200
        assert read_session(server.port, cookie) == {"a": True, "cart": ["x"]}
    finally:
        server.stop()


def test_a_browser_like_client_over_tcp_under_uvicorn(tmp_path: Path) -> None:
    """httpx with its cookie jar, over TCP, through the FastAPI app: login, cart, logout."""
    import httpx

    server = running(Uvicorn({"ASGIAPP_STORE": f"sqlite:///{tmp_path}/s.sqlite3"}))
    try:
        base = f"http://127.0.0.1:{server.port}"
        with httpx.Client(base_url=base) as laptop, httpx.Client(base_url=base) as phone:
            for client in (laptop, phone):
                assert client.get("/start/ada").status_code == 200
                before = client.cookies["session"]
                assert client.get("/login/ada").status_code == 200
                assert client.cookies["session"] != before  # a new ID at login
            assert laptop.get("/cart/tea").status_code == 200
            assert laptop.get("/read").json()["cart"] == ["tea"]
            assert laptop.get("/logout-everywhere").json() == {"ended": 2}
            assert phone.get("/read").json() == {}
            assert laptop.get("/read").json() == {}
    finally:
        server.stop()
