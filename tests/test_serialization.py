"""Tagged JSON: every type Flask's own session keeps round-trips; nothing else is accepted."""

from __future__ import annotations

import enum
import logging
import time
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any
from uuid import UUID

import pytest
from flask import Flask, flash, get_flashed_messages, request, session
from markupsafe import Markup

from satchel import Satchel, SerializationError, _json, serialization
from satchel.serialization import dumps, loads
from satchel.signing import store_key
from satchel.stores import Store

from .conftest import SECRET, session_id_of, stored_keys
from .support.flask_apps import (
    cookie_of,
    owner_app,
)

SAMPLES: list[Any] = [
    "text",
    "ünïcode ☃",
    0,
    -(2**70),
    1.5,
    True,
    None,
    [1, "two", [3]],
    {"a": {"b": [1, 2]}},
    (1, "two", (3, 4)),
    b"\x00\xff bytes",
    Markup("<b>safe</b>"),
    UUID("12345678-1234-5678-1234-567812345678"),
    datetime(2026, 11, 25, 12, 30, 15, 123456),
    datetime(2026, 11, 25, 12, 30, tzinfo=timezone(timedelta(hours=-5))),
    date(2026, 11, 25),
    {" t": "a dict that looks like a tag"},
    {" di": {" t": 1}},
    [(b"x", {"k": (1,)})],
    {},
    [],
    (),
    2**63 - 1,
    -(2**63),
    2**64 + 1,  # beyond 64 bits: JSON readers may make it a float, so it is tagged
    [-(3**45), {" i": "a dict that looks like a big int"}],
    1e16,
    [float("inf"), -float("inf")],
    "line\u2028separator \x00 and \x7f",
]


@pytest.fixture(params=["orjson", "json"])
def encoder(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each JSON library in turn: orjson where installed, and the standard library."""
    if request.param == "json":
        monkeypatch.setattr(_json, "_fast_dumps", None)
        monkeypatch.setattr(_json, "_fast_loads", None)
    else:
        assert _json._fast_dumps is not None, "orjson is a dependency on CPython"
    return str(request.param)


@pytest.mark.parametrize("value", SAMPLES, ids=repr)
def test_round_trip(value: Any, encoder: str) -> None:
    """dumps then loads gives back an equal value of the same type."""
    back = loads(dumps(value))
    assert back == value
    assert type(back) is type(value)


@pytest.mark.parametrize("value", SAMPLES, ids=repr)
def test_either_library_reads_what_the_other_wrote(value: Any) -> None:
    """Bytes written without orjson read back the same with it, and the other way round."""
    tagged = serialization._tag(value, None)
    for written in (_json.dumps_std(tagged), _json.dumps(tagged)):
        for read in (_json.loads_std, _json.loads):
            back = serialization._untag(read(written))
            assert back == value and type(back) is type(value)


def test_nan_round_trips(encoder: str) -> None:
    """NaN stays NaN (the fast encoder alone would write null)."""
    back = loads(dumps([float("nan"), 1.0]))
    assert back[0] != back[0] and back[1] == 1.0


def test_big_int_enum_keeps_every_digit(encoder: str) -> None:
    """An IntEnum beyond 64 bits comes back as the exact int, not a rounded float."""

    class Big(enum.IntEnum):
        HUGE = 3**50

    back = loads(dumps(Big.HUGE))
    assert back == 3**50 and type(back) is int


def test_tagged_bytes_are_json() -> None:
    """The stored form is compact UTF-8 JSON, readable by anything."""
    import json

    assert json.loads(dumps((1, b"a"))) == {" t": [1, {" b": "YQ=="}]}
    assert dumps("é") == '"é"'.encode()


class Colour(enum.StrEnum):
    RED = "red"


@pytest.mark.parametrize(
    ("value", "bad_type"),
    [
        ({1, 2}, set),
        (object(), object),
        (Decimal("1.5"), Decimal),
        ({"nested": [{"deep": {1, 2}}]}, set),
        ({1: "int key"}, int),
        (lambda: 1, type(lambda: 1)),
    ],
)
def test_unsupported_values_raise(value: Any, bad_type: type) -> None:
    """Unsupported types raise SerializationError naming the key and the type."""
    with pytest.raises(SerializationError) as info:
        dumps(value, "cart")
    assert info.value.key == "cart"
    assert info.value.value_type is bad_type
    assert "session['cart']" in str(info.value)
    assert bad_type.__qualname__ in str(info.value)


def test_self_containing_list_raises() -> None:
    """A container that holds itself is refused, not an endless loop."""
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(SerializationError):
        dumps(loop, "loop")


def test_str_enum_is_stored_as_its_value() -> None:
    """A StrEnum member is stored as its plain string."""
    assert loads(dumps(Colour.RED)) == "red"


@pytest.fixture
def app(store: Store) -> Flask:
    app = Flask("types")
    app.config.update(SECRET_KEY=SECRET)
    Satchel(app, store=store)
    return app


def test_session_round_trips_types_across_requests(app: Flask) -> None:
    """Values of every supported type come back from the store in a later request."""

    @app.get("/set")
    def set_() -> str:
        for i, value in enumerate(SAMPLES):
            session[f"k{i}"] = value
        return "ok"

    @app.get("/check")
    def check() -> str:
        for i, value in enumerate(SAMPLES):
            got = session[f"k{i}"]
            assert got == value and type(got) is type(value), (i, got)
        return "ok"

    client = app.test_client()
    assert client.get("/set").status_code == 200
    assert client.get("/check").status_code == 200


def test_flash_works_unchanged(app: Flask) -> None:
    """flask.flash messages, with categories and Markup, survive to the next request once."""

    @app.get("/flash")
    def do_flash() -> str:
        flash("plain")
        flash(Markup("<em>marked</em>"), "warning")
        return "ok"

    @app.get("/show")
    def show() -> dict[str, Any]:
        messages = get_flashed_messages(with_categories=True)
        return {"messages": [[c, str(m), type(m).__name__] for c, m in messages]}

    client = app.test_client()
    client.get("/flash")
    assert client.get("/show").json == {
        "messages": [["message", "plain", "str"], ["warning", "<em>marked</em>", "Markup"]]
    }
    assert client.get("/show").json == {"messages": []}


def test_unsupported_value_fails_at_the_assignment(app: Flask) -> None:
    """session[k] = unsupported raises right there, naming the key and type."""
    seen: list[SerializationError] = []

    @app.get("/bad")
    def bad() -> str:
        try:
            session["basket"] = {"items": {1, 2}}
        except SerializationError as exc:
            seen.append(exc)
            return "refused"
        return "stored"

    client = app.test_client()
    assert client.get("/bad").data == b"refused"
    assert seen[0].key == "basket" and seen[0].value_type is set
    assert "Set-Cookie" not in client.get("/bad").headers


def test_a_key_that_is_not_valid_text_fails_at_the_assignment(app: Flask) -> None:
    """A key with a lone surrogate cannot be stored as UTF-8: refused at once, never a 500."""

    @app.get("/bad-key")
    def bad_key() -> str:
        try:
            session["\ud800"] = 1
        except SerializationError:
            return "refused"
        return "stored"

    @app.get("/good-key")
    def good_key() -> str:
        session["ünïcode ☃"] = 1
        return str(session["ünïcode ☃"])

    client = app.test_client()
    response = client.get("/bad-key")
    assert (response.status_code, response.data) == (200, b"refused")
    assert client.get("/good-key").data == b"1"


def test_str_subclass_keys_are_filed_under_their_text() -> None:
    """A StrEnum member works as a session key and as a nested dict key, as in Flask."""
    import enum

    from flask import Flask, session

    from satchel import Satchel
    from satchel.stores import MemoryStore

    class Step(enum.StrEnum):
        NAME = "name"

    app = Flask("keys")
    app.config.update(SECRET_KEY="test-secret-key-that-is-long-enough-0123456789")
    Satchel(app, store=MemoryStore())

    @app.get("/set")
    def set_() -> str:
        session[Step.NAME] = {Step.NAME: "Ada"}
        return "ok"

    @app.get("/get")
    def get() -> dict[str, object]:
        return {"keys": [type(k).__name__ for k in session], "value": session["name"]}

    client = app.test_client()
    assert client.get("/set").status_code == 200
    body = client.get("/get").get_json()
    assert body == {"keys": ["str"], "value": {"name": "Ada"}}


# -- deep nesting ----------------------------------------------------------------------


def nested(depth: int) -> Any:
    value: Any = []
    for _ in range(depth - 1):
        value = [value]
    return value


def test_deep_nesting_is_refused_at_assignment(store: Store) -> None:
    """request JSON nested 500-970 deep raises SerializationError; nothing stored."""
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
    """a stored value that cannot load ends the session once, never a 500 forever."""
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


def test_a_value_nested_too_deep_is_refused_naming_its_key_and_type() -> None:
    from satchel.serialization import MAX_DEPTH

    dumps(nested(MAX_DEPTH - 1), "fine")
    with pytest.raises(SerializationError) as caught:
        dumps(nested(MAX_DEPTH + 5), "draft")
    assert caught.value.key == "draft" and caught.value.value_type is list
    assert str(caught.value) == (
        f"cannot store session['draft']: it is nested deeper than {MAX_DEPTH} levels, "
        "which could not be read back"
    )
