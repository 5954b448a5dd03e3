"""Any store, with every session's data encrypted before it is stored.

:class:`EncryptedStore` (sync) and :class:`AsyncEncryptedStore` (awaited) wrap a
store and keep its contract: the lifecycle reads and writes clear records, the
store files sealed ones (see :mod:`satchel.stores._sealed` for the layout and
:mod:`satchel.encryption` for the construction). Merges, conditions, moves,
locks, owners, listing and the record cache all work as before, on the sealed
bytes. A record whose fields do not open (moved from another session, altered,
or under a key no longer configured) counts as ended: it is deleted, logged on
``satchel.security`` and counted (``tampered``), and the request starts a fresh
session. Apps do not build these: ``SATCHEL_ENCRYPTION_KEYS`` (``encryption_keys=``)
wraps the app's store.
"""

from __future__ import annotations

import logging
from collections.abc import Generator, Iterator
from typing import Any

from .._steps import drive, drive_async
from ..encryption import EncryptionKeys
from ..signals import Counters
from ._sealed import NotReadable, Sealer
from .base import Change, Record, SaveResult

__all__ = ["AsyncEncryptedStore", "EncryptedStore", "Sealing"]

security_log = logging.getLogger("satchel.security")


class Sealing:
    """What both wrappers share: the sealer, the wrapped store, and the tamper rule."""

    def __init__(self, store: Any, keys: EncryptionKeys) -> None:
        #: The store the sealed records are filed in.
        self.store = store
        #: The innermost store (what telemetry and the demo name).
        self.wrapped: Any = getattr(store, "wrapped", store)
        self.keys = keys
        self.sealer = Sealer(keys)
        #: The lifecycle's counters (set by it), for ``tampered``.
        self.counters: Counters | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.store!r})"

    def __getattr__(self, name: str) -> Any:
        # Everything the wrapper adds nothing to (locks, touch, revoke, counts, the
        # cache's stats, prefix): the wrapped store's own.
        if name in ("store", "sealer", "keys"):
            raise AttributeError(name)
        return getattr(self.store, name)

    def _unreadable(self, key: str, error: NotReadable) -> bool:
        """Log an unreadable record; whether it was tampered with (and is to be deleted)."""
        if error.tampered:
            security_log.warning(
                "session %s does not decrypt (%s); it counts as ended and is deleted",
                key[:8],
                error,
            )
            if self.counters is not None:
                self.counters.add("tampered")
        else:
            security_log.info("session %s is %s; it counts as ended", key[:8], error)
        self.sealer.forget(key)
        return error.tampered

    def _open(self, key: str, record: Record | None) -> tuple[Record | None, bool]:
        """The clear record, and whether the stored one must be deleted (tampered)."""
        if record is None:
            self.sealer.forget(key)
            return None, False
        try:
            return self.sealer.open(key, record), False
        except NotReadable as error:
            return None, self._unreadable(key, error)

    def _listed(self, found: Any) -> Iterator[tuple[str, Record]]:
        for key, record in found:
            try:
                yield key, self.sealer.open(key, record, remember=False)
            except NotReadable as error:
                security_log.warning("session %s is not listed: %s", key[:8], error)

    def _save_steps(
        self, key: str, change: Change, create: bool
    ) -> Generator[tuple[Any, ...], Any, SaveResult]:
        """A save, as steps both wrappers drive (``("load", key)``, ``("delete", key)``,
        ``("save", key, change, create)``): the record it builds on (remembered, or
        loaded), the change sealed, the store's answer remembered."""
        base = None
        if not create or change.replaces is not None:
            source = change.replaces if create else key
            assert source is not None
            base = self.sealer.remembered(source)
            if base is None:
                record = yield ("load", source)
                if record is None:
                    return SaveResult.REFUSED
                try:
                    base = self.sealer.remember(source, record)
                except NotReadable as error:
                    if self._unreadable(source, error):
                        yield ("delete", source)
                    return SaveResult.REFUSED
        plan = self.sealer.seal(key, change, create, base)
        if isinstance(plan, SaveResult):
            return plan
        sealed, after = plan
        result: SaveResult = yield ("save", key, sealed, create)
        self.sealer.saved(key, change, create, after, result)
        return result


class EncryptedStore(Sealing):
    """A sync store whose records are sealed under ``keys`` (see the module)."""

    def load(self, key: str) -> Record | None:
        record, tampered = self._open(key, self.store.load(key))
        if tampered:
            self.store.delete(key)
        return record

    def save(self, key: str, change: Change, *, create: bool) -> SaveResult:
        return drive(self._save_steps(key, change, create), self._perform)

    def _perform(self, op: tuple[Any, ...]) -> Any:
        if op[0] == "save":
            return self.store.save(op[1], op[2], create=op[3])
        return getattr(self.store, op[0])(op[1])  # load or delete

    def delete(self, key: str) -> None:
        self.sealer.forget(key)
        self.store.delete(key)

    def records(self, owner: str | None = None) -> Iterator[tuple[str, Record]]:
        """Every live record (or ``owner``'s), opened; unreadable ones are left out."""
        return self._listed(self.store.records(owner))

    def with_prefix(self, prefix: str) -> Any:
        """The wrapped store's namespace ``prefix``, unsealed (migration claims live there)."""
        return self.store.with_prefix(prefix)


class AsyncEncryptedStore(Sealing):
    """An async store whose records are sealed under ``keys``: :class:`EncryptedStore`'s
    rules, each store call awaited."""

    async def load(self, key: str) -> Record | None:
        record, tampered = self._open(key, await self.store.load(key))
        if tampered:
            await self.store.delete(key)
        return record

    async def save(self, key: str, change: Change, *, create: bool) -> SaveResult:
        return await drive_async(self._save_steps(key, change, create), self._perform)

    async def _perform(self, op: tuple[Any, ...]) -> Any:
        if op[0] == "save":
            return await self.store.save(op[1], op[2], create=op[3])
        return await getattr(self.store, op[0])(op[1])  # load or delete

    async def delete(self, key: str) -> None:
        self.sealer.forget(key)
        await self.store.delete(key)

    async def records(self, owner: str | None = None) -> list[tuple[str, Record]]:
        """Every live record (or ``owner``'s), opened; unreadable ones are left out."""
        return list(self._listed(await self.store.records(owner)))

    def with_prefix(self, prefix: str) -> Any:
        """The wrapped store's namespace ``prefix``, unsealed (migration claims live there)."""
        return self.store.with_prefix(prefix)
