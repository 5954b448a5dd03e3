"""Security properties as tests: fixation, replay, hashing at rest, signing, cookie flags."""

from __future__ import annotations

import hmac
import http.client
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from flask import Flask, session
from werkzeug.serving import make_server

from satchel import ConfigError, Satchel
from satchel.signing import CookieSigner
from satchel.stores import MemoryStore, RedisStore, SQLiteStore, Store

from .conftest import SECRET, session_id_of
from .support.flask_apps import (
    client_with,
    cookie_of,
    logged_in,
    owner_app,
)
from .valkey import free_port


def build(store: Store, **config: Any) -> Flask:
    app = Flask("security")
    app.config.update(SECRET_KEY=SECRET, **config)
    Satchel(app, store=store)

    @app.get("/visit")
    def visit() -> str:
        session["cart"] = ["anonymous item"]
        return "ok"

    @app.get("/login/<user>")
    def login(user: str) -> str:
        session.regenerate()  # type: ignore[attr-defined]
        session["user"] = user
        return "ok"

    @app.get("/logout")
    def logout() -> str:
        session.clear()
        return "ok"

    @app.get("/whoami")
    def whoami() -> dict[str, Any]:
        return {"user": session.get("user"), "cart": session.get("cart")}

    return app


def test_fixation_planted_id_is_replaced_at_login(store: Store) -> None:
    """An ID an attacker obtained and planted before login is dead after regenerate()."""
    app = build(store)
    attacker = app.test_client()
    attacker.get("/visit")
    planted = attacker.get_cookie("session")
    assert planted is not None
    victim = app.test_client()
    victim.set_cookie("session", planted.value)
    victim.get("/login/alice")
    after = victim.get_cookie("session")
    assert after is not None and session_id_of(after.value) != session_id_of(planted.value)
    assert victim.get("/whoami").json == {"user": "alice", "cart": ["anonymous item"]}
    assert attacker.get("/whoami").json == {"user": None, "cart": None}


def test_replay_after_logout_and_after_regenerate(store: Store) -> None:
    """Copies of a cookie taken before logout or before regenerate() open nothing."""
    app = build(store)
    client = app.test_client()
    client.get("/login/alice")
    before_regenerate = client.get_cookie("session")
    client.get("/login/alice")
    before_logout = client.get_cookie("session")
    client.get("/logout")
    for stolen in (before_regenerate, before_logout):
        assert stolen is not None
        thief = app.test_client()
        thief.set_cookie("session", stolen.value)
        assert thief.get("/whoami").json == {"user": None, "cart": None}


def _raw_ids(app: Flask, count: int) -> list[str]:
    ids = []
    for i in range(count):
        client = app.test_client()
        client.get(f"/login/user{i}")
        cookie = client.get_cookie("session")
        assert cookie is not None
        ids.append(session_id_of(cookie.value))
    return ids


def test_no_raw_id_in_the_sqlite_file(tmp_path: Path) -> None:
    """Scanning every byte of the SQLite files finds no session ID, only hashes."""
    store = SQLiteStore(tmp_path / "s.sqlite3")
    ids = _raw_ids(build(store), 50)
    store.close()
    blob = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.is_file())
    assert blob, "the files hold data"
    assert b"user49" in blob
    for raw in ids:
        assert raw.encode() not in blob


def test_no_raw_id_in_redis(redis_store: RedisStore) -> None:
    """Every Redis key and value is free of session IDs."""
    ids = _raw_ids(build(redis_store), 50)
    client: redis.Redis = redis_store.client
    seen = b""
    for key in client.scan_iter("*"):
        seen += key
        for name, value in client.hgetall(key).items():  # type: ignore[union-attr]
            seen += name + value
    assert b"user49" in seen
    for raw in ids:
        assert raw.encode() not in seen


def test_signature_check_is_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """Cookie signatures are compared with hmac.compare_digest (through itsdangerous)."""
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def recording(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", recording)
    signer = CookieSigner(SECRET)
    good = signer.sign("A" * 43)
    assert signer.unsign(good) == "A" * 43
    forged = good[:-2] + ("AA" if good[-2:] != "AA" else "AE")  # canonical, wrong signature
    assert signer.unsign(forged) is None
    assert len(calls) >= 2


@pytest.mark.parametrize(
    "key",
    [
        "dev",
        "short-key",
        b'_5#y2L"F4Q8z\n\xec]/',
        "a" * 64,
        "changeme",
        "an-example-key-of-32-random-bytes-or-more!",
    ],
    ids=["dev", "short", "flask-docs-sample", "one-character", "changeme", "satchel-docs-sample"],
)
def test_weak_secret_key_warns_and_strict_refuses(
    key: str | bytes, caplog: pytest.LogCaptureFixture
) -> None:
    """A weak or sample SECRET_KEY logs a warning; with SATCHEL_STRICT_SECRET it fails."""
    app = Flask("weak")
    app.config["SECRET_KEY"] = key
    with caplog.at_level(logging.WARNING, logger="satchel.security"):
        Satchel(app, store=MemoryStore())
    assert any("SECRET_KEY is" in r.getMessage() for r in caplog.records)
    strict = Flask("strict")
    strict.config.update(SECRET_KEY=key, SATCHEL_STRICT_SECRET=True)
    with pytest.raises(ConfigError, match="SECRET_KEY is"):
        Satchel(strict, store=MemoryStore())


def test_weak_fallback_key_is_named(caplog: pytest.LogCaptureFixture) -> None:
    """A weak key among the fallbacks is reported by its position."""
    app = Flask("weak-fallback")
    app.config.update(SECRET_KEY=SECRET, SECRET_KEY_FALLBACKS=[SECRET + "x", "dev"])
    with caplog.at_level(logging.WARNING, logger="satchel.security"):
        Satchel(app, store=MemoryStore())
    messages = [r.getMessage() for r in caplog.records]
    assert any("SECRET_KEY_FALLBACKS[1]" in m for m in messages)
    assert not any("SECRET_KEY_FALLBACKS[0]" in m for m in messages)


def test_strong_key_draws_no_warning(caplog: pytest.LogCaptureFixture) -> None:
    """A long random key passes quietly, strict mode or not."""
    app = Flask("strong")
    app.config.update(SECRET_KEY=SECRET, SATCHEL_STRICT_SECRET=True)
    with caplog.at_level(logging.WARNING, logger="satchel.security"):
        Satchel(app, store=MemoryStore())
    assert caplog.records == []


@pytest.fixture
def wire(request: pytest.FixtureRequest) -> Iterator[tuple[str, int]]:
    """The app behind a real HTTP server, so headers are read as sent on the wire."""
    config = getattr(request, "param", {})
    app = build(MemoryStore(), **config)
    port = free_port()
    httpd = make_server("127.0.0.1", port, app, threaded=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield "127.0.0.1", port
    httpd.shutdown()
    thread.join(10)


def _set_cookie_header(host: str, port: int, path: str, cookie: str = "") -> str:
    conn = http.client.HTTPConnection(host, port, timeout=10)
    conn.request("GET", path, headers={"Cookie": cookie} if cookie else {})
    response = conn.getresponse()
    response.read()
    header = response.getheader("Set-Cookie") or ""
    conn.close()
    return header


def test_cookie_flags_on_the_wire(wire: tuple[str, int]) -> None:
    """By default: HttpOnly, SameSite=Lax, Path=/, no Secure, no Expires."""
    header = _set_cookie_header(*wire, "/visit")
    parts = [p.strip() for p in header.split(";")]
    assert parts[0].startswith("session=")
    assert {"HttpOnly", "SameSite=Lax", "Path=/"} <= set(parts)
    assert "Secure" not in parts and not any(p.startswith("Expires") for p in parts)


@pytest.mark.parametrize(
    "wire",
    [{"SESSION_COOKIE_SECURE": True, "SESSION_COOKIE_SAMESITE": "Strict"}],
    indirect=True,
)
def test_secure_cookie_flags_on_the_wire(wire: tuple[str, int]) -> None:
    """With SESSION_COOKIE_SECURE and SameSite=Strict, both are sent, on set and delete."""
    header = _set_cookie_header(*wire, "/visit")
    parts = [p.strip() for p in header.split(";")]
    assert {"Secure", "HttpOnly", "SameSite=Strict"} <= set(parts)
    cookie = parts[0]
    deleted = [p.strip() for p in _set_cookie_header(*wire, "/logout", cookie).split(";")]
    assert {"Secure", "HttpOnly", "SameSite=Strict", "Max-Age=0"} <= set(deleted)


def test_verified_cookies_are_remembered_only_when_genuine_and_boundedly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The signer's memory of verified cookies never admits a forged one, and stays small."""
    from satchel import signing
    from satchel.signing import CookieSigner, new_id

    monkeypatch.setattr(signing, "VERIFIED_CACHE_SIZE", 8)
    signer = CookieSigner("a-long-enough-secret-key-0123456789-abcdef")
    session_id = new_id()
    cookie = signer.sign(session_id)
    assert signer.unsign(cookie) == session_id
    assert signer.unsign(cookie) == session_id  # from memory now
    forged = cookie[:-1] + ("A" if cookie[-1] != "A" else "B")
    for _ in range(2):
        assert signer.unsign(forged) is None
    assert forged not in signer._verified
    # Another key remembers nothing the first one verified.
    assert CookieSigner("another-secret-key-0123456789-abcdefghij").unsign(cookie) is None
    for _ in range(20):
        other = new_id()
        assert signer.unsign(signer.sign(other)) == other
    assert len(signer._verified) <= 8


def test_ids_carry_256_random_bits_and_cookies_stay_far_below_4096_bytes() -> None:
    """ASVS 7.2.3 (at least 128 bits from a CSPRNG) and 3.3.5 (a cookie's name and value
    under 4096 bytes): 32 random bytes per ID, every one distinct, and a short cookie."""
    import base64

    from satchel.signing import CookieSigner, new_id

    ids = {new_id() for _ in range(2000)}
    assert len(ids) == 2000
    for session_id in list(ids)[:50]:
        assert len(base64.urlsafe_b64decode(session_id + "=")) == 32
    cookie = CookieSigner("k" * 16 + "0123456789abcdefghijkl").sign(new_id())
    assert len("__Host-session=" + cookie) < 200


# -- cookies -------------------------------------------------------------------


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
    """other spellings of a genuine cookie are rejected."""
    app = owner_app(store, "x")
    _client, cookie = logged_in(app)
    assert client_with(app, cookie).get("/read").json == {"seen": True}
    signer = CookieSigner(SECRET)
    assert signer.unsign(cookie) is not None
    for variant in malleated(cookie):
        assert signer.unsign(variant) is None, variant


def test_a_bad_cookie_of_the_same_name_does_not_hide_the_genuine_one(store: Store) -> None:
    """`session=garbage; session=<genuine>` keeps the visitor logged in."""
    app = owner_app(store, "x")
    _client, cookie = logged_in(app)
    plain = app.test_client(use_cookies=False)
    for header in (f"session=garbage; session={cookie}", f"session={cookie}; session=garbage"):
        response = plain.get("/read", headers={"Cookie": header})
        assert response.json == {"seen": True}
        assert "Set-Cookie" not in response.headers  # the genuine cookie is never expired


# -- key rotation -----------------------------------------------------------------------


def test_a_cookie_signed_with_a_fallback_key_is_signed_anew_on_use(store: Store) -> None:
    """after a rotation, an old-key cookie is re-signed with the new key."""
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
