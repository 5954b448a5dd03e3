"""What ``revoke_all`` costs for an owner with many sessions, on every store.

    .venv/bin/python bench/revoke_owner.py [--sessions N]

Starts its own Valkey server, 3-primary Valkey Cluster and PostgreSQL server
(as the test suite does), files N owned 200-byte sessions under one owner on
each store, and times listing them (``records(owner=...)``), one
``revoke(owner=...)`` that ends them all, and the same for an owner with one
session among them. Prints seconds; the counts listed and ended must be N.
docs/performance.md has the figures.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from satchel.stores import MemoryStore, SQLiteStore, from_url
from satchel.stores.base import Change


def fill(store: Any, owner: str, count: int, tag: str) -> None:
    now = time.time()
    for n in range(count):
        change = Change(
            set={"data": b"x" * 200}, created_at=now, touched_at=now,
            expires_at=now + 3600, owner=owner, ends_by=now + 3600,
        )  # fmt: skip
        store.save(f"{tag}{n:06d}", change, create=True)


def measure(name: str, store: Any, count: int) -> None:
    fill(store, "many", count, "m")
    fill(store, "one", 1, "o")
    started = time.perf_counter()
    listed = sum(1 for _ in store.records(owner="many"))
    listing = time.perf_counter() - started
    started = time.perf_counter()
    ended = store.revoke(owner="many")
    many = time.perf_counter() - started
    started = time.perf_counter()
    single = store.revoke(owner="one")
    one = time.perf_counter() - started
    assert listed == count and ended == count and single == 1, (listed, ended, single)
    print(f"{name:22} {count:>7} sessions: listed in {listing:7.3f} s, revoked in {many:7.3f} s;"
          f"   one session: {one * 1000:6.2f} ms")  # fmt: skip
    store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=10_000)
    count = parser.parse_args().sessions
    from tests.postgres import PostgresServer
    from tests.valkey import ValkeyCluster, ValkeyServer

    work = Path(tempfile.mkdtemp(prefix="satchel-revoke-"))
    for name in ("valkey", "cluster", "postgres"):
        (work / name).mkdir()
    measure("memory", MemoryStore(), count)
    measure("sqlite", SQLiteStore(work / "s.sqlite3"), count)
    valkey = ValkeyServer(work / "valkey")
    valkey.start()
    cluster = ValkeyCluster(work / "cluster")
    cluster.start()
    postgres = PostgresServer(work / "postgres")
    postgres.start()
    try:
        measure("valkey", from_url(valkey.url), count)
        measure("valkey, cached", from_url(valkey.url + "?cache=64MB&prefix=c:"), count)
        measure("valkey cluster", from_url(cluster.url), count)
        measure("postgresql", from_url(postgres.url), count)
    finally:
        valkey.kill()
        cluster.stop()
        postgres.kill()


if __name__ == "__main__":
    main()
