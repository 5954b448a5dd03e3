"""Store-level cost of a save on SQLite and memory: an update of one key, and a create.

    .venv/bin/python bench/store_saves.py [--rounds N]

Times ``store.save`` alone (no Flask) on a 10-key, 2 KB record, 2,000 saves per
round, and prints the median microseconds per save. Run it on two revisions
(``PYTHONPATH=<checkout>/src``) to see what a change to the save path costs; the
hardening change's figures are in docs/performance.md.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from satchel.stores import MemoryStore, SQLiteStore, Store
from satchel.stores.base import Change

PER_ROUND = 2000


def per_save(store: Store, rounds: int) -> dict[str, float]:
    now = time.time()
    fields = {f"k{i}": b'"' + b"x" * 200 + b'"' for i in range(10)}
    store.save("a" * 64, Change(set=fields, created_at=now, touched_at=now,
                                expires_at=now + 3600), create=True)  # fmt: skip

    def update(i: int) -> None:
        change = Change(set={"k1": b'"%d"' % i}, touched_at=now, expires_at=now + 3600)
        store.save("a" * 64, change, create=False)

    def create(i: int) -> None:
        change = Change(set=fields, created_at=now, touched_at=now, expires_at=now + 3600)
        store.save(f"{i:064d}", change, create=True)

    jobs: dict[str, Callable[[int], None]] = {"update": update, "create": create}
    result = {}
    for name, job in jobs.items():
        samples = []
        for r in range(rounds):
            started = time.perf_counter()
            for i in range(PER_ROUND):
                job(r * 100_000 + i)
            samples.append((time.perf_counter() - started) / PER_ROUND * 1e6)
        result[name] = statistics.median(samples)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    rounds = parser.parse_args().rounds
    with tempfile.TemporaryDirectory() as folder:
        stores: dict[str, Store] = {
            "memory": MemoryStore(),
            "SQLite": SQLiteStore(Path(folder) / "s.sqlite3"),
        }
        for name, store in stores.items():
            figures = per_save(store, rounds)
            print(f"{name:<8}" + "".join(f"  {k} {v:6.1f} us" for k, v in figures.items()))
            store.close()


if __name__ == "__main__":
    main()
