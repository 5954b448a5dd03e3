"""satchel: server-side web sessions for Flask, FastAPI/Starlette and Quart.

``satchel.Satchel`` and ``satchel.current_session`` are the Flask adapter's
(:mod:`satchel.flask`), imported on first use: an ASGI-only install has no Flask.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

#: The release, as SemVer (see CHANGELOG.md for what the public API is).
__version__ = "0.1.0"

from ._views import locked
from .errors import (
    ConfigError,
    LockLost,
    LockTimeout,
    SatchelError,
    SerializationError,
    SessionTooLarge,
    StoreUnavailable,
)
from .session import Session

if TYPE_CHECKING:
    from .flask import Satchel, current_session

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


def __getattr__(name: str) -> Any:
    if name in ("Satchel", "current_session"):
        from . import flask

        return getattr(flask, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
