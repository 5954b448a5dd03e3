"""Logins (issue 24): at most N sessions per owner, and fresh logins for sensitive actions.

Each rule on every store kind (the ``store`` fixture); the overlap tests meet at
a barrier and show, by the ``login_waits`` counter, that the logins really
queued on one another.
"""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace
from typing import Any

import pytest
from flask import Flask, session

import satchel.session
from satchel import Satchel
from satchel.errors import ConfigError, NotLoggedIn, TooManySessions
from satchel.flask import fresh_login_required
from satchel.signals import (
    cookie_rejected,
    session_evicted,
    session_regenerated,
    session_revoked,
)
from satchel.stores import MemoryStore, Store

from .conftest import SECRET

LIMIT = 3


def make(store: Store, **config: Any) -> Flask:
    app = Flask("logins")
    app.config.update(
        SECRET_KEY=SECRET, SATCHEL_MAX_SESSIONS_PER_OWNER=LIMIT, SATCHEL_TRACK_CLIENT=True
    )
    app.config.update(config)
    Satchel(app, store=store)

    @app.post("/login/<user>")
    def login(user: str) -> tuple[str, int]:
        try:
            session.regenerate(owner=user)  # type: ignore[attr-defined]
        except TooManySessions as exc:
            return f"refused: {exc.limit}", 409
        session["user"] = user
        return "ok", 200

    @app.get("/cart/<item>")
    def cart(item: str) -> str:
        session.setdefault("cart", []).append(item)
        return "ok"

    @app.get("/who")
    def who() -> dict[str, Any]:
        return {
            "owner": session.owner,  # type: ignore[attr-defined]
            "at": session.authenticated_at,  # type: ignore[attr-defined]
            "user": session.get("user"),
            "cart": session.get("cart"),
        }

    @app.post("/reauth")
    def reauth() -> str:
        session.reauthenticated()  # type: ignore[attr-defined]
        return "ok"

    @app.get("/sensitive")
    @fresh_login_required(60)
    def sensitive() -> str:
        return "done"

    @app.get("/sensitive-redirect")
    @fresh_login_required(60, redirect_to=lambda: "/confirm?next=/sensitive-redirect")
    def sensitive_redirect() -> str:
        return "done"

    @app.get("/mine")
    def mine() -> list[dict[str, Any]]:
        return [
            {"ref": i.reference, "at": i.authenticated_at, "current": i.current}
            for i in Satchel.list_sessions(session["user"])
        ]

    return app


def live(store: Store, owner: str) -> list[str]:
    return [key for key, _ in store.records(owner)]  # type: ignore[attr-defined]


def hold_first_login_until_another_waits(app: Flask, store: Store) -> None:
    """The first login to take its owner's lock holds it until another login has
    waited for that lock: the overlap, made sure of (the app takes no other lock)."""
    original = store.acquire  # type: ignore[attr-defined]
    first = threading.Lock()

    def acquire(key: str, token: str, lease: float) -> bool:
        taken: bool = original(key, token, lease)
        if taken and first.acquire(blocking=False):
            deadline = time.monotonic() + 10
            while Satchel.stats(app)["login_waits"] == 0 and time.monotonic() < deadline:
                time.sleep(0.001)
        return taken

    store.acquire = acquire  # type: ignore[attr-defined]


def test_overlapping_logins_leave_exactly_the_limit(store: Store) -> None:
    """3 × N logins of one owner at once (met at a barrier): exactly N live sessions
    after, the rest evicted and announced, and the logins really queued."""
    app = make(store)
    clients = [app.test_client() for _ in range(3 * LIMIT)]
    for i, client in enumerate(clients):  # each device has an anonymous session first
        client.get(f"/cart/item{i}")
    evicted: list[str] = []
    session_evicted.connect(lambda _app, **kw: evicted.append(kw["reference"]), app, weak=False)
    hold_first_login_until_another_waits(app, store)
    barrier = threading.Barrier(len(clients))
    statuses: list[int] = []

    def log_in(client: Any) -> None:
        barrier.wait()
        statuses.append(client.post("/login/ada").status_code)

    threads = [threading.Thread(target=log_in, args=(c,)) for c in clients]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses == [200] * len(clients)
    kept = live(store, "ada")
    assert len(kept) == LIMIT
    assert len(evicted) == 2 * LIMIT and not set(evicted) & set(kept)
    stats = Satchel.stats(app)
    assert stats["evictions"] == 2 * LIMIT
    assert stats["login_waits"] >= 1  # the overlap happened: logins waited for each other
    owners = [c.get("/who").get_json()["owner"] for c in clients]
    assert owners.count("ada") == LIMIT and owners.count(None) == 2 * LIMIT


def test_evict_oldest_ends_the_least_recently_seen(store: Store) -> None:
    app = make(store, SATCHEL_IDLE_TIMEOUT=3600)
    devices = [app.test_client() for _ in range(LIMIT + 1)]
    for device in devices[:LIMIT]:
        assert device.post("/login/bo").status_code == 200
    # A request that only reads makes the first device the most recently seen: the
    # second is now the least recently seen, and the next login ends it.
    devices[0].get("/who")
    devices[LIMIT].post("/login/bo")
    seen = [d.get("/who").get_json() for d in devices]
    assert [s["owner"] for s in seen] == ["bo", None, "bo", "bo"]
    assert seen[1] == {"owner": None, "at": None, "user": None, "cart": None}  # anonymous
    assert len(live(store, "bo")) == LIMIT


def test_refuse_raises_in_the_view_and_changes_nothing(store: Store) -> None:
    app = make(store, SATCHEL_MAX_SESSIONS_POLICY="refuse")
    for _ in range(LIMIT):
        assert app.test_client().post("/login/cy").status_code == 200
    late = app.test_client()
    late.get("/cart/apple")
    response = late.post("/login/cy")
    assert response.status_code == 409 and response.text == f"refused: {LIMIT}"
    assert late.get("/who").get_json() == {
        "owner": None, "at": None, "user": None, "cart": ["apple"]
    }  # fmt: skip
    assert len(live(store, "cy")) == LIMIT
    assert Satchel.stats(app)["refused_logins"] == 1


def test_overlapping_refusals_never_exceed_the_limit(store: Store) -> None:
    """Under "refuse", logins that all pass the view's check at once are decided, exactly,
    at the save: N stored, the others not (their clients stay anonymous)."""
    app = make(store, SATCHEL_MAX_SESSIONS_POLICY="refuse")
    clients = [app.test_client() for _ in range(3 * LIMIT)]
    hold_first_login_until_another_waits(app, store)
    barrier = threading.Barrier(len(clients))

    def log_in(client: Any) -> None:
        barrier.wait()
        client.post("/login/dee")

    threads = [threading.Thread(target=log_in, args=(c,)) for c in clients]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(live(store, "dee")) == LIMIT
    owners = [c.get("/who").get_json()["owner"] for c in clients]
    assert owners.count("dee") == LIMIT
    assert Satchel.stats(app)["refused_logins"] == 2 * LIMIT


def test_a_login_again_from_a_logged_in_device_counts_once(store: Store) -> None:
    app = make(store)
    devices = [app.test_client() for _ in range(LIMIT)]
    for device in devices:
        device.post("/login/eve")
    devices[0].post("/login/eve")  # its own session is not counted against it
    assert [d.get("/who").get_json()["owner"] for d in devices] == ["eve"] * LIMIT


def test_authenticated_at_and_reauthentication(store: Store) -> None:
    app = make(store)
    client = app.test_client()
    client.get("/cart/pear")
    assert client.get("/who").get_json()["at"] is None  # anonymous
    before = time.time()
    client.post("/login/fay")
    first = client.get("/who").get_json()["at"]
    assert before <= first <= time.time()
    cookie = client.get_cookie("session")
    assert cookie is not None
    time.sleep(0.01)
    client.get("/cart/plum")  # a later write keeps the login time
    assert client.get("/who").get_json()["at"] == first
    client.post("/reauth")
    after = client.get("/who").get_json()
    assert after["owner"] == "fay" and after["at"] > first and after["cart"] == ["pear", "plum"]
    renewed = client.get_cookie("session")
    assert renewed is not None and renewed.value != cookie.value  # a new ID
    mine = client.get("/mine").get_json()
    assert [(m["current"], m["at"]) for m in mine] == [(True, after["at"])]


def test_reauthenticated_needs_a_login() -> None:
    app = make(MemoryStore())
    app.config["PROPAGATE_EXCEPTIONS"] = True
    with pytest.raises(NotLoggedIn):
        app.test_client().post("/reauth")


def test_fresh_login_required_on_flask(monkeypatch: pytest.MonkeyPatch) -> None:
    later = [0.0]  # seconds added to the clock the session's login times are read by
    monkeypatch.setattr(
        satchel.session, "time", SimpleNamespace(time=lambda: time.time() + later[0])
    )
    app = make(MemoryStore())
    client = app.test_client()
    assert client.get("/sensitive").status_code == 401  # no login at all
    response = client.get("/sensitive-redirect")
    assert response.status_code == 303
    assert response.headers["Location"] == "/confirm?next=/sensitive-redirect"
    client.post("/login/gus")
    assert client.get("/sensitive").text == "done"
    assert client.get("/sensitive-redirect").text == "done"
    later[0] = 61.0  # a minute later: older than asked
    assert client.get("/sensitive-redirect").status_code == 303
    client.post("/reauth")
    assert client.get("/sensitive-redirect").text == "done"


def test_lifecycle_signals_carry_reasons_and_references() -> None:
    app = make(MemoryStore())
    seen: list[tuple[str, Any]] = []
    session_regenerated.connect(
        lambda _a, **kw: seen.append(("regenerated", kw["reason"])), app, weak=False
    )
    session_revoked.connect(
        lambda _a, **kw: seen.append(("revoked", (kw["by"], kw["count"]))), app, weak=False
    )
    cookie_rejected.connect(lambda _a, **kw: seen.append(("rejected", None)), app, weak=False)
    client = app.test_client()
    client.get("/cart/x")
    client.post("/login/hal")
    client.post("/reauth")
    with app.test_request_context():
        assert Satchel.revoke_all("hal", keep_current=False) == 1
    client.set_cookie("session", "forged.value")
    client.get("/who")
    assert seen == [
        ("regenerated", "login"),
        ("regenerated", "reauthentication"),
        ("revoked", ("revoke_all", 1)),
        ("rejected", None),
    ]


@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        ("SATCHEL_MAX_SESSIONS_PER_OWNER", 0, "SATCHEL_MAX_SESSIONS_PER_OWNER must be"),
        ("SATCHEL_MAX_SESSIONS_PER_OWNER", "3", "SATCHEL_MAX_SESSIONS_PER_OWNER must be"),
        ("SATCHEL_MAX_SESSIONS_POLICY", "oldest", "SATCHEL_MAX_SESSIONS_POLICY must be"),
    ],
)
def test_bad_limits_are_config_errors(setting: str, value: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        make(MemoryStore(), **{setting: value})
