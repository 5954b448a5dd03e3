"""The calls the session lifecycle asks its driver to make, as small typed values.

The lifecycle (:mod:`satchel._manager`) never touches a store: its steps yield
one of these and are sent back the answer, as h11's state machine deals in
event objects. A store call names the store method it makes (:meth:`Load.on`
and friends), the same method on a sync and an async store, so the sync driver
calls it and the async driver awaits it; an import's calls on its claims store
(:class:`LoadClaim`, :class:`SaveClaim`) go to that store the same way; the
three others (:class:`Sleep`, and the old session layer's :class:`Fetch` and
:class:`Forget`) each driver performs its own way. A
misspelt operation is a type error, not a surprise at run time.
"""

from __future__ import annotations

from collections.abc import Collection, Generator
from dataclasses import dataclass
from typing import Any, TypeVar

from .stores.base import Change

__all__ = [
    "ON_STORE",
    "Acquire",
    "ClaimOp",
    "Delete",
    "Fetch",
    "Forget",
    "Load",
    "LoadClaim",
    "Op",
    "Records",
    "Release",
    "Revoke",
    "Save",
    "SaveClaim",
    "Sleep",
    "StoreOp",
    "Touch",
]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Load:
    """Read the record under ``key`` (``None`` if there is none)."""

    key: str

    def on(self, store: Any) -> Any:
        return store.load(self.key)


@dataclass(frozen=True, slots=True)
class Save:
    """Apply ``change`` to the record under ``key`` (a new one with ``create``)."""

    key: str
    change: Change
    create: bool

    def on(self, store: Any) -> Any:
        return store.save(self.key, self.change, create=self.create)


@dataclass(frozen=True, slots=True)
class Delete:
    """Delete the record under ``key``."""

    key: str

    def on(self, store: Any) -> Any:
        return store.delete(self.key)


@dataclass(frozen=True, slots=True)
class Touch:
    """Move the idle expiry of the record under ``key``."""

    key: str
    touched_at: float
    expires_at: float

    def on(self, store: Any) -> Any:
        return store.touch(self.key, self.touched_at, self.expires_at)


@dataclass(frozen=True, slots=True)
class Acquire:
    """Take strict mode's lock on ``key`` with ``token`` for ``lease`` seconds."""

    key: str
    token: str
    lease: float

    def on(self, store: Any) -> Any:
        return store.acquire(self.key, self.token, self.lease)


@dataclass(frozen=True, slots=True)
class Release:
    """Drop strict mode's lock on ``key``, if ``token`` still holds it."""

    key: str
    token: str

    def on(self, store: Any) -> Any:
        return store.release(self.key, self.token)


@dataclass(frozen=True, slots=True)
class Records:
    """Every live ``(key, record)``, or only ``owner``'s."""

    owner: str | None

    def on(self, store: Any) -> Any:
        return store.records(self.owner)


@dataclass(frozen=True, slots=True)
class Revoke:
    """End the sessions ``keys`` names, or all of ``owner``'s but ``keep``; how many."""

    keys: Collection[str]
    owner: str | None = None
    keep: str | None = None

    def on(self, store: Any) -> Any:
        return store.revoke(self.keys, owner=self.owner, keep=self.keep)


@dataclass(frozen=True, slots=True)
class Sleep:
    """Pause for ``seconds`` (strict mode's wait for a lock; a merge's back-off)."""

    seconds: float


@dataclass(frozen=True, slots=True)
class LoadClaim(Load):
    """:class:`Load` of the claim of an old cookie (see :mod:`satchel.migration`): the
    driver makes it on the import's claims store, not the sessions' store."""


@dataclass(frozen=True, slots=True)
class SaveClaim(Save):
    """:class:`Save` of (``create``) or to (settling) the claim of an old cookie, on the
    import's claims store."""


@dataclass(frozen=True, slots=True)
class Fetch:
    """Read an old session from the session layer it lived in (``source.fetch(token)``)."""

    source: Any
    token: str


@dataclass(frozen=True, slots=True)
class Forget:
    """Delete an imported old session from its old layer (``source.forget(token)``)."""

    source: Any
    token: str


#: The operations a store answers: each makes its call with ``on(store)``.
StoreOp = Load | Save | Delete | Touch | Acquire | Release | Records | Revoke
#: The types of :data:`StoreOp`, for a driver's first test (claims are subclasses, not in it).
ON_STORE: frozenset[type] = frozenset(
    {Load, Save, Delete, Touch, Acquire, Release, Records, Revoke}
)
#: The operations on the claims store of an import (``SATCHEL_MIGRATE_FROM``).
ClaimOp = LoadClaim | SaveClaim
#: Every operation a lifecycle step may yield.
Op = StoreOp | ClaimOp | Sleep | Fetch | Forget
#: Lifecycle steps: they yield operations, are sent the answers, and return a T.
LifeSteps = Generator[Op, Any, T]
