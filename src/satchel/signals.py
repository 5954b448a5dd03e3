"""Signals sent at the turning points of a session's life, and the counters behind them.

Receivers connect with blinker, as with Flask's own signals; the sender is the
Flask app (or whatever the adapter passed), and every signal carries the
``session`` (its ``session_id`` is the raw ID: never log it) and a
``fingerprint``, a short hash safe to log::

    from satchel.signals import session_created

    @session_created.connect_via(app)
    def count_new_session(app, session, fingerprint):
        ...

=======================  ===============================================
signal                   sent when
=======================  ===============================================
``session_created``      a session is first stored (not by regenerate)
``session_regenerated``  ``regenerate()`` moved a session to a new ID
``session_destroyed``    ``clear()`` or emptying it deleted a record
``session_expired``      a genuine cookie named a record that had
                         expired or was gone when the session loaded
``session_migrated``     an old session (``SATCHEL_MIGRATE_FROM``) was
                         imported into a new one; also carries ``source``
                         (``"flask-cookie"`` or ``"flask-session"``)
=======================  ===============================================
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, fields

from blinker import Namespace

#: Where security events are logged (a rejected cookie, an ended session used):
#: the ``satchel.security`` logger, never with a session ID.
security_log = logging.getLogger("satchel.security")

__all__ = [
    "Counters",
    "session_created",
    "session_destroyed",
    "session_expired",
    "session_migrated",
    "session_regenerated",
]

_signals = Namespace()

session_created = _signals.signal("satchel.session-created")
session_regenerated = _signals.signal("satchel.session-regenerated")
session_destroyed = _signals.signal("satchel.session-destroyed")
session_expired = _signals.signal("satchel.session-expired")
session_migrated = _signals.signal("satchel.session-migrated")


@dataclass
class Counters:
    """How often each thing happened in this process since it started."""

    #: Sessions read from the store.
    loads: int = 0
    #: Saves that wrote changes (creates included).
    saves: int = 0
    #: Sessions first stored.
    creates: int = 0
    #: Records deleted by clear(), regenerate() or emptying.
    deletes: int = 0
    #: Idle-expiry refreshes written without other changes.
    touches: int = 0
    #: Cookies that failed verification.
    rejected_cookies: int = 0
    #: Store calls that raised StoreUnavailable.
    store_errors: int = 0
    #: Strict-mode requests that had to wait for another request's lock.
    lock_waits: int = 0
    #: Saves that found a key changed by an overlapping request and merged into it.
    merges: int = 0
    #: Old sessions imported into new ones (``SATCHEL_MIGRATE_FROM``).
    migrated: int = 0
    #: Old sessions that exist but could not be imported (a pickle record, say).
    migration_failures: int = 0
    #: Old cookies that came back after their import and imported nothing.
    migration_replays: int = 0

    def __post_init__(self) -> None:
        self._lock = threading.Lock()

    def add(self, name: str, amount: int = 1) -> None:
        """Add to one counter, safely from any thread."""
        with self._lock:
            setattr(self, name, getattr(self, name) + amount)

    def snapshot(self) -> dict[str, int]:
        """All counters at one instant, as a plain dict."""
        with self._lock:
            return {f.name: getattr(self, f.name) for f in fields(self)}
