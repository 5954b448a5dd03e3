"""What the sync and async PostgreSQL stores share: each call's statements and rules, as
steps that yield typed :class:`Run` statements (see :mod:`satchel._steps`)."""

from __future__ import annotations

import select
import time
from collections.abc import Collection, Generator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from ..errors import ConfigError, SessionTooLarge, StoreUnavailable
from ._fieldtext import from_text, to_text
from ._postgres_schema import _ACQUIRE, _COLUMNS, _LOAD, _SAVE, _TOUCH
from .base import Change, Record, SaveResult

T = TypeVar("T")

#: How long (seconds) the store answers StoreUnavailable at once after a connection failed.
BREAKER_SECONDS = 0.5
#: How many rows one purge statement deletes at most.
PURGE_BATCH = 2000
#: How many rows a request's periodic purge batch deletes at most: a few milliseconds'
#: work for the request that runs it (2,000 rows of 2 KB took it 100 ms).
PURGE_STEP_ROWS = 200
#: How soon (seconds) the next periodic batch is due after one that came back full.
PURGE_STEP_SECONDS = 0.1


@dataclass(frozen=True, slots=True)
class Run:
    """One statement and its arguments; answered with ``(rows, rowcount)``."""

    sql: str
    args: Sequence[Any] = ()


#: Steps that run statements and return a T.
PostgresSteps = Generator[Run, Any, T]


def _record(row: Sequence[Any]) -> Record | None:
    """A Record from (created, touched, expires, data, owner, meta); None if unreadable."""
    try:
        fields = {name: from_text(value) for name, value in row[3].items()}
    except (AttributeError, IndexError, TypeError, ValueError):
        return None
    return Record(fields, row[0], row[1], row[2], row[4], dict(row[5] or {}))


class _PostgresRules:
    """What the sync and async PostgreSQL stores share: each call's statements and rules.

    Each operation is a generator of :class:`Run` statements (see
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

    def _load_steps(self, key: str) -> PostgresSteps[Record | None]:
        rows, _ = yield Run(_LOAD, (self.prefix + key, time.time()))
        return _record(rows[0]) if rows else None

    def _save_steps(self, key: str, change: Change, create: bool) -> PostgresSteps[SaveResult]:
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
        rows, _ = yield Run(_SAVE, args)
        reply = rows[0][0]
        if reply[0] == 9:
            raise SessionTooLarge(int(reply[1]), change.max_size or 0)
        if reply[0] == SaveResult.SAVED and now >= self._next_purge:
            self._next_purge = now + self.purge_interval
            if (yield from self._purge_batch_steps(now, PURGE_STEP_ROWS)) >= PURGE_STEP_ROWS:
                # More are left: the next batch is due shortly, so that purging keeps
                # up with sessions that expire faster than a batch an interval.
                self._next_purge = now + min(PURGE_STEP_SECONDS, self.purge_interval)
        return SaveResult(reply[0])

    def _touch_steps(self, key: str, touched_at: float, expires_at: float) -> PostgresSteps[bool]:
        _, changed = yield Run(_TOUCH, (touched_at, expires_at, self.prefix + key, time.time()))
        return bool(changed == 1)

    def _delete_steps(self, key: str) -> PostgresSteps[None]:
        yield Run("DELETE FROM satchel_sessions WHERE key = %s", (self.prefix + key,))

    def _revoke_steps(
        self, keys: Collection[str], owner: str | None, keep: str | None
    ) -> PostgresSteps[int]:
        args = (
            [self.prefix + key for key in keys], owner, self.prefix,
            None if keep is None else self.prefix + keep, time.time(),
        )  # fmt: skip
        rows, _ = yield Run("SELECT satchel_revoke(%s::text[], %s, %s, %s, %s)", args)
        return int(rows[0][0])

    def _acquire_steps(self, key: str, token: str, lease: float) -> PostgresSteps[bool]:
        now = time.time()
        _, changed = yield Run(_ACQUIRE, (self.prefix + key, token, now + lease, now))
        return bool(changed == 1)

    def _release_steps(self, key: str, token: str) -> PostgresSteps[None]:
        sql = "DELETE FROM satchel_locks WHERE key = %s AND token = %s"
        yield Run(sql, (self.prefix + key, token))

    def _page_steps(
        self, owner: str | None, last: str
    ) -> PostgresSteps[tuple[list[tuple[str, Record]], str | None]]:
        """One page of live rows (of ``owner``) after key ``last``; the key to go on from."""
        where = "key > %s AND ns = %s AND expires_at > %s"
        args: tuple[Any, ...] = (last, self.prefix, time.time())
        if owner is not None:
            where += " AND owner = %s"
            args += (owner,)
        query = f"SELECT key, {_COLUMNS} FROM satchel_sessions WHERE {where}"
        rows, _ = yield Run(query + " ORDER BY key LIMIT 500", args)
        cut = len(self.prefix)
        found = []
        for row in rows:
            record = _record(row[1:])
            if record is not None:
                found.append((row[0][cut:], record))
        return found, (rows[-1][0] if len(rows) == 500 else None)

    def _references_steps(self, start: str) -> PostgresSteps[list[str]]:
        low = self.prefix + start
        rows, _ = yield Run(
            "SELECT key FROM satchel_sessions WHERE key >= %s AND left(key, %s) = %s"
            " AND ns = %s AND expires_at > %s ORDER BY key",
            (low, len(low), low, self.prefix, time.time()),
        )
        cut = len(self.prefix)
        return [row[0][cut:] for row in rows]

    def _count_steps(self) -> PostgresSteps[tuple[int, int]]:
        rows, _ = yield Run(
            "SELECT count(*), count(DISTINCT owner) FROM satchel_sessions"
            " WHERE ns = %s AND expires_at > %s",
            (self.prefix, time.time()),
        )
        return int(rows[0][0]), int(rows[0][1])

    def _purge_batch_steps(self, now: float, rows: int = PURGE_BATCH) -> PostgresSteps[int]:
        """Delete up to ``rows`` expired rows of every namespace, by the expiry index."""
        _, removed = yield Run(
            "DELETE FROM satchel_sessions WHERE key IN (SELECT key FROM satchel_sessions"
            " WHERE expires_at <= %s LIMIT %s)",
            (now, rows),
        )
        yield Run("DELETE FROM satchel_locks WHERE expires_at <= %s", (now,))
        yield Run("DELETE FROM satchel_moves WHERE expires_at <= %s", (now,))
        return int(removed)

    def _expired_steps(self, now: float) -> PostgresSteps[int]:
        rows, _ = yield Run(
            "SELECT count(*) FROM satchel_sessions WHERE expires_at <= %s",
            (now,),
        )
        return int(rows[0][0])


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
