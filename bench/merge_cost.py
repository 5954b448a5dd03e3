"""What a save costs with and without an overlapping request: the same-key merge path.

    .venv/bin/python bench/merge_cost.py [--rounds N]

Drives the framework-free manager (no Flask) on memory and SQLite: a request
loads a 2 KB session, appends to its cart (at most 20 items) and saves; "no
conflict" saves alone,
"conflict" saves after another request appended to the same cart since it
loaded, so its save is refused once, reloads, merges and saves again. Prints
median microseconds per request. Run it on two revisions
(``PYTHONPATH=<checkout>/src``) to compare; docs/performance.md has the figures.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from satchel._manager import SessionManager, Settings
from satchel.signing import CookieSigner
from satchel.stores import MemoryStore, SQLiteStore, Store

PER_ROUND = 1000
SECRET = "a-benchmark-secret-key-0123456789-abcdef"


def measure(store: Store, rounds: int) -> dict[str, float]:
    manager = SessionManager(store, CookieSigner(SECRET), Settings(3600.0, 3600.0, 1 << 20))
    first = manager.open(None)
    first.update({f"k{i}": "x" * 200 for i in range(9)})
    first["cart"] = []
    cookie = manager.save(first).new_cookie
    assert cookie is not None

    def alone(i: int) -> None:
        session = manager.open(cookie)
        session.setdefault("cart", []).append(i)
        if len(session["cart"]) > 20:  # a cart of realistic size
            session["cart"] = []
        manager.save(session)

    def overlapped(i: int) -> None:
        mine, theirs = manager.open(cookie), manager.open(cookie)
        if len(mine["cart"]) > 20:
            del mine["cart"], theirs["cart"]
        mine.setdefault("cart", []).append(i)
        theirs.setdefault("cart", []).append(-i)
        manager.save(theirs)
        manager.save(mine)  # refused once, merged, saved

    result = {}
    for name, job in (("no conflict", alone), ("conflict (2 requests)", overlapped)):
        samples = []
        for r in range(rounds):
            started = time.perf_counter()
            for i in range(PER_ROUND):
                job(r * PER_ROUND + i)
            samples.append((time.perf_counter() - started) / PER_ROUND * 1e6)
        result[name] = statistics.median(samples)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    rounds = parser.parse_args().rounds
    with tempfile.TemporaryDirectory() as folder:
        for name, store in (
            ("memory", MemoryStore()),
            ("SQLite", SQLiteStore(Path(folder) / "s.sqlite3")),
        ):
            figures = measure(store, rounds)
            print(f"{name:<8}" + "".join(f"  {k}: {v:6.1f} us" for k, v in figures.items()))
            store.close()


if __name__ == "__main__":
    main()
