"""Per-request cost of each session backend, in-process, against a bare Flask request.

    python bench/overhead.py [--rounds 7] [--requests 300]

Every backend serves the same three workloads through Flask's test client, the
rounds interleaved so that a noisy neighbour hurts every row alike; the table
gives the median time per request and its ratio to bare Flask in the same run.
A Valkey server is started for the Redis row (see tests/valkey.py).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from flask import Flask, session
from flask.testing import FlaskClient

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.valkey import ValkeyServer  # noqa: E402

from satchel import Satchel  # noqa: E402
from satchel.stores import MemoryStore, RedisStore, SQLiteStore, Store  # noqa: E402

PAYLOAD = "x" * 2000  # about 2 KB of session data
SECRET = "bench-secret-key-" + "x" * 32


def make_app(kind: str, store: Store | None) -> Flask:
    app = Flask(f"bench-{kind}")
    app.config["SECRET_KEY"] = SECRET
    if store is not None:
        Satchel(app, store=store)

    @app.get("/bare")
    def bare() -> str:
        return "ok"

    @app.get("/read")
    def read() -> str:
        return "ok" if session.get("payload") else "missing"

    @app.get("/write")
    def write() -> str:
        session["count"] = session.get("count", 0) + 1
        return "ok"

    @app.get("/create")
    def create() -> str:
        session["payload"] = PAYLOAD
        return "ok"

    return app


def timed(n: int, call: Callable[[], object]) -> float:
    start = time.perf_counter()
    for _ in range(n):
        call()
    return (time.perf_counter() - start) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--requests", type=int, default=300)
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="satchel-bench-"))
    valkey = ValkeyServer(tmp)
    valkey.start()
    try:
        stores: dict[str, Store | None] = {
            "flask cookie session": None,
            "satchel memory": MemoryStore(),
            "satchel sqlite": SQLiteStore(tmp / "bench.sqlite3"),
            "satchel valkey": RedisStore.from_url(valkey.url),
        }
        clients: dict[str, FlaskClient] = {}
        for name, store in stores.items():
            client = make_app(name, store).test_client()
            assert client.get("/create").status_code == 200
            clients[name] = client
        bare = make_app("bare", None).test_client()

        workloads: dict[str, Callable[[FlaskClient], Callable[[], object]]] = {
            "read-only (2 KB)": lambda c: lambda: c.get("/read"),
            "read-modify-write": lambda c: lambda: c.get("/write"),
            "first request (creates)": lambda c: lambda: c.get("/create", headers={"Cookie": ""}),
        }
        results: dict[tuple[str, str], list[float]] = {}
        for _ in range(args.rounds):
            for work_name, work in workloads.items():
                results.setdefault(("bare flask", work_name), []).append(
                    timed(args.requests, lambda: bare.get("/bare"))
                )
                for name, client in clients.items():
                    if work_name.startswith("first"):
                        fresh = make_app(name, stores[name]).test_client(use_cookies=False)
                        call = work(fresh)
                    else:
                        call = work(client)
                    results.setdefault((name, work_name), []).append(timed(args.requests, call))

        print(f"median of {args.rounds} rounds × {args.requests} requests, Flask test client")
        header = f"{'backend':<24}" + "".join(f"{w:>28}" for w in workloads)
        print(header)
        for name in ["bare flask", *clients]:
            cells = []
            for work_name in workloads:
                median = statistics.median(results[(name, work_name)])
                base = statistics.median(results[("bare flask", work_name)])
                cells.append(f"{median * 1e6:9.0f} µs {median / base:6.2f}×")
            print(f"{name:<24}" + "".join(f"{c:>28}" for c in cells))
    finally:
        valkey.kill()


if __name__ == "__main__":
    main()
