"""The Flask adapter on every store: lifecycle, cookies, change tracking, overlap."""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from flask import Flask, make_response, request, session
from werkzeug.http import parse_cookie

from satchel import Satchel, current_session
from satchel.signing import CookieSigner, store_key
from satchel.stores import MemoryStore, Store

from .conftest import SECRET, session_id_of, stored_keys
from .support.flask_apps import client_with, cookie_of, owner_app

AppFactory = Callable[..., Flask]


def add_views(app: Flask) -> Flask:
    """A small API over the session for the tests to drive."""

    @app.get("/noop")
    def noop() -> str:
        return "noop"

    @app.get("/read")
    def read() -> dict[str, Any]:
        return {"data": dict(session)}

    @app.get("/contains")
    def contains() -> str:
        return str("x" in session)

    @app.get("/len")
    def length() -> str:
        return str(len(session))

    @app.get("/set/<key>/<value>")
    def set_(key: str, value: str) -> str:
        session[key] = value
        return "ok"

    @app.get("/del/<key>")
    def delete(key: str) -> str:
        session.pop(key, None)
        return "ok"

    @app.get("/append/<key>/<value>")
    def append(key: str, value: str) -> str:
        session.setdefault(key, []).append(value)
        return "ok"

    @app.get("/nested/<value>")
    def nested(value: str) -> str:
        session.setdefault("profile", {"tags": {}})["tags"][value] = True
        return "ok"

    @app.get("/clear")
    def clear() -> str:
        session.clear()
        return "ok"

    @app.get("/clear-then-set")
    def clear_then_set() -> str:
        session.clear()
        session["after"] = "clear"
        return "ok"

    @app.get("/regenerate")
    def regenerate() -> str:
        session.regenerate()  # type: ignore[attr-defined]
        return "ok"

    @app.get("/permanent")
    def permanent() -> str:
        session.permanent = True
        session["p"] = 1
        return "ok"

    @app.get("/only-permanent")
    def only_permanent() -> str:
        session.permanent = True
        return "ok"

    @app.get("/set-then-delete")
    def set_then_delete() -> str:
        session["tmp"] = 1
        del session["tmp"]
        return "ok"

    return app


@pytest.fixture
def app(make_app: AppFactory) -> Flask:
    return add_views(make_app())


def cookie_value(client: Any, name: str = "session") -> str | None:
    cookie = client.get_cookie(name)
    return None if cookie is None else str(cookie.value)


class CountingStore:
    """Wraps a store and counts the writes that reach it."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.writes: list[str] = []

    def load(self, key: str) -> Any:
        return self.inner.load(key)

    def save(self, key: str, change: Any, *, create: bool) -> bool:
        self.writes.append("save")
        return self.inner.save(key, change, create=create)

    def touch(self, key: str, touched_at: float, expires_at: float) -> bool:
        self.writes.append("touch")
        return self.inner.touch(key, touched_at, expires_at)

    def delete(self, key: str) -> None:
        self.writes.append("delete")
        self.inner.delete(key)

    def purge_expired(self) -> int:
        return self.inner.purge_expired()

    def close(self) -> None:
        self.inner.close()


# -- lifecycle --------------------------------------------------------------------------


def test_reading_visitor_gets_no_cookie_and_no_record(app: Flask, store: Store) -> None:
    """A visitor whose requests only read is never given a cookie or a record."""
    client = app.test_client()
    for path in ("/noop", "/read", "/contains", "/len"):
        response = client.get(path)
        assert response.status_code == 200
        assert "Set-Cookie" not in response.headers
    assert stored_keys(store) == []


def test_first_write_creates_cookie_and_record(app: Flask, store: Store) -> None:
    """Storing something sets a signed-ID cookie and one record; data stays server-side."""
    client = app.test_client()
    response = client.get("/set/name/Ada-Lovelace")
    header = response.headers["Set-Cookie"]
    assert "HttpOnly" in header and "SameSite=Lax" in header and "Path=/" in header
    assert "Expires" not in header  # a browser-session cookie
    value = cookie_value(client)
    assert value is not None and "Ada" not in value
    # Only the SHA-256 of the ID is stored, computed here independently of satchel.
    digest = hashlib.sha256(session_id_of(value).encode("ascii")).hexdigest()
    assert stored_keys(store) == [digest]
    assert client.get("/read").json == {"data": {"name": "Ada-Lovelace"}}


def test_store_never_holds_the_raw_id(app: Flask, store: Store) -> None:
    """Only the hash of the ID is a store key; the ID itself appears nowhere."""
    client = app.test_client()
    client.get("/set/a/1")
    value = cookie_value(client)
    assert value is not None
    raw_id = session_id_of(value)
    assert len(raw_id) == 43
    keys = stored_keys(store)
    assert raw_id not in keys and all(raw_id not in k for k in keys)
    record = store.load(store_key(raw_id))
    assert record is not None
    assert all(raw_id.encode() not in v for v in record.fields.values())


def test_vary_cookie_when_session_read(app: Flask) -> None:
    """Responses whose view read the session (in, len too) say Vary: Cookie; others do not."""
    client = app.test_client()
    client.get("/set/a/1")
    for path in ("/read", "/contains", "/len"):
        assert "Cookie" in client.get(path).headers.get("Vary", "")
    assert "Cookie" not in client.get("/noop").headers.get("Vary", "")


def test_vary_cookie_joins_a_vary_the_view_set(make_app: AppFactory) -> None:
    """A view's own Vary header keeps its values; Cookie is added once, not twice."""
    app = make_app()

    @app.get("/negotiated")
    def negotiated() -> Any:
        response = make_response(str(session.get("a")))
        response.headers["Vary"] = (
            "Accept-Encoding, Cookie" if "twice" in request.args else "Accept"
        )
        return response

    client = app.test_client()
    assert client.get("/negotiated").headers["Vary"] == "Accept, Cookie"
    assert client.get("/negotiated?twice").headers["Vary"] == "Accept-Encoding, Cookie"


def test_clear_deletes_record_and_expires_cookie(make_app: AppFactory, store: Store) -> None:
    """clear() deletes the record and expires the cookie with the attributes it was set with."""
    app = add_views(
        make_app(
            SESSION_COOKIE_DOMAIN="example.test",
            SESSION_COOKIE_PATH="/app",
            SESSION_COOKIE_SECURE=True,
            SESSION_COOKIE_SAMESITE="Strict",
        )
    )
    client = app.test_client(use_cookies=False)
    base = "https://www.example.test"
    created = client.get("/set/a/1", base_url=base)
    set_header = created.headers["Set-Cookie"]
    old = parse_cookie(set_header)["session"]
    assert store.load(store_key(session_id_of(old))) is not None

    response = client.get("/clear", base_url=base, headers={"Cookie": f"session={old}"})
    header = response.headers["Set-Cookie"]
    assert "Expires=Thu, 01 Jan 1970" in header and "Max-Age=0" in header
    for attribute in ("Domain=example.test", "Path=/app", "Secure", "HttpOnly", "SameSite=Strict"):
        assert attribute in header and attribute in set_header
    assert stored_keys(store) == []

    replay = client.get("/read", base_url=base, headers={"Cookie": f"session={old}"})
    assert replay.json == {"data": {}}
    assert stored_keys(store) == []


def test_data_stored_after_clear_gets_a_new_id(app: Flask, store: Store) -> None:
    """clear() then a write in one request: a new ID; the old cookie stays dead."""
    client = app.test_client()
    client.get("/set/a/1")
    old = cookie_value(client)
    client.get("/clear-then-set")
    new = cookie_value(client)
    assert old and new and session_id_of(old) != session_id_of(new)
    assert client.get("/read").json == {"data": {"after": "clear"}}
    assert stored_keys(store) == [store_key(session_id_of(new))]
    replay = app.test_client()
    replay.set_cookie("session", old)
    assert replay.get("/read").json == {"data": {}}


def test_regenerate_moves_data_to_a_new_id(app: Flask, store: Store) -> None:
    """regenerate() keeps the data under a new ID; the old ID is deleted (no fixation)."""
    client = app.test_client()
    client.get("/set/user/alice")
    old = cookie_value(client)
    response = client.get("/regenerate")
    assert "Set-Cookie" in response.headers
    new = cookie_value(client)
    assert old and new and session_id_of(old) != session_id_of(new)
    assert client.get("/read").json == {"data": {"user": "alice"}}
    assert stored_keys(store) == [store_key(session_id_of(new))]
    replay = app.test_client()
    replay.set_cookie("session", old)
    assert replay.get("/read").json == {"data": {}}


def test_planted_unknown_id_is_never_adopted(app: Flask, store: Store) -> None:
    """A validly signed ID with no record behind it is replaced, not used, on first write."""
    from satchel.signing import new_id

    planted = new_id()
    client = app.test_client()
    client.set_cookie("session", CookieSigner(SECRET).sign(planted))
    client.get("/set/a/1")
    value = cookie_value(client)
    assert value is not None and session_id_of(value) != planted
    assert store_key(planted) not in stored_keys(store)


def test_permanent_session_cookie_has_lifetime(make_app: AppFactory) -> None:
    """session.permanent = True sends Expires = now + PERMANENT_SESSION_LIFETIME."""
    app = add_views(make_app(PERMANENT_SESSION_LIFETIME=timedelta(days=3)))
    client = app.test_client()
    response = client.get("/permanent")
    cookie = client.get_cookie("session")
    assert cookie is not None and cookie.expires is not None
    remaining = cookie.expires.timestamp() - time.time()
    assert 3 * 86400 - 60 < remaining <= 3 * 86400 + 1
    assert "Expires" in response.headers["Set-Cookie"]
    # Refreshed on each request that uses it, as Flask's SESSION_REFRESH_EACH_REQUEST says.
    assert "Set-Cookie" in client.get("/read").headers


def test_empty_session_is_never_stored(app: Flask, store: Store) -> None:
    """A session empty at the end of the request leaves no record and no cookie."""
    client = app.test_client()
    for path in ("/set-then-delete", "/only-permanent", "/clear"):
        response = client.get(path)
        assert "Set-Cookie" not in response.headers, path
    assert stored_keys(store) == []


def test_emptied_session_deletes_record_and_cookie(app: Flask, store: Store) -> None:
    """Deleting the last key removes the record and expires the cookie."""
    client = app.test_client()
    client.get("/set/a/1")
    response = client.get("/del/a")
    assert "Max-Age=0" in response.headers["Set-Cookie"]
    assert stored_keys(store) == []
    assert cookie_value(client) is None


def test_idle_timeout_expires_unused_session(make_app: AppFactory) -> None:
    """A session unused for longer than SATCHEL_IDLE_TIMEOUT loads as empty."""
    app = add_views(make_app(SATCHEL_IDLE_TIMEOUT=0.5))
    client = app.test_client()
    client.get("/set/a/1")
    time.sleep(0.7)
    response = client.get("/read")
    assert response.json == {"data": {}}
    assert "Max-Age=0" in response.headers["Set-Cookie"]  # the dead cookie is dropped


def test_activity_slides_the_idle_window(make_app: AppFactory) -> None:
    """Reading a session refreshes its idle expiry, so an active session lives on past
    its idle timeout. Gaps of 0.5 s in a 2 s window: a loaded machine has 1.5 s to
    answer each request before the session could expire for real."""
    app = add_views(make_app(SATCHEL_IDLE_TIMEOUT=2.0))
    client = app.test_client()
    started = time.monotonic()
    client.get("/set/a/1")
    for _ in range(5):
        time.sleep(0.5)
        assert client.get("/read").json == {"data": {"a": "1"}}
    assert time.monotonic() - started > 2.0  # longer than the idle timeout in all


def test_absolute_timeout_ends_even_an_active_session(make_app: AppFactory, store: Store) -> None:
    """However active, a session ends SATCHEL_ABSOLUTE_TIMEOUT after it began: exactly
    then (the stored expiry, read from the store), and for good once it is past."""
    app = add_views(make_app(SATCHEL_IDLE_TIMEOUT=10, SATCHEL_ABSOLUTE_TIMEOUT=1.0))
    client = app.test_client()
    client.get("/set/a/1")
    time.sleep(0.2)
    assert client.get("/set/b/2").status_code == 200
    (key,) = stored_keys(store)
    record = store.load(key)
    assert record is not None and set(record.fields) == {"a", "b"}  # the same session
    # The write moved the last-seen time but not the deadline: created + 1.0 s exactly.
    assert record.expires_at == record.created_at + 1.0
    assert record.touched_at > record.created_at
    time.sleep(max(0.0, record.expires_at - time.time()) + 0.05)
    assert client.get("/read").json == {"data": {}}


def test_idle_refresh_is_throttled(make_app: AppFactory, store: Store) -> None:
    """Reads within a small part of the idle window write nothing at all."""
    counting = CountingStore(store)
    app = Flask("throttle")
    app.config.update(SECRET_KEY=SECRET, SATCHEL_IDLE_TIMEOUT=3600)
    Satchel(app, store=counting)  # type: ignore[arg-type]
    add_views(app)
    client = app.test_client()
    client.get("/set/a/1")
    assert counting.writes == ["save"]
    for _ in range(5):
        client.get("/read")
    assert counting.writes == ["save"]


# -- change tracking ----------------------------------------------------------------------


def test_nested_mutation_is_saved(app: Flask) -> None:
    """session[k].append(x) and nested dict changes are saved without session.modified."""
    client = app.test_client()
    client.get("/append/cart/apple")
    client.get("/append/cart/pear")
    client.get("/nested/red")
    client.get("/nested/blue")
    data = client.get("/read").json["data"]
    assert data["cart"] == ["apple", "pear"]
    assert data["profile"] == {"tags": {"red": True, "blue": True}}


def test_unchanged_request_writes_nothing(make_app: AppFactory, store: Store) -> None:
    """Reading (even mutable values) or re-setting the same value writes nothing."""
    counting = CountingStore(store)
    app = Flask("count")
    app.config.update(SECRET_KEY=SECRET)
    Satchel(app, store=counting)  # type: ignore[arg-type]
    add_views(app)
    client = app.test_client()
    client.get("/append/cart/apple")
    client.get("/set/name/x")
    before = list(counting.writes)
    client.get("/read")
    client.get("/set/name/x")
    assert counting.writes == before


def test_save_writes_only_changed_keys(app: Flask, store: Store) -> None:
    """A save sends only the keys this request changed."""
    client = app.test_client()
    client.get("/set/a/1")
    client.get("/set/b/2")
    seen: list[Any] = []
    original = store.save

    def spy(key: str, change: Any, *, create: bool) -> bool:
        seen.append(change)
        return original(key, change, create=create)

    store.save = spy  # type: ignore[method-assign]
    try:
        client.get("/set/c/3")
        client.get("/del/a")
    finally:
        del store.save
    assert [dict(c.set) for c in seen] == [{"c": b'"3"'}, {}]
    assert [list(c.delete) for c in seen] == [[], ["a"]]


# -- overlapping requests -----------------------------------------------------------------


def test_overlapping_requests_keep_both_keys(make_app: AppFactory) -> None:
    """Two requests of one session, overlapping in time, each write their own key: both kept."""
    app = make_app()
    barrier = threading.Barrier(2, timeout=10)

    @app.get("/slow/<key>")
    def slow(key: str) -> str:
        dict(session)  # both requests have loaded the same old state...
        barrier.wait()  # ...before either saves
        session[key] = key
        return "ok"

    add_views(app)
    client = app.test_client()
    client.get("/set/start/0")
    cookie = cookie_value(client)
    assert cookie is not None
    results: list[int] = []

    def request(key: str) -> None:
        c = app.test_client()
        c.set_cookie("session", cookie)
        results.append(c.get(f"/slow/{key}").status_code)

    threads = [threading.Thread(target=request, args=(k,)) for k in ("left", "right")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [200, 200]
    data = client.get("/read").json["data"]
    assert data == {"start": "0", "left": "left", "right": "right"}


def test_overlapping_writes_of_one_key_last_wins(make_app: AppFactory) -> None:
    """Same key from two overlapping requests: the value of the one that saved last wins
    whole, as in a serial run in save order, and nothing errors."""
    app = make_app()
    barrier = threading.Barrier(2, timeout=10)
    first_saved = threading.Event()

    @app.get("/slow/<value>")
    def slow(value: str) -> str:
        dict(session)
        barrier.wait()  # both loaded "start" before either writes
        if value == "two":
            assert first_saved.wait(10)  # "one" has saved: "two" saves last
        session["k"] = value
        return "ok"

    add_views(app)
    client = app.test_client()
    client.get("/set/k/start")
    cookie = cookie_value(client)
    assert cookie is not None

    def request(value: str) -> None:
        c = app.test_client()
        c.set_cookie("session", cookie)
        assert c.get(f"/slow/{value}").status_code == 200
        if value == "one":
            first_saved.set()

    threads = [threading.Thread(target=request, args=(v,)) for v in ("one", "two")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert client.get("/read").json["data"]["k"] == "two"
    with app.app_context():
        assert Satchel.stats(app)["merges"] >= 1  # "two" found "one"'s write and replayed


@pytest.mark.parametrize("ending", ["clear", "regenerate", "revoke", "expire"])
def test_a_session_ended_while_a_request_runs_stays_ended(
    make_app: AppFactory, store: Store, ending: str
) -> None:
    """Cleared, regenerated, revoked or expired while another request of it runs: that
    request's changes are dropped, its response expires the cookie, nothing comes back."""
    app = make_app(SATCHEL_IDLE_TIMEOUT=600 if ending != "expire" else 1)
    loaded, ended = threading.Event(), threading.Event()

    @app.get("/late-write")
    def late_write() -> str:
        dict(session)
        loaded.set()
        assert ended.wait(30)
        session["late"] = "write"
        return "ok"

    @app.get("/renew")
    def renew() -> str:
        current_session().regenerate()
        return "ok"

    add_views(app)
    client = app.test_client()
    client.get("/set/a/1")
    cookie = cookie_value(client)
    assert cookie is not None
    other = app.test_client()
    other.set_cookie("session", cookie)
    responses: list[Any] = []
    thread = threading.Thread(target=lambda: responses.append(other.get("/late-write")))
    thread.start()
    assert loaded.wait(10)
    if ending == "clear":
        client.get("/clear")
    elif ending == "regenerate":
        client.get("/renew")
    elif ending == "revoke":
        with app.app_context():
            assert Satchel.revoke(store_key(session_id_of(cookie))) is True
    else:
        (key,) = stored_keys(store)
        record = store.load(key)
        assert record is not None
        time.sleep(max(0.0, record.expires_at - time.time()) + 0.05)  # past its expiry
    ended.set()
    thread.join()
    assert "Max-Age=0" in responses[0].headers["Set-Cookie"]
    for key in stored_keys(store):
        record = store.load(key)
        assert record is None or "late" not in record.fields  # the late write is nowhere
    if ending == "regenerate":
        assert client.get("/read").json["data"] == {"a": "1"}  # the renewed session lives
    elif ending == "clear":
        assert stored_keys(store) == []


# -- cookies ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        "garbage",
        "",
        "a.b.c",
        "x" * 5000,
        "naïve-ünïcode",
        "%00%ff",
    ],
)
def test_bad_cookie_gives_fresh_session(
    app: Flask, bad: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Garbage, oversized and non-ASCII cookies give an empty session, never an error."""
    client = app.test_client(use_cookies=False)
    with caplog.at_level(logging.WARNING, logger="satchel.security"):
        response = client.get("/read", headers={"Cookie": f"session={bad}"})
    assert response.status_code == 200
    assert response.json == {"data": {}}
    if bad:
        assert any(r.name == "satchel.security" for r in caplog.records)


def test_tampered_and_truncated_cookies_are_rejected(app: Flask, store: Store) -> None:
    """Changing or cutting a genuine cookie yields a fresh session; the real one still works."""
    client = app.test_client()
    client.get("/set/secret/value")
    good = cookie_value(client)
    assert good is not None
    session_id, signature = good.rsplit(".", 1)
    flipped = session_id[:-1] + ("A" if session_id[-1] != "A" else "B")
    for bad in (f"{flipped}.{signature}", good[:-1], good[:20], f"{session_id}.", session_id):
        attacker = app.test_client()
        attacker.set_cookie("session", bad)
        response = attacker.get("/read")
        assert response.status_code == 200 and response.json == {"data": {}}, bad
    assert client.get("/read").json == {"data": {"secret": "value"}}


def test_cookie_signed_with_another_key_is_rejected(app: Flask, store: Store) -> None:
    """A cookie forged with a different secret key is not accepted."""

    client = app.test_client()
    client.get("/set/a/1")
    good = cookie_value(client)
    assert good is not None
    forged = CookieSigner("attacker-key-" + "x" * 32).sign(session_id_of(good))
    attacker = app.test_client()
    attacker.set_cookie("session", forged)
    assert attacker.get("/read").json == {"data": {}}


def test_rotation_with_fallbacks(store: Store) -> None:
    """Cookies signed with an old key work while it is a fallback, and stop once it is dropped."""

    def build(secret: str, fallbacks: list[str]) -> Flask:
        app = Flask("rotate")
        app.config.update(SECRET_KEY=secret, SECRET_KEY_FALLBACKS=fallbacks)
        Satchel(app, store=store)
        return add_views(app)

    old_key, new_key = "old-key-" + "a" * 40, "new-key-" + "b" * 40
    before = build(old_key, []).test_client()
    before.get("/set/user/alice")
    cookie = cookie_value(before)
    assert cookie is not None

    rotated = build(new_key, [old_key]).test_client()
    rotated.set_cookie("session", cookie)
    assert rotated.get("/read").json == {"data": {"user": "alice"}}
    rotated.get("/regenerate")  # re-signed with the new key
    resigned = cookie_value(rotated)
    assert resigned is not None

    after = build(new_key, []).test_client()
    after.set_cookie("session", cookie)
    assert after.get("/read").json == {"data": {}}
    after.set_cookie("session", resigned)
    assert after.get("/read").json == {"data": {"user": "alice"}}


def test_memory_store_from_url_config() -> None:
    """SATCHEL_STORE as a URL builds the store it names."""
    app = Flask("url")
    app.config.update(SECRET_KEY=SECRET, SATCHEL_STORE="memory://")
    Satchel(app)
    assert isinstance(app.extensions["satchel"].store, MemoryStore)


def test_session_transaction_in_tests(app: Flask) -> None:
    """Flask's test_client().session_transaction() reads and writes satchel sessions."""
    client = app.test_client()
    with client.session_transaction() as sess:
        sess["planted"] = "by the test"
    assert client.get("/read").json == {"data": {"planted": "by the test"}}
    client.get("/set/a/1")
    with client.session_transaction() as sess:
        assert sess["a"] == "1"


def test_cookie_name_hook_gives_independent_sessions(store: Store) -> None:
    """A cookie_name function lets one browser hold one session per URL prefix."""
    from flask import Request

    def by_prefix(request: Request) -> str:
        slot = request.path.split("/")[2] if request.path.startswith("/s/") else "0"
        return f"session-{slot}"

    app = Flask("slots")
    app.config.update(SECRET_KEY=SECRET)
    Satchel(app, store=store, cookie_name=by_prefix)

    @app.get("/s/<slot>/set/<value>")
    def set_(slot: str, value: str) -> str:
        session["who"] = value
        return "ok"

    @app.get("/s/<slot>/read")
    def read(slot: str) -> dict[str, Any]:
        return dict(session)

    @app.get("/s/<slot>/clear")
    def clear(slot: str) -> str:
        session.clear()
        return "ok"

    client = app.test_client()
    client.get("/s/1/set/alice")
    client.get("/s/2/set/bob")
    assert client.get("/s/1/read").json == {"who": "alice"}
    assert client.get("/s/2/read").json == {"who": "bob"}
    assert {c for c in ("session-1", "session-2") if client.get_cookie(c)} == {
        "session-1",
        "session-2",
    }
    response = client.get("/s/1/clear")
    assert "session-1=;" in response.headers["Set-Cookie"]
    assert client.get("/s/1/read").json == {}
    assert client.get("/s/2/read").json == {"who": "bob"}
    assert len(stored_keys(store)) == 1


def test_cookie_name_hook_must_return_a_name(store: Store) -> None:
    """A cookie_name function returning junk is a ConfigError, not a silent default."""
    from satchel import ConfigError

    app = Flask("bad-namer")
    app.config.update(SECRET_KEY=SECRET, TESTING=True)
    Satchel(app, store=store, cookie_name=lambda request: "")

    @app.get("/")
    def index() -> str:
        return "ok"

    with pytest.raises(ConfigError, match="cookie_name"):
        app.test_client().get("/")


def test_unchanged_browser_session_cookie_is_not_resent(app: Flask) -> None:
    """A write to an existing browser-session session sends no Set-Cookie: nothing changed."""
    client = app.test_client()
    assert "Set-Cookie" in client.get("/set/a/1").headers
    assert "Set-Cookie" not in client.get("/set/b/2").headers
    assert client.get("/read").json == {"data": {"a": "1", "b": "2"}}


def test_switching_permanent_off_resends_a_browser_session_cookie(make_app: AppFactory) -> None:
    """session.permanent = False turns the persistent cookie back into a browser-session one."""
    app = add_views(make_app())

    @app.get("/not-permanent")
    def not_permanent() -> str:
        session.permanent = False
        return "ok"

    client = app.test_client()
    assert "Expires" in client.get("/permanent").headers["Set-Cookie"]
    header = client.get("/not-permanent").headers["Set-Cookie"]
    assert header.startswith("session=") and "Expires" not in header


def test_current_session_is_typed_and_the_same_object(app: Flask) -> None:
    """current_session() returns flask.session itself, typed for regenerate() and owner."""
    from satchel import ConfigError, current_session

    @app.get("/typed-login")
    def typed_login() -> str:
        typed = current_session()
        assert typed is session._get_current_object()  # type: ignore[attr-defined]
        typed.regenerate(owner="alice")
        typed["user"] = "alice"
        return str(typed.owner)

    assert app.test_client().get("/typed-login").data == b"alice"
    plain = Flask("plain")
    plain.config["SECRET_KEY"] = SECRET
    with plain.test_request_context(), pytest.raises(ConfigError, match="not a satchel"):
        current_session()


# -- regenerate() and the absolute timeout ----------------------------------------------


def test_regenerating_does_not_restart_the_absolute_timeout(make_app: AppFactory) -> None:
    """regenerating every 0.25 s cannot keep a 1 s-absolute session past 1 s."""
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
