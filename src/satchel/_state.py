"""One request's session bookkeeping: everything the lifecycle's decisions read lives here.

A :class:`State` holds what was loaded, what the request changed, and what the
cookie must do; :class:`~satchel.session.Session` is the mapping views use, a
view over its state, and :mod:`satchel._manager` (the lifecycle) reads and
writes the state. No other module touches either's insides: adapters read the
few facts they need (``loaded``, ``lock_held``, ``cookie``) through the state.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from .serialization import dumps, loads
from .stores.base import Record

__all__ = ["AUTHENTICATED_AT", "EMPTY_BUT", "State", "authenticated_at"]

#: A session holding nothing but these keys is not worth keeping.
EMPTY_BUT = frozenset({"_permanent"})
#: The client details of a session whose adapter records none.
_NO_CLIENT: Mapping[str, str] = MappingProxyType({})

#: The ``meta`` entry holding when the owner logged in or re-authenticated (UNIX time).
AUTHENTICATED_AT = "authenticated_at"


def authenticated_at(meta: Mapping[str, str]) -> float | None:
    """The login time a record's ``meta`` holds, or ``None``."""
    text = meta.get(AUTHENTICATED_AT)
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        return None


class State:
    """The bookkeeping of one request's session (see the module docstring)."""

    __slots__ = (
        "accessed", "authenticated", "claim", "client_meta", "cookie", "data", "deleted",
        "drop_old", "fresh", "loaded", "lock_held", "locked_at", "migrating", "mirror",
        "origin", "owner", "pending", "raw", "reason", "record", "regenerating", "replaced",
        "resign", "session_id", "stale_cookie", "touched", "wrote",
    )  # fmt: skip

    def __init__(self, session_id: str | None) -> None:
        # Slots, every one set here: each request reads most of them, and a slot is the
        # cheapest attribute to read.
        #: The verified ID from the cookie, or the new one once saved.
        self.session_id = session_id
        #: The store was read (or there was nothing to read).
        self.loaded = session_id is None
        #: The values the view sees, by key.
        self.data: dict[str, Any] = {}
        #: The serialised values as loaded (or as last saved).
        self.raw: dict[str, bytes] = {}
        #: Keys the view set, or read as a value that can change in place.
        self.touched: set[str] = set()
        #: Serialised values set in this request that cannot change in place.
        self.pending: dict[str, bytes] = {}
        #: Keys the view deleted.
        self.deleted: set[str] = set()
        #: Keys absent at load, and whether their first value was an empty list or dict.
        self.fresh: dict[str, bool] = {}
        #: Loaded keys given a new object (``session[k] = [...]``), not changed in place.
        self.replaced: set[str] = set()
        #: The stored record behind the session (``None``: new, or ended).
        self.record: Record | None = None
        #: The record as loaded; ``None`` once clear() ended it.
        self.origin: Record | None = None
        #: The view used the session (for ``Vary: Cookie``).
        self.accessed = False
        #: clear() was called: the stored record is deleted whatever it holds.
        self.drop_old = False
        #: regenerate() was called on a stored session: it moves to a new ID.
        self.regenerating = False
        #: Why the session gets a new ID ("login", "reauthentication", "renewal", "manual").
        self.reason = "manual"
        #: When this request logged the owner in or re-authenticated them (a UNIX time).
        self.authenticated: float | None = None
        #: A save wrote this request's changes (``modified`` stays true after it).
        self.wrote = False
        #: The browser holds a cookie that names no session: expire it.
        self.stale_cookie = False
        #: The user the session belongs to.
        self.owner: str | None = None
        #: Strict mode's lock, as ``(key, token)``, while this request holds it.
        self.lock_held: tuple[str, str] | None = None
        #: When the lock was taken (``time.monotonic()``).
        self.locked_at = 0.0
        #: The cookie was signed with a fallback key: send it signed with the current one.
        self.resign = False
        #: The verified cookie the session was opened from: resent as it is when only its
        #: lifetime must move (the same ID signed with the same key gives the same value).
        self.cookie: str | None = None
        #: An old cookie to import on first use (see :mod:`satchel.migration`).
        self.migrating: Any = None
        #: The claim of an old cookie this request imported, settled after its save.
        self.claim: tuple[str, float] | None = None
        #: A dict kept equal to ``data`` (an ASGI session is itself a dict), or ``None``.
        self.mirror: dict[str, Any] | None = None
        #: Client details stored when the record is created (user agent, IP); adapters
        #: that track clients assign a dict of their own, never change this shared one.
        self.client_meta: Mapping[str, str] = _NO_CLIENT

    # -- what the lifecycle does to the state ---------------------------------

    def fill(self, record: Record | None) -> Exception | None:
        """Take the data of ``record`` (just loaded); the error if it does not read back."""
        self.loaded = True
        if record is None:
            # A genuine ID whose record is gone: expire the cookie. An old cookie
            # that imported nothing is left alone, as any invalid cookie is: the
            # browser may hold a new one by now, from an overlapping request.
            self.stale_cookie = self.session_id is not None
            return None
        try:
            values = {name: loads(raw) for name, raw in record.fields.items()}
        except Exception as exc:  # whatever it is, it must not fail every request for good
            self.stale_cookie = True
            return exc
        self.record = self.origin = record
        self.owner = record.owner
        self.raw = dict(record.fields)
        self.data.update(values)
        mirror = self.mirror
        if mirror is not None:  # dict's own methods: the mirror's are the session's
            dict.clear(mirror)
            dict.update(mirror, self.data)
        return None

    def settle(self) -> None:
        """What the last save stored becomes what was loaded: a later save writes only
        what changes after it (a websocket saves at its accept and again at its end)."""
        pending = self.pending
        self.raw = {key: pending.get(key) or dumps(value, key) for key, value in self.data.items()}
        self.touched.clear()
        self.deleted.clear()
        pending.clear()
        self.fresh.clear()
        self.replaced.clear()
        self.wrote = False

    def merged(self, key: str, value: Any) -> None:
        """Hold ``value``, what a save merged with an overlapping request's, under ``key``."""
        self.data[key] = value
        if self.mirror is not None:
            dict.__setitem__(self.mirror, key, value)

    def forget(self) -> None:
        """Drop everything held, as if nothing had been loaded: what clear() and a revoke
        of this session share."""
        self.accessed = True
        if self.migrating is not None:
            # Never imported, and must not be later: the old cookie is expired instead.
            self.migrating = None
            self.stale_cookie = True
        self.loaded = True
        for held in (self.data, self.raw, self.pending, self.fresh):
            held.clear()
        self.touched.clear()
        self.deleted.clear()
        self.replaced.clear()
        self.record = self.origin = None
        self.owner = self.authenticated = None
        self.regenerating = False  # ending the session, whatever came before
        if self.mirror is not None:
            dict.clear(self.mirror)

    def ended_elsewhere(self) -> None:
        """A revoke this request made ended the stored record: forget it, with nothing
        left to delete; the response expires the cookie."""
        self.forget()
        self.drop_old = False
        self.stale_cookie = self.session_id is not None or self.stale_cookie
        self.session_id = None

    def born(self, session_id: str, record: Record) -> None:
        """The session was stored under a new ID (created or moved)."""
        self.session_id = session_id
        self.record = self.origin = record
        self.raw = dict(record.fields)
        self.pending.clear()
        self.touched.clear()
        self.deleted.clear()
        self.drop_old = self.regenerating = False
        self.reason = "manual"
        self.wrote = True

    def ended(self) -> None:
        """The stored session is gone (deleted, emptied or ended meanwhile)."""
        self.session_id = self.record = self.origin = None

    # -- what the lifecycle asks of it ----------------------------------------

    def unchanged(self) -> bool:
        """Loaded and only read (most requests): its save at most moves the idle expiry."""
        return (
            self.record is not None
            and self.session_id is not None
            and not self.touched
            and not self.deleted
            and not self.drop_old
            and len(self.data) > ("_permanent" in self.data)  # not empty
        )

    def empty(self) -> bool:
        """Nothing worth keeping: no owner, and no keys but those of :data:`EMPTY_BUT`.

        A session given an owner (a login) is kept with no data, so the login holds.
        """
        return self.owner is None and all(key in EMPTY_BUT for key in self.data)

    def changes(self) -> tuple[dict[str, bytes], list[str]]:
        """The fields this request changed (serialised, only those that differ from what
        was loaded) and the loaded keys it deleted."""
        data, loaded, pending = self.data, self.raw, self.pending
        changed: dict[str, bytes] = {}
        for key in self.touched:
            if key in data:
                raw = pending.get(key) or dumps(data[key], key)
                if loaded.get(key) != raw:
                    changed[key] = raw
        return changed, [key for key in self.deleted if key in loaded]
