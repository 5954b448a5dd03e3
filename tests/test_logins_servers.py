"""Logins and renewals across processes, on gunicorn (Flask, 4 workers × 4 threads) and
uvicorn (FastAPI, 2 workers), on every persistent store and on a Valkey Cluster: 3 × N
logins of one owner at once leave exactly N live sessions, and requests sent at once
with a session's old ID all end in one renewed session, every change kept."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from satchel.serialization import dumps
from satchel.signing import CookieSigner, new_id, store_key
from satchel.stores import from_url
from satchel.stores.base import Change, SaveResult

from .apps.loadapp import SECRET
from .load import Gunicorn, Server, Uvicorn, load, read_session
from .load import request as get
from .valkey import ValkeyCluster, ValkeyServer

LIMIT = 4


@pytest.fixture(params=["sqlite", "valkey", "cluster", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/sessions.sqlite3"
    elif request.param == "postgres":
        yield f"{request.getfixturevalue('postgres').url}?prefix={tmp_path.name}:"
    elif request.param == "cluster":
        cluster: ValkeyCluster = request.getfixturevalue("shared_cluster")
        yield f"{cluster.url}?prefix={tmp_path.name}:"
    else:
        server = ValkeyServer(tmp_path)
        server.start()
        yield server.url
        server.kill()


def counted(port: int, workers: int) -> dict[str, int]:
    """Every worker's counters, summed, each worker counted once (told apart by pid)."""
    total: dict[str, int] = {}
    pids: set[int] = set()
    for _ in range(1000):
        if len(pids) == workers:
            return total
        _, _, body = get(port, "/stats")
        answer = json.loads(body)
        pid = answer.pop("pid")
        if pid not in pids:
            pids.add(pid)
            for name, value in answer.items():
                total[name] = total.get(name, 0) + value
    raise AssertionError(f"only {len(pids)} of {workers} workers answered /stats")


def old_session(store_url: str) -> str:
    """A stored session whose ID was issued two hours ago; its cookie."""
    store = from_url(store_url)
    session_id, now = new_id(), time.time()
    change = Change(
        set={"start": dumps(True, "start")},
        created_at=now - 7200,
        touched_at=now,
        expires_at=now + 3600,
        ends_by=now + 86400,
        meta={"id_issued_at": repr(now - 7200)},
    )
    try:
        assert store.save(store_key(session_id), change, create=True) == SaveResult.SAVED
    finally:
        store.close()
    return CookieSigner(SECRET).sign(session_id)


#: Each store under one server, each server on two stores (every async store and the
#: sync ones also run these rules in process: tests/test_logins_async.py, test_renewal.py).
SERVER_OF = {
    "sqlite": "gunicorn", "valkey": "uvicorn", "cluster": "gunicorn", "postgres": "uvicorn"
}  # fmt: skip


def test_logins_and_renewals_from_many_processes(
    store_url: str, request: pytest.FixtureRequest
) -> None:
    kind = SERVER_OF[request.node.callspec.params["store_url"]]
    server: Server
    if kind == "gunicorn":
        server = Gunicorn(
            {"LOADAPP_STORE": store_url, "LOADAPP_MAX_SESSIONS": str(LIMIT),
             "LOADAPP_RENEWAL": "3600"}
        )  # fmt: skip
    else:
        server = Uvicorn(
            {"ASGIAPP_STORE": store_url, "ASGIAPP_MAX_SESSIONS": str(LIMIT),
             "ASGIAPP_RENEWAL": "3600"}
        )  # fmt: skip
    workers = 4 if kind == "gunicorn" else 2
    old = old_session(store_url)
    server.start()
    try:
        for _ in range(8):  # rounds of 3 × N logins at once, until some really overlapped
            result = load(server.port, [("/login/zoe", None)] * (3 * LIMIT), clients=3 * LIMIT)
            assert result.statuses == {200: 3 * LIMIT}
            assert live(store_url, "zoe") == LIMIT  # exact after every round
            if counted(server.port, workers)["login_waits"] >= 1:
                break
        cookies: list[str | None] = []

        def write(key: str) -> None:
            status, cookie, _ = get(server.port, f"/write/{key}", old)
            assert status == 200
            cookies.append(cookie)

        keys = [f"k{i}" for i in range(12)]
        with ThreadPoolExecutor(len(keys)) as pool:
            list(pool.map(write, keys))
        renewed = {cookie for cookie in cookies}
        assert len(renewed) == 1 and None not in renewed and old not in renewed  # one new ID
        (new,) = renewed
        assert new is not None
        assert read_session(server.port, new) == {"start": True, **dict.fromkeys(keys, True)}
        # All twelve came with the old ID and took home one new one: one renewal, and
        # every other request joined it (at its load, or when its own move was refused).
        stats = counted(server.port, workers)
        assert stats["login_waits"] >= 1  # the logins overlapped: some queued on the owner
        assert stats["renewals"] == 1 and stats["renewal_joins"] == len(keys) - 1
    finally:
        server.stop()


def live(store_url: str, owner: str) -> int:
    """How many live sessions ``owner`` has in the store."""
    store = from_url(store_url)
    try:
        return len(list(store.records(owner)))  # type: ignore[attr-defined]
    finally:
        store.close()
