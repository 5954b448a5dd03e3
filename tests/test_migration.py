"""Adopting satchel in a live app: old sessions are imported once, and nobody is logged out.

The old sessions are real: Flask's own cookie sessions made by a plain Flask app
with the same key, and Flask-Session 0.8 records written by Flask-Session itself
on a real Valkey.
"""

from __future__ import annotations

import logging
import pickle
import secrets
import threading
import time
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from flask import Flask, session

from satchel import Satchel
from satchel.errors import ConfigError
from satchel.flask import current_session
from satchel.signals import session_migrated
from satchel.signing import CookieSigner, store_key
from satchel.stores import MemoryStore, Store
from satchel.stores.base import LockingStore

from .conftest import SECRET, stored_keys
from .support.old_sessions import TYPED, cookie_after_set, cookie_session
from .support.values import same
from .valkey import ValkeyServer

OLD_KEY = "the-key-the-app-used-before-its-rotation-0123456789"
FOREIGN_KEY = "another-app-entirely-signed-this-cookie-0123456789"

#: What the old app stored: every type Flask's tagged JSON keeps.
# -- the apps before and after ---------------------------------------------------


def flask_session_app(url: str, **config: Any) -> Flask:
    """A Flask-Session 0.8 app on Valkey, as an adopter runs before switching."""
    from flask_session import Session as FlaskSession

    old = Flask("flask_session_app")
    old.config.update(
        SECRET_KEY=SECRET, SESSION_TYPE="redis", SESSION_REDIS=redis.Redis.from_url(url)
    )
    old.config.update(config)
    with warnings.catch_warnings():  # SESSION_USE_SIGNER is deprecated in 0.8
        warnings.simplefilter("ignore", DeprecationWarning)
        FlaskSession(old)

    @old.get("/set")
    def set_() -> str:
        session.update(
            name="Ada",
            raw=b"\x00\xff",
            when=datetime(2026, 11, 1, 12, 30, 5, tzinfo=UTC),
            cart=[{"sku": "A-1", "qty": 2}],
            pair=(1, 2),
            _user_id="42",
        )
        return "ok"

    @old.get("/read")
    def read() -> str:
        return repr(dict(session))

    return old


def satchel_app(store: Store, **config: Any) -> Flask:
    """The same app after the switch: satchel, importing what it finds."""
    app = Flask("after_satchel")
    app.config.update(SECRET_KEY=SECRET, SATCHEL_MIGRATE_FROM="flask-cookie")
    app.config.update(config)
    Satchel(app, store=store)
    seen: list[dict[str, Any]] = []
    app.extensions["seen"] = seen
    barrier = threading.Barrier(2, timeout=10)

    @app.get("/")
    def show() -> str:
        seen.append(dict(session))
        return "ok"

    @app.get("/mark/<name>")
    def mark(name: str) -> str:
        session[name] = True
        return "ok"

    @app.get("/overlap/<name>")
    def overlap(name: str) -> str:
        seen.append(dict(session))  # the import, or the join, happens here
        barrier.wait()  # both requests have loaded before either answers
        session[name] = True
        return "ok"

    @app.get("/start-over")
    def start_over() -> str:
        session.clear()
        return "ok"

    @app.get("/login/<user>")
    def login(user: str) -> str:
        current_session().regenerate(owner=user)
        return "ok"

    return app


def visit(app: Flask, cookie: str, path: str = "/") -> tuple[dict[str, Any] | None, str | None]:
    """One request with ``cookie`` as the session cookie: what the view saw, the new cookie."""
    client = app.test_client()
    client.set_cookie("session", cookie)
    seen: list[dict[str, Any]] = app.extensions["seen"]
    before = len(seen)
    response = client.get(path)
    assert response.status_code == 200, response.text
    after = client.get_cookie("session")
    return (seen[-1] if len(seen) > before else None), (after.value if after else None)


def overlapping_first_visits(app: Flask, cookie: str) -> dict[str, str | None]:
    """Two requests with the same old cookie, both loaded before either answers: their cookies."""
    results: dict[str, str | None] = {}

    def one(name: str) -> None:
        results[name] = visit(app, cookie, f"/overlap/{name}")[1]

    threads = [threading.Thread(target=one, args=(name,)) for name in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return results


def counters(app: Flask) -> dict[str, int]:
    return Satchel.stats(app)


# -- Flask's cookie session --------------------------------------------------------


def test_a_flask_cookie_session_is_imported_with_its_types(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    """The view sees the old data, types intact, in a new server-side session."""
    app = satchel_app(store)
    old = cookie_session()
    with caplog.at_level(logging.INFO, logger="satchel"):
        seen, new = visit(app, old)
    assert seen is not None and same(seen, {**TYPED, "_permanent": True})
    assert new is not None and new != old
    session_id = CookieSigner(SECRET).unsign(new)
    assert session_id is not None and len(session_id) == 43  # a new 256-bit satchel ID
    assert len(stored_keys(store)) == 1
    assert not [r for r in caplog.records if "rejected" in r.getMessage()]
    stats = counters(app)
    assert stats["migrated"] == 1 and stats["rejected_cookies"] == 0
    # The new cookie carries on as any satchel session would, permanent as before.
    seen_again, _ = visit(app, new)
    assert seen_again is not None and same(seen_again, {**TYPED, "_permanent": True})
    assert counters(app)["migrated"] == 1


def test_the_imported_session_is_a_new_session(store: Store) -> None:
    """Created now, no owner until the app regenerates with one; then it is owned."""
    app = satchel_app(store)
    _, new = visit(app, cookie_session())
    assert new is not None
    records = list(Satchel.list_sessions(app=app))
    assert len(records) == 1
    assert records[0].owner is None
    assert abs(records[0].created_at - time.time()) < 30
    _, after_login = visit(app, new, "/login/ada")
    assert after_login is not None and after_login != new
    assert [s.owner for s in Satchel.list_sessions("ada", app=app)] == ["ada"]
    assert Satchel.revoke_all("ada", keep_current=False, app=app) == 1


def test_the_owner_recipe_owns_imported_logins(store: Store) -> None:
    """docs/migration.md: a before_request hook owns an imported login at once."""
    app = satchel_app(store)

    @app.before_request
    def own_imported_logins() -> None:
        session = current_session()
        user_id = session.get("_user_id")
        if user_id is not None and session.owner is None:
            session.regenerate(owner=user_id)

    _, new = visit(app, cookie_session(data={"_user_id": "7", "_fresh": True}))
    assert new is not None
    assert [s.owner for s in Satchel.list_sessions("7", app=app)] == ["7"]
    assert Satchel.revoke_all("7", keep_current=False, app=app) == 1
    assert stored_keys(store) == []


def test_a_cookie_signed_with_a_fallback_key_is_imported(store: Store) -> None:
    app = satchel_app(store, SECRET_KEY_FALLBACKS=[OLD_KEY])
    seen, new = visit(app, cookie_session(OLD_KEY))
    assert seen is not None and seen["name"] == "Ada"
    assert new is not None and CookieSigner(SECRET).unsign(new) is not None


def test_a_cookie_signed_with_any_other_key_imports_nothing(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    app = satchel_app(store)
    foreign = cookie_session(FOREIGN_KEY)
    with caplog.at_level(logging.WARNING, logger="satchel.security"):
        seen, new = visit(app, foreign)
    assert seen == {} and new == foreign  # ignored (no new cookie), as any invalid cookie
    assert stored_keys(store) == []
    assert counters(app)["rejected_cookies"] == 1 and counters(app)["migrated"] == 0
    assert any("rejected a session cookie" in r.getMessage() for r in caplog.records)


def test_a_cookie_older_than_the_permanent_lifetime_imports_nothing(store: Store) -> None:
    """Flask itself would no longer accept it, so neither does the import."""
    app = satchel_app(store, PERMANENT_SESSION_LIFETIME=timedelta(seconds=1))
    old = cookie_session()
    time.sleep(2.1)
    seen, _ = visit(app, old)
    assert seen == {}
    assert counters(app)["migrated"] == 0 and stored_keys(store) == []


def test_replaying_an_imported_cookie_finds_nothing(store: Store) -> None:
    """Once imported, the old cookie is worthless: no second session, no data."""
    app = satchel_app(store, SATCHEL_MIGRATE_OVERLAP=0)
    old = cookie_session()
    _, new = visit(app, old)
    assert new is not None
    for _ in range(3):
        seen, again = visit(app, old)
        assert seen == {}
        assert again == old  # ignored, not expired: the browser may hold the new one
    assert len(stored_keys(store)) == 1
    stats = counters(app)
    assert stats["migrated"] == 1 and stats["migration_replays"] == 3
    # The visitor who was migrated keeps their session.
    seen, _ = visit(app, new)
    assert seen is not None and seen["name"] == "Ada"


def test_requests_just_after_the_import_join_it_then_the_cookie_is_spent(store: Store) -> None:
    """Within SATCHEL_MIGRATE_OVERLAP of the import's answer the old cookie joins; later, nothing.

    A browser's parallel requests, or requests a busy server queued behind the
    import, reach the app after the import answered, with the old cookie.
    """
    app = satchel_app(store, SATCHEL_MIGRATE_OVERLAP=1)
    old = cookie_session()
    _, new = visit(app, old)
    seen, joined = visit(app, old, "/mark/queued")
    assert seen is None and joined == new  # the same session, its cookie sent again
    time.sleep(1.2)
    seen, again = visit(app, old)
    assert seen == {} and again == old
    seen, _ = visit(app, new)
    assert seen is not None and seen["name"] == "Ada" and seen["queued"] is True
    assert len(stored_keys(store)) == 1 and counters(app)["migrated"] == 1


def test_a_replay_cannot_revive_a_session_ended_after_the_import(store: Store) -> None:
    app = satchel_app(store)
    old = cookie_session()
    _, new = visit(app, old)
    assert new is not None
    visit(app, new, "/start-over")
    assert stored_keys(store) == []
    seen, _ = visit(app, old)
    assert seen == {} and stored_keys(store) == []


def test_overlapping_first_requests_give_one_session(store: Store) -> None:
    """Two requests with the same old cookie at once: one import, one session, both writes."""
    app = satchel_app(store)
    old = cookie_session()
    results = overlapping_first_visits(app, old)
    assert results["a"] is not None and results["a"] == results["b"]
    assert len(stored_keys(store)) == 1
    assert counters(app)["migrated"] == 1
    seen, _ = visit(app, results["a"])
    assert seen is not None and seen["name"] == "Ada" and seen["a"] and seen["b"]
    assert all(s["name"] == "Ada" for s in app.extensions["seen"][:2])


def test_starting_over_before_the_import_never_imports_later(store: Store) -> None:
    """clear() on the first request expires the old cookie rather than importing it."""
    app = satchel_app(store)
    client = app.test_client()
    client.set_cookie("session", cookie_session())
    response = client.get("/start-over")
    assert "session=;" in response.headers["Set-Cookie"]
    assert client.get_cookie("session") is None
    assert stored_keys(store) == [] and counters(app)["migrated"] == 0


def test_the_window_closes_at_migrate_until(store: Store, caplog: pytest.LogCaptureFixture) -> None:
    """After SATCHEL_MIGRATE_UNTIL an old cookie is rejected like any invalid one."""
    past = datetime.now(UTC) - timedelta(minutes=1)
    app = satchel_app(store, SATCHEL_MIGRATE_UNTIL=past)
    with caplog.at_level(logging.WARNING, logger="satchel.security"):
        seen, _ = visit(app, cookie_session())
    assert seen == {}
    assert counters(app)["rejected_cookies"] == 1 and counters(app)["migrated"] == 0
    assert any("rejected a session cookie" in r.getMessage() for r in caplog.records)
    future = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    open_app = satchel_app(MemoryStore(), SATCHEL_MIGRATE_UNTIL=future)
    seen, _ = visit(open_app, cookie_session())
    assert seen is not None and seen["name"] == "Ada"


def test_the_session_migrated_signal(store: Store) -> None:
    app = satchel_app(store)
    heard: list[tuple[str, str]] = []

    def receiver(sender: Flask, session: Any, fingerprint: str, source: str) -> None:
        heard.append((source, fingerprint))

    session_migrated.connect(receiver, app)
    try:
        visit(app, cookie_session())
    finally:
        session_migrated.disconnect(receiver, app)
    assert len(heard) == 1 and heard[0][0] == "flask-cookie" and len(heard[0][1]) == 8


def test_strict_mode_imports_too(store: Store) -> None:
    """In strict mode the imported session's lock is held through the view, as a load's
    would be: another request of it (another token) cannot take it meanwhile."""
    app = satchel_app(store, SATCHEL_LOCKING=True)

    @app.get("/lock-taken")
    def lock_taken() -> str:
        assert session["name"] == "Bob"  # the first use imports the old session
        session_id = current_session().session_id
        assert session_id is not None
        assert isinstance(store, LockingStore)
        taken = store.acquire(store_key(session_id), "another request", 5.0)
        app.extensions["seen"].append({"taken": taken})
        return "ok"

    seen, imported = visit(app, cookie_session(data={"name": "Bob"}), "/lock-taken")
    assert seen == {"taken": False} and imported is not None
    seen, new = visit(app, cookie_session(), "/mark/x")
    assert new is not None
    seen, _ = visit(app, new)
    assert seen is not None and seen["name"] == "Ada" and seen["x"] is True


def test_stats_shows_migrated_counts(store: Store) -> None:
    app = satchel_app(store)
    for name in ("a", "b", "c"):
        visit(app, cookie_session(data={"name": name}))
    runner = app.test_cli_runner()
    result = runner.invoke(args=["satchel", "stats", "--json"])
    assert result.exit_code == 0, result.output
    import json

    stats = json.loads(result.output)
    assert stats["live_sessions"] == 3
    assert stats["migrated"] == {"flask-cookie": 3}
    table = runner.invoke(args=["satchel", "stats"])
    assert "migrated (flask-cookie)" in table.output and "3" in table.output


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"SATCHEL_MIGRATE_FROM": "flask-sessions"}, "the sources are"),
        ({"SATCHEL_MIGRATE_FROM": ["flask-cookie", 3]}, "names 3"),
        ({"SATCHEL_MIGRATE_FROM": []}, "a source or a list"),
        ({"SATCHEL_MIGRATE_FROM": "flask-session"}, "SATCHEL_MIGRATE_FLASK_SESSION_STORE"),
        ({"SATCHEL_MIGRATE_UNTIL": "next tuesday"}, "ISO-8601"),
        ({"SATCHEL_MIGRATE_UNTIL": 1767225600}, "a datetime or an ISO-8601"),
        ({"SATCHEL_MIGRATE_OVERLAP": -1}, "SATCHEL_MIGRATE_OVERLAP"),
        ({"SATCHEL_MIGRATE_FROM": None, "SATCHEL_MIGRATE_UNTIL": "2027-01-01"}, "is not"),
        (
            {
                "SATCHEL_MIGRATE_FROM": "flask-session",
                "SATCHEL_MIGRATE_FLASK_SESSION_STORE": "localhost:6379",
            },
            "Redis/Valkey URL",
        ),
    ],
)
def test_bad_migration_settings_are_refused(config: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        satchel_app(MemoryStore(), **config)


# -- Flask-Session 0.8 on Valkey ---------------------------------------------------


@pytest.fixture
def old_valkey(valkey: ValkeyServer) -> Iterator[str]:
    """The Valkey Flask-Session used (its own database, emptied)."""
    url = valkey.url.removesuffix("/0") + "/3"
    client = redis.Redis.from_url(url)
    client.flushdb()
    client.close()
    yield url


def migrating_from_flask_session(store: Store, url: str, **config: Any) -> Flask:
    return satchel_app(
        store,
        SATCHEL_MIGRATE_FROM=["flask-cookie", "flask-session"],
        SATCHEL_MIGRATE_FLASK_SESSION_STORE=url,
        **config,
    )


def test_a_flask_session_record_is_imported_and_deleted(store: Store, old_valkey: str) -> None:
    """Flask-Session's own data, as Flask-Session would read it; the old record is gone."""
    old = flask_session_app(old_valkey)
    cookie = cookie_after_set(old)
    reader = old.test_client()
    reader.set_cookie("session", cookie)
    as_flask_session_reads_it = reader.get("/read").text
    app = migrating_from_flask_session(store, old_valkey, SATCHEL_MIGRATE_OVERLAP=0)
    seen, new = visit(app, cookie)
    assert seen is not None and repr(seen) == as_flask_session_reads_it
    assert seen["raw"] == b"\x00\xff" and seen["when"] == datetime(
        2026, 11, 1, 12, 30, 5, tzinfo=UTC
    )
    assert new is not None and CookieSigner(SECRET).unsign(new) is not None
    assert redis.Redis.from_url(old_valkey).keys("session:*") == []
    assert counters(app)["migrated"] == 1
    again, _ = visit(app, cookie)  # a replay: the record is gone
    assert again == {}
    assert len(stored_keys(store)) == 1
    seen, _ = visit(app, new)
    assert seen is not None and seen["name"] == "Ada"


def test_a_signed_flask_session_id_is_imported(store: Store, old_valkey: str) -> None:
    old = flask_session_app(old_valkey, SESSION_USE_SIGNER=True)
    cookie = cookie_after_set(old)
    assert cookie.count(".") == 1
    app = migrating_from_flask_session(store, old_valkey, SESSION_USE_SIGNER=True)
    seen, _ = visit(app, cookie)
    assert seen is not None and seen["name"] == "Ada"
    # With the signer required, the bare ID (the part before the dot) imports nothing.
    cookie2 = cookie_after_set(old)
    seen, _ = visit(app, cookie2.split(".")[0])
    assert seen == {}


def test_a_flask_session_json_record_is_imported(store: Store, old_valkey: str) -> None:
    old = flask_session_app(old_valkey, SESSION_SERIALIZATION_FORMAT="json")
    app = migrating_from_flask_session(store, old_valkey)
    seen, _ = visit(app, cookie_after_set(old))
    assert seen is not None and seen["name"] == "Ada"


class _Exploit:
    """Unpickling this touches a file: proof that something unpickled it."""

    def __init__(self, proof: Path) -> None:
        self.proof = proof

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.proof,))


@pytest.mark.parametrize("protocol", [0, pickle.HIGHEST_PROTOCOL])
def test_a_pickle_record_is_never_unpickled(
    store: Store, old_valkey: str, tmp_path: Path, protocol: int, caplog: pytest.LogCaptureFixture
) -> None:
    """A legacy pickle record is skipped, logged and counted; the pickle never runs."""
    proof = tmp_path / "unpickled"
    sid = secrets.token_urlsafe(32)
    payload = pickle.dumps({"name": "Ada", "x": _Exploit(proof)}, protocol=protocol)
    client = redis.Redis.from_url(old_valkey)
    client.set("session:" + sid, payload)
    app = migrating_from_flask_session(store, old_valkey)
    with caplog.at_level(logging.WARNING, logger="satchel.security"):
        seen, _ = visit(app, sid)
    assert seen == {}
    assert not proof.exists()
    assert counters(app)["migration_failures"] == 1 and counters(app)["migrated"] == 0
    assert any("could not import a flask-session" in r.getMessage() for r in caplog.records)
    assert stored_keys(store) == []
    assert client.get("session:" + sid) == payload  # left alone, for the operator


def test_overlapping_first_requests_with_a_cookie_after_set(store: Store, old_valkey: str) -> None:
    app = migrating_from_flask_session(store, old_valkey)
    cookie = cookie_after_set(flask_session_app(old_valkey))
    results = overlapping_first_visits(app, cookie)
    assert results["a"] is not None and results["a"] == results["b"]
    assert len(stored_keys(store)) == 1 and counters(app)["migrated"] == 1
    seen, _ = visit(app, results["a"])
    assert seen is not None and seen["name"] == "Ada" and seen["a"] and seen["b"]


def test_two_spellings_of_one_flask_session_id_import_one_session(
    store: Store, old_valkey: str
) -> None:
    """``sid.sig`` and the bare ``sid`` name one old session: overlapping first requests
    with each spelling make one satchel session (the claim is keyed on the record)."""
    signed = cookie_after_set(flask_session_app(old_valkey, SESSION_USE_SIGNER=True))
    bare = signed.split(".")[0]
    app = migrating_from_flask_session(store, old_valkey)  # SESSION_USE_SIGNER unset: both
    results: dict[str, str | None] = {}

    def one(name: str, cookie: str) -> None:
        results[name] = visit(app, cookie, f"/overlap/{name}")[1]

    threads = [
        threading.Thread(target=one, args=("a", signed)),
        threading.Thread(target=one, args=("b", bare)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    # Both requests were inside the view at once (the barrier), and joined one session.
    assert results["a"] is not None and results["a"] == results["b"]
    assert len(stored_keys(store)) == 1 and counters(app)["migrated"] == 1
    seen, _ = visit(app, results["a"])
    assert seen is not None and seen["name"] == "Ada" and seen["a"] and seen["b"]


def test_the_old_store_down_answers_503(own_valkey: ValkeyServer) -> None:
    """The old records cannot be read: 503, not a logout that would lose them."""
    old = flask_session_app(own_valkey.url)
    cookie = cookie_after_set(old)
    app = migrating_from_flask_session(MemoryStore(), own_valkey.url)
    own_valkey.kill()
    client = app.test_client()
    client.set_cookie("session", cookie)
    response = client.get("/")
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "1"
    assert counters(app)["store_errors"] == 1


# -- hostile old cookies -----------------------------------------------------------


def mutations(valid: str, count: int, seed: int) -> Iterator[str]:
    """Flipped, cut, stretched and re-dotted versions of a genuine old cookie."""
    import random

    rng = random.Random(seed)
    for i in range(count):
        kind = i % 5
        if kind == 0:
            raw = bytearray(valid.encode())
            spot = rng.randrange(len(raw))
            raw[spot] ^= 1 << rng.randrange(7)
            yield raw.decode("latin-1").replace(";", "").replace("\r", "").replace("\n", "")
        elif kind == 1:
            yield valid[: rng.randrange(len(valid))]
        elif kind == 2:
            yield valid + "A" * rng.randrange(1, 9000)
        elif kind == 3:
            parts = valid.split(".")
            rng.shuffle(parts)
            yield ".".join(parts)
        else:
            yield "." * rng.randrange(1, 5) + valid.replace(".", rng.choice(["..", "", "-"]))


def test_hostile_old_cookies_never_import_and_never_fail(
    sqlite_store: Store, old_valkey: str
) -> None:
    """Thousands of damaged old cookies of both kinds: no 500, nothing imported."""
    app = migrating_from_flask_session(sqlite_store, old_valkey, SESSION_USE_SIGNER=True)
    flask_cookie = cookie_session()
    signed_id = cookie_after_set(flask_session_app(old_valkey, SESSION_USE_SIGNER=True))
    client = app.test_client(use_cookies=False)
    sent = 0
    for valid, seed in ((flask_cookie, 1), (signed_id, 2)):
        for value in mutations(valid, 1500, seed):
            if value == valid:
                continue
            response = client.get("/", headers={"Cookie": f"session={value}"})
            assert response.status_code == 200, value
            sent += 1
    assert sent > 2500  # a shuffle may give the genuine cookie back; those are skipped
    assert counters(app)["migrated"] == 0 and stored_keys(sqlite_store) == []
    # The genuine ones still import afterwards.
    for valid in (flask_cookie, signed_id):
        seen, _ = visit(app, valid)
        assert seen is not None and seen["name"] == "Ada"


def test_other_spellings_of_a_genuine_signature_import_nothing(
    store: Store, old_valkey: str
) -> None:
    """Base64 lets a signature's last letter vary; only the signer's own spelling imports.

    Otherwise each spelling would be a new old cookie to the once-only claim.
    """
    app = migrating_from_flask_session(store, old_valkey, SATCHEL_MIGRATE_OVERLAP=0)
    flask_cookie = cookie_session()
    signed_id = cookie_after_set(flask_session_app(old_valkey, SESSION_USE_SIGNER=True))
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    for valid in (flask_cookie, signed_id):
        for letter in alphabet:
            spelling = valid[:-1] + letter
            if spelling != valid:
                seen, _ = visit(app, spelling)
                assert seen == {}, spelling
        seen, _ = visit(app, valid)
        assert seen is not None and seen["name"] == "Ada"
    assert counters(app)["migrated"] == 2


# -- the switch, end to end under gunicorn ------------------------------------------


def switch_and_check(old_env: dict[str, str], new_env: dict[str, str], users: int = 24) -> None:
    """Users start sessions on the old app; after the switch every one keeps theirs."""
    from concurrent.futures import ThreadPoolExecutor

    from .load import Gunicorn, read_session, start_session

    with Gunicorn(old_env, workers=2, threads=4) as old:
        cookies = {f"user{i}": start_session(old.port, f"user{i}") for i in range(users)}
        for marker, cookie in cookies.items():
            assert read_session(old.port, cookie)["owner"] == marker
    with Gunicorn(new_env, workers=2, threads=4) as new:
        # Every worker serves a request first (a cold worker's first request is slow,
        # and could start after an overlapping one had already answered).
        with ThreadPoolExecutor(16) as pool:
            assert set(pool.map(lambda _: new.get("/read")[0], range(32))) == {200}

        # Half the users come back with one request, the other half with four at
        # once (a browser restoring its tabs), all four in flight together.
        def first_visit(item: tuple[str, str]) -> tuple[str, set[str | None], list[Any]]:
            marker, cookie = item
            many = 4 if int(marker[4:]) % 2 else 1
            with ThreadPoolExecutor(many) as pool:
                answers = list(pool.map(lambda _: new.get("/read-slowly", cookie), range(many)))
            return marker, {a[1] for a in answers}, [a[2] for a in answers]

        # Eight users at a time: 20 requests for 8 worker threads, so some wait
        # in a worker's queue until an import of their own cookie has answered.
        with ThreadPoolExecutor(8) as pool:
            visits = list(pool.map(first_visit, cookies.items()))
        for marker, new_cookies, bodies in visits:
            assert len(new_cookies) == 1 and None not in new_cookies, (marker, new_cookies, bodies)
            assert all(f'"owner":"{marker}"' in b.decode().replace(" ", "") for b in bodies)
            (cookie,) = new_cookies
            assert cookie is not None
            assert read_session(new.port, cookie)["owner"] == marker


def test_a_flask_cookie_app_switches_without_logging_anyone_out(tmp_path: Path) -> None:
    switch_and_check(
        {"LOADAPP_BACKEND": "flask-cookie"},
        {
            "LOADAPP_BACKEND": "satchel",
            "LOADAPP_STORE": f"sqlite:///{tmp_path}/sessions.sqlite3",
            "LOADAPP_MIGRATE_FROM": "flask-cookie",
        },
    )


def test_a_flask_session_app_switches_without_logging_anyone_out(
    valkey: ValkeyServer, old_valkey: str
) -> None:
    switch_and_check(
        {"LOADAPP_BACKEND": "flask-session-redis", "LOADAPP_STORE": old_valkey},
        {
            "LOADAPP_BACKEND": "satchel",
            "LOADAPP_STORE": valkey.url + "?prefix=switched:",
            "LOADAPP_MIGRATE_FROM": "flask-session",
            "LOADAPP_OLD_STORE": old_valkey,
        },
    )
