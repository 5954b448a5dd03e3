"""The framework-free session lifecycle: cookie in, session out; session in, cookie out.

Adapters (``satchel.flask`` today) call :meth:`SessionManager.open` with the
cookie a request carried and :meth:`SessionManager.save` when the response is
ready, then set or delete the cookie as the returned :class:`Outcome` says.
"""

from __future__ import annotations

import logging
import secrets
import time
from dataclasses import dataclass

from .errors import ConfigError, LockTimeout, SessionTooLarge, StoreUnavailable
from .serialization import dumps
from .session import Session
from .signals import (
    Counters,
    session_created,
    session_destroyed,
    session_expired,
    session_regenerated,
)
from .signing import CookieSigner, new_id, store_key
from .stores.base import Change, LockingStore, Record, Store

security_log = logging.getLogger("satchel.security")

#: Never rewrite a record's idle expiry more often than this many seconds.
REFRESH_AT_MOST_EVERY = 60.0
#: ... nor more often than this fraction of the idle window.
REFRESH_FRACTION = 0.1


@dataclass(frozen=True, slots=True)
class Settings:
    """Lifetimes in seconds, the size limit in bytes, and strict mode's lock times."""

    idle_timeout: float
    absolute_timeout: float
    max_size: int
    #: Strict mode for every request (views can also ask for it one by one).
    locking: bool = False
    #: How long a request waits for another request's lock before giving up.
    lock_timeout: float = 5.0
    #: How long a lock lasts if its holder never releases it (a crashed worker).
    lock_lease: float = 30.0


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the response must do with the cookie after a save."""

    #: A newly signed cookie value to send (the session has a new ID).
    new_cookie: str | None = None
    #: The session lives on under the same ID and was read or written.
    alive: bool = False
    #: The browser holds a cookie that no longer names a session: expire it.
    delete_cookie: bool = False


_ALIVE = Outcome(alive=True)


class SessionManager:
    """Opens and saves sessions against one store with one signer."""

    def __init__(
        self,
        store: Store,
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
        self.signer = signer
        self.settings = settings
        self.session_class = session_class
        if settings.locking:
            self._locking_store()  # refuse at start-up, not at the first request
        self._refresh_after = min(REFRESH_AT_MOST_EVERY, settings.idle_timeout * REFRESH_FRACTION)

    def open(self, cookie: str | None) -> Session:
        """Return the session a cookie names, without touching the store yet.

        A cookie that fails verification gives an empty session and a line on
        the ``satchel.security`` logger; it is expired if nothing is stored.
        """
        if not cookie:
            return self.session_class(self, None)
        session_id = self.signer.unsign(cookie)
        if session_id is None:
            self.counters.add("rejected_cookies")
            security_log.warning(
                "rejected a session cookie that failed verification (%d chars)",
                len(cookie),
            )
            session = self.session_class(self, None)
            session._stale_cookie = True
            return session
        return self.session_class(self, session_id)

    def load(self, session: Session) -> Record | None:
        """Read the record behind ``session`` (called on its first use).

        In strict mode the session's lock is taken first, so that requests of
        one session run their view one at a time.
        """
        assert session.session_id is not None
        key = store_key(session.session_id)
        try:
            if self.settings.locking or session._lock_wanted():
                self._lock(session, key)
            record = self.store.load(key)
        except StoreUnavailable:
            self.counters.add("store_errors")
            raise
        self.counters.add("loads")
        if record is None:
            session_expired.send(self.sender, session=session, fingerprint=key[:8])
        return record

    def _locking_store(self) -> LockingStore:
        store = self.store
        if not isinstance(store, LockingStore):
            raise ConfigError(f"strict mode needs a store that can lock; {store!r} cannot")
        return store

    def _lock(self, session: Session, key: str) -> None:
        store = self._locking_store()
        token = secrets.token_hex(16)
        start = time.monotonic()
        pause = 0.002
        waiting = False
        while not store.acquire(key, token, self.settings.lock_lease):
            if not waiting:  # count requests that waited, not retries
                waiting = True
                self.counters.add("lock_waits")
            waited = time.monotonic() - start
            if waited >= self.settings.lock_timeout:
                raise LockTimeout(repr(store), waited)
            time.sleep(min(pause, self.settings.lock_timeout - waited))
            pause = min(pause * 2, 0.05)
        session._lock_held = (key, token)
        session._on_lock()

    def release(self, session: Session) -> None:
        """Drop the session's lock, if it holds one; safe to call more than once."""
        held, session._lock_held = session._lock_held, None
        if held is not None:
            self._locking_store().release(*held)

    def sign(self, session_id: str) -> str:
        """Return the cookie value for ``session_id``."""
        return self.signer.sign(session_id)

    def save(self, session: Session) -> Outcome:
        """Write what the request changed, as one atomic change set.

        Raises :class:`SessionTooLarge` before writing anything when the
        session has outgrown ``max_size``. A lock taken in strict mode is
        released whatever happens.
        """
        try:
            return self._save(session)
        except StoreUnavailable:
            self.counters.add("store_errors")
            raise
        finally:
            self.release(session)

    def _save(self, session: Session) -> Outcome:
        if not session._loaded:
            return Outcome(delete_cookie=session._stale_cookie)
        record = session.record
        if (
            record is not None
            and session.session_id is not None
            and not session._touched
            and not session._deleted
            and not session._drop_old
            and len(session._data) > ("_permanent" in session._data)  # not empty
        ):
            # Read, not written (most requests): at most refresh the idle expiry.
            return self._refresh(session, record)
        data, loaded, pending = session._data, session._raw, session._pending
        changed: dict[str, bytes] = {}
        for key in session._touched:
            if key in data:
                raw = pending.get(key) or dumps(data[key], key)
                if loaded.get(key) != raw:
                    changed[key] = raw
        deleted = [key for key in session._deleted if key in loaded]
        had_cookie = session.session_id is not None or session._stale_cookie
        # Checked before any write, so that a refused save changes nothing at all.
        size = sum(len(v) for v in changed.values()) + sum(
            len(v) for k, v in loaded.items() if k in data and k not in changed
        )
        if size > self.settings.max_size:
            raise SessionTooLarge(size, self.settings.max_size)

        regenerating = session._regenerating
        if session._drop_old and session.session_id is not None:
            self._delete(session, announce=not regenerating)

        if not any(key != "_permanent" for key in data):
            # Nothing worth keeping: never store an empty session.
            if session.record is not None and session.session_id is not None:
                self._delete(session, announce=True)
            session.session_id = None
            session.record = None
            return Outcome(delete_cookie=had_cookie)

        now = time.time()
        record = session.record
        if record is None or session.session_id is None:
            fields = {key: changed.get(key) or loaded[key] for key in data}
            change = Change(
                set=fields,
                created_at=now,
                touched_at=now,
                expires_at=now + min(self.settings.idle_timeout, self.settings.absolute_timeout),
                owner=session._owner,
                meta=session.client_meta,
                ends_by=now + self.settings.absolute_timeout,
            )
            while True:
                session_id = new_id()
                key = store_key(session_id)
                if self.store.save(key, change, create=True):
                    break
            session.session_id = session_id
            session.record = Record(
                fields, now, now, change.expires_at, change.owner, dict(change.meta)
            )
            session._raw = dict(fields)
            session._pending.clear()
            session._touched.clear()
            session._deleted.clear()
            session._drop_old = session._regenerating = False
            self.counters.add("saves")
            self.counters.add("creates")
            signal = session_regenerated if regenerating else session_created
            signal.send(self.sender, session=session, fingerprint=key[:8])
            return Outcome(new_cookie=self.sign(session_id), alive=True)

        if not (changed or deleted):
            return self._refresh(session, record)
        ok = self.store.save(
            store_key(session.session_id),
            Change(
                set=changed, delete=deleted, touched_at=now, expires_at=self._expiry(record, now)
            ),
            create=False,
        )
        self.counters.add("saves")
        return self._saved(session, ok)

    def _delete(self, session: Session, *, announce: bool) -> None:
        """Delete the record under the session's current ID, and forget the ID."""
        assert session.session_id is not None
        old = store_key(session.session_id)
        self.store.delete(old)
        self.counters.add("deletes")
        if announce:
            session_destroyed.send(self.sender, session=session, fingerprint=old[:8])
        session.session_id = None

    def _expiry(self, record: Record, now: float) -> float:
        return min(
            now + self.settings.idle_timeout, record.created_at + self.settings.absolute_timeout
        )

    def _refresh(self, session: Session, record: Record) -> Outcome:
        """Move an unchanged session's idle expiry, if the last move is old enough."""
        now = time.time()
        if now - record.touched_at < self._refresh_after:
            return _ALIVE
        assert session.session_id is not None
        ok = self.store.touch(store_key(session.session_id), now, self._expiry(record, now))
        self.counters.add("touches")
        return self._saved(session, ok)

    def _saved(self, session: Session, ok: bool) -> Outcome:
        if not ok:
            # Cleared, revoked or expired by another request meanwhile: the
            # session is over, and this request must not bring it back.
            security_log.info(
                "session ended while a request was using it; its changes were dropped"
            )
            session.session_id = None
            session.record = None
            return Outcome(delete_cookie=True)
        return _ALIVE
