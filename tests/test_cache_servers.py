"""The Redis store's record cache under real servers: two gunicorn apps on one Valkey
(and on one Valkey Cluster).

Each app runs its own worker processes, each with its own cache; a write
through one is read through the other at once, thousands of times, and so is
a revoke, a clear and a regenerate. The stats route shows the cache served
most of the reads, so the test would see a stale one.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .load import Gunicorn, read_session, request, start_session
from .valkey import ValkeyCluster, ValkeyServer

ALTERNATIONS = 1000


def report(capsys: Any, line: str) -> None:
    with capsys.disabled():
        print(f"\n[cache] {line}")


@pytest.fixture(params=["valkey", "cluster"])
def apps(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Gunicorn, Gunicorn]]:
    """Two apps on one Valkey, or on one Valkey Cluster, each with the record cache on."""
    server: ValkeyServer | ValkeyCluster
    if request.param == "cluster":
        server = ValkeyCluster(tmp_path)
        server.start()
        url, stop = server.url, server.stop
    else:
        server = ValkeyServer(tmp_path)
        server.start()
        url, stop = server.url, server.kill
    env = {"LOADAPP_STORE": f"{url}?cache=8MB"}
    one, two = Gunicorn(env, workers=2, threads=2), Gunicorn(env, workers=2, threads=2)
    one.start()
    two.start()
    yield one, two
    one.stop()
    two.stop()
    stop()


def cache_hits(port: int) -> int:
    """The cache hits of every worker of the app on ``port``, each counted once: each
    worker has its own cache, so /stats is asked until each has answered (its pid)."""
    seen: dict[int, int] = {}
    for _ in range(40):
        status, _, body = request(port, "/stats")
        assert status == 200
        stats = json.loads(body)
        seen[stats["pid"]] = max(seen.get(stats["pid"], 0), stats.get("cache_hits", 0))
        if len(seen) == 2:  # both workers (Gunicorn(workers=2)) have answered
            break
    return sum(seen.values())


def test_writes_in_one_app_are_read_at_once_in_the_other(
    apps: tuple[Gunicorn, Gunicorn], capsys: Any
) -> None:
    one, two = apps
    cookie = start_session(one.port, "alternating")
    stale = 0
    for n in range(1, ALTERNATIONS + 1):
        writer, reader = (one, two) if n % 2 else (two, one)
        assert request(writer.port, "/incr", cookie)[0] == 200
        stale += read_session(reader.port, cookie)["count"] != n
        stale += read_session(reader.port, cookie)["count"] != n  # again: from memory
    hits = cache_hits(one.port) + cache_hits(two.port)
    report(capsys, f"{ALTERNATIONS} write/read alternations across two apps: {stale} stale")
    assert stale == 0
    assert hits >= ALTERNATIONS // 4  # the cache served reads throughout: a stale one would show


def test_revoke_clear_and_regenerate_in_one_app_end_the_session_in_the_other(
    apps: tuple[Gunicorn, Gunicorn], capsys: Any
) -> None:
    one, two = apps
    stale = 0
    before = cache_hits(two.port)
    for n in range(150):
        cookie = start_session(one.port, f"user{n}")
        assert read_session(two.port, cookie)["owner"] == f"user{n}"
        status, renewed, _ = request(one.port, f"/login/u{n}", cookie)
        assert status == 200 and renewed and renewed != cookie
        stale += read_session(two.port, cookie) != {}  # the old ID ended with the move
        for _ in range(3):  # 3 reads on 2 workers: one worker reads it from its cache
            assert read_session(two.port, renewed)["owner"] == f"user{n}"
        if n % 2:
            assert request(one.port, "/logout-everywhere", renewed)[0] == 200
        else:
            assert request(one.port, "/clear", renewed)[0] == 200
        stale += read_session(two.port, renewed) != {}
    served = cache_hits(two.port) - before
    report(
        capsys,
        f"150 revokes, clears and regenerates read at once elsewhere: {stale} stale"
        f" ({served} reads served from the readers' caches)",
    )
    assert stale == 0
    assert served >= 150  # the reader's cache held the sessions the writer ended
