"""Checking a store before an app relies on it: reached, written, configured, and how fast.

A wrong database name or an unreachable server otherwise shows only at the first
request, as a 503 with the cause in a log line. :func:`check` tries the store the
way the app will (a record written, read back and deleted), and says what failed
and what to do; ``satchel check --store URL`` prints it, and ``SATCHEL_CHECK_STORE``
(``check_store=True`` for the ASGI middleware) makes an app refuse to start on it.
"""

from __future__ import annotations

import secrets
import statistics
import time
from dataclasses import dataclass
from typing import Any

from .errors import SatchelError
from .stores.base import Change, SaveResult, Store

__all__ = ["Finding", "check", "failures"]

#: Causes seen in a store's errors, and what to do about each (first match wins).
_HINTS = (
    ("does not exist", "create it, or fix the name in the store URL"),
    ("password authentication failed", "check the user and password in the store URL"),
    ("WRONGPASS", "check the user and password in the store URL"),
    ("NOAUTH", "the server wants a password: put it in the store URL"),
    ("permission denied", "grant the store URL's user the rights the store needs"),
    ("Connection refused", "is the server running, at the host and port of the URL?"),
    ("timed out", "the server did not answer: is it reachable, and not overloaded?"),
    ("Name or service not known", "the host name in the store URL does not resolve"),
    ("satchel_save", "the schema is missing: run satchel.stores.postgres.SCHEMA"),
    ("readonly", "the store's file or server is read-only: make it writable"),
    ("unable to open database", "the SQLite file's folder must exist and be writable"),
)


@dataclass(frozen=True, slots=True)
class Finding:
    """One thing :func:`check` looked at."""

    #: What was checked ("write and read", "latency", "server", "configuration").
    what: str
    #: Whether it is as the app needs it.
    ok: bool
    #: What was found; for a failure, the cause and what to do.
    detail: str


def _hint(reason: str) -> str:
    for clue, advice in _HINTS:
        if clue.lower() in reason.lower():
            return f"{reason} ({advice})"
    return reason


def _server(store: Any) -> str | None:
    """The store's server and version, where the store can tell."""
    from .stores.memory import MemoryStore
    from .stores.sqlite import SQLiteStore

    if isinstance(store, MemoryStore):
        return "memory (this process only)"
    if isinstance(store, SQLiteStore):
        import sqlite3

        return f"SQLite {sqlite3.sqlite_version}, file {store.path}"
    kind = type(store).__name__
    if kind == "RedisStore":
        info = store.client.info("server")
        if "redis_version" not in info and info:  # a Cluster: one answer per node
            info = next(iter(info.values()))
        name = "Valkey" if "valkey_version" in info else "Redis"
        return f"{name} {info.get('valkey_version') or info.get('redis_version')}"
    if kind == "PostgresStore":
        rows, _ = store._run("SHOW server_version")
        return f"PostgreSQL {rows[0][0]}"
    return None


def check(store: Store, *, reads: int = 5) -> list[Finding]:
    """What :class:`~satchel.stores.Store` ``store`` is like to an app, as findings.

    Writes one short-lived record under a random key, reads it back ``reads``
    times (the median is the latency) and deletes it; asks the server its version
    and the store its configuration problems. Never raises for a store that fails:
    that is a finding.
    """
    findings = []
    key = "satchel-check-" + secrets.token_hex(16)
    now = time.time()
    probe = Change(set={"check": b"1"}, created_at=now, touched_at=now, expires_at=now + 60)
    try:
        result = store.save(key, probe, create=True)
        timings = []
        record = None
        for _ in range(max(reads, 1)):
            started = time.perf_counter()
            record = store.load(key)
            timings.append(time.perf_counter() - started)
        store.delete(key)
    except SatchelError as exc:
        reason = getattr(exc, "reason", None) or str(exc)
        return [Finding("write and read", False, _hint(reason))]
    if result != SaveResult.SAVED or record is None or record.fields.get("check") != b"1":
        detail = f"a record written ({result.name}) did not read back as written"
        return [Finding("write and read", False, detail)]
    findings.append(Finding("write and read", True, "a record was written, read and deleted"))
    latency = statistics.median(timings) * 1000
    findings.append(Finding("latency", True, f"{latency:.2f} ms a read (median of {reads})"))
    try:
        server = _server(store)
    except Exception as exc:  # a server that hides its version is not a failure
        server = f"version not available ({type(exc).__name__})"
    if server is not None:
        findings.append(Finding("server", True, server))
    problems = getattr(store, "config_problems", None)
    for problem in problems() if problems is not None else []:
        findings.append(Finding("configuration", False, problem))
    return findings


def failures(findings: list[Finding]) -> list[Finding]:
    """The findings that failed."""
    return [finding for finding in findings if not finding.ok]
