"""satchel: server-side web sessions for Flask, safe and correct under concurrency."""

from __future__ import annotations

#: The release, as SemVer (see CHANGELOG.md for what the public API is).
__version__ = "0.1.0"

from .errors import (
    ConfigError,
    LockLost,
    LockTimeout,
    SatchelError,
    SerializationError,
    SessionTooLarge,
    StoreUnavailable,
)
from .flask import Satchel, current_session, locked
from .session import Session

__all__ = [
    "ConfigError",
    "LockLost",
    "LockTimeout",
    "Satchel",
    "SatchelError",
    "SerializationError",
    "Session",
    "SessionTooLarge",
    "StoreUnavailable",
    "current_session",
    "locked",
]
