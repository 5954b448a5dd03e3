"""The session object views use: a dict that loads lazily and tracks its changes.

Nothing is read from the store until a view first touches the session, and
nothing is written unless something changed. Values handed out that could be
changed in place (lists, dicts, …) are compared with what was loaded when the
request ends, so ``session["cart"].append(item)`` is saved without
``session.modified = True``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, MutableMapping
from typing import TYPE_CHECKING, Any, cast
from uuid import UUID

from markupsafe import Markup

from .errors import SerializationError
from .serialization import dumps, loads
from .stores.base import Record

if TYPE_CHECKING:
    from ._manager import Lifecycle

__all__ = ["AsyncSession", "Session", "owner_text"]

_IMMUTABLE = frozenset({str, int, float, bool, type(None), bytes, Markup, UUID})
_MISSING: Any = object()


def owner_text(owner: object) -> str:
    """An owner as every store files it: a ``str`` as is, an ``int`` as its decimal text.

    One rule at every entry point (``regenerate(owner=...)``, listing,
    revoking), so ``revoke_all(1)`` finds what ``regenerate(owner=1)`` stored.
    Anything else (``None`` included) raises :class:`TypeError`.
    """
    kind = type(owner)
    if kind is str:
        return owner  # type: ignore[return-value]
    if isinstance(owner, int) and not isinstance(owner, bool):
        return str(int(owner))
    if isinstance(owner, str):  # a StrEnum member, say
        return str.__str__(owner)
    raise TypeError(f"an owner is a str or an int, not {kind.__name__}: {owner!r}")


class Session(MutableMapping[str, Any]):
    """Session data for one request, read from the store on first use.

    A mutable mapping like Flask's own session; every method goes through the
    lazy load and the change tracking. ``dict(session)`` gives a plain copy.
    """

    # An old cookie to import on first use, and the claim of one imported
    # (see satchel.migration); class defaults, so most requests never set them.
    _migrating: Any = None
    _claim: tuple[str, float] | None = None
    # The verified cookie the session was opened from: resent as it is when only its
    # lifetime must move (the same ID signed with the same key gives the same value).
    _cookie: str | None = None

    def __init__(self, manager: Lifecycle, session_id: str | None) -> None:
        self._data: dict[str, Any] = {}
        self._manager: Any = manager
        #: The verified ID from the cookie, or the new one once saved.
        self.session_id = session_id
        self.record: Record | None = None
        # The record as loaded; None once clear() ended it.
        self._origin: Record | None = None
        self.accessed = False
        self._loaded = session_id is None
        self._raw: dict[str, bytes] = {}
        self._touched: set[str] = set()
        # Serialised form of values set in this request that cannot change in place.
        self._pending: dict[str, bytes] = {}
        self._deleted: set[str] = set()
        # Keys absent at load, and whether their first value here was an empty list or dict.
        self._fresh: dict[str, bool] = {}
        # Loaded keys given a new object (session[k] = [...]) rather than changed in place.
        self._replaced: set[str] = set()
        # clear() was called: the stored record is deleted whatever it holds.
        self._drop_old = False
        # regenerate() was called on a stored session: it moves to a new ID.
        self._regenerating = False
        # A save wrote this request's changes (``modified`` stays true after it).
        self._wrote = False
        self._stale_cookie = False
        self._owner: str | None = None
        #: Client details stored when the record is created (user agent, IP).
        self.client_meta: dict[str, str] = {}
        self._lock_held: tuple[str, str] | None = None
        self._locked_at = 0.0
        # The cookie was signed with a fallback key: send it signed with the current one.
        self._resign = False

    # -- loading -------------------------------------------------------------

    def _load(self) -> None:
        self.accessed = True
        if self._loaded:
            return
        self._manager.fill(self)

    def _fill(self, record: Record | None) -> Exception | None:
        """Take the data of ``record`` (just loaded); the error if it does not read back."""
        self._loaded = True
        if record is None:
            # A genuine ID whose record is gone: expire the cookie. An old cookie
            # that imported nothing is left alone, as any invalid cookie is: the
            # browser may hold a new one by now, from an overlapping request.
            self._stale_cookie = self.session_id is not None
            return None
        try:
            values = {name: loads(raw) for name, raw in record.fields.items()}
        except Exception as exc:  # whatever it is, it must not fail every request for good
            self._stale_cookie = True
            return exc
        self.record = self._origin = record
        self._owner = record.owner
        self._raw = dict(record.fields)
        self._data.update(values)
        return None

    def _settle(self) -> None:
        """What the last save stored becomes what was loaded: a later save writes only
        what changes after it (a websocket saves at its accept and again at its end)."""
        pending = self._pending
        self._raw = {
            key: pending.get(key) or dumps(value, key) for key, value in self._data.items()
        }
        self._touched.clear()
        self._deleted.clear()
        pending.clear()
        self._fresh.clear()
        self._replaced.clear()
        self._wrote = False

    def _merged(self, key: str, value: Any) -> None:
        """Hold ``value``, what a save merged with an overlapping request's, under ``key``."""
        self._data.__setitem__(key, value)

    def _lock_wanted(self) -> bool:
        """Whether this request asks for strict mode; adapters override it."""
        return False

    def _on_lock(self) -> None:
        """Called once the session's lock is held; adapters note it for clean-up."""

    # -- reading -------------------------------------------------------------

    def __getitem__(self, key: str) -> Any:
        self._load()
        value = self._data.__getitem__(key)
        if type(value) not in _IMMUTABLE:
            self._touched.add(key)
        return value

    def get(self, key: str, default: Any = None) -> Any:
        """Return ``self[key]`` if present, else ``default``."""
        self._load()
        value = self._data.get(key, _MISSING)
        if value is _MISSING:
            return default
        if type(value) not in _IMMUTABLE:
            self._touched.add(key)
        return value

    def __contains__(self, key: object) -> bool:
        self._load()
        return self._data.__contains__(key)

    def __len__(self) -> int:
        self._load()
        return len(self._data)

    def __iter__(self) -> Iterator[str]:
        self._load()
        return iter(self._data)

    def __bool__(self) -> bool:
        return len(self) > 0

    def __eq__(self, other: object) -> bool:
        self._load()
        return self._data == (other._data if isinstance(other, Session) else other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        if not self._loaded:
            return f"<{type(self).__name__} (not loaded)>"
        return f"<{type(self).__name__} {self._data!r}>"

    def keys(self) -> Any:
        """The keys, as ``dict.keys`` gives them."""
        self._load()
        return self._data.keys()

    def values(self) -> Any:
        """The values; each may be changed in place and is saved if it is."""
        self._touch_all()
        return self._data.values()

    def items(self) -> Any:
        """The items; each value may be changed in place and is saved if it is."""
        self._touch_all()
        return self._data.items()

    def copy(self) -> dict[str, Any]:
        """A plain ``dict`` with the same items (a shallow copy)."""
        self._touch_all()
        return dict(self._data.items())

    def _touch_all(self) -> None:
        self._load()
        self._touched.update(self._data.keys())

    # -- writing -------------------------------------------------------------

    def __setitem__(self, key: str, value: Any) -> None:
        if type(key) is not str:
            if not isinstance(key, str):
                raise SerializationError(repr(key), type(key), "session keys must be str")
            key = str.__str__(key)  # a StrEnum member, say: filed under its text, as Flask does
        if not key.isascii():  # stores file keys as UTF-8, which a lone surrogate is not
            try:
                key.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise SerializationError(repr(key), str, "the key is not valid text") from exc
        if "\x00" in key:  # PostgreSQL's text cannot hold NUL: refused alike on every store
            raise SerializationError(repr(key), str, "a session key cannot contain NUL (\\x00)")
        raw = dumps(value, key)  # fail here, at the assignment, not when the view ends
        self._load()
        held = self._data.get(key, _MISSING)
        if held is _MISSING and key not in self._raw and key not in self._fresh:
            # A new key's first value: an empty container (setdefault(key, [])) merges
            # with an overlapping request's, anything else replaces it (see _merge).
            self._fresh[key] = type(value) in (list, dict) and not value
        elif held is not value and key in self._raw:
            self._replaced.add(key)  # a new object, not the loaded one changed in place
        self._data.__setitem__(key, value)
        if type(value) in _IMMUTABLE:
            self._pending[key] = raw
        else:
            self._pending.pop(key, None)
        self._touched.add(key)
        self._deleted.discard(key)

    def __delitem__(self, key: str) -> None:
        self._load()
        self._data.__delitem__(key)
        self._touched.discard(key)
        self._pending.pop(key, None)
        self._deleted.add(key)

    def setdefault(self, key: str, default: Any = None) -> Any:
        """Return ``self[key]``, first storing ``default`` there if it is missing."""
        self._load()
        if not self._data.__contains__(key):
            self[key] = default
        return self[key]

    def pop(self, key: str, default: Any = _MISSING) -> Any:
        """Remove ``key`` and return its value (or ``default`` if missing)."""
        self._load()
        if not self._data.__contains__(key):
            if default is _MISSING:
                raise KeyError(key)
            return default
        value = self._data.__getitem__(key)
        del self[key]
        return value

    def popitem(self) -> tuple[str, Any]:
        """Remove and return the last inserted item."""
        self._load()
        key = next(reversed(self._data.keys()))
        return key, self.pop(key)

    def update(self, *args: Any, **kwargs: Any) -> None:
        """Set each item of a mapping, an iterable of pairs, and keyword arguments."""
        items = dict(*args, **kwargs)
        for key, value in cast(Mapping[str, Any], items).items():
            self[key] = value

    def __ior__(self, other: Any) -> Session:
        self.update(other)
        return self

    def _forget(self) -> None:
        """Drop everything held, as if nothing had been loaded: what :meth:`clear` and a
        revoke of this session (:meth:`_ended_elsewhere`) share."""
        self.accessed = True
        if self._migrating is not None:
            # Never imported, and must not be later: the old cookie is expired instead.
            self._migrating = None
            self._stale_cookie = True
        self._loaded = True
        for held in (self._data, self._raw, self._pending, self._fresh):
            held.clear()
        self._touched.clear()
        self._deleted.clear()
        self._replaced.clear()
        self.record = self._origin = None
        self._owner = None
        self._regenerating = False  # ending the session, whatever came before

    def clear(self) -> None:
        """Forget everything: the stored record is deleted when the request ends.

        The old cookie is dead from then on; anything stored after this call
        goes into a new session with a new ID.
        """
        self._forget()
        self._drop_old = self.session_id is not None or self._drop_old

    def _ended_elsewhere(self) -> None:
        """The stored record was ended by a revoke this request made (its own session, or
        all of its owner's): forget it at once, as a clear() would, but with nothing left
        to delete. The view sees an empty session, the response expires the cookie, and
        anything stored afterwards goes into a new session with a new ID."""
        self._forget()
        self._drop_old = False
        self._stale_cookie = self.session_id is not None or self._stale_cookie
        self.session_id = None

    def regenerate(self, owner: str | int | None = None) -> None:
        """Keep the data but move it to a new ID, deleting the old record.

        Call it whenever privilege changes (at login), so an ID an attacker
        planted or saw before is worthless afterwards. ``owner`` (a user ID: a
        ``str``, or an ``int`` stored as its decimal text; anything else raises
        :class:`TypeError` here) ties the session to that user, for listing and
        revoking a user's sessions; without it the session keeps the owner it
        had. The move is one atomic step in the store: if the session was
        cleared, revoked or expired meanwhile, nothing is brought back under the
        new ID. The creation time moves with the data, so the absolute timeout
        still counts from the session's start.
        """
        if owner is not None:
            owner = owner_text(owner)
        self._load()
        if owner is not None:
            self._owner = owner
        self._regenerating = self._origin is not None
        self.record = None

    # -- state ----------------------------------------------------------------

    @property
    def loaded(self) -> bool:
        """Whether the store has been read (or there was nothing to read)."""
        return self._loaded

    @property
    def owner(self) -> str | None:
        """The user this session belongs to, as given to :meth:`regenerate`."""
        self._load()
        return self._owner

    @property
    def new(self) -> bool:
        """True when no stored record backs this session (yet)."""
        self._load()
        return self.record is None

    @property
    def modified(self) -> bool:
        """True when the request set, deleted or may have changed something.

        It stays true after the save, as Flask's own session does. Setting it to
        True makes the save compare every value, as a view that changed
        something the tracking cannot see would want.
        """
        return bool(
            self._touched or self._deleted or self._drop_old or self._regenerating or self._wrote
        )

    @modified.setter
    def modified(self, value: bool) -> None:
        if value:
            self._touch_all()

    @property
    def permanent(self) -> bool:
        """Whether the cookie outlives the browser (``PERMANENT_SESSION_LIFETIME``)."""
        self._load()
        return bool(self._data.get("_permanent", False))

    @permanent.setter
    def permanent(self, value: bool) -> None:
        self["_permanent"] = bool(value)


class AsyncSession(Session, dict[str, Any]):  # type: ignore[misc]
    """A session of an ASGI app: loaded before the view runs, since it cannot wait then.

    The adapter awaits the store before calling the view (only when the
    request carries a session cookie), so every method works as on
    :class:`Session`; using one that was never loaded is a bug in the caller
    and raises :class:`RuntimeError` rather than blocking the event loop.

    It is also a ``dict``, as Starlette's own ``request.session`` is, holding
    the same items: ``JSONResponse(request.session)``, ``isinstance(..., dict)``
    and C code that reads a dict directly (``json``, ``orjson``) see the data.
    """

    def _fill(self, record: Record | None) -> Exception | None:
        error = super()._fill(record)
        dict.clear(self)
        dict.update(self, self._data)
        return error

    def _merged(self, key: str, value: Any) -> None:
        super()._merged(key, value)
        dict.__setitem__(self, key, value)

    def __setitem__(self, key: str, value: Any) -> None:
        super().__setitem__(key, value)
        dict.__setitem__(self, key, value)

    def __delitem__(self, key: str) -> None:
        super().__delitem__(key)
        dict.__delitem__(self, key)

    def __ne__(self, other: object) -> bool:
        return not self.__eq__(other)

    def _forget(self) -> None:
        super()._forget()
        dict.clear(self)

    #: ``name=`` of the cookie this session came in (and goes out) under.
    _cookie_prefix = b"session="

    def _load(self) -> None:
        self.accessed = True
        if not self._loaded:
            raise RuntimeError(
                "this session was not loaded: await its manager's fill() before using it"
            )
