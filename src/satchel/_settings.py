"""What a lifecycle is configured with: lifetimes, the size limit, locks, login limits.

Its own module so that the rules written outside the lifecycle (the logins of
:mod:`satchel._logins`) can read it without importing the lifecycle back.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Settings"]


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
    #: The most live sessions one owner may have (``None``: no limit), and what a
    #: login over it does: ``"evict-oldest"`` or ``"refuse"`` (see :mod:`satchel._logins`).
    max_sessions_per_owner: int | None = None
    max_sessions_policy: str = "evict-oldest"
    #: Renew a session's ID once it is this old (``None``: never; see
    #: :mod:`satchel._renewal`), and how long the old ID still joins the renewed session.
    renewal_interval: float | None = None
    renewal_grace: float = 10.0
