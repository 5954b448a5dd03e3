"""Encryption at rest (SATCHEL_ENCRYPTION_KEYS) on every store: what a dump shows,
tampering, key rotation and ``rekey`` under load, records stored in clear before it.

Every adapter and every other guarantee with encryption on is the parity matrix's
encrypted half (tests/test_parity.py).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import redis
from click.testing import CliRunner
from flask import Flask, flash, session
from flask.testing import FlaskClient

from satchel import Satchel
from satchel.admin import rekey
from satchel.encryption import EncryptionKeys, generate_key
from satchel.errors import ConfigError
from satchel.stores import MemoryStore, RedisStore, SQLiteStore, Store
from satchel.stores.base import Change, SaveResult

from .conftest import SECRET

K1 = generate_key()
K2 = generate_key()
AGENT = "Secret-Browser/9.1 (Lovelace edition)"
#: Everything a realistic session below holds that must never reach the store in clear.
SECRETS = [
    "Ada Lovelace",  # a value
    "ada@example.com",  # inside a key name
    "analytical-engine-7",  # nested in a value
    "tea-and-cake",  # an item of a list
    "note-for-later",  # a flash message
    "Secret-Browser",  # the client details (SATCHEL_TRACK_CLIENT)
]


def make_app(store: Store, keys: list[str] | None, **config: Any) -> Flask:
    app = Flask("encryption")
    app.config.update(
        SECRET_KEY=SECRET,
        TESTING=True,
        SATCHEL_TRACK_CLIENT=True,
        SATCHEL_ENCRYPTION_KEYS=keys,
        **config,
    )
    Satchel(app, store=store)

    @app.get("/fill")
    def fill() -> str:
        session.regenerate(owner="user-17")  # type: ignore[attr-defined]
        session["name"] = "Ada Lovelace"
        session["draft:ada@example.com"] = {"body": ["analytical-engine-7"]}
        session["cart"] = ["tea-and-cake"]
        flash("note-for-later")
        return "ok"

    @app.get("/add/<item>")
    def add(item: str) -> str:
        session.setdefault("cart", []).append(item)
        return "ok"

    @app.get("/read")
    def read() -> dict[str, Any]:
        return dict(session)

    return app


def browser(app: Flask) -> FlaskClient:
    client = app.test_client()
    client.environ_base["HTTP_USER_AGENT"] = AGENT
    return client


def raw_records(store: Store) -> dict[str, Any]:
    """Every session record as the store holds it (no decryption), by key."""
    return dict(store.records())  # type: ignore[attr-defined]


def dump(store: Store) -> bytes:
    """Everything the store holds, as bytes: the file, every key and field, every row."""
    if isinstance(store, MemoryStore):
        return repr(store._records).encode()
    if isinstance(store, SQLiteStore):
        files = sorted(store.path.parent.glob(store.path.name + "*"))
        return b"".join(path.read_bytes() for path in files)
    if isinstance(store, RedisStore):
        return _redis_dump(store)
    rows, _ = store._run(  # type: ignore[attr-defined]
        "SELECT t::text FROM satchel_sessions t UNION ALL SELECT m::text FROM satchel_moves m"
    )
    return "\n".join(row[0] for row in rows).encode()


def _redis_dump(store: RedisStore) -> bytes:
    clients: list[Any]
    if store._cluster:
        clients = [
            redis.Redis(host=node.host, port=node.port)
            for node in store.client.get_primaries()  # type: ignore[union-attr]
        ]
    else:
        clients = [redis.Redis(connection_pool=store.client.connection_pool)]  # type: ignore[union-attr]
    out = []
    for client in clients:
        for key in client.keys("*"):
            kind = client.type(key)
            out.append(key)
            if kind == b"hash":
                for field, value in client.hgetall(key).items():
                    out += [field, value]
            elif kind == b"string":
                out.append(client.get(key) or b"")
            elif kind == b"set":
                out += list(client.smembers(key))
            elif kind == b"zset":
                out += list(client.zrange(key, 0, -1))
        if not store._cluster:  # and the snapshot a backup would copy, uncompressed
            client.config_set("rdbcompression", "no")
            client.save()
            directory = client.config_get("dir")["dir"]
            name = client.config_get("dbfilename")["dbfilename"]
            with open(f"{directory}/{name}", "rb") as snapshot:
                out.append(snapshot.read())
    return b"\n".join(out)


def test_a_dump_of_the_store_holds_no_value_and_no_key_name(store: Store) -> None:
    """A realistic session (a login, values, a key name with an e-mail address, a flash,
    the client details) leaves none of them in clear in the store; the same session
    stored without encryption shows every one (so the dump does see them)."""
    sealed = make_app(store, [K1])
    client = browser(sealed)
    assert client.get("/fill").status_code == 200
    assert client.get("/add/crumpets").status_code == 200
    assert client.get("/read").json["name"] == "Ada Lovelace"  # type: ignore[index]
    encrypted = dump(store)
    assert len(raw_records(store)) == 1
    assert [s for s in [*SECRETS, "crumpets"] if s.encode() in encrypted] == []
    assert b"_flashes" not in encrypted and b"draft:" not in encrypted

    clear_client = browser(make_app(store, None))
    assert clear_client.get("/fill").status_code == 200
    clear = dump(store)
    assert [s for s in SECRETS if s.encode() not in clear] == []
    # The encrypted session still reads back whole beside the clear one.
    body = client.get("/read").json
    assert body["cart"] == ["tea-and-cake", "crumpets"]  # type: ignore[index]


def _stored_name(store: Store, key: str, name: str, keys: EncryptionKeys) -> tuple[str, bytes]:
    """Which stored field of ``key``'s record holds ``name``, and its bytes (found by
    opening each field, as an attacker with the key could; the attack below has none)."""
    record = raw_records(store)[key]
    seal = keys.open_seal(record.fields["~s"], key)
    for stored, sealed in record.fields.items():
        if stored != "~s" and keys.open(seal, stored, sealed)[0] == name:
            return stored, sealed
    raise AssertionError(name)


def _put_raw(store: Store, key: str, stored: str, sealed: bytes) -> None:
    """Write ``sealed`` under ``stored`` in ``key``'s record, as someone with write access
    to the store (and no key) can."""
    record = raw_records(store)[key]
    now = time.time()
    change = Change(set={stored: sealed}, touched_at=now, expires_at=record.expires_at)
    assert store.save(key, change, create=False) == SaveResult.SAVED


@pytest.mark.parametrize("swap", ["another session", "another field", "the whole record"])
def test_a_moved_ciphertext_ends_the_session_it_is_moved_into(
    store: Store, swap: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A ciphertext copied into another session (the same key name there), into another
    field of its own session, or a whole record (its seal too) copied over another's
    does not open: that session counts as tampered (a fresh session, a security log line,
    the counter), never a 500 and never the other's data."""
    app = make_app(store, [K1])
    victim, other = browser(app), browser(app)
    other.get("/fill")
    other.get("/add/other-visitor-data")
    victim.get("/fill")
    before = set(raw_records(store))
    victim.get("/add/victim-item")
    keys = EncryptionKeys([K1])
    (victim_key,) = [k for k in raw_records(store) if k in before and k != _key_of(app, other)]
    other_key = _key_of(app, other)
    stored, _ = _stored_name(store, victim_key, "cart", keys)
    if swap == "the whole record":
        copied = raw_records(store)[other_key].fields
        gone = [name for name in raw_records(store)[victim_key].fields if name not in copied]
        now = time.time()
        change = Change(set=dict(copied), delete=gone, touched_at=now, expires_at=now + 600)
        assert store.save(victim_key, change, create=False) == SaveResult.SAVED
        assert raw_records(store)[victim_key].fields == copied
    else:
        if swap == "another session":
            _, sealed = _stored_name(store, other_key, "cart", keys)
        else:
            _, sealed = _stored_name(store, victim_key, "name", keys)
        _put_raw(store, victim_key, stored, sealed)

    with caplog.at_level(logging.WARNING, logger="satchel.security"):
        answer = victim.get("/read")
    assert answer.status_code == 200 and answer.json == {}
    assert Satchel.stats(app)["tampered"] == 1
    assert any("does not decrypt" in r.getMessage() for r in caplog.records)
    assert victim_key not in raw_records(store)  # ended, deleted
    assert other.get("/read").json["cart"] == ["tea-and-cake", "other-visitor-data"]  # type: ignore[index]


def _key_of(app: Flask, client: FlaskClient) -> str:
    from satchel.signing import store_key

    cookie = client.get_cookie("session")
    assert cookie is not None
    session_id = app.extensions["satchel"].signer.unsign(cookie.value)
    assert session_id is not None
    return store_key(session_id)


def test_a_key_no_longer_configured_opens_nothing(store: Store) -> None:
    """Sessions sealed under a key that was dropped before ``rekey`` sealed them again
    are fresh sessions (counted as tampered), not errors."""
    first = browser(make_app(store, [K1]))
    first.get("/fill")
    dropped = make_app(store, [K2])
    again = dropped.test_client()
    again.set_cookie("session", first.get_cookie("session").value)  # type: ignore[union-attr]
    answer = again.get("/read")
    assert answer.status_code == 200 and answer.json == {}
    assert Satchel.stats(dropped)["tampered"] == 1


class _RacingStore:
    """The store rekey reads through: right after rekey reads ``target``, a request of
    that session changes it, so rekey's write must lose, read again and seal that too."""

    def __init__(self, store: Store, target: str, request: Callable[[], None]) -> None:
        self.inner, self.target, self.request = store, target, request
        self.raced = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def load(self, key: str) -> Any:
        record = self.inner.load(key)
        if key == self.target and not self.raced:
            self.raced += 1
            self.request()
        return record


def test_rotation_and_rekey_under_load_lose_nothing(store: Store) -> None:
    """Sessions sealed under K1; K2 put first: reads go on, writes seal under K2; ``rekey``
    runs while requests append to every session (one of them right between rekey's read
    and its write); then an app with K2 alone reads every session whole."""
    old = make_app(store, [K1])
    browsers = [browser(old) for _ in range(12)]
    for b in browsers:
        assert b.get("/fill").status_code == 200
    rotated = make_app(store, [K2, K1])
    jars = []
    for b in browsers:  # the same visitors, now served by the rotated app
        moved = browser(rotated)
        moved.set_cookie("session", b.get_cookie("session").value)  # type: ignore[union-attr]
        jars.append(moved)
    assert jars[0].get("/add/after-rotation").status_code == 200

    manager = rotated.extensions["satchel"]
    target = _key_of(rotated, jars[1])
    racing = _RacingStore(manager.store.store, target, lambda: jars[1].get("/add/raced"))
    manager.store.store = racing
    appends = 0
    stop = threading.Event()

    def keep_appending(i: int) -> int:
        done = 0
        while not stop.is_set() and done < 20:
            jar = browser(rotated)
            jar.set_cookie("session", jars[i].get_cookie("session").value)  # type: ignore[union-attr]
            assert jar.get(f"/add/load-{done}").status_code == 200
            done += 1
        return done

    try:
        with ThreadPoolExecutor(4) as pool:
            running = [pool.submit(keep_appending, i) for i in range(2, 6)]
            report = rekey(manager, batch=3, pause=0.0)
            stop.set()
            appends = sum(f.result() for f in running)
    finally:
        manager.store.store = racing.inner
    assert racing.raced == 1 and report.retried >= 1
    assert report.rewritten + report.current == 12 and report.unreadable == 0
    assert appends > 0

    only_new = make_app(store, [K2])
    for i, jar in enumerate(jars):
        reader = browser(only_new)
        reader.set_cookie("session", jar.get_cookie("session").value)  # type: ignore[union-attr]
        body = reader.get("/read").json
        assert body is not None and body["name"] == "Ada Lovelace", i
        cart = body["cart"]
        assert cart[0] == "tea-and-cake"
        if i == 0:
            assert "after-rotation" in cart
        if i == 1:
            assert "raced" in cart
        if 2 <= i < 6:
            assert [c for c in cart if c.startswith("load-")] == [
                f"load-{n}" for n in range(len(cart) - 1)
            ]
    assert Satchel.stats(only_new)["tampered"] == 0
    # Every field of every record opens under K2 alone.
    k2 = EncryptionKeys([K2])
    for key, record in raw_records(store).items():
        seal = k2.open_seal(record.fields["~s"], key)
        for stored, sealed in record.fields.items():
            if stored != "~s":
                k2.open(seal, stored, sealed)


def test_records_stored_in_clear_are_read_until_the_window_ends(store: Store) -> None:
    """Turning encryption on: records stored in clear are read (and sealed whole at their
    first write, never written in clear again) until
    SATCHEL_ENCRYPTION_ACCEPT_PLAINTEXT_UNTIL; after it they are fresh sessions."""
    before = [browser(make_app(store, None)) for _ in range(3)]
    for b in before:
        b.get("/fill")
    window = make_app(store, [K1], SATCHEL_ENCRYPTION_ACCEPT_PLAINTEXT_UNTIL=time.time() + 3600)
    cookies = [b.get_cookie("session").value for b in before]  # type: ignore[union-attr]
    first = browser(window)
    first.set_cookie("session", cookies[0])
    assert first.get("/read").json["name"] == "Ada Lovelace"  # type: ignore[index]
    assert first.get("/add/sealed-now").status_code == 200
    record = raw_records(store)[_key_of(window, first)]
    assert "~s" in record.fields and not any(n in record.fields for n in ("name", "cart"))
    assert first.get("/read").json["cart"] == ["tea-and-cake", "sealed-now"]  # type: ignore[index]

    report = rekey(window.extensions["satchel"], batch=1, pause=0.0)
    assert (report.rewritten, report.current) == (2, 1)
    assert all("~s" in r.fields for r in raw_records(store).values())

    closed = make_app(store, [K1], SATCHEL_ENCRYPTION_ACCEPT_PLAINTEXT_UNTIL=time.time() - 1)
    late = browser(closed)
    late.set_cookie("session", cookies[1])
    assert late.get("/read").json["name"] == "Ada Lovelace"  # type: ignore[index]
    clear_app = make_app(store, None)
    fresh = browser(clear_app)
    fresh.get("/fill")
    stale = browser(closed)
    stale.set_cookie("session", fresh.get_cookie("session").value)  # type: ignore[union-attr]
    answer = stale.get("/read")
    assert answer.status_code == 200 and answer.json == {}
    assert Satchel.stats(closed)["tampered"] == 0  # not tampering: the window is over


@pytest.mark.parametrize(
    ("keys", "says"),
    [
        ("not base64 !!", "not URL-safe base64"),
        ("c2hvcnQ", "is 5 bytes"),
        ([K1, K1], "the same key twice"),
        ([b"x" * 31], "is 31 bytes"),
        (" , ", "names no key"),
        ([42], "must be a str"),
        (42, "must be a list of keys"),
    ],
)
def test_bad_keys_are_refused_at_start_up(keys: Any, says: str) -> None:
    app = Flask("bad")
    app.config.update(SECRET_KEY=SECRET, SATCHEL_ENCRYPTION_KEYS=keys)
    with pytest.raises(ConfigError, match=says) as raised:
        Satchel(app, store=MemoryStore())
    assert "SATCHEL_ENCRYPTION_KEYS" in str(raised.value)


def test_keys_are_read_with_or_without_padding_and_from_one_string() -> None:
    import secrets
    from base64 import urlsafe_b64encode

    raw = secrets.token_bytes(32)
    padded = urlsafe_b64encode(raw).decode()
    assert padded.endswith("=")
    one = EncryptionKeys([padded])
    two = EncryptionKeys(padded.rstrip("="))
    assert one.first.secret == two.first.secret == raw
    assert len(EncryptionKeys(f"{K1}, {K2}").keys) == 2
    assert "never shown" in repr(one) and padded not in repr(one)


@pytest.mark.parametrize(
    ("until", "says"),
    [
        ("2026-13-01", "not ISO 8601"),
        ("2026-12-01T00:00:00", "needs a time zone"),
        (True, "must be a UNIX time"),
    ],
)
def test_a_bad_plaintext_window_is_refused(until: Any, says: str) -> None:
    app = Flask("bad")
    app.config.update(
        SECRET_KEY=SECRET, SATCHEL_ENCRYPTION_KEYS=[K1],
        SATCHEL_ENCRYPTION_ACCEPT_PLAINTEXT_UNTIL=until,
    )  # fmt: skip
    with pytest.raises(ConfigError, match=says):
        Satchel(app, store=MemoryStore())


def test_a_plaintext_window_without_keys_is_refused() -> None:
    app = Flask("bad")
    app.config.update(SECRET_KEY=SECRET, SATCHEL_ENCRYPTION_ACCEPT_PLAINTEXT_UNTIL=1.0)
    with pytest.raises(ConfigError, match="SATCHEL_ENCRYPTION_KEYS is not"):
        Satchel(app, store=MemoryStore())


def test_the_asgi_middleware_names_its_own_arguments() -> None:
    from starlette.applications import Starlette

    from satchel.asgi import SessionMiddleware

    with pytest.raises(ConfigError, match=r"encryption_keys\[0\] is 5 bytes"):
        SessionMiddleware(Starlette(), SECRET, store="memory://", encryption_keys=["c2hvcnQ"])


@pytest.fixture
def sqlite_url(tmp_path: Any) -> Iterator[str]:
    yield f"sqlite:///{tmp_path}/sessions.sqlite3"


def test_the_session_commands_read_and_rekey_with_the_environments_keys(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``satchel sessions`` reads $SATCHEL_ENCRYPTION_KEYS: list and show see the clear
    key names, and ``rekey`` seals every record under the new first key."""
    from satchel.cli import main
    from satchel.stores import from_url

    store = from_url(sqlite_url)
    browsers = [browser(make_app(store, [K1])) for _ in range(3)]
    for b in browsers:
        b.get("/fill")
    runner = CliRunner()
    monkeypatch.setenv("SATCHEL_ENCRYPTION_KEYS", f"{K2},{K1}")
    listed = runner.invoke(main, ["sessions", "--store", sqlite_url, "list", "--json"])
    assert listed.exit_code == 0, listed.output
    found = json.loads(listed.output)
    assert [i["user_agent"] for i in found] == [AGENT] * 3
    ref = found[0]["reference"][:12]
    shown = runner.invoke(main, ["sessions", "--store", sqlite_url, "show", ref, "--json"])
    assert "draft:ada@example.com" in json.loads(shown.output)["key_names"]
    done = runner.invoke(main, ["sessions", "--store", sqlite_url, "rekey", "--json"])
    assert done.exit_code == 0, done.output
    assert json.loads(done.output)["rewritten"] == 3
    again = runner.invoke(main, ["sessions", "--store", sqlite_url, "rekey", "--json"])
    assert json.loads(again.output)["current"] == 3
    reader = browser(make_app(store, [K2]))
    reader.set_cookie("session", browsers[2].get_cookie("session").value)  # type: ignore[union-attr]
    assert reader.get("/read").json["name"] == "Ada Lovelace"  # type: ignore[index]
    monkeypatch.delenv("SATCHEL_ENCRYPTION_KEYS")
    refused = runner.invoke(main, ["sessions", "--store", sqlite_url, "rekey"])
    assert refused.exit_code == 1 and "needs SATCHEL_ENCRYPTION_KEYS" in refused.output
    store.close()


def test_the_session_rules_hold_with_encryption_on(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The owner limit (the least recently seen ends), the login time, renewal (a new ID,
    the old one joining within the grace), listing and revoke_all, all on sealed records:
    each renewal and login moves a record to a new key, whose seal is tagged anew."""
    import satchel._renewal

    age = [0.0]
    due = satchel._renewal.due
    monkeypatch.setattr(
        satchel._renewal, "due", lambda settings, record, now: due(settings, record, now + age[0])
    )
    app = make_app(
        store, [K1], SATCHEL_MAX_SESSIONS_PER_OWNER=2, SATCHEL_RENEWAL_INTERVAL=3600,
        SATCHEL_RENEWAL_GRACE=10, SATCHEL_IDLE_TIMEOUT=7200,
    )  # fmt: skip

    @app.get("/who")
    def who() -> dict[str, Any]:
        return {"at": session.authenticated_at, "owner": session.owner}  # type: ignore[attr-defined]

    devices = [browser(app) for _ in range(3)]
    for device in devices:
        assert device.get("/fill").status_code == 200  # a login of user-17
        time.sleep(0.01)
    assert devices[0].get("/read").json == {}  # the oldest, evicted
    assert Satchel.stats(app)["evictions"] == 1
    seen = devices[2].get("/who").json
    assert seen is not None and seen["owner"] == "user-17" and seen["at"] > 0
    old = devices[2].get_cookie("session").value  # type: ignore[union-attr]
    age[0] = 3601.0
    assert devices[2].get("/add/renewed").status_code == 200
    age[0] = 0.0
    new = devices[2].get_cookie("session").value  # type: ignore[union-attr]
    assert new != old and Satchel.stats(app)["renewals"] == 1
    late = browser(app)
    late.set_cookie("session", old)
    assert late.get("/add/late").status_code == 200  # within the grace: joins the new one
    assert late.get_cookie("session").value == new  # type: ignore[union-attr]
    # Another worker (its own memory of what it read) reads the moved records from scratch.
    worker = make_app(store, [K1], SATCHEL_MAX_SESSIONS_PER_OWNER=2, SATCHEL_IDLE_TIMEOUT=7200)
    worker.add_url_rule("/who", "who", who)
    there = browser(worker)
    there.set_cookie("session", new)
    body = there.get("/read").json
    assert body is not None and body["cart"] == ["tea-and-cake", "renewed", "late"]
    assert there.get("/who").json == seen  # the login time survived the moves
    assert Satchel.stats(worker)["tampered"] == 0
    with app.test_request_context():
        infos = Satchel.list_sessions("user-17")
        assert sorted(i.user_agent or "" for i in infos) == [AGENT, AGENT]
        assert Satchel.revoke_all("user-17", keep_current=False) == 2
    assert devices[1].get("/read").json == {} and devices[2].get("/read").json == {}
    assert Satchel.stats(app)["tampered"] == 0


def test_flask_satchel_rekey_is_the_same_command_in_the_apps_context(store: Store) -> None:
    """``flask satchel rekey`` seals every session under the app's first key."""
    old = make_app(store, [K1])
    for _ in range(2):
        browser(old).get("/fill")
    rotated = make_app(store, [K2, K1])
    done = rotated.test_cli_runner().invoke(args=["satchel", "rekey", "--json"])
    assert done.exit_code == 0, done.output
    assert json.loads(done.output)["rewritten"] == 2
    k2 = EncryptionKeys([K2])
    for key, record in raw_records(store).items():
        k2.open_seal(record.fields["~s"], key)  # re-tagged under K2 too
