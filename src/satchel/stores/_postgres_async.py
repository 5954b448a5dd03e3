"""The PostgreSQL store for ASGI apps: the same schema, statements and rules as
:class:`~satchel.stores.postgres.PostgresStore`, each statement awaited on psycopg's
async connections."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Collection, Sequence
from typing import Any

from .._steps import drive_async
from ..errors import StoreUnavailable
from ._postgres_rules import (
    BREAKER_SECONDS,
    PURGE_BATCH,
    Run,
    _closed_by_server,
    _Full,
    _PostgresRules,
    _server_full,
)
from ._postgres_schema import SCHEMA
from .base import Change, Record, SaveResult

__all__ = ["AsyncPostgresStore"]


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

    async def _perform(self, op: Run) -> tuple[list[Any], int]:
        return await self._run(op.sql, op.args)

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
