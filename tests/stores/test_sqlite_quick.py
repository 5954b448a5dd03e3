"""The SQLite store's one-statement saves agree with its transaction on every change.

A save the store can make as one UPDATE (or one upsert, for a create) must answer
and store exactly what the transaction would: the same result or error, the same
record afterwards. Two stores start from the same record, one with one-statement
saves and one without, and take the same change.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from satchel.errors import SessionTooLarge
from satchel.stores import SQLiteStore, _sqlite_quick
from satchel.stores.base import Change, SaveResult

#: Names that JSON escapes, that look like JSON paths, and plain ones.
NAMES = st.sampled_from(
    ["n", "cart", "a.b", "[0]", "$", "", "é☃", 'q"uote', "back\\slash", "tab\tx", "_flashes"]
)
VALUES = st.sampled_from(
    [b"0", b"1", b'"text"', b"[1,2,3]", b"\xff\xfe binary", b'"' + b"x" * 300 + b'"', b"null"]
)


@pytest.fixture
def stores(tmp_path: Path) -> Iterator[tuple[SQLiteStore, SQLiteStore]]:
    quick = SQLiteStore(tmp_path / "quick.sqlite3")
    slow = SQLiteStore(tmp_path / "slow.sqlite3")
    slow._quick = False  # every save in a transaction
    yield quick, slow
    quick.close()
    slow.close()


def outcome(store: SQLiteStore, key: str, change: Change, create: bool) -> object:
    try:
        return store.save(key, change, create=create)
    except SessionTooLarge as exc:
        return ("too large", exc.size, exc.limit)


def snapshot(store: SQLiteStore, key: str) -> object:
    record = store.load(key)
    if record is None:
        return None
    return (dict(record.fields), record.touched_at, record.expires_at, record.owner)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    stored=st.dictionaries(NAMES, VALUES, max_size=5),
    sets=st.dictionaries(NAMES, VALUES, max_size=4),
    deletes=st.lists(NAMES, max_size=3),
    expect=st.dictionaries(NAMES, st.one_of(st.none(), VALUES), max_size=2),
    limit=st.one_of(st.none(), st.integers(0, 700)),
    only=st.one_of(st.none(), st.just(()), st.just(("_flashes",))),
    create=st.booleans(),
    exists=st.booleans(),
)
# A field expected absent is there: a conflict.
@example(stored={"n": b"0"}, sets={"n": b"1"}, deletes=[], expect={"n": None}, limit=None,
         only=None, create=False, exists=True)  # fmt: skip
# The new value takes the record past the limit: too large, although the stored
# JSON before the change is well under it.
@example(stored={"blob": b'"' + b"x" * 300 + b'"'}, sets={"n": b'"' + b"x" * 300 + b'"'},
         deletes=[], expect={}, limit=600, only=None, create=False, exists=True)  # fmt: skip
def test_one_statement_and_transaction_agree(
    stores: tuple[SQLiteStore, SQLiteStore],
    stored: dict[str, bytes],
    sets: dict[str, bytes],
    deletes: list[str],
    expect: dict[str, bytes | None],
    limit: int | None,
    only: tuple[str, ...] | None,
    create: bool,
    exists: bool,
) -> None:
    now = time.time()
    key = f"k{time.perf_counter_ns()}"
    for store in stores:
        if exists:
            first = Change(set=stored, created_at=now, touched_at=now, expires_at=now + 60)
            assert store.save(key, first, create=True) == SaveResult.SAVED
    change = Change(
        set=sets, delete=deletes, touched_at=now + 1, expires_at=now + 120,
        created_at=now, expect=expect or None, max_size=limit, delete_if_only=only,
    )  # fmt: skip
    answers = [outcome(store, key, change, create) for store in stores]
    assert answers[0] == answers[1], (answers, change)
    assert snapshot(stores[0], key) == snapshot(stores[1], key), change


def test_the_usual_update_is_one_statement(tmp_path: Path) -> None:
    """A counter's update, the save most requests make, takes the one-statement path."""
    store = SQLiteStore(tmp_path / "s.sqlite3")
    now = time.time()
    store.save("k", Change(set={"n": b"0", "blob": b'"' + b"x" * 2000 + b'"'},
               created_at=now, touched_at=now, expires_at=now + 60), create=True)  # fmt: skip
    change = Change(
        set={"n": b"1"}, touched_at=now, expires_at=now + 60, expect={"n": b"0"},
        max_size=4096, delete_if_only=(),
    )  # fmt: skip
    statement = _sqlite_quick.update("k", change, now)
    assert statement is not None and statement[0].startswith("UPDATE")
    traced: list[str] = []
    conn = store._connections.take()
    conn.set_trace_callback(traced.append)
    store._connections.give(conn)
    assert store.save("k", change, create=False) == SaveResult.SAVED
    conn.set_trace_callback(None)
    assert [sql.split()[0] for sql in traced] == ["UPDATE"]
    record = store.load("k")
    assert record is not None and record.fields == {"n": b"1", "blob": b'"' + b"x" * 2000 + b'"'}


def test_a_row_that_is_not_json_is_never_written_over(tmp_path: Path) -> None:
    """A row whose data is not a JSON object (written by something else) is REFUSED,
    as the transaction refuses it, and left as it was."""
    store = SQLiteStore(tmp_path / "s.sqlite3")
    now = time.time()
    store.save("k", Change(set={"n": b"0"}, created_at=now, expires_at=now + 60), create=True)
    store.save("j", Change(set={"n": b"0"}, created_at=now, expires_at=now + 60), create=True)
    conn = sqlite3.connect(tmp_path / "s.sqlite3")
    conn.execute("UPDATE satchel_sessions SET data = 'not json' WHERE key = 'k'")
    conn.execute("UPDATE satchel_sessions SET data = '[1, 2]' WHERE key = 'j'")
    conn.commit()
    for key in ("k", "j"):
        change = Change(set={"n": b"1"}, touched_at=now, expires_at=now + 60)
        assert store.save(key, change, create=False) == SaveResult.REFUSED
    rows = dict(conn.execute("SELECT key, data FROM satchel_sessions").fetchall())
    assert rows == {"k": "not json", "j": "[1, 2]"}
    conn.close()
