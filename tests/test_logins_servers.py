"""The owner limit across processes: 3 × N logins of one owner at once on gunicorn (Flask,
4 workers × 4 threads) and uvicorn (FastAPI, 2 workers) leave exactly N live sessions,
on every persistent store and on a Valkey Cluster."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from satchel.stores import from_url

from .load import Gunicorn, Server, Uvicorn, load, request
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


@pytest.mark.parametrize("kind", ["gunicorn", "uvicorn"])
def test_logins_from_many_processes_leave_exactly_the_limit(store_url: str, kind: str) -> None:
    server: Server
    if kind == "gunicorn":
        server = Gunicorn({"LOADAPP_STORE": store_url, "LOADAPP_MAX_SESSIONS": str(LIMIT)})
    else:
        server = Uvicorn({"ASGIAPP_STORE": store_url, "ASGIAPP_MAX_SESSIONS": str(LIMIT)})
    server.start()
    try:
        result = load(server.port, [("/login/zoe", None)] * (3 * LIMIT), clients=3 * LIMIT)
        assert result.statuses == {200: 3 * LIMIT}
        waits, pids = 0, set()
        for _ in range(40):  # every worker's counters, each counted once
            _, _, body = request(server.port, "/stats")
            answer = json.loads(body)
            if answer["pid"] not in pids:
                pids.add(answer["pid"])
                waits += answer["login_waits"]
        assert waits >= 1  # the logins overlapped: some waited for the owner's lock
    finally:
        server.stop()
    store = from_url(store_url)
    try:
        assert len(list(store.records("zoe"))) == LIMIT  # type: ignore[attr-defined]
    finally:
        store.close()
