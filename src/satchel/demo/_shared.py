"""The demo's framework-free part: the questionnaire's fields, the footer, the secret key,
and what the "What's in my session?" page shows. The Flask and ASGI demos both use it.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from ..session import Session
from ..signing import store_key
from ..stores import MemoryStore

__all__ = [
    "DEAD_COOKIE",
    "FIELDS",
    "FRESH_LOGIN_SECONDS",
    "INTERNAL",
    "SLOTS",
    "browser_name",
    "describe_session",
    "device_rows",
    "fingerprint",
    "footer_rows",
    "load_secret_key",
]

#: The questionnaire's form fields, in the order the pages ask for them.
FIELDS = {"firstName": "First name", "lastName": "Last name", "favoriteColor": "Favourite colour"}
#: What the footer calls the keys the framework keeps in the session.
INTERNAL = {
    "csrf_token": "Form token (against forged forms)",
    "_flashes": "Messages waiting to be shown",
    "_permanent": "Kept after the browser closes",
}


def footer_rows(data: Mapping[str, Any]) -> list[tuple[str, str]]:
    """What the footer shows of a session: each key under a readable name, the answers
    first, each value as a person reads it (never a Python repr). Both demos use it."""
    rows = [(label, str(data[key])) for key, label in FIELDS.items() if key in data]
    for key in sorted(data):
        if key in FIELDS:
            continue
        value = data[key]
        if key == "_flashes":
            shown = "; ".join(str(message) for _category, message in value)
        elif key == "csrf_token":
            shown = f"{str(value)[:8]}… (random)"
        elif key == "_permanent":
            shown = "yes" if value else "no"
        else:
            shown = str(value)
        rows.append((INTERNAL.get(key, key), shown))
    return rows


#: How many independent session slots the demo offers.
SLOTS = 3
DEAD_COOKIE = "demo-ended-{slot}"


def load_secret_key(instance_path: str | os.PathLike[str]) -> tuple[str, str | None]:
    """Return the secret key and, when one was made or read from a file, its path.

    ``FLASK_SECRET_KEY`` wins; otherwise a random key is kept in the instance
    folder, so sessions survive a restart of the demo.
    """
    from_env = os.environ.get("FLASK_SECRET_KEY")
    if from_env:
        return from_env, None
    path = Path(instance_path) / "demo-secret-key"
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_hex(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        # Made earlier, or just now by another worker of the same server:
        # wait for its whole key rather than read half of it.
        for _ in range(100):
            existing = path.read_text().strip()
            if len(existing) == len(key):
                return existing, str(path)
            time.sleep(0.01)
        return existing, str(path)
    with os.fdopen(fd, "w") as handle:
        handle.write(key + "\n")
    return key, str(path)


def fingerprint(session_id: str) -> str:
    """A short, safe name for a session: the start of its store key, never the ID."""
    return store_key(session_id)[:8]


def _when(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def describe_session(
    current: Session,
    manager: Any,
    cookie_name: str,
    cookie: str | None,
    **cookie_facts: Any,
) -> dict[str, Any]:
    """What the session page shows: the cookie and the record, never the raw ID.

    Both demos (Flask and ASGI) call this with their own session and manager;
    ``cookie_facts`` are ``permanent``, ``lifetime``, ``samesite`` and ``secure``.
    """
    record = current.record
    store = manager.store
    info: dict[str, Any] = {
        "exists": record is not None,
        "cookie_name": cookie_name,
        "cookie_sent": cookie is not None,
        "data": dict(current),
        "store": getattr(store, "wrapped", store),  # the store itself, not its async wrapper
        "cookie_genuine": cookie is not None and manager.signer.unsign(cookie) is not None,
        "persistent": not isinstance(getattr(store, "wrapped", store), MemoryStore),
        "idle": timedelta(seconds=manager.settings.idle_timeout),
        "absolute": timedelta(seconds=manager.settings.absolute_timeout),
        **cookie_facts,
    }
    if cookie is not None:
        info["cookie_length"] = len(cookie)
    if record is not None and current.session_id is not None:
        signature = cookie.rsplit(".", 1)[-1] if cookie else ""
        info.update(
            fingerprint=fingerprint(current.session_id),
            signature=signature[:10],
            created=_when(record.created_at),
            last_seen=_when(record.touched_at),
            idle_expiry=_when(record.touched_at + manager.settings.idle_timeout),
            absolute_expiry=_when(record.created_at + manager.settings.absolute_timeout),
            expires=_when(record.expires_at),
        )
    return info


#: How recent a login the "fresh login required" action asks for, in seconds.
FRESH_LOGIN_SECONDS = 60.0


def browser_name(user_agent: str | None) -> str:
    """A person's name for a browser, from its user agent ("Chrome on Linux")."""
    agent = user_agent or ""
    browser = next(
        (name for token, name in (("Edg/", "Edge"), ("Firefox/", "Firefox"),
         ("Chrome/", "Chrome"), ("Safari/", "Safari")) if token in agent),
        "A browser",
    )  # fmt: skip
    system = next(
        (name for token, name in (("Android", "Android"), ("iPhone", "iPhone"),
         ("Windows", "Windows"), ("Mac OS", "macOS"), ("Linux", "Linux")) if token in agent),
        "",
    )  # fmt: skip
    return f"{browser} on {system}" if system else browser


def device_rows(infos: list[Any]) -> list[dict[str, Any]]:
    """What the "Your devices" page shows of each of a visitor's sessions, current first."""
    rows = [
        {
            "reference": info.reference,
            "browser": browser_name(info.user_agent),
            "created": _when(info.created_at),
            "last_seen": _when(info.last_seen),
            "authenticated": _when(info.authenticated_at) if info.authenticated_at else "never",
            "current": info.current,
        }
        for info in infos
    ]
    return sorted(rows, key=lambda row: not row["current"])
