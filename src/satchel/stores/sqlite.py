"""The embedded default store: one SQLite file, shared by threads and processes.

The file is in WAL mode, so readers never wait for a writer; writers queue on
SQLite's lock for up to ``timeout`` seconds and then the store raises
``StoreUnavailable``. Each save is one ``BEGIN IMMEDIATE`` transaction over a
row per session and a row per field, so a save only touches the fields it
changes. Every thread of every process gets its own connection.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import StoreUnavailable
from .base import Change, Record

__all__ = ["SQLiteStore"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS satchel_session (
    key TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    touched_at REAL NOT NULL,
    expires_at REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS satchel_session_expires
    ON satchel_session (expires_at);
CREATE TABLE IF NOT EXISTS satchel_field (
    key TEXT NOT NULL,
    name TEXT NOT NULL,
    value BLOB NOT NULL,
    PRIMARY KEY (key, name)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS satchel_lock (
    key TEXT PRIMARY KEY,
    token TEXT NOT NULL,
    expires_at REAL NOT NULL
) WITHOUT ROWID;
"""

_LOAD = """
SELECT s.created_at, s.touched_at, s.expires_at, f.name, f.value
FROM satchel_session AS s LEFT JOIN satchel_field AS f ON f.key = s.key
WHERE s.key = ? AND s.expires_at > ?
"""
_CREATE = """
INSERT INTO satchel_session VALUES (?, ?, ?, ?)
ON CONFLICT (key) DO UPDATE SET created_at = excluded.created_at,
    touched_at = excluded.touched_at, expires_at = excluded.expires_at
WHERE satchel_session.expires_at <= ?
"""
_UPSERT_FIELD = """
INSERT INTO satchel_field (key, name, value) VALUES (?, ?, ?)
ON CONFLICT (key, name) DO UPDATE SET value = excluded.value
"""


class SQLiteStore:
    """Sessions in the SQLite database at ``path`` (created when missing).

    ``timeout`` is how long, in seconds, a request waits for another
    process's write before the store gives up. Expired records are removed a
    batch at a time every ``purge_interval`` seconds by whichever request
    saves next, and all at once by :meth:`purge_expired`.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        timeout: float = 5.0,
        purge_interval: float = 300.0,
        purge_batch: int = 500,
    ) -> None:
        self.path = Path(path)
        self.timeout = timeout
        self.purge_interval = purge_interval
        self.purge_batch = purge_batch
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._next_purge = time.time() + purge_interval
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._errors():
            conn = self._conn()
            conn.executescript(_SCHEMA)

    def __repr__(self) -> str:
        return f"SQLiteStore({str(self.path)!r})"

    def _conn(self) -> sqlite3.Connection:
        pid = os.getpid()
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None and self._local.pid == pid:
            return conn
        # A connection must not cross a fork: a worker forked from a parent
        # that already opened one makes its own.
        conn = sqlite3.connect(
            self.path,
            timeout=self.timeout,
            isolation_level=None,
            check_same_thread=False,
        )
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        self._local.conn = conn
        self._local.pid = pid
        with self._lock:
            self._all.append(conn)
        return conn

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.DatabaseError as exc:
            raise StoreUnavailable(repr(self), str(exc)) from exc

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._errors():
            conn = self._conn()
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def load(self, key: str) -> Record | None:
        """Read the record and its fields in one statement, one snapshot."""
        with self._errors():
            rows = self._conn().execute(_LOAD, (key, time.time())).fetchall()
        if not rows:
            return None
        created, touched, expires = rows[0][0], rows[0][1], rows[0][2]
        fields = {row[3]: row[4] for row in rows if row[3] is not None}
        return Record(fields, created, touched, expires)

    def save(self, key: str, change: Change, *, create: bool) -> bool:
        """Apply ``change`` in one ``BEGIN IMMEDIATE`` transaction."""
        now = time.time()
        with self._write() as conn:
            if create:
                # Takes the key if it is free or its record has expired...
                cursor = conn.execute(
                    _CREATE, (key, change.created_at, change.touched_at, change.expires_at, now)
                )
                if cursor.rowcount != 1:
                    return False
                # ...and then none of an expired record's fields may linger.
                conn.execute("DELETE FROM satchel_field WHERE key = ?", (key,))
            else:
                cursor = conn.execute(
                    "UPDATE satchel_session SET touched_at = ?, expires_at = ?"
                    " WHERE key = ? AND expires_at > ?",
                    (change.touched_at, change.expires_at, key, now),
                )
                if cursor.rowcount != 1:
                    return False
            if change.set:
                conn.executemany(_UPSERT_FIELD, [(key, n, v) for n, v in change.set.items()])
            if change.delete:
                conn.executemany(
                    "DELETE FROM satchel_field WHERE key = ? AND name = ?",
                    [(key, n) for n in change.delete],
                )
        if now >= self._next_purge:
            self._next_purge = now + self.purge_interval
            self._purge_batch(now)
        return True

    def touch(self, key: str, touched_at: float, expires_at: float) -> bool:
        """Move the record's times in one statement."""
        with self._errors():
            cursor = self._conn().execute(
                "UPDATE satchel_session SET touched_at = ?, expires_at = ?"
                " WHERE key = ? AND expires_at > ?",
                (touched_at, expires_at, key, time.time()),
            )
        return cursor.rowcount == 1

    def delete(self, key: str) -> None:
        """Remove the record and its fields in one transaction."""
        with self._write() as conn:
            conn.execute("DELETE FROM satchel_field WHERE key = ?", (key,))
            conn.execute("DELETE FROM satchel_session WHERE key = ?", (key,))

    def acquire(self, key: str, token: str, lease: float) -> bool:
        """Lease the lock on ``key`` to ``token`` in one transaction."""
        now = time.time()
        with self._write() as conn:
            cursor = conn.execute(
                "INSERT INTO satchel_lock VALUES (?, ?, ?) ON CONFLICT (key) DO UPDATE"
                " SET token = excluded.token, expires_at = excluded.expires_at"
                " WHERE satchel_lock.expires_at <= ? OR satchel_lock.token = excluded.token",
                (key, token, now + lease, now),
            )
            return cursor.rowcount == 1

    def release(self, key: str, token: str) -> None:
        """Free the lock if ``token`` holds it."""
        with self._errors():
            self._conn().execute(
                "DELETE FROM satchel_lock WHERE key = ? AND token = ?", (key, token)
            )

    def _purge_batch(self, now: float) -> int:
        with self._write() as conn:
            keys = conn.execute(
                "SELECT key FROM satchel_session WHERE expires_at <= ? LIMIT ?",
                (now, self.purge_batch),
            ).fetchall()
            conn.executemany("DELETE FROM satchel_field WHERE key = ?", keys)
            conn.executemany("DELETE FROM satchel_session WHERE key = ?", keys)
            conn.execute("DELETE FROM satchel_lock WHERE expires_at <= ?", (now,))
        return len(keys)

    def purge_expired(self) -> int:
        """Remove every expired record, a batch per transaction so writers interleave."""
        now = time.time()
        total = 0
        while True:
            removed = self._purge_batch(now)
            total += removed
            if removed < self.purge_batch:
                return total

    def close(self) -> None:
        """Close every connection this store opened, in any thread."""
        with self._lock:
            conns, self._all = self._all, []
        for conn in conns:
            conn.close()
        self._local = threading.local()
