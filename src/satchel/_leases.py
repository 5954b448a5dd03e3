"""Waiting for a leased lock: strict mode's per-session lock and a login's per-owner lock.

Both take the store's lock (:class:`~satchel.stores.LockingStore`) the same way: try,
and while another holder has it, pause (2 ms, doubling to 50 ms) until
``lock_timeout``, past which :class:`~satchel.errors.LockTimeout` is raised (a 503).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from ._ops import Acquire, LifeSteps, Sleep
from .errors import LockTimeout

if TYPE_CHECKING:
    from .signals import Counters

__all__ = ["acquire_steps"]


def acquire_steps(
    store: Any, settings: Any, counters: Counters, waits: str, key: str, token: str
) -> LifeSteps[None]:
    """Take the lock on ``key`` for ``token``, waiting as the module says; the counter
    ``waits`` counts a call that had to wait (once, however many retries)."""
    start = time.monotonic()
    pause = 0.002
    waiting = False
    while not (yield Acquire(key, token, settings.lock_lease)):
        if not waiting:
            waiting = True
            counters.add(waits)
        waited = time.monotonic() - start
        if waited >= settings.lock_timeout:
            raise LockTimeout(repr(store), waited)
        yield Sleep(min(pause, settings.lock_timeout - waited))
        pause = min(pause * 2, 0.05)
