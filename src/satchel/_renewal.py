"""Renewal: a session whose ID is older than ``SATCHEL_RENEWAL_INTERVAL`` gets a new one.

The OWASP Session Management Cheat Sheet's renewal timeout: an ID seen by an
attacker (a log, a shared machine) stops working within one interval however
active the session is, without logging anyone out. The next request after the
interval moves the session to a new ID (a ``regenerate()``, reason
``"renewal"``), data and owner kept.

The new ID is a MAC of the old one under the app's key
(:meth:`~satchel.signing.CookieSigner.renewed_ids`), so the requests a browser
sends at once all meet in one session: two workers renewing it at once compute
the same ID (the second's move is refused and it joins the first's), and a
request still carrying the old cookie within ``SATCHEL_RENEWAL_GRACE`` seconds
of the renewal joins the renewed session, applies its changes there (merged as
any overlapping request's are) and takes home the new cookie. After the grace
the old ID names nothing. When the ID was issued is kept in the record's meta.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from ._ops import LifeSteps, Load, Sleep
from ._state import State
from .signing import store_key
from .stores.base import Record

if TYPE_CHECKING:
    from ._settings import Settings

__all__ = [
    "ISSUED_AT",
    "due",
    "due_now",
    "issued",
    "issued_at",
    "join_steps",
    "rejoin_steps",
    "renew_if_due",
]

#: The ``meta`` entry holding when the session's current ID was issued (UNIX time).
ISSUED_AT = "id_issued_at"


def issued_at(record: Record) -> float:
    """When ``record``'s ID was issued: its meta says, else (a record stored before renewal
    was on) when the session began."""
    text = record.meta.get(ISSUED_AT)
    if text is not None:
        try:
            return float(text)
        except ValueError:
            pass
    return record.created_at


def due(settings: Settings, record: Record, now: float) -> bool:
    """Whether ``record``'s ID is old enough to renew."""
    interval = settings.renewal_interval
    return interval is not None and now - issued_at(record) >= interval


def due_now(settings: Settings, record: Record) -> bool:
    """Whether ``record``'s ID is due for renewal now (the read-only fast path asks)."""
    return due(settings, record, time.time())


def renew_if_due(settings: Settings, state: State) -> None:
    """Mark a stored session whose ID is due for renewal to move at this save."""
    record = state.origin
    if (
        record is None
        or state.record is None
        or state.session_id is None
        or state.regenerating
        or state.drop_old
        or not due(settings, record, time.time())
    ):
        return
    state.regenerating = True
    state.reason = "renewal"
    state.record = None


#: When the renewed session is not there yet, look again after these pauses (seconds): on
#: a Redis Cluster a move is two steps (the old slot's, then the new one's), and a request
#: may arrive between them.
JOIN_RETRIES = (0.005, 0.02, 0.05)


def join_steps(lifecycle: Any, state: State) -> LifeSteps[Record | None]:
    """The session the cookie's ID was renewed into, if that happened within the grace:
    it becomes this request's session (the response sends its cookie); else ``None``."""
    old = state.session_id
    assert old is not None
    grace = lifecycle.settings.renewal_grace
    candidates = lifecycle.signer.renewed_ids(old)
    store = getattr(lifecycle.store, "wrapped", lifecycle.store)
    retries = JOIN_RETRIES if getattr(store, "moves_in_two_steps", False) else ()
    for pause in (*retries, None):
        for candidate in candidates:
            record: Record | None = yield Load(store_key(candidate))
            if record is None:
                continue
            if time.time() - issued_at(record) > grace:
                return None  # renewed too long ago: the old ID is dead
            state.session_id = candidate
            state.cookie = None
            state.resign = True  # the response sends the renewed session's cookie
            lifecycle.counters.add("renewal_joins")
            return record
        if pause is not None:
            yield Sleep(pause)
    return None


def rejoin_steps(lifecycle: Any, state: State) -> LifeSteps[bool]:
    """After a save found the record gone: whether another request renewed it (within
    the grace), in which case this request now holds the renewed session."""
    if lifecycle.settings.renewal_interval is None or state.session_id is None:
        return False
    record = yield from join_steps(lifecycle, state)
    if record is None:
        return False
    state.record = state.origin = record
    state.regenerating = False
    state.reason = "manual"
    return True


def issued(settings: Settings, now: float) -> float | None:
    """When a new ID is issued, as its record keeps it: only while renewal is on."""
    return None if settings.renewal_interval is None else now
