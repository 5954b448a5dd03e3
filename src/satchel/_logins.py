"""Logins: when the owner last proved who they are, and at most N sessions per owner.

Both are rules of the lifecycle written once here, as steps (see
:mod:`satchel._ops`). The login time rides in the record's ``meta`` (set
whenever a record is created or moved, so no store learns anything new); the
owner limit is kept exact under overlap by serialising one owner's logins on
a lock of their own (strict mode's leased lock, under a key derived from the
owner): each login counts the owner's live sessions, ends the least recently
seen ones or refuses, and stores its own session before the next login counts.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

from ._leases import acquire_steps
from ._ops import LifeSteps, Records, Release, Revoke
from ._renewal import ISSUED_AT
from ._state import AUTHENTICATED_AT
from .errors import ConfigError, TooManySessions
from .signals import Counters, security_log, session_evicted
from .signing import store_key
from .stores.base import Record

if TYPE_CHECKING:
    from ._settings import Settings
    from ._state import State
    from .session import Session


class Lifecycle(Protocol):
    """What these rules read of the lifecycle running them."""

    settings: Settings
    counters: Counters
    sender: object
    store: Any


__all__ = [
    "EVICT_OLDEST",
    "POLICIES",
    "REFUSE",
    "stored_meta",
]

#: ``SATCHEL_MAX_SESSIONS_POLICY`` values: end the least recently seen session, or refuse.
EVICT_OLDEST = "evict-oldest"
REFUSE = "refuse"
POLICIES = (EVICT_OLDEST, REFUSE)


def stored_meta(
    state: State, carried: Mapping[str, str], issued: float | None = None
) -> Mapping[str, str]:
    """The ``meta`` a create or a move stores: this request's client details (or those
    ``carried`` from the record moved), the login time while an owner holds it, and
    when the new ID was ``issued`` (when renewal is on)."""
    meta = state.client_meta or carried
    if issued is not None:
        meta = {**meta, ISSUED_AT: repr(issued)}
    if state.owner is None:
        if AUTHENTICATED_AT in meta:
            meta = {k: v for k, v in meta.items() if k != AUTHENTICATED_AT}
        return meta
    when = state.authenticated
    if when is not None:
        return {**meta, AUTHENTICATED_AT: repr(when)}
    if AUTHENTICATED_AT in carried and meta.get(AUTHENTICATED_AT) != carried[AUTHENTICATED_AT]:
        return {**meta, AUTHENTICATED_AT: carried[AUTHENTICATED_AT]}
    return meta


def check_limit(limit: Any, policy: Any, names: tuple[str, str]) -> tuple[int | None, str]:
    """``limit`` and ``policy`` checked: a positive int or ``None``, and a known policy."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ConfigError(f"{names[0]} must be a positive int or None, not {limit!r}")
    if policy not in POLICIES:
        raise ConfigError(f"{names[1]} must be 'evict-oldest' or 'refuse', not {policy!r}")
    return limit, str(policy)


def owner_lock_key(owner: str) -> str:
    """The key whose lock serialises ``owner``'s logins (a hash, as session keys are)."""
    return store_key("\x00owner\x00" + owner)


def limited(lifecycle: Lifecycle, session: Session) -> bool:
    """Whether this save is a login the owner limit applies to."""
    state = session.state
    return (
        lifecycle.settings.max_sessions_per_owner is not None
        and state.reason == "login"
        and state.owner is not None
        and (state.regenerating or state.record is None)
    )


def _others(found: list[tuple[str, Record]], exclude: str | None) -> list[tuple[str, Record]]:
    return [(key, record) for key, record in found if key != exclude]


def precheck_steps(lifecycle: Lifecycle, session: Session, owner: str) -> LifeSteps[None]:
    """Under the "refuse" policy, raise :class:`TooManySessions` now, in the view, when
    ``owner`` already has the most sessions allowed (the save checks again, exactly)."""
    limit = lifecycle.settings.max_sessions_per_owner
    if limit is None or lifecycle.settings.max_sessions_policy != REFUSE:
        return
    session_id = session.state.session_id
    exclude = None if session_id is None else store_key(session_id)
    found = yield Records(owner)
    if len(_others(list(found), exclude)) >= limit:
        lifecycle.counters.add("refused_logins")
        raise TooManySessions(limit)


def admit_steps(lifecycle: Lifecycle, session: Session) -> LifeSteps[tuple[str, str]]:
    """Take the owner's login lock, then make room for one more session or refuse.

    Returns the lock, as ``(key, token)``, for the caller to release once its
    session is stored. Under "evict-oldest" the owner's least recently seen
    sessions end (revoked, so any move of theirs is followed) until the login
    fits; under "refuse", :class:`TooManySessions` is raised with the lock dropped.
    """
    settings = lifecycle.settings
    limit = settings.max_sessions_per_owner
    owner = session.state.owner
    assert limit is not None and owner is not None
    key, token = owner_lock_key(owner), secrets.token_hex(16)
    yield from acquire_steps(
        lifecycle.store, settings, lifecycle.counters, "login_waits", key, token
    )
    try:
        session_id = session.state.session_id
        exclude = None if session_id is None else store_key(session_id)
        others = _others(list((yield Records(owner))), exclude)
        excess = len(others) - limit + 1
        if excess > 0:
            if settings.max_sessions_policy == REFUSE:
                lifecycle.counters.add("refused_logins")
                raise TooManySessions(limit)
            others.sort(key=lambda item: item[1].touched_at)
            victims = [ref for ref, _ in others[:excess]]
            yield Revoke(victims)
            lifecycle.counters.add("evictions", len(victims))
            for ref in victims:
                security_log.info(
                    "session %s ended: a new login of its owner went over the limit of %d",
                    ref[:8],
                    limit,
                )
                session_evicted.send(
                    lifecycle.sender,
                    session=session,
                    fingerprint=ref[:8],
                    reference=ref,
                    owner=owner,
                )
    except Exception:  # refused, or the store failed: the next login may go on
        yield Release(key, token)
        raise
    return key, token
