"""satchel: server-side web sessions for Flask, safe and correct under concurrency."""

from __future__ import annotations

from .errors import (
    ConfigError,
    SatchelError,
    SerializationError,
    SessionTooLarge,
    StoreUnavailable,
)
from .flask import Satchel
from .session import Session

__all__ = [
    "ConfigError",
    "Satchel",
    "SatchelError",
    "SerializationError",
    "Session",
    "SessionTooLarge",
    "StoreUnavailable",
]
