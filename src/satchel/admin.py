"""Operating on stored sessions: list them, a user's or all, revoke them, re-encrypt them.

A session is named here by an opaque *reference*, the key its store files it
under (a SHA-256 hash of its ID). A reference can revoke a session but cannot
be turned back into a cookie, so it is safe to show, log and put in a URL.
These functions need a store that can list (:class:`~satchel.stores.ListingStore`);
all built-in stores can.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ._ops import LifeSteps, Records, Revoke
from ._state import authenticated_at
from .errors import ConfigError, StoreUnavailable
from .session import owner_text
from .signals import security_log, session_revoked
from .signing import store_key
from .stores.base import ListingStore, Record, SaveResult

if TYPE_CHECKING:
    from ._manager import Lifecycle, SessionManager
    from .session import Session
    from .stores.encrypted import EncryptedStore

__all__ = [
    "RekeyReport",
    "SessionInfo",
    "list_sessions",
    "rekey",
    "revoke",
    "revoke_all",
    "stats",
]


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """What an operator or a user may see of one live session: never its ID or data."""

    #: The opaque reference to pass to :func:`revoke`.
    reference: str
    owner: str | None
    created_at: float
    last_seen: float
    expires_at: float
    #: The client's user agent and IP, when ``SATCHEL_TRACK_CLIENT`` was on.
    user_agent: str | None
    ip: str | None
    #: Whether this is the session of the request asking.
    current: bool
    #: How many keys the session holds.
    keys: int
    #: When its owner logged in or last re-authenticated (``None``: anonymous, or unknown).
    authenticated_at: float | None = None

    @classmethod
    def of(cls, reference: str, record: Record, current: str | None = None) -> SessionInfo:
        """Describe ``record``, filed under ``reference``."""
        return cls(
            reference=reference,
            owner=record.owner,
            created_at=record.created_at,
            last_seen=record.touched_at,
            expires_at=record.expires_at,
            user_agent=record.meta.get("user_agent"),
            ip=record.meta.get("ip"),
            current=reference == current,
            keys=len(record.fields),
            authenticated_at=authenticated_at(record.meta) if record.owner is not None else None,
        )


def _listing(manager: SessionManager) -> ListingStore:
    store = manager.store
    if not isinstance(store, ListingStore):
        raise ConfigError(f"{store!r} cannot list its sessions")
    return store


def current_reference(session: Session | None) -> str | None:
    """The reference of ``session``, if it is stored."""
    if session is None or session.state.session_id is None:
        return None
    return store_key(session.state.session_id)


def records(
    manager: SessionManager, owner: str | int | None = None
) -> Iterator[tuple[str, Record]]:
    """Every live ``(reference, record)``, or only ``owner``'s (a ``str`` or an ``int``)."""
    return _listing(manager).records(None if owner is None else owner_text(owner))


def _require_listing(manager: Lifecycle) -> None:
    """Refuse a store that cannot list (sync or async, as the manager's protocol says)."""
    if not isinstance(manager.store, manager._listing_protocol):
        raise ConfigError(f"{manager.store!r} cannot list its sessions")


def _records_steps(
    manager: Lifecycle, owner: str | int | None
) -> LifeSteps[list[tuple[str, Record]]]:
    _require_listing(manager)
    found = yield Records(None if owner is None else owner_text(owner))
    return list(found)


def list_sessions_steps(
    manager: Lifecycle, owner: str | int | None = None, current: Session | None = None
) -> LifeSteps[list[SessionInfo]]:
    """The live sessions of ``owner`` (all of them when ``None``), most recent first."""
    mine = current_reference(current)
    found = yield from _records_steps(manager, owner)
    infos = [SessionInfo.of(ref, record, mine) for ref, record in found]
    return sorted(infos, key=lambda info: info.last_seen, reverse=True)


def _announce(
    manager: Lifecycle,
    by: str,
    ended: int,
    references: list[str],
    owner: str | None,
    current: Session | None,
) -> None:
    """The ``session_revoked`` signal and a security log line, for a revoke that ended some."""
    if not ended:
        return
    security_log.info(
        "revoked %d session(s) (by %s)%s",
        ended,
        by,
        "" if not references else ": " + ", ".join(ref[:8] for ref in references),
    )
    session_revoked.send(
        manager.sender,
        session=current,
        fingerprint=references[0][:8] if len(references) == 1 else None,
        reference=references[0] if len(references) == 1 else None,
        references=references,
        owner=owner,
        by=by,
        count=ended,
    )


def revoke_steps(
    manager: Lifecycle, reference: str, current: Session | None = None, by: str = "user"
) -> LifeSteps[bool]:
    """End the session ``reference`` names at once; ``False`` if it was not there.

    A session that moved to a new ID (``regenerate()``) after its reference was
    read is followed and ended too. When ``reference`` is the requester's own
    session (``current``), the request goes on without it: the view sees an empty
    session and the response expires the cookie, on every adapter.
    """
    _require_listing(manager)
    ended = bool((yield Revoke((reference,))))
    if current is not None and current_reference(current) == reference:
        current.state.ended_elsewhere()
    _announce(manager, by, int(ended), [reference], None, current)
    return ended


def revoke_all_steps(
    manager: Lifecycle,
    owner: str | int,
    keep: Session | None = None,
    current: Session | None = None,
    by: str = "revoke_all",
) -> LifeSteps[int]:
    """End every session of ``owner`` except ``keep``'s; return how many ended.

    ``owner`` is a ``str`` or an ``int``, as given to ``regenerate(owner=...)``;
    anything else raises :class:`TypeError` (``None`` too: it would mean everyone).
    Every session of the owner that was live when the call began is over when it
    returns, whatever regenerates overlap it (see
    :meth:`~satchel.stores.ListingStore.revoke`). When the requester's own session
    (``current``, not kept) was one of them, the request goes on without it, as
    after :func:`revoke_steps` of it.
    """
    owner = owner_text(owner)
    _require_listing(manager)
    mine = current is not None and keep is None and current.state.session_id is not None
    if mine:
        assert current is not None
        if not current.state.loaded:  # a lazily loaded (Flask) session: whose is it?
            yield from manager._fill_steps(current)
        mine = current.state.record is not None and current.state.owner == owner
    ended: int = yield Revoke((), owner, current_reference(keep))
    if mine:
        assert current is not None
        current.state.ended_elsewhere()
    _announce(manager, by, ended, [], owner, current)
    return ended


def list_sessions(
    manager: SessionManager, owner: str | int | None = None, current: Session | None = None
) -> list[SessionInfo]:
    """The live sessions of ``owner`` (all of them when ``None``), most recent first."""
    return manager.run(list_sessions_steps(manager, owner, current))


def revoke(
    manager: SessionManager, reference: str, current: Session | None = None, by: str = "user"
) -> bool:
    """End the session ``reference`` names at once; ``False`` if it was not there.

    See :func:`revoke_steps` for ``current``; ``by`` is what the ``session_revoked``
    signal says ended it (``"user"``, ``"admin"``).
    """
    return manager.run(revoke_steps(manager, reference, current, by))


def revoke_all(
    manager: SessionManager,
    owner: str | int,
    keep: Session | None = None,
    current: Session | None = None,
    by: str = "revoke_all",
) -> int:
    """End every session of ``owner`` except ``keep``'s; return how many ended.

    ``owner`` is a ``str`` or an ``int``, as given to ``regenerate(owner=...)``;
    anything else raises :class:`TypeError` (``None`` too: it would mean everyone).
    See :func:`revoke_all_steps` for ``current``.
    """
    return manager.run(revoke_all_steps(manager, owner, keep, current, by))


def stats(manager: Lifecycle) -> dict[str, int]:
    """This process's counters (see :class:`satchel.signals.Counters`), and, with a
    Redis store's record cache on, the cache's own as ``cache_<name>``."""
    found = manager.counters.snapshot()
    cache_stats = getattr(manager.store, "cache_stats", None)
    cache = cache_stats() if cache_stats is not None else None
    if cache is not None:
        found.update({f"cache_{name}": value for name, value in cache.as_dict().items()})
    return found


@dataclass(frozen=True, slots=True)
class RekeyReport:
    """What :func:`rekey` did, record by record."""

    #: Records sealed again under the first key (or sealed for the first time).
    rewritten: int = 0
    #: Records already sealed under the first key: left as they were.
    current: int = 0
    #: Records that ended (expired, revoked) before they were reached.
    ended: int = 0
    #: Records that do not decrypt under any configured key (logged, left alone).
    unreadable: int = 0
    #: Times a record was read again because a request changed it during its rewrite.
    retried: int = 0


def rekey(
    manager: SessionManager,
    *,
    batch: int = 500,
    pause: float = 0.05,
    progress: Callable[[int, int], None] | None = None,
) -> RekeyReport:
    """Seal every stored session under the first of ``SATCHEL_ENCRYPTION_KEYS``.

    Works while the app serves traffic: each record is rewritten with its fields
    expected unchanged (a request that changed one meanwhile wins, and the record
    is read again and sealed again), its times kept. Records stored in clear are
    sealed too. ``batch`` records at a time, ``pause`` seconds between batches;
    ``progress(done, total)`` is called after each batch. Afterwards the keys
    after the first can be dropped.
    """
    from .stores.encrypted import EncryptedStore

    store = manager.store
    if not isinstance(store, EncryptedStore):
        raise ConfigError("rekey needs SATCHEL_ENCRYPTION_KEYS: the store is not encrypted")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ConfigError(f"batch must be a positive int, not {batch!r}")
    inner = store.store
    references = list(inner.references())
    counts = {"rewritten": 0, "current": 0, "ended": 0, "unreadable": 0, "retried": 0}
    for start in range(0, len(references), batch):
        for reference in references[start : start + batch]:
            outcome, retried = _rekey_one(store, reference)
            counts[outcome] += 1
            counts["retried"] += retried
        if progress is not None:
            progress(min(start + batch, len(references)), len(references))
        if pause > 0 and start + batch < len(references):
            time.sleep(pause)
    return RekeyReport(**counts)


def _rekey_one(store: EncryptedStore, reference: str) -> tuple[str, int]:
    """Seal one record under the first key: what became of it (a RekeyReport field), and
    how often it was read again."""
    from .stores._sealed import NotReadable

    for attempt in range(REKEY_ATTEMPTS):
        record = store.store.load(reference)
        if record is None:
            return "ended", attempt
        try:
            plan = store.sealer.resealed(reference, record)
        except NotReadable as error:
            security_log.warning("rekey: session %s left alone: %s", reference[:8], error)
            return "unreadable", attempt
        if plan is None:
            return "current", attempt
        change, after = plan
        result = store.store.save(reference, change, create=False)
        store.sealer.saved(reference, change, False, after, result)
        if result == SaveResult.SAVED:
            return "rewritten", attempt
        if result != SaveResult.CONFLICT:
            return "ended", attempt
        # A request changed a field meanwhile: read it again.
    raise StoreUnavailable(
        repr(store), f"rekey: session {reference[:8]} kept changing; run rekey again"
    )


#: How often rekey reads a record again when requests keep changing it.
REKEY_ATTEMPTS = 20
