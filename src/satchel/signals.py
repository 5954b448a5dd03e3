"""Signals sent at the turning points of a session's life, and the counters behind them.

Receivers connect with blinker, as with Flask's own signals; the sender is the
Flask app (or whatever the adapter passed), and the signals of one session carry its
``session`` (its ``session_id`` is the raw ID: never log it) and a
``fingerprint``, a short hash safe to log::

    from satchel.signals import session_created

    @session_created.connect_via(app)
    def count_new_session(app, session, fingerprint, **extra):
        ...

========================  ==============================================
signal                    sent when (arguments beyond ``session`` and
                          ``fingerprint``)
========================  ==============================================
``session_created``       a session is first stored (not by regenerate)
``session_regenerated``   a session moved to a new ID; ``reason``: ``"login"``
                          (``regenerate(owner=...)``), ``"reauthentication"``
                          (``reauthenticated()``), ``"renewal"`` or ``"manual"``
``session_destroyed``     ``clear()`` or emptying it deleted a record
``session_expired``       a genuine cookie named a record that had expired or
                          was gone when the session loaded
``session_revoked``       a revoke ended live sessions; ``by``: ``"user"``
                          (``revoke()``), ``"revoke_all"`` or ``"admin"`` (the
                          command line); ``count``, ``owner`` (for revoke_all)
                          and ``references``; ``session`` is the requester's
                          (``None`` from the command line)
``session_evicted``       a login over ``SATCHEL_MAX_SESSIONS_PER_OWNER`` ended
                          its owner's least recently seen session; ``owner``
                          and ``reference`` (the evicted one's); ``session``
                          is the login's
``cookie_rejected``       a cookie failed verification; ``session`` is the
                          fresh one the request got (no ``fingerprint``)
``sessions_purged``       a purge removed expired records: ``count`` only
                          (sent by the ``purge`` command, with sender None)
``session_migrated``      an old session (``SATCHEL_MIGRATE_FROM``) was
                          imported into a new one; also carries ``source``
                          (``"flask-cookie"`` or ``"flask-session"``)
========================  ==============================================

A ``reference`` is the key a store files a session under (a SHA-256 hash of the
ID: safe to log and to pass to ``revoke()``, never the ID); a ``fingerprint`` is
its first 8 characters, as the log lines print. Receivers should accept
``**extra``: a later version may add arguments.
"""

from __future__ import annotations

import itertools
import logging
from typing import TYPE_CHECKING

from blinker import Namespace

#: Where security events are logged (a rejected cookie, an ended session used):
#: the ``satchel.security`` logger, never with a session ID.
security_log = logging.getLogger("satchel.security")

__all__ = [
    "COUNTED",
    "Counters",
    "cookie_rejected",
    "session_created",
    "session_destroyed",
    "session_evicted",
    "session_expired",
    "session_migrated",
    "session_regenerated",
    "session_revoked",
    "sessions_purged",
]

_signals = Namespace()

session_created = _signals.signal("satchel.session-created")
session_regenerated = _signals.signal("satchel.session-regenerated")
session_destroyed = _signals.signal("satchel.session-destroyed")
session_expired = _signals.signal("satchel.session-expired")
session_migrated = _signals.signal("satchel.session-migrated")
session_revoked = _signals.signal("satchel.session-revoked")
session_evicted = _signals.signal("satchel.session-evicted")
cookie_rejected = _signals.signal("satchel.cookie-rejected")
sessions_purged = _signals.signal("satchel.sessions-purged")


#: Each counter's name, and what it counts.
COUNTED = {
    "loads": "Sessions read from the store.",
    "saves": "Saves that wrote changes (creates included).",
    "creates": "Sessions first stored.",
    "deletes": "Records deleted by clear(), regenerate() or emptying.",
    "touches": "Idle-expiry refreshes written without other changes.",
    "rejected_cookies": "Cookies that failed verification.",
    "store_errors": "Store calls that raised StoreUnavailable.",
    "lock_waits": "Strict-mode requests that had to wait for another request's lock.",
    "merges": "Saves that found a key changed by an overlapping request and merged into it.",
    "migrated": "Old sessions imported into new ones (``SATCHEL_MIGRATE_FROM``).",
    "migration_failures": "Old sessions that exist but could not be imported (a pickle record).",
    "migration_replays": "Old cookies that came back after their import and imported nothing.",
    "login_waits": "Logins that waited for another login of their owner (the owner limit).",
    "renewals": "Sessions whose ID was renewed (``SATCHEL_RENEWAL_INTERVAL``).",
    "renewal_joins": "Requests with a just-renewed session's old ID that joined the new one.",
    "evictions": "Sessions ended because a login of their owner went over the limit.",
    "refused_logins": "Logins refused by ``SATCHEL_MAX_SESSIONS_POLICY = 'refuse'``.",
    "tampered": "Encrypted records that did not decrypt (moved, altered, or under a key no"
    " longer configured): each deleted, and its request given a fresh session.",
}


def _counted(tick: itertools.count[int]) -> int:
    # How many times ``tick`` has been advanced: its repr is "count(N)", N the next value.
    return int(repr(tick)[6:-1])


class Counters:
    """How often each thing happened in this process since it started.

    Each counter of :data:`COUNTED` is an attribute (``counters.loads``). Counting is
    one C call (advancing an ``itertools.count``, which the interpreter does whole),
    so it is safe from any thread without a lock: requests count on every load.
    """

    __slots__ = ("_ticks",)

    if TYPE_CHECKING:
        loads: int
        saves: int
        creates: int
        deletes: int
        touches: int
        rejected_cookies: int
        store_errors: int
        lock_waits: int
        merges: int
        migrated: int
        migration_failures: int
        migration_replays: int
        login_waits: int
        renewals: int
        renewal_joins: int
        evictions: int
        refused_logins: int
        tampered: int

    def __init__(self) -> None:
        self._ticks = {name: itertools.count() for name in COUNTED}

    def add(self, name: str, amount: int = 1) -> None:
        """Add to one counter, safely from any thread."""
        tick = self._ticks[name]
        next(tick)
        if amount != 1:
            for _ in range(amount - 1):
                next(tick)

    def snapshot(self) -> dict[str, int]:
        """All counters, as a plain dict."""
        return {name: _counted(tick) for name, tick in self._ticks.items()}


def _reader(name: str) -> property:
    return property(lambda self: _counted(self._ticks[name]), doc=COUNTED[name])


for _name in COUNTED:  # counters.loads and the rest, read-only
    setattr(Counters, _name, _reader(_name))
