"""Hostile input: property tests for values and cookies, and a flood of generated cookies."""

from __future__ import annotations

import random
import socket
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from flask import Flask, session
from hypothesis import given, settings
from hypothesis import strategies as st
from markupsafe import Markup
from werkzeug.serving import make_server

from satchel import Satchel, _json
from satchel.serialization import dumps, loads
from satchel.signing import CookieSigner
from satchel.stores import SQLiteStore, Store

from .conftest import SECRET
from .support.values import same
from .valkey import free_port

GENERATED_COOKIES = 10_000
RAW_SOCKET_COOKIES = 500

scalars = (
    st.text()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.booleans()
    | st.none()
    | st.binary()
    | st.uuids()
    | st.dates()
    | st.datetimes()
    | st.datetimes(timezones=st.sampled_from([UTC, timezone(timedelta(hours=5))]))
    | st.text().map(Markup)
)
values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children) | st.tuples(children, children) | st.dictionaries(st.text(), children)
    ),
    max_leaves=25,
)


@contextmanager
def json_library(fast: bool) -> Iterator[None]:
    """orjson (the default where installed), or the standard library alone."""
    saved = _json._fast_dumps, _json._fast_loads
    if not fast:
        _json._fast_dumps = _json._fast_loads = None
    try:
        yield
    finally:
        _json._fast_dumps, _json._fast_loads = saved


@pytest.mark.parametrize("fast", [True, False], ids=["orjson", "json"])
@given(value=values)
@settings(max_examples=400, deadline=None)
def test_serializer_round_trips_any_supported_value(fast: bool, value: Any) -> None:
    """dumps/loads gives back an equal value with the same types, nested anywhere."""
    with json_library(fast):
        assert same(loads(dumps(value)), value)


@given(st.text(max_size=400))
@settings(max_examples=2000, deadline=None)
def test_unsign_never_raises(cookie: str) -> None:
    """Any text at all is either refused (None) or a 43-character ID; never an exception."""
    result = CookieSigner(SECRET).unsign(cookie)
    assert result is None or len(result) == 43


@given(st.data())
@settings(max_examples=1000, deadline=None)
def test_changed_cookie_never_names_another_session(data: st.DataObject) -> None:
    """Changing any characters of a genuine cookie never yields a different valid ID."""
    signer = CookieSigner(SECRET)
    session_id = "Q" * 20 + "r" * 23
    cookie = signer.sign(session_id)
    position = data.draw(st.integers(0, len(cookie) - 1))
    replacement = data.draw(st.text(min_size=0, max_size=3))
    changed = cookie[:position] + replacement + cookie[position + 1 :]
    assert signer.unsign(changed) in (None, session_id)


def cookie_flood(valid: str, count: int, seed: int = 20261125) -> Iterator[tuple[str, str]]:
    """Yield (kind, Cookie header) pairs: random, flipped, cut, huge, non-ASCII, repeated."""
    rng = random.Random(seed)
    kinds = ["random-bytes", "bit-flip", "truncated", "8kb", "non-ascii", "repeated", "empty"]
    for i in range(count):
        kind = kinds[i % len(kinds)]
        if kind == "random-bytes":
            raw = bytes(rng.randrange(32, 256) for _ in range(rng.randrange(1, 120)))
            value = raw.decode("latin-1").replace(";", "")
        elif kind == "bit-flip":
            raw = bytearray(valid.encode())
            spot = rng.randrange(len(raw))
            raw[spot] ^= 1 << rng.randrange(7)
            value = raw.decode("latin-1")
        elif kind == "truncated":
            value = valid[: rng.randrange(len(valid))]
        elif kind == "8kb":
            value = valid + "A" * 8192
        elif kind == "non-ascii":
            value = "".join(rng.choice("éß☃中𝔘ü\u00a0\u200b") for _ in range(rng.randrange(1, 60)))
        elif kind == "repeated":
            value = valid[:-3] + "abc"
            yield kind, f"session={value}; session={valid[:10]}; session="
            continue
        else:
            value = ""
        # A header value cannot carry a line break on the wire.
        yield kind, "session=" + value.replace("\r", "").replace("\n", "")


@pytest.fixture(params=["sqlite", "postgres"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Flask, str]]:
    if request.param == "sqlite":
        store: Store = SQLiteStore(tmp_path / "s.sqlite3")
    else:
        store = request.getfixturevalue("postgres_store")
    app = Flask("flood")
    # Every cookie that is not a satchel cookie also goes through the import path.
    app.config.update(SECRET_KEY=SECRET, SATCHEL_MIGRATE_FROM="flask-cookie")
    Satchel(app, store=store)

    @app.get("/")
    def read() -> dict[str, Any]:
        return dict(session)

    @app.get("/write")
    def write() -> str:
        session["mine"] = "secret data"
        return "ok"

    client = app.test_client()
    client.get("/write")
    cookie = client.get_cookie("session")
    assert cookie is not None
    yield app, cookie.value
    store.close()


def test_ten_thousand_generated_cookies(target: tuple[Flask, str], capsys: Any) -> None:
    """10,000 hostile cookies: no 500, and each one gives a fresh, empty session."""
    app, valid = target
    client = app.test_client(use_cookies=False)
    statuses: Counter[int] = Counter()
    kinds: Counter[str] = Counter()
    accepted = 0
    for kind, header in cookie_flood(valid, GENERATED_COOKIES):
        response = client.get("/", headers={"Cookie": header})
        statuses[response.status_code] += 1
        kinds[kind] += 1
        data = response.json
        if data == {"mine": "secret data"}:
            accepted += 1
        else:
            assert data == {}, (kind, header)
    assert statuses == Counter({200: GENERATED_COOKIES})
    assert accepted == 0  # only the canonical text of a genuine cookie is accepted
    assert Satchel.stats(app)["migrated"] == 0
    with capsys.disabled():
        fresh = GENERATED_COOKIES - accepted
        print(f"\n[hostile cookies] sent {GENERATED_COOKIES} ({dict(kinds)}); statuses")
        print(f"[hostile cookies] {dict(statuses)}; 500s: 0; fresh sessions: {fresh}")


def test_raw_cookie_bytes_over_a_socket(target: tuple[Flask, str]) -> None:
    """Raw bytes on a real HTTP connection: the server never answers 500."""
    app, valid = target
    port = free_port()
    httpd = make_server("127.0.0.1", port, app, threaded=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    statuses: Counter[int] = Counter()
    try:
        for _kind, header in cookie_flood(valid, RAW_SOCKET_COOKIES, seed=7):
            request = (
                b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nCookie: "
                + header.encode("utf-8", "surrogateescape")
                + b"\r\n\r\n"
            )
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                sock.sendall(request)
                first_line = sock.makefile("rb").readline()
            status = int(first_line.split()[1])
            statuses[status] += 1
            assert status < 500, header
    finally:
        httpd.shutdown()
        thread.join(10)
    assert statuses[200] >= RAW_SOCKET_COOKIES * 0.9


def test_a_nul_in_a_key_is_refused_at_the_assignment_on_every_store(
    make_app: Any, store: Store
) -> None:
    """Every store refuses a key with NUL the same way: SerializationError, never a 503."""
    from satchel.errors import SerializationError

    app = make_app()

    @app.get("/draft/<path:name>")
    def draft(name: str) -> str:
        session["other"] = "kept"
        try:
            session["draft:" + name.replace("NUL", "\x00")] = "text"
        except SerializationError as exc:
            return f"refused: {exc}"
        return "stored"

    @app.get("/")
    def show() -> dict[str, Any]:
        return dict(session)

    client = app.test_client()
    for _ in range(3):
        response = client.get("/draft/aNULb")
        assert response.status_code == 200
        assert response.text.startswith("refused") and "NUL" in response.text
    assert client.get("/draft/plain").text == "stored"
    assert client.get("/").get_json() == {"other": "kept", "draft:plain": "text"}
    with app.app_context():
        assert Satchel.stats(app)["store_errors"] == 0
