"""A store on PostgreSQL through psycopg 3: one row per session, where the app's data lives.

A session is one row of ``satchel_sessions``: its key (the store's prefix and
the hash of its ID), its namespace, three times, its owner and client details,
and its fields as one JSONB object whose members hold each field's serialised
value as text (``"="`` and the UTF-8 text, or ``"~"`` and base64 for other
bytes). A load is one statement by primary key. A save is one statement too,
``SELECT satchel_save(...)``: a PL/pgSQL function that locks the row, checks
every condition of the save (the record still there, the strict-mode lock
still held, each expected field, the size limit, an emptied record) against
the row as stored and applies the change, so overlapping saves of different
fields both keep their changes and no lock outlives the statement. Strict-mode
locks are lease rows in ``satchel_locks`` (a key, an owner token and an expiry):
advisory locks belong to a connection, which a pool hands from request to
request, and die with it, so a lease row is what can outlive a crashed worker
by exactly its lease and no more.

The schema is created on first use, under an advisory lock so that workers
starting together do it once; ``create_schema=False`` leaves that to your
migrations (:data:`SCHEMA` is the SQL to run). Stores built from a URL drive
their own connections, one per call at a time, from a free list like the other
stores (a forked worker makes its own), and an idle connection the server
closed (a restart) is noticed without a round trip and replaced; every wait on
the server is bounded (``timeout`` seconds per statement, 2 s per connection
attempt, libpq's minimum), and after a connection failure the store answers
``StoreUnavailable`` at once for half a second instead of making every request
wait. Pass a ``psycopg_pool.ConnectionPool`` instead to use your own pool.
"""

from __future__ import annotations

import asyncio
import os
import select
import threading
import time
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from .._steps import Steps, drive, drive_async
from ..errors import ConfigError, SessionTooLarge, StoreUnavailable
from ._connections import ConnectionList
from ._fieldtext import from_text, to_text
from .base import Change, Record, SaveResult

if TYPE_CHECKING:
    import psycopg_pool

__all__ = ["SCHEMA", "AsyncPostgresStore", "PostgresStore"]

#: The tables, indexes and function the store uses; run it yourself with ``create_schema=False``.
SCHEMA = """
CREATE TABLE IF NOT EXISTS satchel_sessions (
    key text PRIMARY KEY,
    ns text NOT NULL DEFAULT '',
    created_at double precision NOT NULL,
    touched_at double precision NOT NULL,
    expires_at double precision NOT NULL,
    data jsonb NOT NULL,
    size bigint,
    owner text,
    meta jsonb NOT NULL DEFAULT '{}'
) WITH (toast_tuple_target = 8160);
ALTER TABLE satchel_sessions ADD COLUMN IF NOT EXISTS size bigint;
CREATE INDEX IF NOT EXISTS satchel_sessions_owner ON satchel_sessions (ns, owner)
    WHERE owner IS NOT NULL;
CREATE INDEX IF NOT EXISTS satchel_sessions_expires ON satchel_sessions (expires_at);
CREATE TABLE IF NOT EXISTS satchel_locks (
    key text PRIMARY KEY,
    token text NOT NULL,
    expires_at double precision NOT NULL
);
-- Where a moved record went (regenerate()), for 300 s (MOVE_NOTE_SECONDS): see satchel_revoke.
CREATE TABLE IF NOT EXISTS satchel_moves (
    key text PRIMARY KEY,
    target text NOT NULL,
    expires_at double precision NOT NULL
);
-- End the rows under p_keys and, with p_owner, every row of that owner, but p_keep;
-- a moved row is followed to its new key. Each statement sees what committed before
-- it, and a move locks its old row: a move either finished before (and is followed)
-- or finds its old row gone (and is refused). Returns how many live rows ended.
CREATE OR REPLACE FUNCTION satchel_revoke(
    p_keys text[], p_owner text, p_ns text, p_keep text, p_now double precision
) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    todo text[] := p_keys;
    name text;
    ended bigint := 0;
BEGIN
    IF p_owner IS NOT NULL THEN
        todo := todo || ARRAY(SELECT key FROM satchel_sessions
            WHERE ns = p_ns AND owner = p_owner AND expires_at > p_now);
    END IF;
    FOREACH name IN ARRAY todo LOOP
        WHILE name IS DISTINCT FROM p_keep LOOP
            DELETE FROM satchel_sessions WHERE key = name AND expires_at > p_now;
            IF FOUND THEN
                ended := ended + 1;
                EXIT;
            END IF;
            SELECT target INTO name FROM satchel_moves WHERE key = name AND expires_at > p_now;
            IF NOT FOUND THEN EXIT; END IF;
        END LOOP;
    END LOOP;
    RETURN ended;
END
$$;
CREATE OR REPLACE FUNCTION satchel_value_size(value text) RETURNS bigint
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN left(value, 1) = '=' THEN octet_length(value) - 1
        ELSE length(decode(substr(value, 2), 'base64')) END
$$;
CREATE OR REPLACE FUNCTION satchel_size(fields jsonb) RETURNS bigint
LANGUAGE sql IMMUTABLE AS $$
    SELECT COALESCE(sum(octet_length(key) + satchel_value_size(value)), 0)
    FROM jsonb_each_text(fields)
$$;
CREATE OR REPLACE FUNCTION satchel_save(
    p_key text, p_ns text, p_mode text, p_source text, p_fence text,
    p_set jsonb, p_delete text[], p_only text[], p_expect jsonb, p_max bigint,
    p_created double precision, p_touched double precision, p_expires double precision,
    p_owner text, p_meta jsonb, p_now double precision
) RETURNS bigint[] LANGUAGE plpgsql AS $$
DECLARE
    src satchel_sessions%ROWTYPE;
    base jsonb := '{}';
    merged jsonb;
    deleted jsonb := '{}';
    dropped bigint;
    before bigint := 0;
    after bigint;
    inserted bigint;
BEGIN
    IF p_fence IS NOT NULL AND NOT EXISTS (SELECT 1 FROM satchel_locks
            WHERE key = p_source AND token = p_fence AND expires_at > p_now) THEN
        RETURN ARRAY[3];
    END IF;
    IF p_mode = 'u' THEN
        SELECT * INTO src FROM satchel_sessions
            WHERE key = p_key AND expires_at > p_now FOR UPDATE;
        IF NOT FOUND THEN RETURN ARRAY[0]; END IF;
        base := src.data;
    ELSE
        PERFORM 1 FROM satchel_sessions WHERE key = p_key AND expires_at > p_now;
        IF FOUND THEN RETURN ARRAY[0]; END IF;
        IF p_mode = 'm' THEN
            SELECT * INTO src FROM satchel_sessions
                WHERE key = p_source AND expires_at > p_now FOR UPDATE;
            IF NOT FOUND THEN RETURN ARRAY[0]; END IF;
            base := src.data;
        END IF;
    END IF;
    -- Set-based from here on, so a save is linear in the record's size: base is
    -- detoasted once (|| makes a fresh value), and each lookup in it or in the
    -- deleted names (an object, for ?) is a binary search, never a scan.
    base := base || '{}';
    IF cardinality(p_delete) > 0 THEN
        SELECT jsonb_object_agg(k, true) INTO deleted FROM unnest(p_delete) AS k;
    END IF;
    IF p_expect IS NOT NULL AND (
        EXISTS (SELECT 1 FROM jsonb_each(base) AS b
            WHERE p_expect ? b.key AND (p_expect -> b.key) IS DISTINCT FROM b.value)
        OR EXISTS (SELECT 1 FROM jsonb_each(p_expect) AS e
            WHERE e.value <> 'null'::jsonb AND NOT base ? e.key)) THEN
        RETURN ARRAY[4];
    END IF;
    SELECT COALESCE(jsonb_object_agg(b.key, b.value), '{}'::jsonb) INTO merged
        FROM jsonb_each(base) AS b WHERE NOT deleted ? b.key;
    merged := merged || p_set;
    IF p_mode <> 'c' THEN
        before := COALESCE(src.size, satchel_size(base));
    END IF;
    -- Only the fields this save names change the size: no need to walk the rest.
    SELECT COALESCE(sum(octet_length(b.key) + satchel_value_size(b.value)), 0) INTO dropped
        FROM jsonb_each_text(base) AS b WHERE p_set ? b.key OR deleted ? b.key;
    after := before + satchel_size(p_set) - dropped;
    IF p_max IS NOT NULL AND after > p_max AND after > before THEN
        RETURN ARRAY[9, after];
    END IF;
    IF p_only IS NOT NULL AND NOT EXISTS (
            SELECT 1 FROM jsonb_object_keys(merged) AS k WHERE k <> ALL (p_only)) THEN
        DELETE FROM satchel_sessions
            WHERE key = CASE WHEN p_mode = 'm' THEN p_source ELSE p_key END;
        RETURN ARRAY[2];
    END IF;
    IF p_mode = 'u' THEN
        UPDATE satchel_sessions SET data = merged, size = after, touched_at = p_touched,
            expires_at = p_expires WHERE key = p_key;
    ELSE
        INSERT INTO satchel_sessions
            (key, ns, created_at, touched_at, expires_at, data, size, owner, meta)
            VALUES (p_key, p_ns, p_created, p_touched, p_expires, merged, after, p_owner, p_meta)
        ON CONFLICT (key) DO UPDATE SET ns = excluded.ns, created_at = excluded.created_at,
            touched_at = excluded.touched_at, expires_at = excluded.expires_at,
            data = excluded.data, size = excluded.size, owner = excluded.owner,
            meta = excluded.meta
            WHERE satchel_sessions.expires_at <= p_now;
        -- A create racing another of the same key waits for it, then finds it live.
        GET DIAGNOSTICS inserted = ROW_COUNT;
        IF inserted = 0 THEN RETURN ARRAY[0]; END IF;
        IF p_mode = 'm' THEN
            DELETE FROM satchel_sessions WHERE key = p_source;
            INSERT INTO satchel_moves VALUES (p_source, p_key, p_now + 300)
                ON CONFLICT (key) DO UPDATE SET target = excluded.target,
                    expires_at = excluded.expires_at;
        END IF;
    END IF;
    RETURN ARRAY[1];
END
$$;
"""

_COLUMNS = "created_at, touched_at, expires_at, data, owner, meta"
_LOAD = f"SELECT {_COLUMNS} FROM satchel_sessions WHERE key = %s AND expires_at > %s"
_SAVE = (
    "SELECT satchel_save(%s, %s, %s, %s, %s, %s::jsonb, %s::text[], %s::text[], %s::jsonb,"
    " %s, %s, %s, %s, %s, %s::jsonb, %s)"
)
_TOUCH = (
    "UPDATE satchel_sessions SET touched_at = %s, expires_at = %s"
    " WHERE key = %s AND expires_at > %s"
)
_ACQUIRE = """
INSERT INTO satchel_locks VALUES (%s, %s, %s) ON CONFLICT (key) DO UPDATE
SET token = excluded.token, expires_at = excluded.expires_at
WHERE satchel_locks.expires_at <= %s OR satchel_locks.token = excluded.token
"""
#: How long (seconds) the store answers StoreUnavailable at once after a connection failed.
BREAKER_SECONDS = 0.5
#: How many rows one purge statement deletes at most.
PURGE_BATCH = 2000


def _record(row: Sequence[Any]) -> Record | None:
    """A Record from (created, touched, expires, data, owner, meta); None if unreadable."""
    try:
        fields = {name: from_text(value) for name, value in row[3].items()}
    except (AttributeError, IndexError, TypeError, ValueError):
        return None
    return Record(fields, row[0], row[1], row[2], row[4], dict(row[5] or {}))


class _PostgresRules:
    """What the sync and async PostgreSQL stores share: each call's statements and rules.

    Each operation is a generator of ``("run", sql, args)`` calls (see
    :mod:`satchel._steps`), sent back ``(rows, rowcount)``; :class:`PostgresStore`
    runs them with psycopg's connections, :class:`AsyncPostgresStore` with its
    async ones.
    """

    prefix: str
    purge_interval: float
    _next_purge: float
    _jsonb: Any

    def _configure(
        self,
        conninfo: str | None,
        pool: Any,
        prefix: str,
        timeout: float,
        create_schema: bool,
        purge_interval: float,
    ) -> None:
        """The settings both stores keep, checked; psycopg imported once."""
        if (conninfo is None) == (pool is None):
            raise ConfigError(f"{type(self).__name__} needs a conninfo string or URL, or a pool")
        try:
            import psycopg
            from psycopg.types.json import Jsonb
        except ImportError as exc:
            raise ConfigError(
                "the PostgreSQL store needs psycopg: pip install 'satchel[postgres]'"
            ) from exc
        if conninfo is not None and conninfo.startswith("postgres://"):
            conninfo = "postgresql://" + conninfo[len("postgres://") :]
        self.conninfo = conninfo
        self.pool = pool
        self.prefix = prefix
        self.timeout = timeout
        self.create_schema = create_schema
        self.purge_interval = purge_interval
        self._psycopg: Any = psycopg
        self._jsonb = Jsonb
        self._schema_ready = not create_schema
        self._down_until = 0.0
        self._next_purge = time.time() + purge_interval

    def __repr__(self) -> str:
        if self.pool is not None:
            where = f"pool {self.pool.name!r}"
        else:
            info = self._psycopg.conninfo.conninfo_to_dict(self.conninfo or "")
            host, port = info.get("host", "localhost"), info.get("port", 5432)
            where = f"{host}:{port}/{info.get('dbname', '')}"
        suffix = f", prefix={self.prefix!r}" if self.prefix else ""
        return f"{type(self).__name__}({where!r}{suffix})"

    def _unavailable(self, exc: BaseException) -> StoreUnavailable:
        return StoreUnavailable(repr(self), f"{type(exc).__name__}: {exc}".strip())

    def _load_steps(self, key: str) -> Steps[Record | None]:
        rows, _ = yield ("run", _LOAD, (self.prefix + key, time.time()))
        return _record(rows[0]) if rows else None

    def _save_steps(self, key: str, change: Change, create: bool) -> Steps[SaveResult]:
        now = time.time()
        moved = create and change.replaces is not None
        source = self.prefix + (change.replaces if moved and change.replaces else key)
        expect = None
        if change.expect is not None:
            expect = {n: None if v is None else to_text(v) for n, v in change.expect.items()}
        args = (
            self.prefix + key, self.prefix, "u" if not create else "m" if moved else "c",
            source, change.fence,
            self._jsonb({name: to_text(value) for name, value in change.set.items()}),
            list(change.delete),
            None if change.delete_if_only is None else list(change.delete_if_only),
            None if expect is None else self._jsonb(expect),
            change.max_size, change.created_at, change.touched_at, change.expires_at,
            change.owner, self._jsonb(dict(change.meta)), now,
        )  # fmt: skip
        rows, _ = yield ("run", _SAVE, args)
        reply = rows[0][0]
        if reply[0] == 9:
            raise SessionTooLarge(int(reply[1]), change.max_size or 0)
        if reply[0] == SaveResult.SAVED and now >= self._next_purge:
            self._next_purge = now + self.purge_interval
            yield from self._purge_batch_steps(now)
        return SaveResult(reply[0])

    def _touch_steps(self, key: str, touched_at: float, expires_at: float) -> Steps[bool]:
        _, changed = yield ("run", _TOUCH, (touched_at, expires_at, self.prefix + key, time.time()))
        return bool(changed == 1)

    def _delete_steps(self, key: str) -> Steps[None]:
        yield ("run", "DELETE FROM satchel_sessions WHERE key = %s", (self.prefix + key,))

    def _revoke_steps(
        self, keys: Collection[str], owner: str | None, keep: str | None
    ) -> Steps[int]:
        args = (
            [self.prefix + key for key in keys], owner, self.prefix,
            None if keep is None else self.prefix + keep, time.time(),
        )  # fmt: skip
        rows, _ = yield ("run", "SELECT satchel_revoke(%s::text[], %s, %s, %s, %s)", args)
        return int(rows[0][0])

    def _acquire_steps(self, key: str, token: str, lease: float) -> Steps[bool]:
        now = time.time()
        _, changed = yield ("run", _ACQUIRE, (self.prefix + key, token, now + lease, now))
        return bool(changed == 1)

    def _release_steps(self, key: str, token: str) -> Steps[None]:
        sql = "DELETE FROM satchel_locks WHERE key = %s AND token = %s"
        yield ("run", sql, (self.prefix + key, token))

    def _page_steps(
        self, owner: str | None, last: str
    ) -> Steps[tuple[list[tuple[str, Record]], str | None]]:
        """One page of live rows (of ``owner``) after key ``last``; the key to go on from."""
        where = "key > %s AND ns = %s AND expires_at > %s"
        args: tuple[Any, ...] = (last, self.prefix, time.time())
        if owner is not None:
            where += " AND owner = %s"
            args += (owner,)
        query = f"SELECT key, {_COLUMNS} FROM satchel_sessions WHERE {where}"
        rows, _ = yield ("run", query + " ORDER BY key LIMIT 500", args)
        cut = len(self.prefix)
        found = []
        for row in rows:
            record = _record(row[1:])
            if record is not None:
                found.append((row[0][cut:], record))
        return found, (rows[-1][0] if len(rows) == 500 else None)

    def _references_steps(self, start: str) -> Steps[list[str]]:
        low = self.prefix + start
        rows, _ = yield (
            "run",
            "SELECT key FROM satchel_sessions WHERE key >= %s AND left(key, %s) = %s"
            " AND ns = %s AND expires_at > %s ORDER BY key",
            (low, len(low), low, self.prefix, time.time()),
        )
        cut = len(self.prefix)
        return [row[0][cut:] for row in rows]

    def _count_steps(self) -> Steps[tuple[int, int]]:
        rows, _ = yield (
            "run",
            "SELECT count(*), count(DISTINCT owner) FROM satchel_sessions"
            " WHERE ns = %s AND expires_at > %s",
            (self.prefix, time.time()),
        )
        return int(rows[0][0]), int(rows[0][1])

    def _purge_batch_steps(self, now: float) -> Steps[int]:
        """Delete up to PURGE_BATCH expired rows (of every namespace), by the expiry index."""
        _, removed = yield (
            "run",
            "DELETE FROM satchel_sessions WHERE key IN (SELECT key FROM satchel_sessions"
            " WHERE expires_at <= %s LIMIT %s)",
            (now, PURGE_BATCH),
        )
        yield ("run", "DELETE FROM satchel_locks WHERE expires_at <= %s", (now,))
        yield ("run", "DELETE FROM satchel_moves WHERE expires_at <= %s", (now,))
        return int(removed)

    def _expired_steps(self, now: float) -> Steps[int]:
        rows, _ = yield (
            "run",
            "SELECT count(*) FROM satchel_sessions WHERE expires_at <= %s",
            (now,),
        )
        return int(rows[0][0])


class PostgresStore(_PostgresRules):
    """Sessions in PostgreSQL, from a ``conninfo`` string or URL, or a connection ``pool``.

    ``prefix`` is a namespace (``SATCHEL_KEY_PREFIX``). ``timeout`` bounds each
    statement, on the server (``statement_timeout``) and in the client (a
    server that stops answering altogether). ``create_schema=False`` expects
    :data:`SCHEMA` to exist already.
    """

    def __init__(
        self,
        conninfo: str | None = None,
        *,
        pool: psycopg_pool.ConnectionPool[Any] | None = None,
        prefix: str = "",
        timeout: float = 1.0,
        create_schema: bool = True,
        purge_interval: float = 300.0,
        max_idle: int = 8,
    ) -> None:
        self._configure(conninfo, pool, prefix, timeout, create_schema, purge_interval)
        self._connection_class = _timed_connection_class(self._psycopg)
        self._connections: ConnectionList[Any] = ConnectionList(
            self._connect, close=lambda conn: conn.close(), max_idle=max_idle
        )
        self._schema_lock = threading.Lock()
        #: The thread creating the schema, whose own statements must not wait for it.
        self._creating_schema: int | None = None
        # What to_async() needs: a store built on a pool has no async twin.
        self._source = conninfo

    @classmethod
    def from_url(cls, url: str, *, prefix: str = "", **options: Any) -> PostgresStore:
        """A store for a ``postgresql://`` (or ``postgres://``) URL; libpq options pass through."""
        if url.startswith("postgres://"):
            url = "postgresql://" + url[len("postgres://") :]
        return cls(url, prefix=prefix, **options)

    def with_prefix(self, prefix: str) -> PostgresStore:
        """A store on the same database and connections (or pool) under another namespace."""
        other = PostgresStore(
            self.conninfo, pool=self.pool, prefix=prefix, timeout=self.timeout,
            create_schema=self.create_schema,
        )  # fmt: skip
        other._connections = self._connections
        return other

    # -- connections ---------------------------------------------------------

    def _connect(self) -> Any:
        conn = self._connection_class.connect(
            self.conninfo or "", autocommit=True, prepare_threshold=0,
            connect_timeout=max(2, int(self.timeout)),
        )  # fmt: skip
        conn.wait_timeout = self.timeout + 0.1  # the server's own limit answers first
        conn.execute(f"SET statement_timeout = {int(self.timeout * 1000)}")
        return conn

    @contextmanager
    def _connection(self) -> Iterator[Any]:
        """A connection for one call; failures become StoreUnavailable, broken ones are dropped."""
        if time.monotonic() < self._down_until:
            raise StoreUnavailable(repr(self), "it failed a moment ago; trying again shortly")
        if not self._schema_ready and self._creating_schema != threading.get_ident():
            self._ensure_schema()
        psycopg = self._psycopg
        if self.pool is not None:
            try:
                with self.pool.connection(timeout=self.timeout) as conn:
                    yield conn
            except (psycopg.Error, self._pool_errors()) as exc:
                raise self._unavailable(exc) from exc
            return
        conn = self._take_waiting()
        try:
            yield conn
        except psycopg.OperationalError as exc:
            broken = conn.closed or conn.pgconn.transaction_status != 0  # not IDLE
            if broken:
                self._drop(conn, all_idle=True)
                self._down_until = time.monotonic() + BREAKER_SECONDS
            else:
                self._connections.give(conn)
            raise self._unavailable(exc) from exc
        except psycopg.Error as exc:
            self._connections.give(conn)
            raise self._unavailable(exc) from exc
        except BaseException:
            self._drop(conn, all_idle=False)
            raise
        else:
            self._connections.give(conn)

    def _take_waiting(self) -> Any:
        """A connection; while the server has no slot free, wait (up to ``timeout``).

        Running out of connections is back-pressure, not an outage: this thread
        waits for another one to give a connection back (or a slot to free up),
        and only a server that does not answer trips the breaker.
        """
        psycopg = self._psycopg
        deadline = pause = 0.0
        while True:
            try:
                conn = self._connections.take()
                while _closed_by_server(conn):  # a restart ended it while it sat idle
                    self._drop(conn, all_idle=False)
                    conn = self._connections.take()
                return conn
            except psycopg.Error as exc:
                now = time.monotonic()
                if not _server_full(exc):
                    self._down_until = now + BREAKER_SECONDS
                    raise self._unavailable(exc) from exc
                deadline = deadline or now + self.timeout
                if now >= deadline:
                    raise self._unavailable(exc) from exc
                pause = min(max(pause * 2, 0.002), 0.05, deadline - now)
                time.sleep(pause)

    def _pool_errors(self) -> type[Exception]:
        from psycopg_pool import PoolTimeout

        return PoolTimeout

    def _drop(self, conn: Any, *, all_idle: bool) -> None:
        """Close a broken connection (and, after a server restart, the idle ones too)."""
        for each in self._connections.discard(conn, idle_too=all_idle):
            each.close()

    def _run(self, sql: str, args: Sequence[Any] = ()) -> tuple[list[Any], int]:
        """Run one statement; return its rows and how many rows it changed."""
        with self._connection() as conn:
            cursor = conn.execute(sql, args)
            rows = cursor.fetchall() if cursor.description is not None else []
            return rows, cursor.rowcount

    def _ensure_schema(self) -> None:
        """Create the schema once per process, under an advisory lock shared by every worker."""
        with self._schema_lock:
            if self._schema_ready:
                return
            # Only this thread's _connection() below skips the check: the others wait
            # on the lock until the schema is there (they used to see it ready early).
            self._creating_schema = threading.get_ident()
            try:
                with self._connection() as conn, conn.transaction():
                    conn.execute("SELECT pg_advisory_xact_lock(hashtext('satchel schema'))")
                    conn.execute(SCHEMA, prepare=False)  # several statements: not preparable
            finally:
                self._creating_schema = None
            self._schema_ready = True

    # -- the Store protocol --------------------------------------------------

    def _perform(self, op: tuple[Any, ...]) -> tuple[list[Any], int]:
        return self._run(op[1], op[2])

    def load(self, key: str) -> Record | None:
        """Read the row in one statement, by primary key."""
        return drive(self._load_steps(key), self._perform)

    def save(self, key: str, change: Change, *, create: bool) -> SaveResult:
        """Apply ``change`` with one statement: the satchel_save function."""
        return drive(self._save_steps(key, change, create), self._perform)

    def touch(self, key: str, touched_at: float, expires_at: float) -> bool:
        """Move the row's times in one statement."""
        return drive(self._touch_steps(key, touched_at, expires_at), self._perform)

    def delete(self, key: str) -> None:
        """Delete the row."""
        drive(self._delete_steps(key), self._perform)

    def revoke(
        self, keys: Collection[str] = (), *, owner: str | None = None, keep: str | None = None
    ) -> int:
        """End rows, following moves, with one statement: the satchel_revoke function."""
        return drive(self._revoke_steps(keys, owner, keep), self._perform)

    def acquire(self, key: str, token: str, lease: float) -> bool:
        """Lease the lock row on ``key`` to ``token`` in one statement."""
        return drive(self._acquire_steps(key, token, lease), self._perform)

    def release(self, key: str, token: str) -> None:
        """Delete the lock row if ``token`` holds it."""
        drive(self._release_steps(key, token), self._perform)

    def records(self, owner: str | None = None) -> Iterator[tuple[str, Record]]:
        """Yield the live rows (of ``owner``), read in pages of 500 by key."""
        last: str | None = self.prefix
        while last is not None:
            page, last = drive(self._page_steps(owner, last), self._perform)
            yield from page

    def references(self, start: str = "") -> Iterator[str]:
        """The keys of live rows that begin with ``start``, from the primary key's index."""
        return iter(drive(self._references_steps(start), self._perform))

    def count(self) -> tuple[int, int]:
        """How many live rows there are, and how many distinct owners they have."""
        return drive(self._count_steps(), self._perform)

    def purge_in_batches(self) -> Iterator[tuple[int, int, int]]:
        """Purge batch by batch, yielding (rows done, rows to do, rows removed) after each."""
        now = time.time()
        total = drive(self._expired_steps(now), self._perform)
        done = 0
        while True:
            removed = drive(self._purge_batch_steps(now), self._perform)
            done += removed
            yield min(done, total), total, removed
            if removed < PURGE_BATCH:
                return

    def purge_expired(self) -> int:
        """Remove every expired row, in short batches; return how many."""
        return sum(removed for _done, _total, removed in self.purge_in_batches())

    def to_async(self) -> AsyncPostgresStore:
        """An :class:`AsyncPostgresStore` on the same database, namespace and timeouts.

        Only for a store built from a conninfo string or URL, not on your pool.
        """
        if self.conninfo is None:
            raise ConfigError(f"{self!r} was built on a pool: build its async twin yourself")
        return AsyncPostgresStore(
            self.conninfo, prefix=self.prefix, timeout=self.timeout,
            create_schema=self.create_schema, purge_interval=self.purge_interval,
        )  # fmt: skip

    def close(self) -> None:
        """Close the connections this store opened (a pool you passed stays yours)."""
        for conn in self._connections.drain():
            conn.close()


class AsyncPostgresStore(_PostgresRules):
    """Sessions in PostgreSQL for ASGI apps, through psycopg's async connections.

    The same table, function and rules as :class:`PostgresStore` (one code),
    so a Flask app and an ASGI app with the same ``prefix`` share their
    sessions. Connections come from a free list of this process's event loop;
    every statement is bounded by ``timeout`` on the server and, for a server
    that stops answering altogether, in the client; after a connection failure
    the store answers ``StoreUnavailable`` at once for half a second. Pass a
    ``psycopg_pool.AsyncConnectionPool`` instead to use your own pool.
    """

    def __init__(
        self,
        conninfo: str | None = None,
        *,
        pool: Any = None,
        prefix: str = "",
        timeout: float = 1.0,
        create_schema: bool = True,
        purge_interval: float = 300.0,
        max_idle: int = 8,
    ) -> None:
        self._configure(conninfo, pool, prefix, timeout, create_schema, purge_interval)
        self.max_idle = max_idle
        self._free: list[Any] = []
        self._pid = os.getpid()
        self._schema_lock: asyncio.Lock | None = None

    def with_prefix(self, prefix: str) -> AsyncPostgresStore:
        """A store on the same database (or pool) under another namespace."""
        return AsyncPostgresStore(
            self.conninfo, pool=self.pool, prefix=prefix, timeout=self.timeout,
            create_schema=self.create_schema, purge_interval=self.purge_interval,
        )  # fmt: skip

    async def _connect(self) -> Any:
        conn = await self._psycopg.AsyncConnection.connect(
            self.conninfo or "", autocommit=True, prepare_threshold=0,
            connect_timeout=max(2, int(self.timeout)),
        )  # fmt: skip
        await conn.execute(f"SET statement_timeout = {int(self.timeout * 1000)}")
        return conn

    async def _take(self) -> Any:
        """A connection; while the server has no slot free, wait (see PostgresStore)."""
        if self._pid != os.getpid():  # forked: the parent's connections stay the parent's
            self._free, self._pid = [], os.getpid()
        deadline = pause = 0.0
        while True:
            while self._free:
                conn = self._free.pop()
                if not _closed_by_server(conn):
                    return conn
                await conn.close()
            try:
                return await asyncio.wait_for(self._connect(), max(2, int(self.timeout)) + 0.5)
            except self._psycopg.Error as exc:
                now = time.monotonic()
                if not _server_full(exc):
                    raise
                deadline = deadline or now + self.timeout
                if now >= deadline:
                    raise _Full(exc) from exc
                pause = min(max(pause * 2, 0.002), 0.05, deadline - now)
                await asyncio.sleep(pause)

    async def _give(self, conn: Any) -> None:
        if len(self._free) < self.max_idle and not conn.closed:
            self._free.append(conn)
        else:
            await conn.close()

    async def _statement(self, conn: Any, sql: str, args: Sequence[Any]) -> tuple[list[Any], int]:
        cursor = await conn.execute(sql, args)
        rows = await cursor.fetchall() if cursor.description is not None else []
        return rows, cursor.rowcount

    async def _run(self, sql: str, args: Sequence[Any] = ()) -> tuple[list[Any], int]:
        """Run one statement; return its rows and how many rows it changed."""
        if time.monotonic() < self._down_until:
            raise StoreUnavailable(repr(self), "it failed a moment ago; trying again shortly")
        if not self._schema_ready:
            await self._ensure_schema()
        psycopg = self._psycopg
        limit = self.timeout + 0.1  # the server's own limit answers first
        if self.pool is not None:
            try:
                async with self.pool.connection(timeout=self.timeout) as conn:
                    return await asyncio.wait_for(self._statement(conn, sql, args), limit)
            except (psycopg.Error, TimeoutError) as exc:
                raise self._unavailable(exc) from exc
            except Exception as exc:
                if type(exc).__name__ == "PoolTimeout":
                    raise self._unavailable(exc) from exc
                raise
        try:
            conn = await self._take()
        except _Full as full:  # back-pressure: no breaker
            raise self._unavailable(full.error) from full.error
        except (psycopg.Error, TimeoutError, OSError) as exc:
            self._down_until = time.monotonic() + BREAKER_SECONDS
            raise self._unavailable(exc) from exc
        try:
            answer = await asyncio.wait_for(self._statement(conn, sql, args), limit)
        except TimeoutError as exc:  # a frozen server: the connection is in an unknown state
            await conn.close()
            self._down_until = time.monotonic() + BREAKER_SECONDS
            raise self._unavailable(exc) from exc
        except psycopg.OperationalError as exc:
            if conn.closed or conn.pgconn.transaction_status != 0:  # broken: not IDLE
                await conn.close()
                for idle in self._free:  # after a server restart, the idle ones are dead too
                    await idle.close()
                self._free = []
                self._down_until = time.monotonic() + BREAKER_SECONDS
            else:
                await self._give(conn)
            raise self._unavailable(exc) from exc
        except psycopg.Error as exc:
            await self._give(conn)
            raise self._unavailable(exc) from exc
        except BaseException:
            await conn.close()
            raise
        await self._give(conn)
        return answer

    async def _ensure_schema(self) -> None:
        """Create the schema once per process, under the advisory lock every worker shares."""
        if self._schema_lock is None:
            self._schema_lock = asyncio.Lock()
        async with self._schema_lock:
            if self._schema_ready:
                return
            psycopg = self._psycopg
            try:
                if self.pool is not None:
                    async with self.pool.connection(timeout=self.timeout) as conn:
                        await self._create_schema(conn)
                else:
                    conn = await self._take()
                    try:
                        await self._create_schema(conn)
                    except BaseException:
                        await conn.close()
                        raise
                    await self._give(conn)
            except (psycopg.Error, TimeoutError, OSError) as exc:
                raise self._unavailable(exc) from exc
            self._schema_ready = True

    @staticmethod
    async def _create_schema(conn: Any) -> None:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext('satchel schema'))")
            await conn.execute(SCHEMA, prepare=False)  # several statements: not preparable

    async def _perform(self, op: tuple[Any, ...]) -> tuple[list[Any], int]:
        return await self._run(op[1], op[2])

    async def load(self, key: str) -> Record | None:
        """Read the row in one statement, by primary key."""
        return await drive_async(self._load_steps(key), self._perform)

    async def save(self, key: str, change: Change, *, create: bool) -> SaveResult:
        """Apply ``change`` with one statement: the satchel_save function."""
        return await drive_async(self._save_steps(key, change, create), self._perform)

    async def touch(self, key: str, touched_at: float, expires_at: float) -> bool:
        """Move the row's times in one statement."""
        return await drive_async(self._touch_steps(key, touched_at, expires_at), self._perform)

    async def delete(self, key: str) -> None:
        """Delete the row."""
        await drive_async(self._delete_steps(key), self._perform)

    async def acquire(self, key: str, token: str, lease: float) -> bool:
        """Lease the lock row on ``key`` to ``token`` in one statement."""
        return await drive_async(self._acquire_steps(key, token, lease), self._perform)

    async def release(self, key: str, token: str) -> None:
        """Delete the lock row if ``token`` holds it."""
        await drive_async(self._release_steps(key, token), self._perform)

    async def revoke(
        self, keys: Collection[str] = (), *, owner: str | None = None, keep: str | None = None
    ) -> int:
        """End rows, following moves, with one statement: the satchel_revoke function."""
        return await drive_async(self._revoke_steps(keys, owner, keep), self._perform)

    async def records(self, owner: str | None = None) -> list[tuple[str, Record]]:
        """The live rows (of ``owner``), read in pages of 500 by key."""
        found: list[tuple[str, Record]] = []
        last: str | None = self.prefix
        while last is not None:
            page, last = await drive_async(self._page_steps(owner, last), self._perform)
            found += page
        return found

    async def references(self, start: str = "") -> list[str]:
        """The keys of live rows that begin with ``start``, from the primary key's index."""
        return await drive_async(self._references_steps(start), self._perform)

    async def count(self) -> tuple[int, int]:
        """How many live rows there are, and how many distinct owners they have."""
        return await drive_async(self._count_steps(), self._perform)

    async def purge_expired(self) -> int:
        """Remove every expired row, in short batches; return how many."""
        now = time.time()
        total = 0
        while True:
            removed = await drive_async(self._purge_batch_steps(now), self._perform)
            total += removed
            if removed < PURGE_BATCH:
                return total

    async def close(self) -> None:
        """Close the connections this store opened (a pool you passed stays yours)."""
        free, self._free = self._free, []
        for conn in free:
            await conn.close()


def _server_full(exc: BaseException) -> bool:
    """Whether a connection failed because the server has no slot free (SQLSTATE 53300)."""
    text = str(exc)
    return (
        getattr(exc, "sqlstate", None) == "53300"
        or "too many clients" in text
        or "remaining connection slots are reserved" in text
    )


class _Full(Exception):
    """The server stayed full for a whole ``timeout``: back-pressure, not an outage."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


def _closed_by_server(conn: Any) -> bool:
    """Whether an idle connection's socket has something to read: the server's goodbye.

    An idle connection is owed nothing, so a readable socket means the server
    ended it (a restart, an administrator) or died; using it would fail the
    request for nothing. One poll() system call, no round trip.
    """
    if conn.closed:
        return True
    poller = select.poll()
    poller.register(conn.pgconn.socket, select.POLLIN)
    return bool(poller.poll(0))


def _timed_connection_class(psycopg: Any) -> Any:
    """psycopg's Connection with every wait on the server bounded, made once."""
    global _TIMED
    if _TIMED is None:

        class TimedConnection(psycopg.Connection):  # type: ignore[misc]
            """Waits on the server at most ``wait_timeout`` seconds, then raises.

            A server that is frozen cannot enforce its own statement_timeout,
            and the kernel still acknowledges what is sent to it, so only the
            client can notice.
            """

            wait_timeout: float | None = None

            def wait(self, gen: Any, interval: float = 0.1, timeout: float | None = None) -> Any:
                if timeout is None:
                    timeout = self.wait_timeout
                return super().wait(gen, interval=interval, timeout=timeout)

        _TIMED = TimedConnection
    return _TIMED


_TIMED: Any = None
