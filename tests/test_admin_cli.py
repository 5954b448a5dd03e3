"""``flask satchel …``: stats, list, show, revoke, revoke-owner and purge, as typed."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from flask import Flask, session

from satchel import Satchel
from satchel.stores import Store

from .conftest import SECRET


@pytest.fixture
def app(store: Store) -> Flask:
    app = Flask("admin")
    app.config.update(SECRET_KEY=SECRET, SATCHEL_TRACK_CLIENT=True)
    Satchel(app, store=store)

    @app.get("/login/<user>")
    def login(user: str) -> str:
        session.regenerate(owner=user)  # type: ignore[attr-defined]
        session["user"] = user
        return "ok"

    @app.get("/anonymous")
    def anonymous() -> str:
        session["cart"] = ["apple"]
        return "ok"

    @app.get("/whoami")
    def whoami() -> dict[str, Any]:
        return {"user": session.get("user")}

    return app


def run(app: Flask, *args: str) -> Any:
    result = app.test_cli_runner().invoke(args=["satchel", *args])
    return result


def test_list_and_stats(app: Flask) -> None:
    """list shows a readable table or JSON; stats counts sessions and owners."""
    for user in ("alice", "alice", "bob"):
        app.test_client().get(f"/login/{user}")
    app.test_client().get("/anonymous")
    table = run(app, "list")
    assert table.exit_code == 0, table.output
    assert table.output.splitlines()[0].split()[:3] == ["REF", "OWNER", "CREATED"]
    assert "4 session(s)" in table.output
    listed = json.loads(run(app, "list", "--owner", "alice", "--json").output)
    assert [s["owner"] for s in listed] == ["alice", "alice"]
    assert all(len(s["reference"]) == 64 for s in listed)
    stats = json.loads(run(app, "stats", "--json").output)
    assert stats["live_sessions"] == 4 and stats["owners"] == 2
    assert "live sessions  4" in run(app, "stats").output


def test_show_and_revoke_by_short_reference(app: Flask) -> None:
    """show and revoke accept a unique start of a reference; revoked means dead."""
    client = app.test_client()
    client.get("/login/alice")
    (info,) = json.loads(run(app, "list", "--json").output)
    short = info["reference"][:10]
    shown = json.loads(run(app, "show", short, "--json").output)
    assert shown["owner"] == "alice" and shown["key_names"] == ["user"]
    assert "owner      alice" in run(app, "show", short).output
    revoked = run(app, "revoke", short)
    assert revoked.exit_code == 0 and "revoked" in revoked.output
    assert client.get("/whoami").json == {"user": None}
    again = run(app, "revoke", short)
    assert again.exit_code != 0 and "no live session" in again.output


def test_revoke_owner(app: Flask) -> None:
    """revoke-owner ends every session of one owner and no other."""
    alices = [app.test_client() for _ in range(3)]
    for client in alices:
        client.get("/login/alice")
    bob = app.test_client()
    bob.get("/login/bob")
    result = run(app, "revoke-owner", "alice")
    assert "revoked 3 session(s) of alice" in result.output
    assert all(c.get("/whoami").json == {"user": None} for c in alices)
    assert bob.get("/whoami").json == {"user": "bob"}


def test_unknown_reference_is_a_clean_error(app: Flask) -> None:
    """A reference that names nothing is an error message and a non-zero exit, no traceback."""
    result = run(app, "show", "ffffffff")
    assert result.exit_code != 0
    assert "no live session" in result.output and "Traceback" not in result.output


def test_purge(app: Flask) -> None:
    """purge removes expired records (with a progress bar where the store purges in batches)."""
    short = Flask("short")  # a second app on the same store, with a short idle timeout
    short.config.update(SECRET_KEY=SECRET, SATCHEL_IDLE_TIMEOUT=0.3)
    Satchel(short, store=app.extensions["satchel"].store)

    @short.get("/login")
    def login() -> str:
        session["x"] = 1
        return "ok"

    for _ in range(5):
        short.test_client().get("/login")
    time.sleep(0.4)
    result = short.test_cli_runner().invoke(args=["satchel", "purge"])
    assert result.exit_code == 0, result.output
    assert "removed" in result.output
    assert json.loads(run(short, "stats", "--json").output)["live_sessions"] == 0
