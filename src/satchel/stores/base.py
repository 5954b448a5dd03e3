"""The one protocol every session store implements, and the records it moves.

A store knows nothing of cookies, requests or Python values: it files named
byte strings under a key (the hash of a session ID) with three timestamps, and
applies each save as one atomic change set, so two overlapping requests that
change different fields of one session both keep their changes. Every check a
save makes (the record still there, the lock still held, the size limit, an
emptied record) is made in that same atomic step, against the record as
stored, never against a request's possibly stale copy.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from ..errors import SessionTooLarge

__all__ = [
    "MOVE_NOTE_SECONDS",
    "AsyncListingStore",
    "AsyncLockingStore",
    "AsyncStore",
    "Change",
    "Conflict",
    "ListingStore",
    "LockingStore",
    "Record",
    "SaveResult",
    "Store",
    "apply_change",
    "size_of",
]


@dataclass(frozen=True, slots=True)
class Record:
    """A stored session: its fields and when it was created, last seen and expires.

    Times are seconds since the epoch (``time.time()``). ``owner`` (the user a
    login tied it to) and ``meta`` (such as the client's user agent and IP) are
    set when the record is created.
    """

    fields: Mapping[str, bytes]
    created_at: float
    touched_at: float
    expires_at: float
    owner: str | None = None
    meta: Mapping[str, str] = field(default_factory=dict)


#: How long, in seconds, a record moved by ``regenerate()`` leaves a note at its old
#: key naming its new one: a revoke that read the old key just before the move
#: (a listing, an operator's reference) follows the note and still ends the session.
MOVE_NOTE_SECONDS = 300.0


def size_of(fields: Mapping[str, bytes]) -> int:
    """A record's size as ``max_size`` counts it: every name's UTF-8 bytes plus its value's."""
    return sum(len(name.encode("utf-8")) + len(value) for name, value in fields.items())


class SaveResult(enum.IntEnum):
    """What :meth:`Store.save` did. True when the change was applied (``SAVED``,
    ``DELETED``); false when nothing was written (``REFUSED``, ``FENCED``, ``CONFLICT``)."""

    def __bool__(self) -> bool:
        return self is SaveResult.SAVED or self is SaveResult.DELETED

    #: The record was (create: already) there or (update, move: no longer) there;
    #: nothing was written.
    REFUSED = 0
    #: The change was applied.
    SAVED = 1
    #: The change was applied and left nothing but ``delete_if_only`` fields,
    #: so the record was removed.
    DELETED = 2
    #: ``fence`` no longer held the lock; nothing was written.
    FENCED = 3
    #: A field no longer held the bytes ``expect`` named; nothing was written.
    CONFLICT = 4


class Conflict(Exception):
    """Raised by :func:`apply_change` when ``expect`` does not hold; stores answer CONFLICT."""


@dataclass(frozen=True, slots=True)
class Change:
    """What one save does to a record: fields to set, fields to delete, new times.

    ``created_at``, ``owner``, ``meta`` and ``ends_by`` are only used when the
    save creates the record; ``ends_by`` is the latest the record can live (its
    absolute timeout), which lets a store expire what indexes it.

    The other fields are conditions the store checks in the same atomic step:

    * ``replaces`` (creates only): the key of a live record this create moves to
      the new key (``regenerate()``): the new record holds that record's fields
      as stored, with this change applied (its times, owner and client details
      are the change's, as for any create), and the old one is deleted. When the
      old record is gone the save is ``REFUSED``, so a session ended meanwhile is
      never brought back under a new key.
    * ``delete_if_only``: when the record, after the change, holds no field but
      these (an empty collection: no field at all), it is removed (``DELETED``).
    * ``max_size``: when the record after the change is larger than this (see
      :func:`size_of`) and larger than before it, the store raises
      :class:`~satchel.errors.SessionTooLarge` and writes nothing; a record
      already over a lowered limit can still shrink.
    * ``fence``: a strict-mode lock token that must still hold the lock of the
      record changed (for a move, the old record's); else ``FENCED``.
    * ``expect``: for each field named, the bytes it must still hold (``None``:
      it must be absent) in the record changed (for a move, the old one); else
      ``CONFLICT``, and the caller merges its change into what is stored now and
      tries again. A compare-and-set per field, in the same step as the write.
    """

    set: Mapping[str, bytes] = field(default_factory=dict)
    delete: Collection[str] = ()
    created_at: float = 0.0
    touched_at: float = 0.0
    expires_at: float = 0.0
    owner: str | None = None
    meta: Mapping[str, str] = field(default_factory=dict)
    ends_by: float = 0.0
    replaces: str | None = None
    delete_if_only: Collection[str] | None = None
    max_size: int | None = None
    fence: str | None = None
    expect: Mapping[str, bytes | None] | None = None


def apply_change(base: Record | None, change: Change) -> Record | None:
    """The record that ``change`` makes of ``base``; ``None`` when it is to be removed.

    ``base`` is the record updated, or the one a move takes its fields from
    (``None`` for a plain create). Raises :class:`SessionTooLarge` as
    ``change.max_size`` says and :class:`Conflict` when ``change.expect`` does
    not hold. Stores that merge in Python share this, so the rules are written
    once.
    """
    if change.expect:
        stored = {} if base is None else base.fields
        for name, expected in change.expect.items():
            if stored.get(name) != expected:
                raise Conflict(name)
    fields = {} if base is None else dict(base.fields)
    before = size_of(fields) if change.max_size is not None and fields else 0
    for name in change.delete:
        fields.pop(name, None)
    fields.update(change.set)
    if change.max_size is not None:
        after = size_of(fields)
        if after > change.max_size and after > before:
            raise SessionTooLarge(after, change.max_size)
    only = change.delete_if_only
    if only is not None and all(name in only for name in fields):
        return None
    if base is None or change.replaces is not None:  # a create, or a move: all from the change
        return Record(
            fields,
            change.created_at,
            change.touched_at,
            change.expires_at,
            change.owner,
            dict(change.meta),
        )
    return Record(
        fields, base.created_at, change.touched_at, change.expires_at, base.owner, base.meta
    )


@runtime_checkable
class Store(Protocol):
    """Where session records live. Every method may raise ``StoreUnavailable``."""

    def load(self, key: str) -> Record | None:
        """Return the record filed under ``key``, or ``None`` if missing or expired."""
        ...

    def save(self, key: str, change: Change, *, create: bool) -> SaveResult:
        """Apply ``change`` to the record under ``key`` atomically.

        With ``create=True`` the record must not exist yet and is made (from the
        record ``change.replaces`` names, if any); with ``create=False`` it must
        exist and not be expired. Returns ``REFUSED`` (writing nothing) when
        that does not hold, and checks the other conditions of :class:`Change`
        in the same step.
        """
        ...

    def touch(self, key: str, touched_at: float, expires_at: float) -> bool:
        """Move an existing record's last-seen and expiry times; ``False`` if gone."""
        ...

    def delete(self, key: str) -> None:
        """Remove the record under ``key``; a missing record is not an error."""
        ...

    def purge_expired(self) -> int:
        """Remove expired records now; return how many were removed."""
        ...

    def close(self) -> None:
        """Release connections and files; the store is not used afterwards."""
        ...


@runtime_checkable
class LockingStore(Store, Protocol):
    """A store that can also lease a per-session lock, for strict mode.

    A lock is a lease: it names an owner ``token`` and lapses after ``lease``
    seconds, so a worker that dies holding it blocks nobody for long.
    """

    def acquire(self, key: str, token: str, lease: float) -> bool:
        """Take the lock on ``key`` for ``token`` unless someone else holds it."""
        ...

    def release(self, key: str, token: str) -> None:
        """Drop the lock on ``key`` if ``token`` still holds it."""
        ...


@runtime_checkable
class ListingStore(Store, Protocol):
    """A store that can also enumerate its live records, for operators and owners."""

    def records(self, owner: str | None = None) -> Iterator[tuple[str, Record]]:
        """Yield ``(key, record)`` for every live record, or only ``owner``'s."""
        ...

    def revoke(
        self, keys: Collection[str] = (), *, owner: str | None = None, keep: str | None = None
    ) -> int:
        """End the records under ``keys`` and, with ``owner``, every record of that
        owner, all but ``keep``'s; return how many live records ended.

        A record that a move (``regenerate()``) took to a new key is followed
        there (its old key keeps a note for :data:`MOVE_NOTE_SECONDS`), and a
        move that has not finished is stopped, so every session that was live
        when the call began is over when it returns, whatever regenerates
        overlap it. ``keep`` stops the chase at that key.
        """
        ...


@runtime_checkable
class AsyncStore(Protocol):
    """:class:`Store` for ASGI apps: the same methods and meaning, each awaited.

    An implementation never blocks the event loop: it awaits its own I/O
    (:class:`~satchel.stores.aio.AsyncRedisStore`) or runs a sync store's
    calls on worker threads (:class:`~satchel.stores.aio.ThreadedStore`).
    """

    async def load(self, key: str) -> Record | None:
        """Return the record filed under ``key``, or ``None`` if missing or expired."""
        ...

    async def save(self, key: str, change: Change, *, create: bool) -> SaveResult:
        """Apply ``change`` to the record under ``key`` atomically, as :meth:`Store.save`."""
        ...

    async def touch(self, key: str, touched_at: float, expires_at: float) -> bool:
        """Move an existing record's last-seen and expiry times; ``False`` if gone."""
        ...

    async def delete(self, key: str) -> None:
        """Remove the record under ``key``; a missing record is not an error."""
        ...

    async def purge_expired(self) -> int:
        """Remove expired records now; return how many were removed."""
        ...

    async def close(self) -> None:
        """Release connections and files; the store is not used afterwards."""
        ...


@runtime_checkable
class AsyncLockingStore(AsyncStore, Protocol):
    """:class:`LockingStore` for ASGI apps: strict mode's leased lock, awaited."""

    async def acquire(self, key: str, token: str, lease: float) -> bool:
        """Take the lock on ``key`` for ``token`` unless someone else holds it."""
        ...

    async def release(self, key: str, token: str) -> None:
        """Drop the lock on ``key`` if ``token`` still holds it."""
        ...


@runtime_checkable
class AsyncListingStore(AsyncStore, Protocol):
    """:class:`ListingStore` for ASGI apps; the records come as one list."""

    async def records(self, owner: str | None = None) -> list[tuple[str, Record]]:
        """Every live ``(key, record)``, or only ``owner``'s."""
        ...

    async def revoke(
        self, keys: Collection[str] = (), *, owner: str | None = None, keep: str | None = None
    ) -> int:
        """End records and follow their moves, as :meth:`ListingStore.revoke`."""
        ...

    async def references(self, start: str = "") -> list[str]:
        """The keys of live records that begin with ``start`` (no record is read)."""
        ...

    async def count(self) -> tuple[int, int]:
        """How many live records there are, and how many distinct owners they have."""
        ...
