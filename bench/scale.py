"""What a store costs as it grows: sessions of 2 KB by the million, on every server store.

    .venv/bin/python bench/scale.py [--sessions N] [--samples N] [--seconds N]

Starts its own Valkey server, 3-primary Valkey Cluster and PostgreSQL server (as the
test suite does) and, for the end-to-end rows, gunicorn (2 sync workers) serving the
benchmark app on satchel's SQLite, Valkey and PostgreSQL stores. Then, on each store:

1. with the store nearly empty: the median and 99th percentile of one ``load``, one
   read-modify-write ``save`` (a field changed under an ``expect`` condition, as an
   app's save is) and one create, from this process; requests per second under wrk
   (read-only, read-modify-write over 64 sessions, first requests; medians of
   ``--rounds`` rounds), when wrk exists;
2. the store filled to ``--sessions`` records of 2 KB (copies of one real record,
   with a random, incompressible payload, under keys as long as real ones): how
   long that took, and what it occupies (Valkey: ``used_memory`` and the cluster's
   primaries together; SQLite: the file after a checkpoint; PostgreSQL: the table
   with its indexes and TOAST);
3. the same measurements again on the full store;
4. everything but the apps' own sessions made expired, then purged while a client
   keeps sending read-modify-writes to the app: the purge's rows a second, and the
   app's latency before and during it (on Valkey the server expires the records by
   itself: the same figures while it does).

Prints tables and writes bench/results/scale.json. One million sessions take about
a quarter of an hour on a 2-core machine and 10 GB of memory and disk in all; the
suite runs a few thousand (tests/test_bench.py). docs/performance.md has the figures.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from base64 import b64encode
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from run import E2E_PATHS, GUNICORN, RESULTS, _wait_and_create, _wrk  # noqa: E402
from tests.valkey import free_port  # noqa: E402

from satchel.serialization import dumps  # noqa: E402
from satchel.stores import PostgresStore, from_url  # noqa: E402
from satchel.stores.base import Change, SaveResult  # noqa: E402

#: How long a filled record lives: past any run of this script.
LIFETIME = 7 * 24 * 3600.0
#: The app's backends (bench/backends.py) measured here, by store.
KINDS = ("SQLite", "Valkey", "PostgreSQL")


def key_of(n: int) -> str:
    """The ``n``-th filled record's key: 64 hex digits, as long as a real store key."""
    return f"{n:064x}"


def payload() -> bytes:
    """A 2 KB session value that no store can compress (random, base64)."""
    return dumps(b64encode(os.urandom(1500)).decode())


def template(store: Any) -> str:
    """Save one real 2 KB record through ``store``; the filled records copy it."""
    now = time.time()
    change = Change(set={"payload": payload(), "count": b"0"}, created_at=now,
                    touched_at=now, expires_at=now + LIFETIME)  # fmt: skip
    key = f"scale-template-{os.urandom(8).hex()}"
    assert store.save(key, change, create=True) is SaveResult.SAVED
    return key


def fill(kind: str, store: Any, first: int, count: int, progress: bool = True) -> float:
    """Copy the template record to keys ``first`` .. ``first + count - 1``; seconds taken.

    Copies are written with the server's own bulk paths (one SQLite transaction
    per 20,000 rows, ``INSERT ... SELECT`` on PostgreSQL, pipelined ``RESTORE`` of
    the template's ``DUMP`` on Valkey), so a million take a minute or two, not
    the quarter of an hour a million saves would.
    """
    started = time.perf_counter()
    source = template(store)
    batch = 20_000
    for start in range(first, first + count, batch):
        end = min(start + batch, first + count)
        keys = [key_of(n) for n in range(start, end)]
        if kind == "SQLite":
            rows = [(store.prefix + k, store.prefix + source) for k in keys]
            with store._connection() as conn:
                conn.execute("BEGIN IMMEDIATE")
                conn.executemany(
                    "INSERT OR REPLACE INTO satchel_sessions"
                    " (key, created_at, touched_at, expires_at, data, owner, meta, ns)"
                    " SELECT ?, created_at, touched_at, expires_at, data, owner, meta, ns"
                    " FROM satchel_sessions WHERE key = ?",
                    rows,
                )
                conn.execute("COMMIT")
        elif kind == "PostgreSQL":
            store._run(
                "INSERT INTO satchel_sessions"
                " (key, ns, created_at, touched_at, expires_at, data, size, owner, meta)"
                " SELECT ns || lpad(to_hex(g), 64, '0'), ns, created_at, touched_at,"
                " expires_at, data, size, owner, meta"
                " FROM satchel_sessions, generate_series(%s::bigint, %s::bigint) AS g"
                " WHERE key = %s ON CONFLICT (key) DO NOTHING",
                (start, end - 1, store.prefix + source),
            )
        else:
            client = store.client
            blob = client.dump(store._key(source))
            pipe = client.pipeline(transaction=False)
            for k in keys:
                pipe.restore(store._key(k), int(LIFETIME * 1000), blob, replace=True)
            pipe.execute()
        if progress and (end - first) % 200_000 == 0:
            print(f"    {kind}: {end - first:,} of {count:,}", flush=True)
    store.delete(source)
    return time.perf_counter() - started


def probe(store: Any, known: int, samples: int) -> dict[str, float]:
    """Median and 99th percentile µs of a load, a read-modify-write save and a create.

    Loads and saves take keys at random among the ``known`` filled ones (on a full
    store most are not in any cache); creates take new keys.
    """
    rng = random.Random(7)
    now = time.time()
    times: dict[str, list[float]] = {"load": [], "read-modify-write": [], "create": []}
    value = payload()
    for _ in range(samples):
        key = key_of(rng.randrange(known))
        started = time.perf_counter()
        record = store.load(key)
        loaded = time.perf_counter()
        assert record is not None, f"{key} was filled and is not there"
        count = record.fields["count"]
        change = Change(set={"count": str(int(count) + 1).encode()}, touched_at=now,
                        expires_at=now + LIFETIME, expect={"count": count})  # fmt: skip
        result = store.save(key, change, create=False)
        saved = time.perf_counter()
        assert result is SaveResult.SAVED, result
        times["load"].append(loaded - started)
        times["read-modify-write"].append(saved - started)
        fresh = f"new-{os.urandom(8).hex()}"
        started = time.perf_counter()
        create = Change(set={"payload": value, "count": b"0"}, created_at=now,
                        touched_at=now, expires_at=now + LIFETIME)  # fmt: skip
        assert store.save(fresh, create, create=True) is SaveResult.SAVED
        times["create"].append(time.perf_counter() - started)
    figures = {}
    for name, seconds in times.items():
        seconds.sort()
        figures[f"{name} p50 us"] = statistics.median(seconds) * 1e6
        figures[f"{name} p99 us"] = seconds[int(len(seconds) * 0.99)] * 1e6
    return figures


def occupied(kind: str, store: Any) -> int:
    """Bytes the store's server holds for satchel now (see the module docstring)."""
    if kind == "SQLite":
        with store._connection() as conn:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return sum(p.stat().st_size for p in store.path.parent.glob(store.path.name + "*"))
    if kind == "PostgreSQL":
        rows, _ = store._run("SELECT pg_total_relation_size('satchel_sessions')", ())
        return int(rows[0][0])
    nodes = store.client.get_primaries() if hasattr(store.client, "get_primaries") else None
    if nodes:
        return sum(
            int(store.client.info("memory", target_nodes=node)["used_memory"]) for node in nodes
        )
    return int(store.client.info("memory")["used_memory"])


class Apps:
    """gunicorn (2 sync workers) serving the benchmark app on bare Flask and each store."""

    def __init__(self, envs: dict[str, dict[str, str]]) -> None:
        self.ports: dict[str, int] = {}
        self.processes: list[subprocess.Popen[bytes]] = []
        for name, env in envs.items():
            port = free_port()
            command = [part.replace("{port}", str(port)) for part in GUNICORN]
            environment = {**os.environ, **env, "PYTHONPATH": str(ROOT)}
            self.processes.append(
                subprocess.Popen(
                    command,
                    cwd=ROOT / "bench",
                    env=environment,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
            self.ports[name] = port
        #: 64 sessions each app created, for the read and read-modify-write runs.
        self.cookies = {name: [_wait_and_create(port) for _ in range(64)]
                        for name, port in self.ports.items()}  # fmt: skip

    def wrk(self, seconds: int, rounds: int) -> dict[str, dict[str, dict[str, float]]]:
        """Requests per second and p99 of each app in each workload (bare Flask: /bare):
        the medians of ``rounds`` rounds that take the apps in turn, so that a slow
        moment of the machine falls on every app alike."""
        runs: dict[str, dict[str, list[dict[str, float]]]] = {}
        for _ in range(rounds):
            for workload, path in E2E_PATHS.items():
                for name, port in self.ports.items():
                    cookies = self.cookies[name]
                    given = (cookies[:1] if workload == "read-only"
                             else [] if workload == "first request" else cookies)  # fmt: skip
                    where = "/bare" if name == "bare Flask" else path
                    figures = _wrk(port, where, given, seconds)
                    runs.setdefault(workload, {}).setdefault(name, []).append(figures)
        return {
            workload: {
                name: {k: statistics.median(run[k] for run in taken) for k in taken[0]}
                for name, taken in by_name.items()
            }
            for workload, by_name in runs.items()
        }

    def close(self) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            process.wait(30)


@contextmanager
def requests_beside(port: int, cookie: str) -> Iterator[list[tuple[float, float]]]:
    """Send read-modify-writes to one app, one at a time a millisecond apart, while the
    block runs; yield the list of (when sent, seconds taken) it fills."""
    times: list[tuple[float, float]] = []
    done = threading.Event()

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        while not done.is_set():
            started = time.perf_counter()
            conn.request("GET", "/write", headers={"Cookie": f"session={cookie}"})
            response = conn.getresponse()
            response.read()
            times.append((started, time.perf_counter() - started))
            if response.status != 200:
                raise RuntimeError(f"the app answered {response.status} during the purge")
            time.sleep(0.001)
        conn.close()

    thread = threading.Thread(target=client)
    thread.start()
    try:
        yield times
    finally:
        done.set()
        thread.join()


def latency(times: list[tuple[float, float]], start: float, end: float) -> dict[str, float]:
    window = sorted(taken for sent, taken in times if start <= sent < end)
    if not window:
        return {"requests": 0}
    return {
        "requests": len(window),
        "p50 ms": statistics.median(window) * 1e3,
        "p99 ms": window[int(len(window) * 0.99)] * 1e3,
        "max ms": window[-1] * 1e3,
    }


def expire_filled(kind: str, store: Any, count: int) -> float:
    """Make the ``count`` filled records expired; when they are due (Valkey: all at
    one moment a few seconds ahead, past the time it takes to say so)."""
    due = time.time()
    if kind == "SQLite":
        store._run(
            "UPDATE satchel_sessions SET expires_at = 1 WHERE key >= ? AND key <= ?",
            (store.prefix + key_of(0), store.prefix + key_of(count - 1)),
        )
    elif kind == "PostgreSQL":
        store._run(
            "UPDATE satchel_sessions SET expires_at = 1 WHERE key >= %s AND key <= %s",
            (store.prefix + key_of(0), store.prefix + key_of(count - 1)),
        )
    else:

        def expire(start: int, at: float) -> None:
            pipe = store.client.pipeline(transaction=False)
            for n in range(start, min(start + 20_000, count)):
                pipe.pexpireat(store._key(key_of(n)), int(at * 1000))
            pipe.execute()

        # How long saying so takes: a first batch, given a due as far as it had.
        began = time.perf_counter()
        expire(0, time.time() + LIFETIME)
        batches = -(-count // 20_000)
        due = time.time() + 3 + 2 * (time.perf_counter() - began) * batches
        for start in range(0, count, 20_000):
            expire(start, due)
        assert time.time() < due - 2, "expiring took longer than planned"
    return due


def purge(kind: str, store: Any, count: int, port: int, cookie: str) -> dict[str, Any]:
    """Expire the filled records, then purge them (Valkey: wait for its own expiry)
    while an app's requests run beside; rows a second, and the app's latency."""
    others = store.client.dbsize() - count if kind == "Valkey" else 0
    due = expire_filled(kind, store, count)
    with requests_beside(port, cookie) as times:
        time.sleep(max(due - time.time(), 2))  # the "before" window: 2 s
        began = time.perf_counter()
        if kind == "Valkey":
            # DBSIZE counts keys the server has not removed yet, expired or not.
            deadline = time.monotonic() + 600
            while store.client.dbsize() > others and time.monotonic() < deadline:
                time.sleep(0.05)
            removed = count - (store.client.dbsize() - others)
        else:
            removed = store.purge_expired()
        ended = time.perf_counter()
        time.sleep(1)
    return {
        "removed": removed,
        "seconds": ended - began,
        "rows per second": removed / max(ended - began, 1e-9),
        "before": latency(times, began - 2, began),
        "during": latency(times, began, ended),
    }


def table(title: str, columns: list[str], rows: dict[str, list[str]]) -> None:
    print(f"\n{title}")
    print(f"  {'':<28}" + "".join(f"{c:>22}" for c in columns))
    for name, cells in rows.items():
        print(f"  {name:<28}" + "".join(f"{c:>22}" for c in cells))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=1_000_000)
    parser.add_argument("--samples", type=int, default=2_000, help="probes per figure")
    parser.add_argument("--seconds", type=int, default=4, help="wrk duration per cell")
    parser.add_argument("--rounds", type=int, default=3, help="wrk rounds (medians)")
    parser.add_argument("--output", type=Path, default=RESULTS / "scale.json")
    args = parser.parse_args(argv)
    count = args.sessions
    from tests.postgres import PostgresServer
    from tests.valkey import ValkeyCluster, ValkeyServer

    work = Path(tempfile.mkdtemp(prefix="satchel-scale-"))
    for name in ("valkey", "cluster", "postgres", "sqlite"):
        (work / name).mkdir()
    valkey = ValkeyServer(work / "valkey")
    cluster = ValkeyCluster(work / "cluster", replicas=0)
    postgres = PostgresServer(work / "postgres")
    report: dict[str, Any] = {"sessions": count, "samples": args.samples}
    apps: Apps | None = None
    stores: dict[str, Any] = {}
    try:
        valkey.start()
        postgres.start()
        urls = {
            "SQLite": f"sqlite:///{work / 'sqlite'}/satchel.sqlite3",
            "Valkey": valkey.url.replace("/0", "/1"),
            "PostgreSQL": postgres.url,
        }
        stores = {kind: from_url(url) for kind, url in urls.items()}
        # The bulk statements take minutes; the app's own store keeps its 1 s bound.
        stores["PostgreSQL"].close()
        stores["PostgreSQL"] = PostgresStore.from_url(postgres.url, timeout=600.0)
        wrk = shutil.which("wrk") is not None
        apps = Apps({
            "bare Flask": {"E2E_BACKEND": "bare Flask"},
            "SQLite": {"E2E_BACKEND": "satchel SQLite", "E2E_DIR": str(work / "sqlite")},
            "Valkey": {"E2E_BACKEND": "satchel Valkey", "E2E_VALKEY": valkey.url},
            "PostgreSQL": {"E2E_BACKEND": "satchel PostgreSQL", "E2E_POSTGRES": postgres.url},
        })  # fmt: skip
        steps: dict[str, dict[str, Any]] = {}
        for step, size in (("empty", min(1_000, count)), ("full", count)):
            print(f"\n== {step}: {size:,} sessions on each store", flush=True)
            found: dict[str, Any] = {}
            for kind, store in stores.items():
                had = steps["empty"][kind]["filled"] if step == "full" else 0
                before = occupied(kind, store)
                seconds = fill(kind, store, had, size - had)
                found[kind] = {
                    "filled": size,
                    "fill seconds": seconds,
                    "fill bytes": occupied(kind, store) - before,
                    **probe(store, size, args.samples),
                }
                print(f"  {kind}: filled in {seconds:.1f} s; {found[kind]}", flush=True)
            if wrk:
                found["end to end"] = apps.wrk(args.seconds, args.rounds)
            steps[step] = found
        report["steps"] = steps
        empty, full = steps["empty"], steps["full"]
        report["bytes per session"] = {
            kind: full[kind]["fill bytes"] / (count - empty[kind]["filled"]) for kind in stores
        } if count > empty["SQLite"]["filled"] else {}  # fmt: skip
        report["purge"] = {}
        for kind, store in stores.items():
            print(f"\n== purge on {kind}", flush=True)
            report["purge"][kind] = purge(
                kind, store, count, apps.ports[kind], apps.cookies[kind][0]
            )
            print(f"  {report['purge'][kind]}", flush=True)
        for store in stores.values():
            store.close()
        stores = {}
        valkey.kill()  # its memory, before the cluster takes as much
        cluster.start()
        on_cluster = from_url(cluster.url)
        few = min(1_000, count)
        fill("Valkey", on_cluster, 0, few, progress=False)
        probed = probe(on_cluster, few, args.samples)
        before = occupied("Valkey", on_cluster)
        seconds = fill("Valkey", on_cluster, few, count - few)
        added = occupied("Valkey", on_cluster) - before
        report["cluster"] = {
            "fill seconds": seconds,
            "bytes per session": added / max(count - few, 1),
            "empty": probed,
            "full": probe(on_cluster, count, args.samples),
        }
        on_cluster.close()
        print(f"\n== Cluster: {report['cluster']}")
    finally:
        if apps is not None:
            apps.close()
        for store in stores.values():
            store.close()
        valkey.kill()
        cluster.stop()
        postgres.kill()
        shutil.rmtree(work, ignore_errors=True)
    summary(report)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {args.output}")
    return report


def summary(report: dict[str, Any]) -> None:
    """The tables docs/performance.md shows."""
    steps = report.get("steps", {})
    if not steps:
        return
    sessions = report["sessions"]
    per = report.get("bytes per session", {})
    rows = {}
    for kind in KINDS:
        e, f = steps["empty"][kind], steps["full"][kind]
        rows[kind] = [
            f"{per.get(kind, 0):,.0f}",
            f"{f['fill seconds']:.0f} s",
            *(f"{e[c]:.0f} -> {f[c]:.0f}" for c in (
                "load p50 us", "load p99 us", "read-modify-write p50 us",
                "read-modify-write p99 us", "create p50 us")),
        ]  # fmt: skip
    if "cluster" in report:
        c = report["cluster"]
        rows["Valkey Cluster (3 primaries)"] = [
            f"{c['bytes per session']:,.0f}",
            f"{c['fill seconds']:.0f} s",
            *(f"{c['empty'][k]:.0f} -> {c['full'][k]:.0f}" for k in (
                "load p50 us", "load p99 us", "read-modify-write p50 us",
                "read-modify-write p99 us", "create p50 us")),
        ]  # fmt: skip
    table(
        f"{sessions:,} sessions of 2 KB: bytes each, fill time, and µs (empty -> full)",
        ["bytes/session", "fill", "load p50", "load p99", "rmw p50", "rmw p99", "create p50"],
        rows,
    )
    purge_rows = {
        kind: [f"{p['removed']:,}", f"{p['seconds']:.1f} s", f"{p['rows per second']:,.0f}",
               *(f"{p['before'].get(k, 0):.1f} -> {p['during'].get(k, 0):.1f}"
                 for k in ("p50 ms", "p99 ms", "max ms"))]
        for kind, p in report.get("purge", {}).items()
    }  # fmt: skip
    table(
        "purge (Valkey: its own expiry) while an app serves read-modify-writes: "
        "the app's latency before -> during",
        ["removed", "took", "rows/s", "p50 ms", "p99 ms", "max ms"],
        purge_rows,
    )
    if "end to end" in steps["empty"]:
        rows = {}
        for kind in KINDS:
            cells = []
            for workload in E2E_PATHS:
                shares = [
                    steps[step]["end to end"][workload][kind]["rps"]
                    / steps[step]["end to end"][workload]["bare Flask"]["rps"]
                    for step in ("empty", "full")
                ]
                cells.append(f"{shares[0]:.0%} -> {shares[1]:.0%}")
            rows[kind] = cells
        table(
            "end to end, gunicorn 2 workers, wrk: share of bare Flask's requests/s "
            f"(empty -> {sessions:,} sessions)",
            list(E2E_PATHS),
            rows,
        )


if __name__ == "__main__":
    main()
