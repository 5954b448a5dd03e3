"""The embedded default store: one SQLite file, shared by threads and processes.

Each session is one row: its key (the hash of its ID), three times, and its
fields as one JSON object whose members hold each field's serialised value as
a string (``"="`` and the UTF-8 text, or ``"~"`` and base64 for other
bytes). Every operation is a single SQL statement, hence atomic on its own: a
save merges only the fields it changed into the row with ``json_patch`` (a
``null`` member deletes a field), so two overlapping requests that change
different fields both keep their changes, and no transaction is ever held
open across Python code. The file is in WAL mode, so readers never wait for a
writer; a writer waits for another process's write for up to ``timeout``
seconds, then the store raises ``StoreUnavailable``. Threads share the
process's connections, each statement taking an idle one (or opening one), so
a process holds as many as statements ever ran at once in it; a forked child
opens its own.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from base64 import b64decode, b64encode
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .. import _json
from ..errors import ConfigError, StoreUnavailable
from ._connections import ConnectionList
from .base import Change, Record

__all__ = ["SQLiteStore"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS satchel_sessions (
    id INTEGER PRIMARY KEY,
    key TEXT NOT NULL UNIQUE,
    created_at REAL NOT NULL,
    touched_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    data TEXT NOT NULL,
    owner TEXT,
    meta TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS satchel_sessions_owner ON satchel_sessions (owner)
    WHERE owner IS NOT NULL;
CREATE TABLE IF NOT EXISTS satchel_lock (
    key TEXT PRIMARY KEY,
    token TEXT NOT NULL,
    expires_at REAL NOT NULL
) WITHOUT ROWID;
"""

_COLUMNS = "created_at, touched_at, expires_at, data, owner, meta"
_LOAD = f"SELECT {_COLUMNS} FROM satchel_sessions WHERE key = ? AND expires_at > ?"
# Takes the key when it is free or its record has expired (then replaced whole).
_CREATE = """
INSERT INTO satchel_sessions (key, created_at, touched_at, expires_at, data, owner, meta)
VALUES (?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (key) DO UPDATE SET created_at = excluded.created_at,
    touched_at = excluded.touched_at, expires_at = excluded.expires_at, data = excluded.data,
    owner = excluded.owner, meta = excluded.meta
WHERE satchel_sessions.expires_at <= ?
"""
_UPDATE = """
UPDATE satchel_sessions SET data = json_patch(data, ?), touched_at = ?, expires_at = ?
WHERE key = ? AND expires_at > ?
"""
_TOUCH = """
UPDATE satchel_sessions SET touched_at = ?, expires_at = ? WHERE key = ? AND expires_at > ?
"""
_ACQUIRE = """
INSERT INTO satchel_lock VALUES (?, ?, ?) ON CONFLICT (key) DO UPDATE
SET token = excluded.token, expires_at = excluded.expires_at
WHERE satchel_lock.expires_at <= ? OR satchel_lock.token = excluded.token
"""


def _encode(fields: dict[str, str | None]) -> str:
    return _json.dumps(fields).decode("utf-8")  # text: json_patch wants TEXT, not a BLOB


def _text(value: bytes) -> str:
    # Field values are bytes; JSON holds text: UTF-8 as is behind "=", else base64 behind "~".
    try:
        return "=" + value.decode("utf-8")
    except UnicodeDecodeError:
        return "~" + b64encode(value).decode("ascii")


def _bytes(text: str) -> bytes:
    return text[1:].encode("utf-8") if text[0] == "=" else b64decode(text[1:])


def _record(row: Sequence[Any]) -> Record | None:
    """A Record from (created, touched, expires, data, owner, meta); None if unreadable."""
    try:
        stored = _json.loads(row[3])
        fields = {name: _bytes(value) for name, value in stored.items()}
        meta = json.loads(row[5]) if row[5] and row[5] != "{}" else {}
    except (ValueError, AttributeError, IndexError, TypeError):
        return None  # not written by this store: treat as missing
    return Record(fields, row[0], row[1], row[2], row[4], meta)


class SQLiteStore:
    """Sessions in the SQLite database at ``path`` (created when missing).

    ``timeout`` is how long, in seconds, a write waits for another process's
    write before the store gives up. Expired records are removed
    ``purge_batch`` rows at a time: every ``purge_interval`` seconds one batch
    by whichever request saves next, and all of them by :meth:`purge_expired`.
    Needs SQLite's JSON functions (built in since SQLite 3.38, and in most
    older builds).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        timeout: float = 5.0,
        purge_interval: float = 300.0,
        purge_batch: int = 2000,
    ) -> None:
        self.path = Path(path)
        self.timeout = timeout
        self.purge_interval = purge_interval
        self.purge_batch = purge_batch
        self._connections = ConnectionList(self._connect)
        self._next_purge = time.time() + purge_interval
        self._purge_from = 0  # the rowid where the next periodic batch starts
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._errors(), self._connection() as conn:
            try:
                conn.execute("SELECT json_patch('{}', '{}')")
            except sqlite3.OperationalError as exc:
                raise ConfigError(
                    f"SQLite {sqlite3.sqlite_version} lacks the JSON functions satchel needs"
                ) from exc
            columns = {row[1] for row in conn.execute("PRAGMA table_info(satchel_sessions)")}
            if columns and "owner" not in columns:  # a file from before owners existed
                conn.execute("ALTER TABLE satchel_sessions ADD COLUMN owner TEXT")
                conn.execute(
                    "ALTER TABLE satchel_sessions ADD COLUMN meta TEXT NOT NULL DEFAULT '{}'"
                )
            conn.executescript(_SCHEMA)

    def __repr__(self) -> str:
        return f"SQLiteStore({str(self.path)!r})"

    def _connect(self) -> sqlite3.Connection:
        with self._errors():
            conn = sqlite3.connect(
                self.path, timeout=self.timeout, isolation_level=None, check_same_thread=False
            )
            try:
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute("PRAGMA synchronous = NORMAL")
            except sqlite3.DatabaseError:
                conn.close()
                raise
        return conn

    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        """A connection for this caller alone until the block ends."""
        conn = self._connections.take()
        try:
            yield conn
        finally:
            self._connections.give(conn)

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.DatabaseError as exc:
            raise StoreUnavailable(repr(self), str(exc)) from exc

    def _run(self, sql: str, args: tuple[object, ...]) -> tuple[list[Any], int]:
        """Run one statement; return its rows and how many rows it changed."""
        conn = self._connections.take()  # not self._connection(): every request's path
        try:
            cursor = conn.execute(sql, args)
            return cursor.fetchall(), cursor.rowcount
        except sqlite3.DatabaseError as exc:
            raise StoreUnavailable(repr(self), str(exc)) from exc
        finally:
            self._connections.give(conn)

    def load(self, key: str) -> Record | None:
        """Read the record in one statement."""
        rows, _ = self._run(_LOAD, (key, time.time()))
        return _record(rows[0]) if rows else None

    def records(self, owner: str | None = None) -> Iterator[tuple[str, Record]]:
        """Yield the live records (of ``owner``), read in pages of a few hundred."""
        now = time.time()
        where = "expires_at > ?" + ("" if owner is None else " AND owner = ?")
        args: tuple[object, ...] = (now,) if owner is None else (now, owner)
        last = -1
        while True:
            rows, _ = self._run(
                f"SELECT id, key, {_COLUMNS} FROM satchel_sessions"
                f" WHERE id > ? AND {where} ORDER BY id LIMIT 500",
                (last, *args),
            )
            for row in rows:
                record = _record(row[2:])
                if record is not None:
                    yield row[1], record
            if len(rows) < 500:
                return
            last = rows[-1][0]

    def save(self, key: str, change: Change, *, create: bool) -> bool:
        """Apply ``change`` in one statement: an insert, or an update that merges fields."""
        now = time.time()
        if create:
            data = _encode({name: _text(value) for name, value in change.set.items()})
            meta = json.dumps(dict(change.meta), ensure_ascii=False)
            args: tuple[object, ...] = (
                key, change.created_at, change.touched_at, change.expires_at, data,
                change.owner, meta, now,
            )  # fmt: skip
            _, changed = self._run(_CREATE, args)
        else:
            patch: dict[str, str | None] = dict.fromkeys(change.delete)
            patch.update((name, _text(value)) for name, value in change.set.items())
            args = (_encode(patch), change.touched_at, change.expires_at, key, now)
            _, changed = self._run(_UPDATE, args)
        if changed != 1:
            return False
        if now >= self._next_purge:
            self._next_purge = now + self.purge_interval
            self._purge_from, _removed = self._purge_range(self._purge_from, now)
        return True

    def touch(self, key: str, touched_at: float, expires_at: float) -> bool:
        """Move the record's times in one statement."""
        return self._run(_TOUCH, (touched_at, expires_at, key, time.time()))[1] == 1

    def delete(self, key: str) -> None:
        """Remove the record."""
        self._run("DELETE FROM satchel_sessions WHERE key = ?", (key,))

    def acquire(self, key: str, token: str, lease: float) -> bool:
        """Lease the lock on ``key`` to ``token`` in one statement."""
        now = time.time()
        return self._run(_ACQUIRE, (key, token, now + lease, now))[1] == 1

    def release(self, key: str, token: str) -> None:
        """Free the lock if ``token`` holds it."""
        self._run("DELETE FROM satchel_lock WHERE key = ? AND token = ?", (key, token))

    def _purge_range(self, start: int, now: float) -> tuple[int, int]:
        """Delete expired rows with rowids in one batch from ``start``.

        Returns where the next batch starts (0 once the table is walked) and
        how many rows this one removed.
        Walking the table by rowid needs no index on the expiry time (which every
        save would have to update) and keeps each write short.
        """
        end = start + self.purge_batch
        _, removed = self._run(
            "DELETE FROM satchel_sessions WHERE id >= ? AND id < ? AND expires_at <= ?",
            (start, end, now),
        )
        self._run("DELETE FROM satchel_lock WHERE expires_at <= ?", (now,))
        last = self._run("SELECT max(id) FROM satchel_sessions", ())[0][0][0]
        return (0 if last is None or end > last else end), removed

    def purge_expired(self) -> int:
        """Remove every expired record, one short batch at a time; return how many."""
        return sum(removed for _walked, _total, removed in self.purge_in_batches())

    def purge_in_batches(self) -> Iterator[tuple[int, int, int]]:
        """Purge batch by batch, yielding (rows walked, rows to walk, rows removed) after each."""
        now = time.time()
        total = self._run("SELECT max(id) FROM satchel_sessions", ())[0][0][0] or 0
        start = 0
        while True:
            start, removed = self._purge_range(start, now)
            if start == 0:
                yield total, total, removed
                return
            yield min(start, total), total, removed

    def close(self) -> None:
        """Close every connection this store opened, in any thread."""
        for conn in self._connections.drain():
            conn.close()
