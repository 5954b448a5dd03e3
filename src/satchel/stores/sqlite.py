"""The embedded default store: one SQLite file, shared by threads and processes.

Each session is one row: its key (the store's prefix and the hash of its ID),
its namespace (the prefix), three times, and its fields as one JSON object
whose members hold each field's serialised value as a string (``"="`` and the
UTF-8 text, or ``"~"`` and base64 for other bytes). A load is one statement.
A save applies the fields the request changed to the row as stored, so two
overlapping requests that change different fields both keep their changes, and
checks every condition of the save (the record still there, the strict-mode
lock still held, the size limit, an emptied record) against what is stored, in
the same atomic step: the usual save is one ``UPDATE`` whose ``WHERE`` holds the
conditions and whose ``SET`` merges with SQLite's JSON functions
(``_sqlite_quick``), a create one upsert; the rest (and a save that statement
could not make) is one short write transaction (``BEGIN IMMEDIATE``, read the
row, merge in Python, write it). The file is in WAL
mode, so readers never wait for a writer; a writer waits for another write for
up to ``timeout`` seconds, then the store raises ``StoreUnavailable``. Threads
share the process's connections, each statement taking an idle one (or opening
one); idle connections above a small bound are closed. A forked child opens
its own. A file deleted or replaced while the app runs is noticed within a
second and answered with ``StoreUnavailable`` from then on: the writes would
otherwise go to a file nobody else reads.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .. import _json
from ..errors import ConfigError, SessionTooLarge, StoreUnavailable
from . import _sqlite_purge, _sqlite_quick
from ._connections import ConnectionList
from ._fieldtext import from_text, to_text
from .base import MOVE_NOTE_SECONDS, Change, Conflict, Record, SaveResult, apply_change

__all__ = ["SQLiteStore"]

_log = logging.getLogger("satchel")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS satchel_sessions (
    id INTEGER PRIMARY KEY,
    key TEXT NOT NULL UNIQUE,
    created_at REAL NOT NULL,
    touched_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    data TEXT NOT NULL,
    owner TEXT,
    meta TEXT NOT NULL DEFAULT '{}',
    ns TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS satchel_sessions_owner ON satchel_sessions (owner)
    WHERE owner IS NOT NULL;
CREATE TABLE IF NOT EXISTS satchel_lock (
    key TEXT PRIMARY KEY,
    token TEXT NOT NULL,
    expires_at REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS satchel_moves (
    key TEXT PRIMARY KEY,
    target TEXT NOT NULL,
    expires_at REAL NOT NULL
) WITHOUT ROWID;
"""

#: What _SCHEMA makes; when the file has them all, opening it writes nothing.
_SCHEMA_NAMES = {"satchel_sessions", "satchel_sessions_owner", "satchel_lock", "satchel_moves"}
_NOTE_MOVE = "INSERT OR REPLACE INTO satchel_moves VALUES (?, ?, ?)"
_DELETE_LIVE = "DELETE FROM satchel_sessions WHERE key = ? AND expires_at > ?"
_MOVED_TO = "SELECT target FROM satchel_moves WHERE key = ? AND expires_at > ?"

_COLUMNS = "created_at, touched_at, expires_at, data, owner, meta"
_LOAD = f"SELECT {_COLUMNS} FROM satchel_sessions WHERE key = ? AND expires_at > ?"
# Takes the key when it is free or its record has expired (then replaced whole).
_CREATE = """
INSERT INTO satchel_sessions (key, created_at, touched_at, expires_at, data, owner, meta, ns)
VALUES (?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (key) DO UPDATE SET created_at = excluded.created_at,
    touched_at = excluded.touched_at, expires_at = excluded.expires_at, data = excluded.data,
    owner = excluded.owner, meta = excluded.meta, ns = excluded.ns
WHERE satchel_sessions.expires_at <= ?
"""
_UPDATE = "UPDATE satchel_sessions SET data = ?, touched_at = ?, expires_at = ? WHERE key = ?"
_TOUCH = """
UPDATE satchel_sessions SET touched_at = ?, expires_at = ? WHERE key = ? AND expires_at > ?
"""
_HELD = "SELECT 1 FROM satchel_lock WHERE key = ? AND token = ? AND expires_at > ?"
_ACQUIRE = """
INSERT INTO satchel_lock VALUES (?, ?, ?) ON CONFLICT (key) DO UPDATE
SET token = excluded.token, expires_at = excluded.expires_at
WHERE satchel_lock.expires_at <= ? OR satchel_lock.token = excluded.token
"""
#: The log's length (frames, a page each) from which :meth:`SQLiteStore.maintain` makes
#: it start over: SQLite's own checkpoint threshold.
RESTART_FRAMES = 1000
#: How many times :meth:`SQLiteStore.maintain` tries to make the log start over.
RESTART_TRIES = 20
#: How often (seconds) a process checks that its file is still the one it opened.
FILE_CHECK_INTERVAL = 1.0


def _encode(fields: dict[str, str | None]) -> str:
    return _json.dumps(fields).decode("utf-8")  # text: json_patch wants TEXT, not a BLOB


def _record(row: Sequence[Any]) -> Record | None:
    """A Record from (created, touched, expires, data, owner, meta); None if unreadable."""
    return _parse(row)[0]


def _parse(row: Sequence[Any]) -> tuple[Record | None, dict[str, str]]:
    """The Record of a row, and its fields as the row holds them (text)."""
    try:
        stored = _json.loads(row[3])
        # from_text(), inline for the common "=" text: one call less per field.
        fields = {
            name: value[1:].encode("utf-8") if value[:1] == "=" else from_text(value)
            for name, value in stored.items()
        }
        meta = _json.loads(row[5]) if row[5] and row[5] != "{}" else {}
    except (ValueError, AttributeError, IndexError, TypeError):
        return None, {}  # not written by this store: treat as missing
    return Record(fields, row[0], row[1], row[2], row[4], meta), stored


class SQLiteStore:
    """Sessions in the SQLite database at ``path`` (created when missing).

    ``timeout`` is how long, in seconds, a write waits for another process's
    write before the store gives up. ``prefix`` is a namespace: stores with
    different prefixes on one file never see each other's sessions or locks.
    Expired records are removed in short batches (each holding the write lock
    about 5 ms, walking at most ``purge_batch`` rows; see ``_sqlite_purge``): every
    ``purge_interval`` seconds a walk of the table starts, one batch every 0.1 s
    by whichever request saves next, and
    :meth:`purge_expired` removes them all. At most ``max_idle`` idle
    connections are kept per process.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        timeout: float = 5.0,
        prefix: str = "",
        purge_interval: float = 300.0,
        purge_batch: int = 2000,
        max_idle: int = 8,
    ) -> None:
        self.path = Path(path)
        self.timeout = timeout
        # An inline twin's connections never checkpoint (see inline_twin()).
        self._inline = False
        self.prefix = prefix
        self.purge_interval = purge_interval
        self.purge_batch = purge_batch
        self._connections = ConnectionList(self._connect, close=self._close, max_idle=max_idle)
        self._next_purge = time.time() + purge_interval
        self._purge_from = 0  # the rowid where the next periodic batch starts
        self._purge_limit = _sqlite_purge.first_limit(purge_batch)  # rows a batch deletes
        self._purge_held = 0.0  # seconds the last batch's delete took
        self._identity: tuple[int, int] | None = None
        self._next_check = 0.0
        self._lost: str | None = None
        #: Whether this SQLite has the JSON functions one-statement saves use.
        self._quick = True
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"cannot make the folder of the SQLite file {str(self.path)!r}: {exc}"
            ) from exc
        with self._errors(), self._connection() as conn:
            columns = {row[1] for row in conn.execute("PRAGMA table_info(satchel_sessions)")}
            if columns and "owner" not in columns:  # a file from before owners existed
                conn.execute("ALTER TABLE satchel_sessions ADD COLUMN owner TEXT")
                conn.execute(
                    "ALTER TABLE satchel_sessions ADD COLUMN meta TEXT NOT NULL DEFAULT '{}'"
                )
            if columns and "ns" not in columns:  # a file from before namespaces existed
                conn.execute("ALTER TABLE satchel_sessions ADD COLUMN ns TEXT NOT NULL DEFAULT ''")
            # Reads first: a worker that boots while another process holds the write
            # lock must not wait for it (and fail to boot) when there is nothing to make.
            made = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
            if not made >= _SCHEMA_NAMES:
                conn.executescript(_SCHEMA)

    def __repr__(self) -> str:
        if self.prefix:
            return f"SQLiteStore({str(self.path)!r}, prefix={self.prefix!r})"
        return f"SQLiteStore({str(self.path)!r})"

    def with_prefix(self, prefix: str) -> SQLiteStore:
        """A store on the same file under another namespace."""
        return SQLiteStore(
            self.path,
            timeout=self.timeout,
            prefix=prefix,
            purge_interval=self.purge_interval,
            purge_batch=self.purge_batch,
        )

    def inline_twin(self) -> SQLiteStore:
        """The same file and namespace, for calls an event loop makes itself.

        Its calls never wait: a lock another connection holds fails them at
        once (``StoreUnavailable`` caused by ``SQLITE_BUSY``), so the caller
        can hand them to a thread instead; its commits never checkpoint the
        write-ahead log (the fsync that takes), and it never purges: the
        caller runs :meth:`maintain` on a thread for both.
        """
        twin = SQLiteStore.__new__(SQLiteStore)
        twin.__dict__.update(self.__dict__)
        twin.timeout = 0.0
        twin.purge_interval = float("inf")
        twin._next_purge = float("inf")
        twin._inline = True
        twin._connections = ConnectionList(twin._connect, close=self._close, max_idle=2)
        return twin

    def maintain(self) -> int:
        """One batch of the purge and a checkpoint of the write-ahead log.

        For stores whose writes go through an :meth:`inline_twin`; returns
        how many expired records the batch removed. The checkpoint is passive
        (it holds up no one); but while writes keep coming, a passive one never
        finds the whole log copied, and only a writer that does starts the log
        over: so once the log holds :data:`RESTART_FRAMES` frames,
        :meth:`_restart_log` follows.
        """
        now = time.time()
        removed = self._purge_step(now)
        rows, _ = self._run("PRAGMA wal_checkpoint(PASSIVE)", ())
        if rows and rows[0][1] >= RESTART_FRAMES:
            self._restart_log()
        return removed

    def _restart_log(self) -> None:
        """Make the write-ahead log start over, in a quiet moment: a restart checkpoint
        holds the write lock while it waits for readers, so this one never waits (no
        busy timeout) and is tried a few times a millisecond apart instead. Inline
        writes meanwhile find the file busy and go to a thread."""
        with self._errors(), self._connection() as conn:
            conn.execute("PRAGMA busy_timeout = 0")
            try:
                for _ in range(RESTART_TRIES):
                    if not conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()[0]:
                        return
                    time.sleep(0.001)
            finally:
                conn.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")

    def _connect(self) -> sqlite3.Connection:
        with self._errors():
            conn = sqlite3.connect(
                self.path, timeout=self.timeout, isolation_level=None, check_same_thread=False
            )
            try:
                # Setting the journal mode takes a lock; reading it does not, and a file
                # already in WAL mode (every one but a new file) needs no change.
                if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                    conn.execute("PRAGMA journal_mode = WAL")
                conn.execute("PRAGMA synchronous = NORMAL")
                if self._inline:  # checkpoints (and their fsync) run on a thread instead
                    conn.execute("PRAGMA wal_autocheckpoint = 0")
            except sqlite3.DatabaseError:
                conn.close()
                raise
        self._next_check = 0.0  # a new connection may have made a new file: look now
        return conn

    @staticmethod
    def _close(conn: sqlite3.Connection) -> None:
        conn.close()

    def _check_file(self) -> None:
        """Fail from now on if the file was deleted or replaced since it was opened.

        Connections already open keep writing to the old file, new ones to a new
        one: answering requests then would lose every write. One ``stat`` a second.
        """
        if self._lost is None:
            self._next_check = time.monotonic() + FILE_CHECK_INTERVAL
            try:
                stat = os.stat(self.path)
                identity = (stat.st_dev, stat.st_ino)
            except OSError as exc:
                identity = None
                reason = f"cannot stat the file ({exc.strerror})"
            else:
                if self._identity is None:
                    self._identity = identity
                reason = "it was replaced by another file"
            if identity is not None and identity == self._identity:
                return
            self._lost = (
                f"the SQLite file {str(self.path)!r} changed under the running app: {reason}; "
                "writes would be lost, so every request answers 503 until the app restarts"
            )
            _log.error("%s", self._lost)
        raise StoreUnavailable(repr(self), self._lost)

    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        """A connection for this caller alone until the block ends."""
        conn = self._connections.take()
        try:
            if self._lost is not None or time.monotonic() >= self._next_check:
                self._check_file()
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
            if self._lost is not None or time.monotonic() >= self._next_check:
                self._check_file()  # after take(): a first connection makes the file
            cursor = conn.execute(sql, args)
            return cursor.fetchall(), cursor.rowcount
        except sqlite3.DatabaseError as exc:
            raise StoreUnavailable(repr(self), str(exc)) from exc
        finally:
            self._connections.give(conn)

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, committed when the block ends and rolled back on error."""
        with self._errors(), self._connection() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def load(self, key: str) -> Record | None:
        """Read the record in one statement."""
        rows, _ = self._run(_LOAD, (self.prefix + key, time.time()))
        return _record(rows[0]) if rows else None

    def records(self, owner: str | None = None) -> Iterator[tuple[str, Record]]:
        """Yield the live records (of ``owner``), read in pages of a few hundred."""
        now = time.time()
        where = "ns = ? AND expires_at > ?" + ("" if owner is None else " AND owner = ?")
        args: tuple[object, ...] = (
            (self.prefix, now) if owner is None else (self.prefix, now, owner)
        )
        cut = len(self.prefix)
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
                    yield row[1][cut:], record
            if len(rows) < 500:
                return
            last = rows[-1][0]

    def references(self, start: str = "") -> Iterator[str]:
        """The keys of live records that begin with ``start``, from the key index alone."""
        low = self.prefix + start
        rows, _ = self._run(
            "SELECT key FROM satchel_sessions WHERE key >= ? AND key < ? AND ns = ?"
            " AND expires_at > ? ORDER BY key",
            (low, low + "\U0010ffff", self.prefix, time.time()),
        )
        cut = len(self.prefix)
        return iter([row[0][cut:] for row in rows])

    def count(self) -> tuple[int, int]:
        """How many live records there are, and how many distinct owners they have."""
        rows, _ = self._run(
            "SELECT count(*), count(DISTINCT owner) FROM satchel_sessions"
            " WHERE ns = ? AND expires_at > ?",
            (self.prefix, time.time()),
        )
        return int(rows[0][0]), int(rows[0][1])

    def save(self, key: str, change: Change, *, create: bool) -> SaveResult:
        """Apply ``change`` in one statement when it can (``_sqlite_quick``), else in one
        short write transaction, checking every condition in it."""
        now = time.time()
        name = self.prefix + key
        if self._quick and change.fence is None and change.replaces is None:
            done = (
                self._create_at_once(name, change, now)
                if create
                else self._update_at_once(name, change, now)
            )
            if done is not None:
                self._after_write(now)
                return done
        return self._save_in_transaction(name, change, now, create)

    def _update_at_once(self, name: str, change: Change, now: float) -> SaveResult | None:
        """SAVED when one UPDATE applied the change; None when the transaction must decide."""
        statement = _sqlite_quick.update(name, change, now)
        if statement is None:
            return None
        try:
            _, changed = self._run(*statement)
        except StoreUnavailable as exc:
            if not self._without_json(exc):
                raise
            return None
        return SaveResult.SAVED if changed == 1 else None

    def _create_at_once(self, name: str, change: Change, now: float) -> SaveResult | None:
        """A create as one upsert that takes the key only when it is free or expired:
        SAVED, or REFUSED when a live record holds it; None when the transaction must
        decide (the change raises, or leaves nothing to store)."""
        try:
            result = apply_change(None, change)
        except (SessionTooLarge, Conflict):  # the transaction says which, in its order
            return None
        if result is None:
            return None
        data = _encode({field: to_text(value) for field, value in result.fields.items()})
        _, changed = self._run(_CREATE, self._create_args(name, result, data, now))
        return SaveResult.SAVED if changed == 1 else SaveResult.REFUSED

    def _create_args(self, name: str, result: Record, data: str, now: float) -> tuple[object, ...]:
        """The arguments of ``_CREATE`` for a new row holding ``result`` (``data``: its fields)."""
        meta = _encode(dict(result.meta))  # through orjson: 0.2 us where json takes 3
        return (
            name, result.created_at, result.touched_at, result.expires_at, data,
            result.owner, meta, self.prefix, now,
        )  # fmt: skip

    def _without_json(self, error: StoreUnavailable) -> bool:
        """Whether a one-statement save failed for its JSON alone: a row that is not
        JSON (the transaction treats it as unreadable), or an SQLite built without the
        JSON functions (from then on every save takes the transaction)."""
        text = str(error.__cause__)
        if "no such function" in text:
            self._quick = False
            return True
        return "malformed JSON" in text

    def _after_write(self, now: float) -> None:
        """What follows a save: a batch of the purge, when one is due."""
        if now >= self._next_purge:
            self._purge_step(now)

    def _purge_step(self, now: float) -> int:
        """The periodic purge's next batch; when the walk it belongs to ends, the next
        walk starts ``purge_interval`` later, else the next batch is due shortly."""
        self._next_purge = now + self.purge_interval  # also when this batch fails
        self._purge_from, removed = _sqlite_purge.purge_range(self, self._purge_from, now)
        self._next_purge = _sqlite_purge.next_due(self, now)
        return removed

    def _save_in_transaction(
        self, name: str, change: Change, now: float, create: bool
    ) -> SaveResult:
        """The save in one write transaction: every kind of change, every condition."""
        moved = self.prefix + change.replaces if create and change.replaces is not None else None
        with self._transaction() as conn:
            if change.fence is not None:
                held = conn.execute(_HELD, (moved or name, change.fence, now)).fetchone()
                if held is None:
                    return SaveResult.FENCED
            row = conn.execute(_LOAD, (name, now)).fetchone()
            if (row is None) is not create:
                return SaveResult.REFUSED
            base, texts = (None, {}) if row is None else _parse(row)
            if moved is not None:
                old = conn.execute(_LOAD, (moved, now)).fetchone()
                base, texts = (None, {}) if old is None else _parse(old)
            if base is None and (moved is not None or not create):
                return SaveResult.REFUSED  # gone, or unreadable: never written over
            try:
                result = apply_change(base, change)
            except Conflict:
                return SaveResult.CONFLICT
            if moved is not None or result is None:
                conn.execute("DELETE FROM satchel_sessions WHERE key = ?", (moved or name,))
            if result is None:
                return SaveResult.DELETED
            if moved is not None:
                conn.execute(_NOTE_MOVE, (moved, name, now + MOVE_NOTE_SECONDS))
            # A field the change leaves keeps its stored text (a binary field is not
            # turned into base64 again on every save).
            changed = change.set
            data = _encode(
                {
                    field: text
                    if field not in changed and (text := texts.get(field)) is not None
                    else to_text(value)
                    for field, value in result.fields.items()
                }
            )
            if create:
                args = self._create_args(name, result, data, now)
                if conn.execute(_CREATE, args).rowcount != 1:  # pragma: no cover - checked above
                    raise StoreUnavailable(repr(self), "a new record's key was taken")
            else:
                conn.execute(_UPDATE, (data, result.touched_at, result.expires_at, name))
        self._after_write(now)
        return SaveResult.SAVED

    def touch(self, key: str, touched_at: float, expires_at: float) -> bool:
        """Move the record's times in one statement."""
        args = (touched_at, expires_at, self.prefix + key, time.time())
        return self._run(_TOUCH, args)[1] == 1

    def revoke(
        self, keys: Collection[str] = (), *, owner: str | None = None, keep: str | None = None
    ) -> int:
        """End records, following moves, in one write transaction (no move runs meanwhile)."""
        now = time.time()
        cut = len(self.prefix)
        spare = None if keep is None else self.prefix + keep
        ended = 0
        with self._transaction() as conn:
            todo = [self.prefix + key for key in keys]
            if owner is not None:
                rows = conn.execute(
                    "SELECT key FROM satchel_sessions"
                    " WHERE owner = ? AND ns = ? AND expires_at > ?",
                    (owner, self.prefix, now),
                )
                todo += [row[0] for row in rows if row[0][:cut] == self.prefix]
            for name in todo:
                while name != spare:
                    if conn.execute(_DELETE_LIVE, (name, now)).rowcount == 1:
                        ended += 1
                        break
                    row = conn.execute(_MOVED_TO, (name, now)).fetchone()
                    if row is None:
                        break
                    name = row[0]
        return ended

    def delete(self, key: str) -> None:
        """Remove the record."""
        self._run("DELETE FROM satchel_sessions WHERE key = ?", (self.prefix + key,))

    def acquire(self, key: str, token: str, lease: float) -> bool:
        """Lease the lock on ``key`` to ``token`` in one statement."""
        now = time.time()
        return self._run(_ACQUIRE, (self.prefix + key, token, now + lease, now))[1] == 1

    def release(self, key: str, token: str) -> None:
        """Free the lock if ``token`` holds it."""
        self._run(
            "DELETE FROM satchel_lock WHERE key = ? AND token = ?", (self.prefix + key, token)
        )

    def purge_expired(self) -> int:
        """Remove every expired record, one short batch at a time; return how many."""
        return sum(removed for _walked, _total, removed in self.purge_in_batches())

    def purge_in_batches(self) -> Iterator[tuple[int, int, int]]:
        """Purge batch by batch, yielding (rows walked, rows to walk, rows removed) after each."""
        now = time.time()
        total = self._run("SELECT max(id) FROM satchel_sessions", ())[0][0][0] or 0
        start = 0
        while True:
            start, removed = _sqlite_purge.purge_range(self, start, now)
            if start == 0:
                yield total, total, removed
                return
            yield min(start, total), total, removed
            # As long again without the lock: writers waiting for it (their busy
            # handler sleeps and retries) get in between batches.
            time.sleep(min(self._purge_held, 0.05))

    def close(self) -> None:
        """Close every connection this store opened, in any thread."""
        for conn in self._connections.drain():
            conn.close()
