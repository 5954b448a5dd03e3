"""The session lifecycle, without I/O: cookie in, session out; session in, cookie out.

Every rule of a session's life (load, save, merge, move, refresh, expiry, the
import of old sessions) is written once here, as steps that yield typed
operations (:mod:`satchel._ops`) and read and write the request's
:class:`~satchel._state.State`. The drivers in :mod:`satchel._manager` perform
those operations against a sync or an async store.
"""

from __future__ import annotations

import random
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from ._leases import acquire_steps
from ._logins import REFUSE, admit_steps, limited, stored_meta
from ._merge import Patch
from ._ops import Delete, LifeSteps, Load, Release, Save, Sleep, Touch
from ._rebase import rebase
from ._renewal import due_now, issued, join_steps, rejoin_steps, renew_if_due
from ._settings import Settings
from ._state import EMPTY_BUT, State
from .errors import (
    ConfigError,
    LockLost,
    LockTimeout,
    SessionTooLarge,
    StoreUnavailable,
    TooManySessions,
)
from .session import Session
from .signals import (
    Counters,
    cookie_rejected,
    security_log,
    session_created,
    session_destroyed,
    session_expired,
    session_regenerated,
)
from .signing import CookieSigner, new_id, store_key
from .stores.base import Change, ListingStore, LockingStore, Record, SaveResult, size_of
from .stores.encrypted import Sealing

if TYPE_CHECKING:
    from .migration import Migration


#: Never rewrite a record's idle expiry more often than this many seconds.
REFRESH_AT_MOST_EVERY = 60.0
#: ... nor more often than this fraction of the idle window.
REFRESH_FRACTION = 0.1
#: A save replays its changes onto what overlapping requests stored meanwhile
#: at most this many times (and for at most ``lock_timeout`` seconds); past
#: that it answers 503 (LockTimeout) rather than overwrite anyone.
MERGE_ATTEMPTS = 200


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the response must do with the cookie after a save."""

    #: A newly signed cookie value to send (the session has a new ID).
    new_cookie: str | None = None
    #: The session lives on under the same ID and was read or written.
    alive: bool = False
    #: The browser holds a cookie that no longer names a session: expire it.
    delete_cookie: bool = False
    #: The save wrote this request's changes to the record (same ID).
    wrote: bool = False
    #: The save moved the record's idle expiry (an unchanged session, refresh due).
    refreshed: bool = False


_ALIVE = Outcome(alive=True)


class Lifecycle:
    """Every rule of a session's life, with no I/O: what the sync and async managers share.

    Each operation that needs the store is a generator that yields the calls
    it needs (:data:`satchel._ops.Op`, typed values) and is sent back their
    results. :class:`SessionManager`
    runs those steps against a :class:`~satchel.stores.Store`, calling it;
    :class:`AsyncSessionManager` against an :class:`~satchel.stores.AsyncStore`,
    awaiting it. So the merges, expiries, moves and fences are written once,
    and a Flask app and an ASGI app on one store follow exactly the same rules.
    """

    #: The protocols a store must follow for strict mode, and to list its sessions.
    _lock_protocol: type = LockingStore
    _listing_protocol: type = ListingStore

    def __init__(
        self,
        store: Any,
        signer: CookieSigner,
        settings: Settings,
        session_class: type[Session] = Session,
        sender: object = None,
    ) -> None:
        self.store = store
        #: What signals are sent from (the Flask app, for the Flask adapter).
        self.sender = sender
        #: Counts of loads, saves, errors and more, for monitoring.
        self.counters = Counters()
        # An encrypted store (or one on worker threads) counts tampered records here; the
        # store is asked nothing (its own attributes are read, not its methods).
        for layer in (store, vars(store).get("wrapped") if hasattr(store, "__dict__") else None):
            if isinstance(layer, Sealing):
                layer.counters = self.counters
        self.signer = signer
        self.settings = settings
        self.session_class = session_class
        #: Imports sessions from the app's previous session layer (``SATCHEL_MIGRATE_FROM``).
        self.migration: Migration | None = None
        if settings.locking or settings.max_sessions_per_owner is not None:
            self._locking_store()  # refuse at start-up, not at the first request
        if settings.max_sessions_per_owner is not None and not isinstance(
            store, self._listing_protocol
        ):
            raise ConfigError(f"a limit of sessions per owner needs a store that lists: {store!r}")
        self._refresh_after = min(REFRESH_AT_MOST_EVERY, settings.idle_timeout * REFRESH_FRACTION)
        # With an owner limit, "least recently seen" decides which session a login ends:
        # an owned session's last-seen time moves on every request that uses it.
        self._owned_refresh_after = 0.0 if settings.max_sessions_per_owner else self._refresh_after

    def open(self, cookie: str | Sequence[str] | None) -> Session:
        """Return the session a cookie names, without touching the store yet.

        ``cookie`` may be every value the request sent under the cookie's name
        (a browser sends several when a parent domain or path set one too): the
        first genuine one is used, and a bad one never costs the visitor a
        genuine one. A request whose cookies all fail verification gets an empty
        session and a line on the ``satchel.security`` logger. Such a cookie
        is ignored, not expired (a first write replaces it): a worker still on
        an old key during a rotation would otherwise log out every visitor whose
        cookie a newer worker signed, and Flask's own session does the same.
        """
        if not cookie:
            return self.session_class(self, None)
        values = (cookie,) if isinstance(cookie, str) else cookie
        signer = self.signer
        for value in values:
            session_id = signer.unsign(value)
            if session_id is not None:
                session = self.session_class(self, session_id)
                state = session.state
                state.resign = signer.signed_by_fallback(value)
                state.cookie = value
                return session
        migration = self.migration
        if migration is not None:
            pending = migration.recognise(values)
            if pending is not None:  # a genuine old cookie: imported when first used
                session = self.session_class(self, None)
                session.state.loaded = False
                session.state.migrating = pending
                return session
        self.counters.add("rejected_cookies")
        security_log.warning(
            "rejected a session cookie that failed verification (%s chars)",
            ", ".join(str(len(value)) for value in values),
        )
        fresh = self.session_class(self, None)
        cookie_rejected.send(self.sender, session=fresh)
        return fresh

    def fill(self, session: Session) -> Any:
        """Load ``session`` and hand it its data: each driver does (see its own)."""
        raise NotImplementedError

    def check_login(self, session: Session, owner: str) -> Any:
        """Check a login against the owner limit in the view: each driver does, when the
        "refuse" policy is on (else there is nothing to check)."""
        if (
            self.settings.max_sessions_per_owner is None
            or self.settings.max_sessions_policy != REFUSE
        ):
            return None
        raise NotImplementedError

    def cookie_of(self, state: State) -> str:
        """The cookie value of the session's ID: the one it came in, or signed anew."""
        assert state.session_id is not None
        return state.cookie or self.signer.sign(state.session_id)

    def sign(self, session_id: str) -> str:
        """Return the cookie value for ``session_id``."""
        return self.signer.sign(session_id)

    def _load_steps(self, session: Session) -> LifeSteps[Record | None]:
        """Read the record behind ``session`` (on its first use).

        In strict mode the session's lock is taken first, so that requests of
        one session run their view one at a time. A session opened from an old
        cookie (``SATCHEL_MIGRATE_FROM``) is imported here.
        """
        if session.state.migrating is not None:
            assert self.migration is not None
            try:
                record: Record | None = yield from self.migration.load_steps(self, session)
            except StoreUnavailable:
                self.counters.add("store_errors")
                raise
            return record
        assert session.state.session_id is not None
        key = store_key(session.state.session_id)
        try:
            if self.settings.locking or session._lock_wanted():
                yield from self._lock_steps(session, key)
            record = yield Load(key)
            if record is None and self.settings.renewal_interval is not None:
                record = yield from join_steps(self, session.state)
        except StoreUnavailable:
            self.counters.add("store_errors")
            raise
        self._loaded(session, key, record)
        return record

    def _loaded(self, session: Session, key: str, record: Record | None) -> None:
        """What follows a load: counted, and a genuine cookie whose record is gone signalled."""
        self.counters.add("loads")
        if record is None:
            session_expired.send(self.sender, session=session, fingerprint=key[:8])

    def _one_call_load(self, session: Session) -> bool:
        """Whether loading ``session`` is a single store call: no import, no lock."""
        state = session.state
        return (
            state.migrating is None
            and not self.settings.locking
            and state.session_id is not None
            and not session._lock_wanted()
        )

    def _fill_steps(self, session: Session) -> LifeSteps[None]:
        """Load ``session`` and hand it its data: what its first use does."""
        record = yield from self._load_steps(session)
        error = session.state.fill(record)
        if error is not None:
            yield from self._unreadable_steps(session, error)

    def _unreadable_steps(self, session: Session, error: Exception) -> LifeSteps[None]:
        """A stored record that does not load back counts as absent, and is deleted.

        Whatever wrote it (an older version, a hand edit), failing every request
        of the session for good would be worse than ending it.
        """
        assert session.state.session_id is not None
        key = store_key(session.state.session_id)
        security_log.warning(
            "session %s holds a value that cannot be read back (%s); it counts as ended",
            key[:8],
            type(error).__name__,
        )
        try:
            yield Delete(key)
        except StoreUnavailable as exc:
            self.counters.add("store_errors")
            security_log.warning("could not delete the unreadable session %s: %s", key[:8], exc)

    def _locking_store(self) -> Any:
        store = self.store
        if not isinstance(store, self._lock_protocol) or not getattr(store, "can_lock", True):
            raise ConfigError(f"strict mode needs a store that can lock; {store!r} cannot")
        return store

    def _lock_steps(self, session: Session, key: str) -> LifeSteps[None]:
        self._locking_store()
        token = secrets.token_hex(16)
        yield from acquire_steps(self.store, self.settings, self.counters, "lock_waits", key, token)
        session.state.lock_held = (key, token)
        session.state.locked_at = time.monotonic()
        session._on_lock()

    def _release_steps(self, session: Session) -> LifeSteps[None]:
        """Drop the session's lock, if it holds one; safe to run more than once."""
        held, session.state.lock_held = session.state.lock_held, None
        if held is not None:
            self._locking_store()
            yield Release(*held)

    def _save_steps(self, session: Session) -> LifeSteps[Outcome]:
        """Write what the request changed, as one atomic change set.

        Raises :class:`SessionTooLarge` before writing anything when the
        session has outgrown ``max_size``. A lock taken in strict mode is
        released whatever happens.
        """
        login: tuple[str, str] | None = None
        try:
            if limited(self, session):
                login = yield from admit_steps(self, session)
            return (yield from self._write_steps(session))
        except StoreUnavailable:
            self.counters.add("store_errors")
            raise
        except TooManySessions:  # refused at the save (a race the view's check lost)
            security_log.info("a login over the owner's session limit was not stored")
            return Outcome()
        finally:
            if login is not None:
                yield Release(*login)
            yield from self._release_steps(session)
            claim = session.state.claim
            if claim is not None and self.migration is not None:
                session.state.claim = None
                yield from self.migration.settle_steps(claim)

    def _settled(self, session: Session) -> Outcome | None:
        """The save's outcome when it needs no store call (most requests): the session
        was never used, or only read and its idle expiry is not due to move; else None."""
        state = session.state
        if not state.loaded:
            return Outcome(delete_cookie=state.stale_cookie)
        record = state.record
        if (
            record is not None
            and time.time() - record.touched_at
            < (self._refresh_after if record.owner is None else self._owned_refresh_after)
            and state.unchanged()
            and (self.settings.renewal_interval is None or not due_now(self.settings, record))
        ):
            return self._alive(session)
        return None

    def _write_steps(self, session: Session) -> LifeSteps[Outcome]:
        settled = self._settled(session)
        if settled is not None:
            return settled
        if self.settings.renewal_interval is not None:
            renew_if_due(self.settings, session.state)
        if session.state.unchanged():
            # Read, not written (most requests): at most refresh the idle expiry.
            assert session.state.record is not None
            return (yield from self._refresh_steps(session, session.state.record))
        state = session.state
        data, loaded = state.data, state.raw
        changed, deleted = state.changes()
        had_cookie = state.session_id is not None or state.stale_cookie
        empty = state.empty()
        limit = self.settings.max_size
        if not empty:
            # Checked on this request's view before any write, so that a refused
            # save changes nothing at all; the store checks the merged record again.
            kept = {k: v for k, v in loaded.items() if k in data and k not in changed}
            size = size_of(changed) + size_of(kept)
            if size > limit and size > size_of(loaded):
                raise SessionTooLarge(size, limit)

        if session.state.drop_old and session.state.session_id is not None:
            yield from self._delete_steps(session)  # clear(): ended, whatever it holds now
        origin = session.state.origin
        if (
            session.state.regenerating
            and origin is not None
            and session.state.session_id is not None
        ):
            return (yield from self._move_steps(session, origin, changed, deleted))
        if session.state.record is None or session.state.session_id is None:
            if empty:  # nothing worth keeping: never store an empty session
                session.state.session_id = session.state.record = None
                return Outcome(delete_cookie=had_cookie)
            fields = {key: changed.get(key) or loaded[key] for key in data}
            session_id, key, record = yield from self._create_record_steps(session, fields)
            self.counters.add("creates")
            return self._born(session, session_id, key, record, session_created)
        if not (changed or deleted):
            return (yield from self._refresh_steps(session, session.state.record))
        now = time.time()
        key = store_key(session.state.session_id)
        change = Change(
            set=changed,
            delete=deleted,
            touched_at=now,
            expires_at=self._expiry(session.state.record, now),
            # An owned session stays, emptied or not: it still says who logged in.
            delete_if_only=EMPTY_BUT if deleted and state.owner is None else None,
            max_size=limit,
            fence=self._fence(session),
            expect={name: loaded.get(name) for name in changed},
        )
        result, _ = yield from self._merging_save_steps(session, key, change, False, key)
        if not result and (yield from rejoin_steps(self, session.state)):
            return (yield from self._write_steps(session))  # renewed meanwhile: save there
        self.counters.add("saves")
        outcome = self._saved(session, result)
        return replace(outcome, wrote=True) if outcome.alive else outcome

    def _merging_save_steps(
        self, session: Session, key: str, change: Change, create: bool, source: str
    ) -> LifeSteps[tuple[int, Change]]:
        """Save ``change``, each changed field compared with what the request loaded.

        When an overlapping request changed one of those fields meanwhile, the
        store refuses (CONFLICT); this request's own change to it (what it
        appended, removed, set or deleted, at any depth: see ``satchel._merge``)
        is replayed onto the value stored now, and the save tried again.
        """
        patches: dict[str, Patch] = {}
        started = time.monotonic()
        for attempt in range(MERGE_ATTEMPTS):
            result = int((yield Save(key, change, create)))
            if result == SaveResult.FENCED:
                held = time.monotonic() - session.state.locked_at
                raise LockLost(repr(self.store), held)
            if result != SaveResult.CONFLICT:
                return result, change
            if attempt == 0:
                self.counters.add("merges")
            waited = time.monotonic() - started
            if waited >= self.settings.lock_timeout:
                break
            if attempt >= 2:  # many requests at once: spread the retries out a little
                yield Sleep(random.uniform(0, min(0.001 * attempt, 0.02)))
            current = yield Load(source)
            if current is None:
                return SaveResult.REFUSED, change  # ended meanwhile
            change = rebase(session.state, change, current, patches)
        raise LockTimeout(repr(self.store), time.monotonic() - started)

    def _fence(self, session: Session) -> str | None:
        """The lock token a save must still hold, in strict mode."""
        held = session.state.lock_held
        if (
            held is None
            or session.state.session_id is None
            or held[0] != store_key(session.state.session_id)
        ):
            return None
        return held[1]

    def _create_record_steps(
        self, session: Session, fields: dict[str, bytes]
    ) -> LifeSteps[tuple[str, str, Record]]:
        """Store ``fields`` as a new session under a new ID: the ID, its key, the record."""
        now = time.time()
        change = Change(
            set=fields,
            created_at=now,
            touched_at=now,
            expires_at=now + min(self.settings.idle_timeout, self.settings.absolute_timeout),
            owner=session.state.owner,
            meta=stored_meta(session.state, {}, issued(self.settings, now)),
            ends_by=now + self.settings.absolute_timeout,
            max_size=self.settings.max_size,
        )
        while True:
            session_id = new_id()
            key = store_key(session_id)
            if (yield Save(key, change, True)):
                break
        record = Record(fields, now, now, change.expires_at, change.owner, dict(change.meta))
        return session_id, key, record

    def _locked_load_steps(self, session: Session, key: str, record: Record) -> LifeSteps[Record]:
        """``record``, just created for ``session`` (an import), with its lock taken in strict
        mode, as a load would have taken it."""
        if self.settings.locking or session._lock_wanted():
            yield from self._lock_steps(session, key)
        return record

    def _move_steps(
        self, session: Session, origin: Record, changed: dict[str, bytes], deleted: list[str]
    ) -> LifeSteps[Outcome]:
        """regenerate(): move the stored record, with this request's changes, to a new ID.

        One atomic step in the store, conditional on the old record still being
        there, so a session ended meanwhile stays ended. The creation time moves
        along, so the absolute timeout still counts from the session's start.
        """
        assert session.state.session_id is not None
        old = store_key(session.state.session_id)
        now = time.time()
        ends_by = origin.created_at + self.settings.absolute_timeout
        change = Change(
            set=changed,
            delete=deleted,
            created_at=origin.created_at,
            touched_at=now,
            expires_at=min(now + self.settings.idle_timeout, ends_by),
            owner=session.state.owner,
            meta=stored_meta(session.state, origin.meta, issued(self.settings, now)),
            ends_by=ends_by,
            replaces=old,
            delete_if_only=EMPTY_BUT if session.state.owner is None else None,
            max_size=self.settings.max_size,
            fence=self._fence(session),
            expect={name: session.state.raw.get(name) for name in changed},
        )
        renewal = session.state.reason == "renewal"
        session_id = self.signer.renewed_ids(session.state.session_id)[0] if renewal else new_id()
        key = store_key(session_id)
        result, change = yield from self._merging_save_steps(session, key, change, True, old)
        if renewal and not result and (yield from rejoin_steps(self, session.state)):
            return (yield from self._write_steps(session))  # another request renewed it first
        if result != SaveResult.SAVED:  # ended meanwhile, or emptied: no new session
            self.counters.add("saves")
            return self._saved(session, result)
        self.counters.add("deletes")  # the old record, gone with the move
        # The bytes saved: what a merge with an overlapping request made, if it made any.
        fields = {k: change.set.get(k) or session.state.raw[k] for k in session.state.data}
        record = Record(
            fields, origin.created_at, now, change.expires_at, change.owner, dict(change.meta)
        )
        return self._born(session, session_id, key, record, session_regenerated, old)

    def _born(
        self,
        session: Session,
        session_id: str,
        key: str,
        record: Record,
        signal: Any,
        old: str | None = None,
    ) -> Outcome:
        """Bookkeeping after a session was stored under a new ID (moved from ``old``)."""
        state = session.state
        reason = state.reason
        state.born(session_id, record)
        self.counters.add("saves")
        if reason == "renewal":
            self.counters.add("renewals")
        if old is None:
            signal.send(self.sender, session=session, fingerprint=key[:8])
        else:
            signal.send(self.sender, session=session, fingerprint=key[:8], reason=reason)
        return Outcome(new_cookie=self.sign(session_id), alive=True)

    def _delete_steps(self, session: Session) -> LifeSteps[None]:
        """clear(): delete the record under the session's current ID, and forget the ID."""
        assert session.state.session_id is not None
        old = store_key(session.state.session_id)
        yield Delete(old)
        self.counters.add("deletes")
        session_destroyed.send(self.sender, session=session, fingerprint=old[:8])
        session.state.session_id = None

    def _expiry(self, record: Record, now: float) -> float:
        return min(
            now + self.settings.idle_timeout, record.created_at + self.settings.absolute_timeout
        )

    def _refresh_steps(self, session: Session, record: Record) -> LifeSteps[Outcome]:
        """Move an unchanged session's idle expiry, if the last move is old enough."""
        now = time.time()
        if not self._refresh_due(record, now):
            return self._alive(session)
        assert session.state.session_id is not None
        ok = yield Touch(store_key(session.state.session_id), now, self._expiry(record, now))
        if not ok and (yield from rejoin_steps(self, session.state)):
            return self._alive(session)  # renewed meanwhile: the response sends its cookie
        self.counters.add("touches")
        outcome = self._saved(session, int(ok))
        return replace(outcome, refreshed=True) if outcome.alive else outcome

    def _refresh_due(self, record: Record, now: float) -> bool:
        """Whether an unchanged session's idle expiry is old enough to move now."""
        after = self._refresh_after if record.owner is None else self._owned_refresh_after
        return now - record.touched_at >= after

    def _alive(self, session: Session) -> Outcome:
        """The session lives on; a cookie signed with a fallback key is signed anew."""
        state = session.state
        if state.resign and state.session_id is not None:
            state.resign = False
            return Outcome(new_cookie=self.sign(state.session_id), alive=True)
        return _ALIVE

    def _saved(self, session: Session, result: int) -> Outcome:
        if result == SaveResult.DELETED:
            # Emptied at the store too (no other request stored anything meanwhile).
            assert session.state.session_id is not None
            self.counters.add("deletes")
            key = store_key(session.state.session_id)
            session_destroyed.send(self.sender, session=session, fingerprint=key[:8])
            session.state.ended()
            return Outcome(delete_cookie=True)
        if not result:
            # Cleared, revoked or expired by another request meanwhile: the
            # session is over, and this request must not bring it back.
            security_log.info(
                "session ended while a request was using it; its changes were dropped"
            )
            session.state.ended()
            return Outcome(delete_cookie=True)
        # ``modified`` stays true after the save: what the request set or deleted stays
        # recorded until a new ID clears it (State.born, which sets ``wrote`` instead).
        return self._alive(session)
