"""``flask satchel …``: stats, list, show, revoke, revoke-owner and purge, as typed."""

from __future__ import annotations

import json
import re
import time
from typing import Any

import pytest
from flask import Flask, request, session

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
    assert ["owner", "alice"] in [
        line.split() for line in run(app, "show", short).output.splitlines()
    ]
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
    store = app.extensions["satchel"].store
    # Exactly the five expired sessions (none where the server expires keys itself).
    expected = 0 if getattr(store, "expires_by_itself", False) else 5
    assert f"removed {expected} expired record(s)" in result.output, result.output
    assert json.loads(run(short, "purge", "--json").output)["removed"] == 0  # nothing left
    assert json.loads(run(short, "stats", "--json").output)["live_sessions"] == 0


@pytest.fixture
def hostile(store: Store) -> Flask:
    """An app whose owners and user agents are chosen by whoever logs in."""
    app = Flask("hostile")
    app.config.update(SECRET_KEY=SECRET, SATCHEL_TRACK_CLIENT=True)
    Satchel(app, store=store)

    @app.post("/login")
    def login() -> str:
        session["x"] = 1
        session.regenerate(owner=request.form["owner"])  # type: ignore[attr-defined]
        return "ok"

    return app


def test_control_characters_never_reach_the_terminal(hostile: Flask) -> None:
    """Hardening item 12: OSC and other escapes in owners and user agents print escaped."""
    osc = "\x1b]0;pwned\x07\x1b[2J"
    hostile.test_client().post(
        "/login", data={"owner": f"eve{osc}"}, headers={"User-Agent": f"agent{osc}\u202e"}
    )
    for args in (["list"], ["stats"], ["list", "--owner", f"eve{osc}"]):
        output = run(hostile, *args).output
        assert "\x1b" not in output and "\x07" not in output and "\u202e" not in output
    listing = run(hostile, "list").output
    assert "eve\\x1b]0;pwned\\x07" in listing and "agent\\x1b" in listing
    ref = json.loads(run(hostile, "list", "--json").output)[0]["reference"]
    shown = run(hostile, "show", ref[:8]).output
    assert "\x1b" not in shown and "eve\\x1b" in shown
    revoked = run(hostile, "revoke-owner", f"eve{osc}")
    assert "\x1b" not in revoked.output and "revoked 1 session(s)" in revoked.output


def test_undecodable_arguments_are_a_clean_error(app: Flask) -> None:
    """Hardening item 12: a lone surrogate (bytes the terminal could not decode) is refused."""
    for args in (["list", "--owner", "\udcff"], ["revoke-owner", "a\udcffb"], ["show", "\udcff"]):
        result = run(app, *args)
        assert result.exit_code == 2, result.output
        assert "not valid UTF-8 text" in result.output and "Traceback" not in result.output


def test_every_command_speaks_json(app: Flask) -> None:
    """Hardening item 12: --json on every command, parseable, with what happened."""
    client = app.test_client()
    client.get("/login/alice")
    app.test_client().get("/login/alice")
    ref = json.loads(run(app, "list", "--json").output)[0]["reference"]
    assert json.loads(run(app, "stats", "--json").output)["live_sessions"] == 2
    assert json.loads(run(app, "show", ref, "--json").output)["reference"] == ref
    assert json.loads(run(app, "revoke", ref[:9], "--json").output) == {"revoked": [ref]}
    ended = json.loads(run(app, "revoke-owner", "alice", "--json").output)
    assert ended == {"owner": "alice", "revoked": 1}
    assert json.loads(run(app, "purge", "--json").output)["removed"] == 0  # nothing expired


def test_stats_counts_at_the_store_without_reading_records(app: Flask) -> None:
    """Hardening item 12: stats and show REF-prefix never load every record."""
    store = app.extensions["satchel"].store
    for user in ("a", "b", "b"):
        app.test_client().get(f"/login/{user}")
    loaded: list[str] = []
    real_records, real_load = store.records, store.load
    store.records = lambda owner=None: loaded.append("records") or real_records(owner)
    store.load = lambda key: loaded.append("load") or real_load(key)
    try:
        stats = run(app, "stats").output
        assert ["live", "sessions", "3"] in [line.split() for line in stats.splitlines()]
        assert loaded == []
        ref = next(iter(store.references()))
        assert run(app, "show", ref[:6]).exit_code == 0
        assert loaded == ["load"]  # the one shown, found by the key index
    finally:
        del store.records, store.load


def test_columns_fit_wide_characters(hostile: Flask) -> None:
    """Hardening item 12: columns line up with wide (East Asian) characters in a cell."""
    for owner in ("短い名前の利用者", "bob"):
        hostile.test_client().post("/login", data={"owner": owner})
    lines = run(hostile, "list").output.splitlines()[:3]
    import unicodedata

    def width(text: str) -> int:
        return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)

    created = [re.search(r"\d{4}-\d\d-\d\d \d\d:", line) for line in lines[1:]]
    starts = {
        width(line[: found.start()])
        for line, found in zip(lines[1:], created, strict=True)
        if found
    }
    assert len(created) == 2 and all(created)  # the CREATED column of both rows
    assert len(starts) == 1
    assert width(lines[0][: lines[0].index("CREATED")]) in starts


@pytest.fixture
def store_url(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    """A store URL of each server kind, its namespace emptied, for `satchel sessions`."""
    kind = request.param
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'admin.sqlite3'}"
    if kind == "redis":
        valkey = request.getfixturevalue("valkey")
        return f"{valkey.url}?prefix=admin{time.monotonic_ns()}:"
    postgres = request.getfixturevalue("postgres")
    return f"{postgres.url}?prefix=admin{time.monotonic_ns()}:"


@pytest.mark.parametrize("store_url", ["sqlite", "redis", "postgres"], indirect=True)
def test_satchel_sessions_administers_a_store_without_an_app(store_url: str) -> None:
    """`satchel sessions --store URL ...`: the same answers as `flask satchel`, with
    no app at all (what an ASGI or Quart team runs)."""

    app = Flask("writer")
    app.config.update(SECRET_KEY=SECRET, SATCHEL_STORE=store_url, SATCHEL_TRACK_CLIENT=True)
    Satchel(app)

    @app.get("/login/<user>")
    def login(user: str) -> str:
        session.regenerate(owner=user)  # type: ignore[attr-defined]
        session["user"] = user
        return "ok"

    @app.get("/whoami")
    def whoami() -> dict[str, Any]:
        return {"user": session.get("user")}

    try:
        check_the_commands(app, store_url)
    finally:
        app.extensions["satchel"].store.close()


def check_the_commands(app: Flask, store_url: str) -> None:
    from click.testing import CliRunner

    from satchel.cli import main

    devices = [app.test_client() for _ in range(3)]
    for client, user in zip(devices, ("alice", "alice", "bob"), strict=True):
        client.get(f"/login/{user}")
    runner = CliRunner()

    def sessions(*args: str) -> Any:
        result = runner.invoke(main, ["sessions", "--store", store_url, *args])
        assert result.exit_code == 0, result.output
        return result

    assert json.loads(sessions("stats", "--json").output)["live_sessions"] == 3
    listed = json.loads(sessions("list", "--owner", "alice", "--json").output)
    assert [s["owner"] for s in listed] == ["alice", "alice"]
    with app.app_context():
        as_flask_lists = sorted(s.reference for s in Satchel.list_sessions("alice"))
    assert sorted(s["reference"] for s in listed) == as_flask_lists
    ref = listed[0]["reference"]
    assert json.loads(sessions("show", ref[:10], "--json").output)["reference"] == ref
    assert json.loads(sessions("revoke", ref[:10], "--json").output) == {"revoked": [ref]}
    ended = json.loads(sessions("revoke-all", "alice", "--json").output)
    assert ended == {"owner": "alice", "revoked": 1}
    assert [c.get("/whoami").get_json()["user"] for c in devices] == [None, None, "bob"]
    assert "removed" in sessions("purge").output
    table = sessions("list")
    assert table.output.splitlines()[0].split()[:2] == ["REF", "OWNER"]
    missing = runner.invoke(main, ["sessions", "list"], env={"SATCHEL_STORE": ""})
    assert missing.exit_code == 2 and "--store" in missing.output
