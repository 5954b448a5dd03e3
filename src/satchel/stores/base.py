"""The one protocol every session store implements, and the records it moves.

A store knows nothing of cookies, requests or Python values: it files named
byte strings under a key (the hash of a session ID) with three timestamps, and
applies each save as one atomic change set, so two overlapping requests that
change different fields of one session both keep their changes.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

__all__ = ["Change", "ListingStore", "LockingStore", "Record", "Store"]


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


@dataclass(frozen=True, slots=True)
class Change:
    """What one save does to a record: fields to set, fields to delete, new times.

    ``created_at``, ``owner``, ``meta`` and ``ends_by`` are only used when the
    save creates the record; ``ends_by`` is the latest the record can live (its
    absolute timeout), which lets a store expire what indexes it.
    """

    set: Mapping[str, bytes] = field(default_factory=dict)
    delete: Collection[str] = ()
    created_at: float = 0.0
    touched_at: float = 0.0
    expires_at: float = 0.0
    owner: str | None = None
    meta: Mapping[str, str] = field(default_factory=dict)
    ends_by: float = 0.0


@runtime_checkable
class Store(Protocol):
    """Where session records live. Every method may raise ``StoreUnavailable``."""

    def load(self, key: str) -> Record | None:
        """Return the record filed under ``key``, or ``None`` if missing or expired."""
        ...

    def save(self, key: str, change: Change, *, create: bool) -> bool:
        """Apply ``change`` to the record under ``key`` atomically.

        With ``create=True`` the record must not exist yet and is made; with
        ``create=False`` it must exist and not be expired. Returns ``False``
        (writing nothing) when that does not hold.
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
