"""The hardening review's findings, each on every store: races, limits, cookies, parity.

Each test names the finding it covers (issue "Hardening", items 1-15). Store-level
proofs of the same guarantees live in the store contract (``satchel.testing``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
from flask import Flask, flash, get_flashed_messages, jsonify, request, session

from satchel import Satchel, SerializationError, current_session, locked
from satchel.errors import StoreUnavailable
from satchel.signing import CookieSigner, store_key
from satchel.stores import Store

from .conftest import SECRET, session_id_of, stored_keys

AppFactory = Callable[..., Flask]


def cookie_of(client: Any) -> str:
    cookie = client.get_cookie("session")
    assert cookie is not None
    return str(cookie.value)


def run_together(*jobs: Callable[[], Any]) -> list[Any]:
    """Run each job in its own thread; return their results in order."""
    results: list[Any] = [None] * len(jobs)

    def run(i: int) -> None:
        results[i] = jobs[i]()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return results


def client_with(app: Flask, cookie: str) -> Any:
    client = app.test_client()
    client.set_cookie("session", cookie)
    return client


def logged_in(app: Flask) -> tuple[Any, str]:
    """A client that has visited /login, and its session cookie."""
    client = app.test_client()
    client.get("/login")
    return client, cookie_of(client)


def change_settings(app: Flask, **changes: Any) -> None:
    """Change the manager's settings after init_app, as a lowered limit would."""
    manager = app.extensions["satchel"]
    manager.settings = replace(manager.settings, **changes)


# -- 1. the owner index and concurrent listings -------------------------------------------


def logins_race_listings(app: Flask, owner: str, logins: int = 300) -> list[str]:
    """``logins`` logins of one owner on 6 threads while 2 threads list the owner's sessions."""
    cookies: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def log_in(count: int) -> None:
        for _ in range(count):
            client = app.test_client()
            assert client.get("/login").status_code == 200
            with lock:
                cookies.append(cookie_of(client))

    def list_sessions() -> None:
        with app.app_context():
            while not stop.is_set():
                Satchel.list_sessions(owner)

    listers = [threading.Thread(target=list_sessions) for _ in range(2)]
    for t in listers:
        t.start()
    try:
        run_together(*[lambda: log_in(logins // 6)] * 6)
    finally:
        stop.set()
        for t in listers:
            t.join()
    return cookies


def owner_app(store: Store, owner: str) -> Flask:
    app = Flask("owners")
    app.config.update(SECRET_KEY=SECRET)
    Satchel(app, store=store)

    @app.get("/login")
    def login() -> str:
        session["seen"] = True
        current_session().regenerate(owner=owner)
        return "ok"

    @app.get("/read")
    def read() -> dict[str, Any]:
        return dict(session)

    return app


def test_revoke_all_ends_every_login_made_during_listings(store: Store) -> None:
    """Item 1: 300 logins of one owner racing listings; revoke_all ends all 300."""
    app = owner_app(store, "mallory")
    cookies = logins_race_listings(app, "mallory")
    assert len(cookies) == 300
    with app.app_context():
        assert len(Satchel.list_sessions("mallory")) == 300
        assert Satchel.revoke_all("mallory", keep_current=False) == 300
        assert Satchel.list_sessions("mallory") == []
    survivors = [c for c in cookies if client_with(app, c).get("/read").json != {}]
    assert survivors == []


# -- 2. an emptying save ------------------------------------------------------------------


def test_emptying_a_session_keeps_what_an_overlapping_request_stored(store: Store) -> None:
    """Item 2: popping the last flash while another request stores a cart loses no cart."""
    app = Flask("flashes")
    app.config.update(SECRET_KEY=SECRET)
    Satchel(app, store=store)
    loaded, stored = threading.Event(), threading.Event()

    @app.get("/flash")
    def flash_view() -> str:
        flash("hello")
        return "ok"

    @app.get("/show")
    def show() -> str:
        messages = get_flashed_messages()  # the session is empty after this pop...
        loaded.set()
        assert stored.wait(10)  # ...but the cart was stored meanwhile
        return ",".join(messages)

    @app.get("/cart")
    def cart() -> str:
        session["cart"] = ["book"]
        return "ok"

    @app.get("/read")
    def read() -> dict[str, Any]:
        return dict(session)

    client = app.test_client()
    client.get("/flash")
    cookie = cookie_of(client)

    def show_flashes() -> Any:
        return client_with(app, cookie).get("/show")

    def add_to_cart() -> Any:
        assert loaded.wait(10)
        response = client_with(app, cookie).get("/cart")
        stored.set()
        return response

    shown, carted = run_together(show_flashes, add_to_cart)
    assert shown.status_code == carted.status_code == 200
    assert shown.text == "hello"
    assert "Set-Cookie" not in shown.headers  # the cookie still names a live session
    assert client_with(app, cookie).get("/read").json == {"cart": ["book"]}


def test_an_emptied_session_is_deleted_with_its_cookie(store: Store) -> None:
    """Item 2: with nothing stored meanwhile, emptying still deletes record and cookie."""
    app = Flask("flashes")
    app.config.update(SECRET_KEY=SECRET)
    Satchel(app, store=store)
    app.add_url_rule("/flash", "flash", lambda: flash("x") or "ok")
    app.add_url_rule("/show", "show", lambda: ",".join(get_flashed_messages()))
    client = app.test_client()
    client.get("/flash")
    assert len(stored_keys(store)) == 1
    response = client.get("/show")
    assert "Max-Age=0" in response.headers["Set-Cookie"]
    assert stored_keys(store) == []


# -- 3. owners: str or int ----------------------------------------------------------------


def test_int_owners_list_and_revoke_on_every_store(store: Store) -> None:
    """Item 3: regenerate(owner=1) is found by list_sessions(1) and revoke_all(1)."""
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
    """Item 3: any owner but a str or an int raises TypeError at the call."""
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


# -- 4. prefixes --------------------------------------------------------------------------


def prefixed_apps(store: Store) -> tuple[Flask, Flask]:
    """Two apps with the same secret on one store, under different prefixes."""
    apps = []
    for name in ("shop", "blog"):
        app = owner_app(store.with_prefix(f"{name}:"), "1")  # type: ignore[attr-defined]
        apps.append(app)
    return apps[0], apps[1]


def test_apps_with_different_prefixes_never_meet(store: Store) -> None:
    """Item 4: one store, two prefixes: no shared session, listing or revocation."""
    shop, blog = prefixed_apps(store)
    shop_client, blog_client = shop.test_client(), blog.test_client()
    shop_client.get("/login")
    blog_client.get("/login")
    # The same secret key: the shop's cookie is genuine to the blog, but names nothing there.
    assert client_with(blog, cookie_of(shop_client)).get("/read").json == {}
    with blog.app_context():
        assert len(Satchel.list_sessions("1")) == 1
        assert Satchel.revoke_all("1", keep_current=False) == 1
    assert shop_client.get("/read").json == {"seen": True}
    assert blog_client.get("/read").json == {}


def test_key_prefix_setting_and_url_option(tmp_path: Any) -> None:
    """Item 4: SATCHEL_KEY_PREFIX and ?prefix= build a namespaced store; conflicts refuse."""
    from satchel import ConfigError

    url = f"sqlite:///{tmp_path}/s.sqlite3"
    stores = []
    for config in (
        {"SATCHEL_STORE": url, "SATCHEL_KEY_PREFIX": "a:"},
        {"SATCHEL_STORE": url + "?prefix=a:"},
        {"SATCHEL_STORE": url + "?prefix=a:", "SATCHEL_KEY_PREFIX": "a:"},
    ):
        app = Flask("prefix")
        app.config.update(SECRET_KEY=SECRET, **config)
        Satchel(app)
        stores.append(app.extensions["satchel"].store)
    assert [s.prefix for s in stores] == ["a:", "a:", "a:"]
    for config in (
        {"SATCHEL_STORE": url + "?prefix=b:", "SATCHEL_KEY_PREFIX": "a:"},
        {"SATCHEL_KEY_PREFIX": 5},
    ):
        app = Flask("prefix")
        app.config.update(SECRET_KEY=SECRET, **config)
        with pytest.raises(ConfigError):
            Satchel(app)


# -- 5. regenerate() racing an end ---------------------------------------------------------


def test_regenerate_in_flight_does_not_revive_a_cleared_session(store: Store) -> None:
    """Item 5: a session cleared while a login regenerates it stays ended."""
    app = owner_app(store, "eve")
    loaded, cleared = threading.Event(), threading.Event()

    @app.get("/slow-login")
    def slow_login() -> str:
        dict(session)
        loaded.set()
        assert cleared.wait(10)
        current_session().regenerate(owner="eve")
        return "ok"

    @app.get("/logout")
    def logout() -> str:
        session.clear()
        return "ok"

    _client, cookie = logged_in(app)

    def log_out() -> Any:
        assert loaded.wait(10)
        response = client_with(app, cookie).get("/logout")
        cleared.set()
        return response

    slow, _ = run_together(lambda: client_with(app, cookie).get("/slow-login"), log_out)
    assert slow.status_code == 200
    assert "Max-Age=0" in slow.headers["Set-Cookie"]  # ended: no new session
    assert stored_keys(store) == []
    with app.app_context():
        assert Satchel.list_sessions("eve") == []


# -- 6. deep nesting ----------------------------------------------------------------------


def nested(depth: int) -> Any:
    value: Any = []
    for _ in range(depth - 1):
        value = [value]
    return value


def test_deep_nesting_is_refused_at_assignment(store: Store) -> None:
    """Item 6: request JSON nested 500-970 deep raises SerializationError; nothing stored."""
    app = owner_app(store, "x")

    @app.post("/store")
    def store_json() -> Any:
        try:
            session["data"] = request.get_json()
        except SerializationError as exc:
            return f"refused: {exc}", 400
        return "ok"

    @app.get("/store/<int:depth>")
    def store_deep(depth: int) -> Any:
        try:
            session["data"] = nested(depth)
        except SerializationError as exc:
            return f"refused: {exc}", 400
        return "ok"

    client = app.test_client()
    client.get("/login")
    body = "[" * 300 + "]" * 300
    response = client.post("/store", data=body, content_type="application/json")
    assert response.status_code == 400 and "nested deeper" in response.text
    for depth in (129, 500, 970):
        response = client.get(f"/store/{depth}")
        assert response.status_code == 400 and "nested deeper" in response.text
    assert client.post("/store", json=nested(100)).status_code == 200
    assert client.get("/read").status_code == 200
    assert client.get("/read").json["data"] == nested(100)


def test_an_unreadable_record_counts_as_absent(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    """Item 6: a stored value that cannot load ends the session once, never a 500 forever."""
    from satchel.stores.base import Change

    app = owner_app(store, "x")
    client = app.test_client()
    client.get("/login")
    key = store_key(session_id_of(cookie_of(client)))
    poison = ("[" * 3000 + "]" * 3000).encode()
    now = time.time()
    store.save(key, Change(set={"deep": poison}, touched_at=now, expires_at=now + 60), create=False)
    with caplog.at_level(logging.WARNING, logger="satchel.security"):
        response = client.get("/read")
    assert response.status_code == 200 and response.json == {}
    assert "Max-Age=0" in response.headers["Set-Cookie"]
    assert "cannot be read back" in caplog.text
    assert stored_keys(store) == []
    assert client.get("/login").status_code == 200  # and the visitor carries on


# -- 7. the size limit under overlap --------------------------------------------------------


def test_size_limit_holds_for_overlapping_requests(store: Store) -> None:
    """Item 7: 8 overlapping 9 KB writes under a 10,000-byte limit: one kept, the rest refused."""
    app = owner_app(store, "x")
    change_settings(app, max_size=10_000)
    barrier = threading.Barrier(8, timeout=10)

    @app.errorhandler(Exception)
    def too_large(exc: Exception) -> tuple[str, int]:
        return type(getattr(exc, "original_exception", exc)).__name__, 500

    @app.get("/big/<int:n>")
    def big(n: int) -> str:
        dict(session)
        barrier.wait()
        session[f"blob{n}"] = "x" * 9000
        return "ok"

    _client, cookie = logged_in(app)
    jobs = [lambda n=n: client_with(app, cookie).get(f"/big/{n}") for n in range(8)]
    responses = run_together(*jobs)
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] + [500] * 7
    assert {r.text for r in responses if r.status_code == 500} == {"SessionTooLarge"}
    record = store.load(store_key(session_id_of(cookie)))
    assert record is not None
    assert sum(len(k) + len(v) for k, v in record.fields.items()) <= 10_000
    assert client_with(app, cookie).get("/login").status_code == 200  # later writes work


def test_a_session_over_a_lowered_limit_stays_readable_and_shrinkable(store: Store) -> None:
    """Item 7: after SATCHEL_MAX_SIZE is lowered, an oversized session reads and shrinks."""
    app = owner_app(store, "x")

    @app.get("/grow")
    def grow() -> str:
        session["a"] = "x" * 5000
        session["b"] = "x" * 5000
        return "ok"

    @app.get("/shrink")
    def shrink() -> str:
        del session["a"]
        return "ok"

    client = app.test_client()
    client.get("/grow")
    change_settings(app, max_size=2000)
    assert set(client.get("/read").json) == {"a", "b"}
    assert client.get("/shrink").status_code == 200
    assert set(client.get("/read").json) == {"b"}


# -- 8. strict mode's lease ---------------------------------------------------------------


def test_a_view_outliving_its_lease_cannot_overwrite(store: Store) -> None:
    """Item 8: the slow request's lease lapses and another takes the lock: 503, no loss."""
    app = owner_app(store, "x")
    change_settings(app, lock_lease=0.3)
    started, fast_done = threading.Event(), threading.Event()

    @app.get("/slow")
    @locked
    def slow() -> str:
        session["count"] = session.get("count", 0) + 100
        started.set()
        # The other request gets the lock only once this one's lease has lapsed; this
        # view outlives its lease for sure by waiting for that request to finish.
        assert fast_done.wait(30)
        return "ok"

    @app.get("/fast")
    @locked
    def fast() -> str:
        session["count"] = session.get("count", 0) + 1
        return "ok"

    _client, cookie = logged_in(app)

    def second() -> Any:
        assert started.wait(10)
        response = client_with(app, cookie).get("/fast")
        fast_done.set()
        return response

    slow_r, fast_r = run_together(lambda: client_with(app, cookie).get("/slow"), second)
    assert fast_r.status_code == 200
    assert slow_r.status_code == 503 and "another request" in slow_r.text
    assert client_with(app, cookie).get("/read").json["count"] == 1


# -- 9. regenerate() and the absolute timeout ----------------------------------------------


def test_regenerating_does_not_restart_the_absolute_timeout(make_app: AppFactory) -> None:
    """Item 9: regenerating every 0.25 s cannot keep a 1 s-absolute session past 1 s."""
    app = make_app(SATCHEL_ABSOLUTE_TIMEOUT=1)

    @app.get("/login")
    def login() -> str:
        session["n"] = session.get("n", 0) + 1
        current_session().regenerate()
        return str(session["n"])

    client = app.test_client()
    started = time.monotonic()
    counts = []
    while time.monotonic() - started < 2.0:
        counts.append(int(client.get("/login").text))
        time.sleep(0.25)
    # The count restarts once the first session ended, about a second in.
    assert 1 in counts[1:]
    assert max(counts) <= 6


# -- 10 and 11. cookies -------------------------------------------------------------------


def malleated(cookie: str) -> list[str]:
    """Cookie strings that decode to the same ID and signature, or nearly."""
    value, signature = cookie.split(".")
    variants = [
        cookie + "=",
        value + "=." + signature,
        cookie.replace("-", "+").replace("_", "/"),
        value + "." + signature[:-1] + chr(ord(signature[-1]) + 1),
        value[:10] + "!" + value[10:] + "." + signature,
        value + ".." + signature,
        " " + cookie,
    ]
    return [v for v in variants if v != cookie]


def test_only_the_canonical_cookie_text_is_accepted(store: Store) -> None:
    """Item 10: other spellings of a genuine cookie are rejected."""
    app = owner_app(store, "x")
    _client, cookie = logged_in(app)
    assert client_with(app, cookie).get("/read").json == {"seen": True}
    signer = CookieSigner(SECRET)
    assert signer.unsign(cookie) is not None
    for variant in malleated(cookie):
        assert signer.unsign(variant) is None, variant


def test_a_bad_cookie_of_the_same_name_does_not_hide_the_genuine_one(store: Store) -> None:
    """Item 11: `session=garbage; session=<genuine>` keeps the visitor logged in."""
    app = owner_app(store, "x")
    _client, cookie = logged_in(app)
    plain = app.test_client(use_cookies=False)
    for header in (f"session=garbage; session={cookie}", f"session={cookie}; session=garbage"):
        response = plain.get("/read", headers={"Cookie": header})
        assert response.json == {"seen": True}
        assert "Set-Cookie" not in response.headers  # the genuine cookie is never expired


# -- 13. settings ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "setting",
    [
        {"SATCHEL_IDLE_TIMEOUT": float("nan")},
        {"SATCHEL_ABSOLUTE_TIMEOUT": float("inf")},
        {"SATCHEL_IDLE_TIMEOUT": -5},
        {"SATCHEL_IDLE_TIMEOUT": 0},
        {"PERMANENT_SESSION_LIFETIME": 0},
        {"SATCHEL_LOCK_LEASE": float("nan")},
    ],
)
def test_non_finite_and_non_positive_durations_are_refused(setting: dict[str, Any]) -> None:
    """Item 13: NaN, infinite, negative and zero lifetimes raise ConfigError at init_app."""
    from satchel import ConfigError

    app = Flask("durations")
    app.config.update(SECRET_KEY=SECRET, SATCHEL_STORE="memory://", **setting)
    with pytest.raises(ConfigError, match="positive, finite"):
        Satchel(app)


# -- 14. the app's error handler on save ----------------------------------------------------


class FailingSaves:
    """A store whose saves fail as a stopped server's would; loads work."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def save(self, key: str, change: Any, *, create: bool) -> Any:
        raise StoreUnavailable("FailingSaves", "refusing writes")

    def touch(self, key: str, touched_at: float, expires_at: float) -> bool:
        raise StoreUnavailable("FailingSaves", "refusing writes")


def test_a_custom_store_error_handler_answers_save_failures_too(store: Store) -> None:
    """Item 14: @app.errorhandler(StoreUnavailable) shapes the answer to a failed save."""
    app = Flask("handler")
    app.config.update(SECRET_KEY=SECRET)
    Satchel(app, store=FailingSaves(store))  # type: ignore[arg-type]

    @app.errorhandler(StoreUnavailable)
    def unavailable(exc: StoreUnavailable) -> Any:
        response = jsonify(error="sessions are down", detail=exc.reason)
        response.status_code = 503
        response.headers["Retry-After"] = "7"
        return response

    @app.get("/write")
    def write() -> str:
        session["x"] = 1
        return "written"

    response = app.test_client().get("/write")
    assert response.status_code == 503
    assert response.is_json and response.json["error"] == "sessions are down"
    assert response.headers["Retry-After"] == "7"
    assert "Set-Cookie" not in response.headers


# -- 15. key rotation -----------------------------------------------------------------------


def test_a_cookie_signed_with_a_fallback_key_is_signed_anew_on_use(store: Store) -> None:
    """Item 15: after a rotation, an old-key cookie is re-signed with the new key."""
    old_key, new_key = SECRET, "a-brand-new-secret-key-0123456789-abcdefgh"
    old_app = owner_app(store, "x")
    client = old_app.test_client()
    client.get("/login")
    old_cookie = cookie_of(client)

    new_app = owner_app(store, "x")
    new_app.config.update(SECRET_KEY=new_key, SECRET_KEY_FALLBACKS=[old_key])
    rotated = client_with(new_app, old_cookie)
    response = rotated.get("/read")
    assert response.json == {"seen": True}
    new_cookie = cookie_of(rotated)
    assert new_cookie != old_cookie
    assert session_id_of(new_cookie) == session_id_of(old_cookie)
    assert CookieSigner(new_key).unsign(new_cookie) is not None
    assert "Set-Cookie" not in rotated.get("/read").headers  # once is enough


# -- Flask parity ---------------------------------------------------------------------------


def test_modified_stays_true_after_the_save_that_created_the_session(app_on: Flask) -> None:
    """Parity: session.modified is still True in teardown after a creating save."""
    seen: list[bool] = []

    @app_on.get("/create")
    def create() -> str:
        session["x"] = 1
        return "ok"

    @app_on.teardown_request
    def note(exc: BaseException | None) -> None:
        seen.append(session.modified)

    app_on.test_client().get("/create")
    assert seen == [True]


def test_secret_key_set_after_init_app_is_used(store: Store) -> None:
    """Parity: SECRET_KEY and fallbacks changed after init_app take effect at once."""
    app = owner_app(store, "x")
    client = app.test_client()
    client.get("/login")
    first = cookie_of(client)
    app.config["SECRET_KEY"] = "another-secret-key-set-later-0123456789abcdef"
    assert client.get("/read").json == {}  # the old key is not accepted any more
    app.config["SECRET_KEY_FALLBACKS"] = [SECRET]
    assert client_with(app, first).get("/read").json == {"seen": True}
    app.config["SECRET_KEY_FALLBACKS"].clear()  # changed in place
    assert client_with(app, first).get("/read").json == {}


@pytest.fixture
def app_on(make_app: AppFactory) -> Flask:
    return make_app()
