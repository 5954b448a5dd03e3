"""The session object views use: a dict that loads lazily and tracks its changes.

Nothing is read from the store until a view first touches the session, and
nothing is written unless something changed. Values handed out that could be
changed in place (lists, dicts, …) are compared with what was loaded when the
request ends, so ``session["cart"].append(item)`` is saved without
``session.modified = True``.
"""

from __future__ import annotations

import time
from collections.abc import Generator, Iterator, Mapping, MutableMapping
from typing import Any, Protocol, cast
from uuid import UUID

from markupsafe import Markup

from ._state import State, authenticated_at
from .errors import NotLoggedIn, SerializationError
from .serialization import dumps
from .stores.base import Record


class Loader(Protocol):
    """What a session needs of the lifecycle that made it: its lazy load, and the check
    of a login against the owner limit."""

    def fill(self, session: Session) -> Any:
        """Load ``session`` and hand it its data."""

    def check_login(self, session: Session, owner: str) -> Any:
        """Raise ``TooManySessions`` if ``owner`` may not log in (sync; async: awaitable)."""


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
    Its bookkeeping lives in :attr:`state`, which the lifecycle drives.
    """

    def __init__(self, manager: Loader, session_id: str | None) -> None:
        #: The lifecycle's bookkeeping for this request (:class:`satchel._state.State`):
        #: what was loaded, what changed, what the cookie must do. Views never need it.
        self.state = State(session_id)
        self._data = self.state.data  # the same dict, for the hot paths below
        self._manager: Any = manager

    # -- loading -------------------------------------------------------------

    def _load(self) -> None:
        state = self.state
        state.accessed = True
        if state.loaded:
            return
        self._manager.fill(self)

    def _lock_wanted(self) -> bool:
        """Whether this request asks for strict mode; adapters override it."""
        return False

    def _on_lock(self) -> None:
        """Called once the session's lock is held; adapters note it for clean-up."""

    # -- what the lifecycle reads, as attributes ---------------------------------

    @property
    def session_id(self) -> str | None:
        """The verified ID from the cookie, or the new one once saved."""
        return self.state.session_id

    @session_id.setter
    def session_id(self, value: str | None) -> None:
        self.state.session_id = value

    @property
    def record(self) -> Record | None:
        """The stored record behind the session, as loaded or last saved."""
        return self.state.record

    @record.setter
    def record(self, value: Record | None) -> None:
        self.state.record = value

    @property
    def accessed(self) -> bool:
        """Whether the view used the session (a response that did varies on the cookie)."""
        return self.state.accessed

    @accessed.setter
    def accessed(self, value: bool) -> None:
        self.state.accessed = value

    @property
    def client_meta(self) -> dict[str, str]:
        """Client details stored when the record is created (user agent, IP)."""
        state = self.state
        held = state.client_meta
        if not isinstance(held, dict):  # the shared empty default: this session's own now
            held = state.client_meta = {}
        return held

    @client_meta.setter
    def client_meta(self, value: dict[str, str]) -> None:
        self.state.client_meta = value

    # -- reading -------------------------------------------------------------

    def __getitem__(self, key: str) -> Any:
        self._load()
        value = self._data.__getitem__(key)
        if type(value) not in _IMMUTABLE:
            self.state.touched.add(key)
        return value

    def get(self, key: str, default: Any = None) -> Any:
        """Return ``self[key]`` if present, else ``default``."""
        self._load()
        value = self._data.get(key, _MISSING)
        if value is _MISSING:
            return default
        if type(value) not in _IMMUTABLE:
            self.state.touched.add(key)
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
        if not self.state.loaded:
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
        self.state.touched.update(self._data.keys())

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
        state = self.state
        held = self._data.get(key, _MISSING)
        if held is _MISSING and key not in state.raw and key not in state.fresh:
            # A new key's first value: an empty container (setdefault(key, [])) merges
            # with an overlapping request's, anything else replaces it (see _merge).
            state.fresh[key] = type(value) in (list, dict) and not value
        elif held is not value and key in state.raw:
            state.replaced.add(key)  # a new object, not the loaded one changed in place
        self._data.__setitem__(key, value)
        if type(value) in _IMMUTABLE:
            state.pending[key] = raw
        else:
            state.pending.pop(key, None)
        state.touched.add(key)
        state.deleted.discard(key)

    def __delitem__(self, key: str) -> None:
        self._load()
        self._data.__delitem__(key)
        state = self.state
        state.touched.discard(key)
        state.pending.pop(key, None)
        state.deleted.add(key)

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

    def clear(self) -> None:
        """Forget everything: the stored record is deleted when the request ends.

        The old cookie is dead from then on; anything stored after this call
        goes into a new session with a new ID.
        """
        state = self.state
        state.forget()
        state.drop_old = state.session_id is not None or state.drop_old

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

        Under ``SATCHEL_MAX_SESSIONS_POLICY = "refuse"`` a login (``owner``) that
        would give the owner more than ``SATCHEL_MAX_SESSIONS_PER_OWNER`` sessions
        raises :class:`~satchel.errors.TooManySessions` here, changing nothing.
        A login records when it happened (:attr:`authenticated_at`).
        """
        if owner is not None:
            owner = owner_text(owner)
        self._load()
        if owner is not None:
            self._manager.check_login(self, owner)
        self._regenerate(owner, "manual" if owner is None else "login")

    def _regenerate(self, owner: str | None, reason: str) -> None:
        state = self.state
        if owner is not None:
            state.owner = owner
        if reason in ("login", "reauthentication"):
            state.authenticated = time.time()
        if state.reason not in ("login", "reauthentication"):  # a login's reason holds
            state.reason = reason
        state.regenerating = state.origin is not None
        state.record = None

    def reauthenticated(self) -> Any:
        """Record that the owner just proved who they are again (a password typed for a
        sensitive action): :attr:`authenticated_at` becomes now, and the ID changes.

        Raises :class:`~satchel.errors.NotLoggedIn` on a session no login owns.
        """
        self._load()
        if self.state.owner is None:
            raise NotLoggedIn("reauthenticated() needs a session a login owns")
        self._regenerate(None, "reauthentication")

    def authenticated_within(self, max_age: float) -> bool:
        """Whether the owner logged in or re-authenticated no more than ``max_age``
        seconds ago: what a sensitive action asks (an anonymous session never is)."""
        when = self.authenticated_at
        return when is not None and time.time() - when <= max_age

    @property
    def authenticated_at(self) -> float | None:
        """When the owner logged in or last re-authenticated (a UNIX time); ``None`` for a
        session no login owns, or one logged in before satchel recorded it."""
        self._load()
        state = self.state
        if state.owner is None:
            return None
        if state.authenticated is not None:
            return state.authenticated
        origin = state.origin
        return None if origin is None else authenticated_at(origin.meta)

    # -- state ----------------------------------------------------------------

    @property
    def loaded(self) -> bool:
        """Whether the store has been read (or there was nothing to read)."""
        return self.state.loaded

    @property
    def owner(self) -> str | None:
        """The user this session belongs to, as given to :meth:`regenerate`."""
        self._load()
        return self.state.owner

    @property
    def new(self) -> bool:
        """True when no stored record backs this session (yet)."""
        self._load()
        return self.state.record is None

    @property
    def modified(self) -> bool:
        """True when the request set, deleted or may have changed something.

        It stays true after the save, as Flask's own session does. Setting it to
        True makes the save compare every value, as a view that changed
        something the tracking cannot see would want.
        """
        state = self.state  # read here rather than through another call: a hot path
        return bool(
            state.touched or state.deleted or state.drop_old or state.regenerating or state.wrote
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


class _Checked:
    """What an async session's ``regenerate()`` returns: awaiting it checks the login."""

    __slots__ = ("_owner", "_session")

    def __init__(self, session: Session, owner: str | None) -> None:
        self._session, self._owner = session, owner

    def __await__(self) -> Generator[Any, None, None]:
        return self._check().__await__()  # a coroutine made only when awaited

    async def _check(self) -> None:
        session, owner = self._session, self._owner
        if owner is None:
            return
        try:
            await session._manager.check_login(session, owner)
        except BaseException:
            state = session.state  # refused: the session stays as it was
            state.regenerating = False
            state.owner = state.origin.owner if state.origin is not None else None
            state.record = state.origin
            state.authenticated = None
            state.reason = "manual"
            raise


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

    def __init__(self, manager: Loader, session_id: str | None) -> None:
        super().__init__(manager, session_id)
        self.state.mirror = self  # the dict this session also is, kept equal to its data

    def __setitem__(self, key: str, value: Any) -> None:
        super().__setitem__(key, value)
        dict.__setitem__(self, key, value)

    def __delitem__(self, key: str) -> None:
        super().__delitem__(key)
        dict.__delitem__(self, key)

    def __ne__(self, other: object) -> bool:
        return not self.__eq__(other)

    def regenerate(self, owner: str | int | None = None) -> _Checked:  # type: ignore[override]
        """As :meth:`Session.regenerate`; an async view awaits it for a login
        (``await session.regenerate(owner=...)``) to have the owner limit's "refuse"
        policy raise :class:`~satchel.errors.TooManySessions` there. Not awaited,
        the login is still checked, exactly, when the session is saved (and a
        refused one is not stored)."""
        if owner is not None:
            owner = owner_text(owner)
        self._load()
        self._regenerate(owner, "manual" if owner is None else "login")
        return _Checked(self, owner)

    def _load(self) -> None:
        state = self.state
        state.accessed = True
        if not state.loaded:
            raise RuntimeError(
                "this session was not loaded: await its manager's fill() before using it"
            )
