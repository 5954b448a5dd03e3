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

import threading
import time
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from .._steps import drive
from ..errors import ConfigError, StoreUnavailable
from ._connections import ConnectionList
from ._postgres_async import AsyncPostgresStore
from ._postgres_rules import (
    BREAKER_SECONDS,
    PURGE_BATCH,
    Run,
    _closed_by_server,
    _PostgresRules,
    _server_full,
    _timed_connection_class,
)
from ._postgres_schema import SCHEMA
from .base import Change, Record, SaveResult

if TYPE_CHECKING:
    import psycopg_pool

__all__ = ["SCHEMA", "AsyncPostgresStore", "PostgresStore"]


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

    def _perform(self, op: Run) -> tuple[list[Any], int]:
        return self._run(op.sql, op.args)

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


# Defined in private modules; documented and imported from here.
for _public in (AsyncPostgresStore,):
    _public.__module__ = __name__
