"""Stores for ASGI apps: every call awaited, none blocking the event loop.

:class:`ThreadedStore` gives any sync :class:`~satchel.stores.Store` the
:class:`~satchel.stores.AsyncStore` methods by running each call on a worker
thread. :class:`SQLiteLoopStore` runs the SQLite store's calls on the loop
when they cannot wait, and on a thread when they would. :class:`InlineStore`
calls a store that never waits on I/O (the memory store) on the loop itself,
where a thread hop would cost more than the call. :func:`to_async` picks one
of them for a store.

Both wrap the very store a Flask app would use, so records, keys, prefixes and
the atomic change sets are the same: a Flask app and an ASGI app on one store
share their sessions.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Collection
from typing import Any, TypeVar

from .. import _async
from ..errors import ConfigError, StoreUnavailable
from ._threads import Workers
from .base import AsyncStore, Change, ListingStore, LockingStore, Record, SaveResult, Store
from .memory import MemoryStore
from .sqlite import SQLiteStore

_log = logging.getLogger("satchel")

__all__ = ["InlineStore", "SQLiteLoopStore", "ThreadedStore", "is_async", "to_async"]

T = TypeVar("T")

#: Worker threads a ThreadedStore runs calls on, at most (per process).
DEFAULT_THREADS = 16


class _Wrapper:
    """What both wrappers share: the wrapped store, its prefix, and its checks."""

    def __init__(self, store: Store) -> None:
        if not isinstance(store, Store):
            raise ConfigError(f"{store!r} is not a satchel Store")
        #: The sync store every call goes to.
        self.wrapped = store
        #: The wrapped store's namespace (``None`` if it has none).
        self.prefix: str | None = getattr(store, "prefix", None)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.wrapped!r})"

    async def _call(self, method: Callable[..., T], *args: Any) -> T:
        raise NotImplementedError

    def _rewrap(self, store: Any) -> Any:
        """This kind of wrapper, with its options, around ``store``."""
        return type(self)(store)

    def with_prefix(self, prefix: str) -> Any:
        """The same wrapper around the wrapped store's :meth:`with_prefix` namespace."""
        with_prefix = getattr(self.wrapped, "with_prefix", None)
        if with_prefix is None:
            raise ConfigError(f"{self.wrapped!r} has no with_prefix()")
        return self._rewrap(with_prefix(prefix))

    def _locking(self) -> LockingStore:
        store = self.wrapped
        if not isinstance(store, LockingStore):
            raise ConfigError(f"strict mode needs a store that can lock; {store!r} cannot")
        return store

    def _listing(self) -> ListingStore:
        store = self.wrapped
        if not isinstance(store, ListingStore):
            raise ConfigError(f"{store!r} cannot list its sessions")
        return store

    @property
    def expires_by_itself(self) -> bool:
        """Whether the wrapped store's server expires records itself (purging finds none)."""
        return bool(getattr(self.wrapped, "expires_by_itself", False))

    @property
    def can_lock(self) -> bool:
        """Whether the wrapped store can take strict mode's locks."""
        return isinstance(self.wrapped, LockingStore)

    def config_problems(self) -> list[str]:
        """The wrapped store's configuration problems (read once, at start-up)."""
        check = getattr(self.wrapped, "config_problems", None)
        return [] if check is None else list(check())

    async def load(self, key: str) -> Record | None:
        """See :meth:`satchel.stores.Store.load`."""
        return await self._call(self.wrapped.load, key)

    async def save(self, key: str, change: Change, *, create: bool) -> SaveResult:
        """See :meth:`satchel.stores.Store.save`."""
        return await self._call(functools.partial(self.wrapped.save, create=create), key, change)

    async def touch(self, key: str, touched_at: float, expires_at: float) -> bool:
        """See :meth:`satchel.stores.Store.touch`."""
        return await self._call(self.wrapped.touch, key, touched_at, expires_at)

    async def delete(self, key: str) -> None:
        """See :meth:`satchel.stores.Store.delete`."""
        await self._call(self.wrapped.delete, key)

    async def purge_expired(self) -> int:
        """See :meth:`satchel.stores.Store.purge_expired`."""
        return await self._call(self.wrapped.purge_expired)

    async def acquire(self, key: str, token: str, lease: float) -> bool:
        """See :meth:`satchel.stores.LockingStore.acquire`."""
        return await self._call(self._locking().acquire, key, token, lease)

    async def release(self, key: str, token: str) -> None:
        """See :meth:`satchel.stores.LockingStore.release`."""
        await self._call(self._locking().release, key, token)

    async def records(self, owner: str | None = None) -> list[tuple[str, Record]]:
        """Every live ``(key, record)``, or only ``owner``'s, as one list."""
        listing = self._listing()
        return await self._call(lambda: list(listing.records(owner)))

    async def revoke(
        self, keys: Collection[str] = (), *, owner: str | None = None, keep: str | None = None
    ) -> int:
        """See :meth:`satchel.stores.ListingStore.revoke`."""
        listing = self._listing()
        return await self._call(lambda: listing.revoke(keys, owner=owner, keep=keep))

    async def references(self, start: str = "") -> list[str]:
        """The keys of live records that begin with ``start``."""
        listing: Any = self._listing()
        return await self._call(lambda: list(listing.references(start)))

    async def count(self) -> tuple[int, int]:
        """How many live records there are, and how many distinct owners they have."""
        listing: Any = self._listing()
        answer: tuple[int, int] = await self._call(listing.count)
        return answer

    async def close(self) -> None:
        """Close the wrapped store."""
        await self._call(self.wrapped.close)


class ThreadedStore(_Wrapper):
    """A sync store's calls, each run on a worker thread so the event loop runs on.

    The threads (at most ``threads``, made as calls need them) belong to this
    store and this process: a worker forked after the store was used makes its
    own. A call the request stopped waiting for (a cancelled task) still runs to
    its end on its thread, so a save is never left half-made.
    """

    def __init__(self, store: Store, *, threads: int = DEFAULT_THREADS) -> None:
        super().__init__(store)
        if not isinstance(threads, int) or threads < 1:
            raise ConfigError(f"threads must be a positive int, not {threads!r}")
        self.threads = threads
        self._workers: Workers | None = None
        self._pid = 0
        self._guard = threading.Lock()

    def _rewrap(self, store: Any) -> Any:
        return type(self)(store, threads=self.threads)

    def _pool(self) -> Workers:
        workers = self._workers
        if workers is None or self._pid != os.getpid():
            with self._guard:
                if self._workers is None or self._pid != os.getpid():
                    self._workers = Workers(self.threads, "satchel-store")
                    self._pid = os.getpid()
                workers = self._workers
        return workers

    async def _call(self, method: Callable[..., T], *args: Any) -> T:
        # On asyncio, this store's own threads (_threads: one wake-up each way); on
        # another loop (trio), AnyIO's.
        if _async.on_asyncio():
            return await self._pool().call(method, *args)
        return await _async.to_thread(method, *args)

    async def close(self) -> None:
        """Close the wrapped store once none of its calls runs on a thread (a cancelled
        request's, a checkpoint), then stop the threads."""
        workers = self._workers
        if workers is not None and self._pid == os.getpid() and _async.on_asyncio():
            await workers.idle()
        await super().close()
        workers, self._workers = self._workers, None
        if workers is not None:
            workers.shutdown()


#: A SQLite store's inline writes between two checkpoints of its write-ahead log.
CHECKPOINT_EVERY = 500


def _busy(error: StoreUnavailable) -> bool:
    """Whether SQLite refused because another connection holds a lock (it would wait)."""
    cause = error.__cause__
    code = getattr(cause, "sqlite_errorcode", None)
    return code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED) or (
        code is None and "locked" in str(cause)
    )


class SQLiteLoopStore(ThreadedStore):
    """SQLite for ASGI apps: each call on the event loop when it cannot wait, else on a thread.

    SQLite is a library, not a server: a primary-key read of a local file in
    write-ahead-log mode takes a few microseconds and never waits for a writer,
    while handing the call to a thread costs 20 to 100 µs of wake-ups. So each
    call first runs on the loop through the store's :meth:`inline_twin
    <satchel.stores.SQLiteStore.inline_twin>`, whose calls never wait: when
    another connection holds a lock, the call is made again on a worker thread,
    which waits its turn (up to the store's ``timeout``) without holding up the
    loop. The loop never fsyncs either: inline commits do not checkpoint the
    log; a checkpoint and a purge batch run on a thread every
    :data:`CHECKPOINT_EVERY` inline writes and every ``purge_interval``
    seconds. What is left on the loop is memory copies and page-cache reads;
    a file on a slow network disk is better served by :class:`ThreadedStore`.
    """

    def __init__(self, store: SQLiteStore, *, threads: int = DEFAULT_THREADS) -> None:
        super().__init__(store, threads=threads)
        self.sqlite = store
        self._inline = store.inline_twin()
        self._writes = 0
        self._next_maintenance = time.time() + store.purge_interval
        self._maintaining = False

    async def _either(self, method: str, *args: Any, write: bool = False, **named: Any) -> Any:
        """``method`` on the loop through the inline twin; on a thread if it would wait."""
        try:
            answer = getattr(self._inline, method)(*args, **named)
        except StoreUnavailable as exc:
            if not _busy(exc):
                raise
            waiting = functools.partial(getattr(self.sqlite, method), **named)
            return await self._call(waiting, *args)
        if write:
            self._wrote()
        return answer

    def _wrote(self) -> None:
        self._writes += 1
        if self._maintaining or not (
            self._writes % CHECKPOINT_EVERY == 0 or time.time() >= self._next_maintenance
        ):
            return
        self._maintaining = True
        self._next_maintenance = time.time() + self.sqlite.purge_interval
        done = self._pool().call(self.sqlite.maintain)
        done.add_done_callback(self._maintained)

    def _maintained(self, done: asyncio.Future[int]) -> None:
        self._maintaining = False
        # While a walk of the purge is under way its next batch is due shortly.
        self._next_maintenance = min(self._next_maintenance, self.sqlite._next_purge)
        error = done.exception()
        if error is not None:
            _log.warning("could not checkpoint or purge %r: %s", self.sqlite, error)

    async def load(self, key: str) -> Record | None:
        """See :meth:`satchel.stores.Store.load`."""
        answer: Record | None = await self._either("load", key)
        return answer

    async def save(self, key: str, change: Change, *, create: bool) -> SaveResult:
        """See :meth:`satchel.stores.Store.save`."""
        result: SaveResult = await self._either("save", key, change, write=True, create=create)
        return result

    async def touch(self, key: str, touched_at: float, expires_at: float) -> bool:
        """See :meth:`satchel.stores.Store.touch`."""
        answer: bool = await self._either("touch", key, touched_at, expires_at, write=True)
        return answer

    async def delete(self, key: str) -> None:
        """See :meth:`satchel.stores.Store.delete`."""
        await self._either("delete", key, write=True)

    async def acquire(self, key: str, token: str, lease: float) -> bool:
        """See :meth:`satchel.stores.LockingStore.acquire`."""
        answer: bool = await self._either("acquire", key, token, lease, write=True)
        return answer

    async def release(self, key: str, token: str) -> None:
        """See :meth:`satchel.stores.LockingStore.release`."""
        await self._either("release", key, token, write=True)

    async def close(self) -> None:
        """Close both sets of connections, then stop the threads."""
        self._inline.close()
        await super().close()


class InlineStore(_Wrapper):
    """A store that never waits on I/O, called on the event loop itself.

    For :class:`~satchel.stores.MemoryStore` (a dict under a lock held for
    microseconds), where a hop to a thread would cost more than the call.
    """

    async def _call(self, method: Callable[..., T], *args: Any) -> T:
        return method(*args)


def is_async(store: object) -> bool:
    """Whether ``store`` is an async store: its methods are awaited, not called."""
    return inspect.iscoroutinefunction(getattr(store, "load", None))


def to_async(store: Store | AsyncStore, *, native: bool = True) -> AsyncStore:
    """``store`` as an :class:`~satchel.stores.AsyncStore`.

    An async store (one whose ``load`` is a coroutine function) is returned as
    it is; the memory store is called inline; a store with a native async twin
    (:meth:`RedisStore.to_async <satchel.stores.redis.RedisStore.to_async>`, for
    a store built from a URL) becomes it, unless ``native`` is false (the twins
    speak asyncio: on trio, the sync store runs on threads); any other sync
    store, SQLite included, runs its calls on worker threads, so the event loop
    never waits on a file or a socket. (:class:`SQLiteLoopStore`, which reads a
    local file on the loop itself, is there for apps that choose it.)
    """
    if is_async(store):
        return store  # type: ignore[return-value]
    from .encrypted import AsyncEncryptedStore, EncryptedStore

    if isinstance(store, EncryptedStore):  # sealed the same way, around the store's twin
        return AsyncEncryptedStore(to_async(store.store, native=native), store.keys)
    if isinstance(store, MemoryStore):
        return InlineStore(store)
    twin = getattr(store, "to_async", None)  # a store that has a native async twin
    if native and twin is not None and getattr(store, "_source", None) is not None:
        answer: AsyncStore = twin()
        return answer
    if isinstance(store, Store):
        return ThreadedStore(store)
    raise ConfigError(f"a store must be a satchel Store or AsyncStore, not {store!r}")
