"""The exceptions satchel raises.

Every error derives from one base class, so an app can catch them all::

    SatchelError
    ├── ConfigError          bad or missing configuration, raised at start-up
    ├── SerializationError   a session value that cannot be stored
    ├── SessionTooLarge      a session over ``SATCHEL_MAX_SIZE``
    ├── TooManySessions      a login over ``SATCHEL_MAX_SESSIONS_PER_OWNER`` (policy "refuse")
    ├── NotLoggedIn          ``reauthenticated()`` on a session no login owns
    └── StoreUnavailable     the store did not answer; the Flask adapter answers 503
        └── LockTimeout      strict mode waited too long for another request's lock
            └── LockLost     strict mode's lease lapsed before the save; nothing saved
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "LockLost",
    "LockTimeout",
    "NotLoggedIn",
    "SatchelError",
    "SerializationError",
    "SessionTooLarge",
    "StoreUnavailable",
    "TooManySessions",
]


class SatchelError(Exception):
    """Base class of every error satchel raises."""


class ConfigError(SatchelError):
    """The configuration is missing, contradictory or of the wrong type."""


class SerializationError(SatchelError, TypeError):
    """A value cannot be stored in the session.

    ``key`` is the session key it was stored under (``None`` when unknown) and
    ``value_type`` the offending type, which may sit deep inside a container.
    ``reason`` replaces "values of type ... are not supported" when the type
    is fine but the value is not (nested too deeply, say).
    """

    def __init__(
        self, key: str | None, value_type: type, detail: str = "", *, reason: str | None = None
    ) -> None:
        self.key = key
        self.value_type = value_type
        where = f"session[{key!r}]" if key is not None else "a session value"
        name = f"{value_type.__module__}.{value_type.__qualname__}"
        if value_type.__module__ == "builtins":
            name = value_type.__qualname__
        message = f"cannot store {where}: {reason or f'values of type {name} are not supported'}"
        if detail:
            message = f"{message} ({detail})"
        super().__init__(message)


class SessionTooLarge(SatchelError):
    """The serialised session exceeds the configured limit; nothing was written."""

    def __init__(self, size: int, limit: int) -> None:
        self.size = size
        self.limit = limit
        super().__init__(
            f"session is {size} bytes serialised, over the limit of {limit} bytes "
            "(SATCHEL_MAX_SIZE); nothing was saved"
        )


class TooManySessions(SatchelError):
    """A login would give its owner more than ``SATCHEL_MAX_SESSIONS_PER_OWNER`` sessions.

    Raised by ``regenerate(owner=...)`` under the ``"refuse"`` policy (in an async
    view, by ``await session.regenerate(owner=...)``), before anything is stored;
    the app answers it with a page ("log out on another device first"). ``limit``
    is the configured maximum.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        super().__init__(
            f"this user already has {limit} live sessions, the most allowed"
            " (SATCHEL_MAX_SESSIONS_PER_OWNER, policy 'refuse'); the login was not stored"
        )


class NotLoggedIn(SatchelError):
    """``reauthenticated()`` was called on a session that no login owns."""


class StoreUnavailable(SatchelError):
    """The session store could not be reached or failed to answer in time."""

    def __init__(self, store: str, reason: str) -> None:
        self.store = store
        self.reason = reason
        super().__init__(f"session store {store} is unavailable: {reason}")


class LockTimeout(StoreUnavailable):
    """Strict mode could not take the session's lock within ``SATCHEL_LOCK_TIMEOUT``.

    Another request of the same session held it all that time; answering 503
    is safer than running the view without it and overwriting that request.
    """

    def __init__(self, store: str, waited: float) -> None:
        self.waited = waited
        super().__init__(store, f"the session stayed locked by another request for {waited:.1f}s")


class LockLost(LockTimeout):
    """Strict mode's lock was no longer this request's when it saved; nothing was saved.

    The view ran longer than ``SATCHEL_LOCK_LEASE``, so the lease lapsed and
    another request may have taken the lock and saved: writing now could
    overwrite that request's changes, so the save is refused (a 503).
    """

    def __init__(self, store: str, held: float) -> None:
        self.waited = held
        StoreUnavailable.__init__(
            self,
            store,
            f"the session's lock lapsed after {held:.1f}s (SATCHEL_LOCK_LEASE), "
            "before this request saved; its changes were not saved",
        )
