"""Sessions as the app's previous session layer left them: genuine Flask cookie sessions."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from flask import Flask, session
from markupsafe import Markup

from ..conftest import SECRET

#: Values of every type Flask's tagged JSON keeps, as an old session holds them.
TYPED = {
    "tuple": (1, "two", (3.0,)),
    "bytes": b"\x00\xffraw",
    "when": datetime(2026, 11, 1, 12, 30, 5, tzinfo=UTC),
    "markup": Markup("<b>bold</b>"),
    "uuid": uuid.UUID("12345678-1234-5678-1234-567812345678"),
    "nested": {"cart": [{"sku": "A-1", "qty": 2}], " di": "a key that looks like a tag"},
    "list": [1, [2, [3]], None, True],
    "name": "Ada",
}


def cookie_after_set(old: Flask) -> str:
    """The session cookie the old app sets on ``/set``."""
    client = old.test_client()
    client.get("/set")
    cookie = client.get_cookie("session")
    assert cookie is not None
    return cookie.value


def cookie_session(key: str = SECRET, data: dict[str, Any] | None = None) -> str:
    """A genuine Flask cookie session, made by a plain Flask app signing with ``key``."""
    old = Flask("before_satchel")
    old.config["SECRET_KEY"] = key

    @old.get("/set")
    def set_() -> str:
        session.update(TYPED if data is None else data)
        session.permanent = True
        return "ok"

    return cookie_after_set(old)
