"""A user's sessions: owner at login, listing, revoking one, "log out my other devices"."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from flask import Flask, session

from satchel import Satchel, current_session
from satchel.stores import RedisStore, Store

from .conftest import SECRET, session_id_of
from .support.flask_apps import (
    client_with,
    logins_race_listings,
    owner_app,
)


@pytest.fixture
def app(store: Store) -> Flask:
    app = Flask("owners")
    app.config.update(SECRET_KEY=SECRET, SATCHEL_TRACK_CLIENT=True, SATCHEL_IDLE_TIMEOUT=60)
    Satchel(app, store=store)

    @app.get("/login/<user>")
    def login(user: str) -> str:
        session.regenerate(owner=user)  # type: ignore[attr-defined]
        session["user"] = user
        return "ok"

    @app.get("/whoami")
    def whoami() -> dict[str, Any]:
        return {"user": session.get("user"), "owner": session.owner}  # type: ignore[attr-defined]

    @app.get("/again")
    def again() -> str:
        session.regenerate()  # type: ignore[attr-defined]
        return "ok"

    @app.get("/renew")
    def renew() -> str:
        if "user" not in session:  # logged out: a renewal never logs anyone back in
            return "anonymous"
        session.regenerate(owner=session["user"])  # type: ignore[attr-defined]
        return "ok"

    @app.get("/mine")
    def mine() -> list[dict[str, Any]]:
        owner = session["user"]
        return [
            {"ref": i.reference, "current": i.current, "ua": i.user_agent, "ip": i.ip}
            for i in Satchel.list_sessions(owner)
        ]

    @app.get("/logout-others")
    def logout_others() -> str:
        return str(Satchel.revoke_all(session["user"], keep_current=True))

    return app


def device(app: Flask, user: str, agent: str) -> Any:
    client = app.test_client()
    client.environ_base["HTTP_USER_AGENT"] = agent
    assert client.get(f"/login/{user}").status_code == 200
    return client


def test_owner_is_recorded_and_kept(app: Flask) -> None:
    """regenerate(owner=...) records the owner; a later regenerate() keeps it."""
    phone = device(app, "alice", "Phone/1.0")
    assert phone.get("/whoami").json == {"user": "alice", "owner": "alice"}
    phone.get("/again")
    assert phone.get("/whoami").json == {"user": "alice", "owner": "alice"}


def test_list_a_users_sessions(app: Flask) -> None:
    """list_sessions(owner) shows each device once, with client details, marking the current."""
    phone = device(app, "alice", "Phone/1.0")
    device(app, "alice", "Laptop/2.0")
    device(app, "bob", "Tablet/3.0")
    listed = phone.get("/mine").json
    assert sorted(s["ua"] for s in listed) == ["Laptop/2.0", "Phone/1.0"]
    assert [s["ua"] for s in listed if s["current"]] == ["Phone/1.0"]
    assert all(s["ip"] == "127.0.0.1" for s in listed)
    raw = session_id_of(phone.get_cookie("session").value)
    assert all(raw not in s["ref"] for s in listed), "a reference is never the ID"


def test_revoke_one_session(app: Flask) -> None:
    """revoke(reference) ends that session: its cookie opens nothing."""
    phone = device(app, "alice", "Phone/1.0")
    laptop = device(app, "alice", "Laptop/2.0")
    with app.app_context():
        (laptop_info,) = [i for i in Satchel.list_sessions("alice") if i.user_agent == "Laptop/2.0"]
        assert Satchel.revoke(laptop_info.reference) is True
        assert Satchel.revoke(laptop_info.reference) is False
    assert laptop.get("/whoami").json == {"user": None, "owner": None}
    assert phone.get("/whoami").json["user"] == "alice"


def test_log_out_other_devices(app: Flask) -> None:
    """revoke_all(owner, keep_current=True) ends every other session of that owner only."""
    phone = device(app, "alice", "Phone/1.0")
    laptop = device(app, "alice", "Laptop/2.0")
    tablet = device(app, "alice", "Tablet/3.0")
    bob = device(app, "bob", "Bob/1.0")
    assert phone.get("/logout-others").data == b"2"
    assert phone.get("/whoami").json["user"] == "alice"
    for other in (laptop, tablet):
        assert other.get("/whoami").json["user"] is None
    assert bob.get("/whoami").json["user"] == "bob"
    with app.app_context():
        assert Satchel.revoke_all("alice", keep_current=False) == 1
    assert phone.get("/whoami").json["user"] is None


def test_expired_sessions_leave_the_listing(store: Store) -> None:
    """Sessions that expire on their own drop out of the listing and out of any index."""
    app = Flask("expiry")
    # Three logins and a listing must fit in the idle timeout on a loaded machine.
    app.config.update(SECRET_KEY=SECRET, SATCHEL_IDLE_TIMEOUT=1.5, SATCHEL_ABSOLUTE_TIMEOUT=2)

    @app.get("/login")
    def login() -> str:
        session.regenerate(owner="carol")  # type: ignore[attr-defined]
        session["x"] = 1
        return "ok"

    Satchel(app, store=store)
    for _ in range(3):
        app.test_client().get("/login")
    logged_in = time.monotonic()  # every login's idle expiry is at most 1.5 s after this
    with app.app_context():
        assert len(Satchel.list_sessions("carol")) == 3
        time.sleep(max(0.0, logged_in + 2.0 - time.monotonic()))
        assert Satchel.list_sessions("carol") == []
        assert Satchel.list_sessions() == []
    if isinstance(store, RedisStore):
        # The owner's set expired by itself with its last member's deadline.
        assert store.client.exists(store._owner_key("carol")) == 0


def test_redis_listing_prunes_members_without_a_record(redis_store: RedisStore) -> None:
    """A member of an owner's set whose record is gone is removed when the set is listed."""
    from satchel._contract import _change

    for key in ("dave1", "dave2"):
        redis_store.save(key, _change({"x": b"1"}, owner="dave"), create=True)
    index = redis_store._owner_key("dave")
    assert sorted(redis_store.client.zrange(index, 0, -1)) == [b"dave1", b"dave2"]
    redis_store.client.delete(redis_store._key("dave1"))  # gone without the store knowing
    assert [key for key, _ in redis_store.records("dave")] == ["dave2"]
    assert redis_store.client.zrange(index, 0, -1) == [b"dave2"]


def test_redis_owner_set_expires_by_itself(redis_store: RedisStore) -> None:
    """Without any listing, an owner's set expires when its longest-lived member can."""
    app = Flask("owner-ttl")
    app.config.update(SECRET_KEY=SECRET, SATCHEL_IDLE_TIMEOUT=0.5, SATCHEL_ABSOLUTE_TIMEOUT=1)

    @app.get("/login")
    def login() -> str:
        session.regenerate(owner="dave")  # type: ignore[attr-defined]
        session["x"] = 1
        return "ok"

    Satchel(app, store=redis_store)
    app.test_client().get("/login")
    owner_key = redis_store.prefix + "i:dave"
    assert redis_store.client.exists(owner_key) == 1
    assert 0 < redis_store.client.pttl(owner_key) <= 1000  # type: ignore[operator]
    time.sleep(1.2)
    assert redis_store.client.exists(owner_key) == 0


def test_revoke_all_ends_devices_that_regenerate_throughout(app: Flask) -> None:
    """Three devices regenerating in a loop while revoke_all runs: every one is logged out.

    The review that found the old list-then-delete revoke missed a session that moved
    between the two on every store but memory; the count returned must be exact too.
    """

    devices = [device(app, "spinner", f"agent {n}") for n in range(3)]
    moving = [threading.Event() for _ in devices]
    stop = threading.Event()
    spins = [0] * len(devices)

    def spin(n: int) -> None:
        while not stop.is_set() and spins[n] < 5_000:
            devices[n].get("/renew")
            spins[n] += 1
            if spins[n] == 3:
                moving[n].set()

    pool = [threading.Thread(target=spin, args=(n,)) for n in range(len(devices))]
    for t in pool:
        t.start()
    try:
        for event in moving:
            assert event.wait(60)
        with app.test_request_context():
            before = list(spins)
            ended = Satchel.revoke_all("spinner", keep_current=False)
            during = list(spins)
    finally:
        stop.set()
        for t in pool:
            t.join()
    assert all(after >= 3 for after in before)
    # Each device either was live at the revoke (counted) or had its own regenerate
    # refused after the revoke ended it; none is still logged in or listed.
    assert ended == len(devices), (ended, before, during)
    for client in devices:
        assert client.get("/whoami").get_json()["user"] is None
    with app.test_request_context():
        assert Satchel.list_sessions("spinner") == []


# -- the owner index and concurrent listings -------------------------------------------


def test_revoke_all_ends_every_login_made_during_listings(store: Store) -> None:
    """300 logins of one owner racing listings; revoke_all ends all 300."""
    app = owner_app(store, "mallory")
    cookies = logins_race_listings(app, "mallory")
    assert len(cookies) == 300
    with app.app_context():
        assert len(Satchel.list_sessions("mallory")) == 300
        assert Satchel.revoke_all("mallory", keep_current=False) == 300
        assert Satchel.list_sessions("mallory") == []
    survivors = [c for c in cookies if client_with(app, c).get("/read").json != {}]
    assert survivors == []


# -- owners: str or int ----------------------------------------------------------------


def test_int_owners_list_and_revoke_on_every_store(store: Store) -> None:
    """regenerate(owner=1) is found by list_sessions(1) and revoke_all(1)."""
    app = owner_app(store, "unused")

    @app.get("/login-int")
    def login_int() -> str:
        session["x"] = 1
        current_session().regenerate(owner=1)
        return "ok"

    client = app.test_client()
    client.get("/login-int")
    with app.app_context():
        assert [i.owner for i in Satchel.list_sessions(1)] == ["1"]
        assert [i.owner for i in Satchel.list_sessions("1")] == ["1"]
        assert Satchel.revoke_all(1, keep_current=False) == 1
    assert client.get("/read").json == {}


@pytest.mark.parametrize("bad", [1.5, None, b"1", True, object(), ["1"]])
def test_owners_of_other_types_raise_type_error(store: Store, bad: Any) -> None:
    """any owner but a str or an int raises TypeError at the call."""
    app = owner_app(store, "x")

    @app.get("/bad")
    def bad_owner() -> str:
        session["x"] = 1
        with pytest.raises(TypeError):
            current_session().regenerate(owner=bad if bad is not None else object())
        return "ok"

    assert app.test_client().get("/bad").status_code == 200
    with app.app_context():
        with pytest.raises(TypeError):
            Satchel.revoke_all(bad)
        if bad is not None:
            with pytest.raises(TypeError):
                Satchel.list_sessions(bad)
