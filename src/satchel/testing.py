"""The store contract as tests: subclass :class:`StoreContract` to prove a store.

Every built-in store's tests subclass it, and a third-party store can do the
same::

    from satchel.testing import StoreContract

    class TestMyStore(StoreContract):
        @pytest.fixture
        def store(self):
            s = MyStore(...)
            yield s
            s.close()

Requires pytest.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Collection, Coroutine, Iterator
from typing import Any, TypeVar

import pytest

from ._contract import LockingStoreContract, StoreContract
from ._contract_listing import ListingStoreContract, NamespaceContract
from .stores.base import (
    AsyncStore,
    Change,
    Record,
    SaveResult,
)

T = TypeVar("T")

__all__ = [
    "AsyncStoreContract",
    "BlockingStore",
    "FullStoreContract",
    "ListingStoreContract",
    "LockingStoreContract",
    "NamespaceContract",
    "StoreContract",
]


class FullStoreContract(LockingStoreContract, ListingStoreContract, NamespaceContract):
    """Everything the built-in stores offer: the contract, locks, listing and namespaces."""


class BlockingStore:
    """An :class:`~satchel.stores.AsyncStore` called from plain threads, as a sync store.

    Each call is a coroutine run on one event loop of its own, in a thread, so
    calls from several threads at once overlap on that loop as an ASGI app's
    requests do. This is how :class:`AsyncStoreContract` holds an async store
    to every rule of the sync contract; it adds nothing of its own.
    """

    def __init__(self, store: AsyncStore, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.store = store
        self._own_loop = loop is None
        self._loop = loop or asyncio.new_event_loop()
        self._thread: threading.Thread | None = None
        if self._own_loop:
            self._thread = threading.Thread(target=self._serve, daemon=True)
            self._thread.start()

    def _serve(self) -> None:
        self._loop.run_forever()
        self._loop.run_until_complete(self._loop.shutdown_asyncgens())
        self._loop.close()

    @property
    def prefix(self) -> Any:
        """The async store's prefix."""
        return getattr(self.store, "prefix", None)

    @property
    def expires_by_itself(self) -> bool:
        """Whether the async store's server expires records itself."""
        return bool(getattr(self.store, "expires_by_itself", False))

    def _wait(self, call: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(call, self._loop).result()

    def load(self, key: str) -> Record | None:
        """See :meth:`satchel.stores.Store.load`."""
        return self._wait(self.store.load(key))

    def save(self, key: str, change: Change, *, create: bool) -> SaveResult:
        """See :meth:`satchel.stores.Store.save`."""
        return self._wait(self.store.save(key, change, create=create))

    def touch(self, key: str, touched_at: float, expires_at: float) -> bool:
        """See :meth:`satchel.stores.Store.touch`."""
        return self._wait(self.store.touch(key, touched_at, expires_at))

    def delete(self, key: str) -> None:
        """See :meth:`satchel.stores.Store.delete`."""
        self._wait(self.store.delete(key))

    def purge_expired(self) -> int:
        """See :meth:`satchel.stores.Store.purge_expired`."""
        return self._wait(self.store.purge_expired())

    def acquire(self, key: str, token: str, lease: float) -> bool:
        """See :meth:`satchel.stores.LockingStore.acquire`."""
        store: Any = self.store
        return bool(self._wait(store.acquire(key, token, lease)))

    def release(self, key: str, token: str) -> None:
        """See :meth:`satchel.stores.LockingStore.release`."""
        store: Any = self.store
        self._wait(store.release(key, token))

    def records(self, owner: str | None = None) -> Iterator[tuple[str, Record]]:
        """See :meth:`satchel.stores.ListingStore.records`."""
        store: Any = self.store
        return iter(self._wait(store.records(owner)))

    def revoke(
        self, keys: Collection[str] = (), *, owner: str | None = None, keep: str | None = None
    ) -> int:
        """See :meth:`satchel.stores.ListingStore.revoke`."""
        store: Any = self.store
        ended: int = self._wait(store.revoke(keys, owner=owner, keep=keep))
        return ended

    def references(self, start: str = "") -> Iterator[str]:
        """The async store's ``references``, as an iterator."""
        store: Any = self.store
        return iter(self._wait(store.references(start)))

    def count(self) -> tuple[int, int]:
        """The async store's ``count``."""
        store: Any = self.store
        answer: tuple[int, int] = self._wait(store.count())
        return answer

    def with_prefix(self, prefix: str) -> BlockingStore:
        """The async store's ``with_prefix``, on the same loop."""
        store: Any = self.store
        return BlockingStore(store.with_prefix(prefix), self._loop)

    def close(self) -> None:
        """Close the async store (and stop the loop, if this facade made it)."""
        try:
            self._wait(self.store.close())
        finally:
            if self._thread is not None:
                self._loop.call_soon_threadsafe(self._loop.stop)
                self._thread.join(10)


class AsyncStoreContract(FullStoreContract):
    """The whole contract for an :class:`~satchel.stores.AsyncStore` with locks, listing
    (``records``, ``references``, ``count``) and ``with_prefix``.

    Provide an ``async_store`` fixture; every test of :class:`FullStoreContract`
    then runs against it through a :class:`BlockingStore`, overlaps included.
    """

    @pytest.fixture
    def store(self, async_store: AsyncStore) -> Iterator[BlockingStore]:
        blocking = BlockingStore(async_store)
        yield blocking
        blocking.close()

    def test_is_an_async_store(self, async_store: AsyncStore) -> None:
        """Its methods are coroutine functions: awaited, never blocking the loop."""
        import inspect

        assert isinstance(async_store, AsyncStore)
        for name in ("load", "save", "touch", "delete", "purge_expired", "close"):
            assert inspect.iscoroutinefunction(getattr(async_store, name)), name


# Defined in private modules; documented and imported from here.
for _public in (StoreContract, LockingStoreContract, ListingStoreContract, NamespaceContract):
    _public.__module__ = __name__
