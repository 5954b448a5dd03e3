"""The lifecycle's two drivers: :class:`SessionManager` calls a sync store,
:class:`AsyncSessionManager` awaits an async one.

Adapters call ``open()`` with the cookie a request carried and ``save()`` when
the response is ready, then set or delete the cookie as the returned
:class:`~satchel._lifecycle.Outcome` says. Each driver only performs the
operations the lifecycle's steps yield (one ``match`` each); the sync one also
skips driving steps when the same predicates say no store call is needed.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable
from typing import Any, TypeVar, cast

from . import _async
from ._lifecycle import Lifecycle, Outcome
from ._logins import precheck_steps
from ._ops import ON_STORE, Fetch, Forget, LifeSteps, Load, LoadClaim, Op, SaveClaim, Sleep, StoreOp
from ._renewal import join_steps
from ._settings import Settings
from ._steps import drive, drive_async
from .errors import StoreUnavailable
from .session import Session
from .signing import CookieSigner, store_key
from .stores.aio import to_async
from .stores.base import (
    AsyncListingStore,
    AsyncLockingStore,
    AsyncStore,
    Record,
    Store,
)
from .telemetry import Telemetry

__all__ = ["AsyncSessionManager", "Lifecycle", "Outcome", "SessionManager", "Settings"]

T = TypeVar("T")


class SessionManager(Lifecycle):
    """Opens and saves sessions against one :class:`~satchel.stores.Store`, calling it."""

    store: Store

    def __init__(
        self,
        store: Store,
        signer: CookieSigner,
        settings: Settings,
        session_class: type[Session] = Session,
        sender: object = None,
    ) -> None:
        super().__init__(store, signer, settings, session_class, sender)
        #: Spans and metrics for OpenTelemetry (``None`` without its API: see
        #: :mod:`satchel.telemetry`).
        self.telemetry = Telemetry.create(store, self.counters)

    def run(self, steps: LifeSteps[T]) -> T:
        """Run lifecycle steps to their answer, making each call they yield."""
        return drive(steps, self._perform)

    def _perform(self, op: Op) -> Any:
        telemetry = self.telemetry
        if telemetry is not None and telemetry.recording():
            return telemetry.call(op, self._call)
        return self._call(op)

    def _call(self, op: Op) -> Any:
        if type(op) in ON_STORE:  # most operations: one set lookup, then the call
            return cast(StoreOp, op).on(self.store)
        match op:
            case Sleep(seconds):
                return time.sleep(seconds)
            case LoadClaim() | SaveClaim():
                assert self.migration is not None
                return op.on(self.migration.claims)
            case Fetch(source, token):
                return source.fetch(token)
            case Forget(source, token):
                return source.forget(token)
            case _:
                return op.on(self.store)

    def load(self, session: Session) -> Record | None:
        """Read the record behind ``session``: see :meth:`Lifecycle._load_steps`."""
        return self.run(self._load_steps(session))

    def fill(self, session: Session) -> None:
        """Load ``session`` and hand it its data (its first use does this)."""
        if not self._one_call_load(session):
            self.run(self._fill_steps(session))
            return
        # The common case, one store call: the same rules as _fill_steps, without
        # driving steps (a few thousand instructions on every request that reads).
        state = session.state
        assert state.session_id is not None
        key = store_key(state.session_id)
        try:
            telemetry = self.telemetry
            if telemetry is None or not telemetry.recording():
                record = self.store.load(key)
            else:
                record = telemetry.call(Load(key), self._call)
            if record is None and self.settings.renewal_interval is not None:
                record = self.run(join_steps(self, state))
        except StoreUnavailable:
            self.counters.add("store_errors")
            raise
        self._loaded(session, key, record)
        error = state.fill(record)
        if error is not None:
            self.run(self._unreadable_steps(session, error))

    def release(self, session: Session) -> None:
        """Drop the session's lock, if it holds one; safe to call more than once."""
        self.run(self._release_steps(session))

    def check_login(self, session: Session, owner: str) -> None:
        """Raise ``TooManySessions`` now if the owner limit refuses ``owner``'s login."""
        self.run(precheck_steps(self, session, owner))

    def save(self, session: Session) -> Outcome:
        """Write what the request changed: see :meth:`Lifecycle._save_steps`."""
        state = session.state
        if state.lock_held is None and state.claim is None:
            # No lock to release and no import to settle: when the save needs no
            # store call either, there are no steps to drive.
            settled = self._settled(session)
            if settled is not None:
                return settled
        return self.run(self._save_steps(session))


class AsyncSessionManager(Lifecycle):
    """Opens and saves sessions against one :class:`~satchel.stores.AsyncStore`, awaiting it.

    The same rules as :class:`SessionManager` (they are :class:`Lifecycle`'s),
    for ASGI apps: nothing here blocks the event loop. A session is loaded
    before the view runs (:meth:`fill`), since ASGI frameworks hand views a
    plain mapping that cannot wait for the store.
    """

    store: AsyncStore
    _lock_protocol = AsyncLockingStore
    _listing_protocol = AsyncListingStore
    _claims_store: tuple[Any, AsyncStore] | None = None

    def __init__(
        self,
        store: AsyncStore,
        signer: CookieSigner,
        settings: Settings,
        session_class: type[Session] = Session,
        sender: object = None,
    ) -> None:
        super().__init__(store, signer, settings, session_class, sender)
        #: Spans and metrics for OpenTelemetry (see :mod:`satchel.telemetry`).
        self.telemetry = Telemetry.create(store, self.counters)

    def run(self, steps: LifeSteps[T]) -> Awaitable[T]:
        """Run lifecycle steps to their answer, awaiting each call they yield."""
        return drive_async(steps, self._perform)

    async def _perform(self, op: Op) -> Any:
        telemetry = self.telemetry
        if telemetry is not None and telemetry.recording():
            return await telemetry.call_async(op, self._call)
        return await self._call(op)

    async def _call(self, op: Op) -> Any:
        if type(op) in ON_STORE:
            return await cast(StoreOp, op).on(self.store)
        match op:
            case Sleep(seconds):
                return await _async.sleep(seconds)
            case LoadClaim() | SaveClaim():
                return await op.on(self._claims())
            case Fetch(source, token):  # the old layer's own (sync) client, on a thread
                return await _async.to_thread(source.fetch, token)
            case Forget(source, token):
                return await _async.to_thread(source.forget, token)
            case _:
                return await op.on(self.store)

    def _claims(self) -> AsyncStore:
        """The import's claims store, awaited as this manager's store is."""
        assert self.migration is not None
        claims = self._claims_store
        if claims is None or claims[0] is not self.migration:
            # The claims store's sync self on worker threads: an import happens once per
            # visitor, and this opens no second set of connections to close.
            claims = (self.migration, to_async(self.migration.claims, native=False))
            self._claims_store = claims
        return claims[1]

    def load(self, session: Session) -> Awaitable[Record | None]:
        """Read the record behind ``session``: see :meth:`Lifecycle._load_steps`."""
        return drive_async(self._load_steps(session), self._perform)

    def fill(self, session: Session) -> Awaitable[None]:
        """Load ``session`` and hand it its data, before the view uses it."""
        return drive_async(self._fill_steps(session), self._perform)

    def release(self, session: Session) -> Awaitable[None]:
        """Drop the session's lock, if it holds one; safe to call more than once."""
        return drive_async(self._release_steps(session), self._perform)

    def check_login(self, session: Session, owner: str) -> Awaitable[None]:
        """Raise ``TooManySessions`` if the owner limit refuses ``owner``'s login."""
        return drive_async(precheck_steps(self, session, owner), self._perform)

    def save(self, session: Session) -> Awaitable[Outcome]:
        """Write what the request changed: see :meth:`Lifecycle._save_steps`."""
        return drive_async(self._save_steps(session), self._perform)

    def end(self, session: Session) -> Awaitable[None]:
        """Delete the record behind ``session`` and forget its ID (it was saved)."""
        return drive_async(self._delete_steps(session), self._perform)
