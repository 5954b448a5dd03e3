"""Same-key merges: the diff/patch rules, and overlapping requests against a serial oracle."""

from __future__ import annotations

import copy
import itertools
import random
import threading
from pathlib import Path
from typing import Any

import pytest
from flask import Flask, session
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from satchel import Satchel
from satchel._manager import SessionManager, Settings
from satchel._merge import ABSENT, diff, patch
from satchel.signing import CookieSigner
from satchel.stores import MemoryStore, PostgresStore, RedisStore, SQLiteStore, Store

from .conftest import SECRET, SERVER_TIMEOUT


@pytest.mark.parametrize(
    "old,mine,theirs,merged",
    [
        ([1], [1, 2], [1, 3], [1, 3, 2]),  # both appended
        ([1, 2, 3], [1, 3], [1, 2, 3, 4], [1, 3, 4]),  # removed one, appended one
        ([1, 2], [1, 2, 5, 6], [2], [2, 5, 6]),  # extend onto a removal
        ([], ["a"], ["b"], ["b", "a"]),  # setdefault(k, []).append(x) on both sides
        (ABSENT, ["a"], ["b"], ["a"]),  # session[k] = ["a"]: a new key is a leaf
        ({}, {"l": [1]}, {"l": [2]}, {"l": [1]}),  # a new list inside a dict is a leaf
        ({}, {"d": {"x": 1}}, {"d": {"y": 2}}, {"d": {"y": 2, "x": 1}}),  # a new dict merges
        ({"a": 1}, {"a": 1, "b": 2}, {"a": 1, "c": 3}, {"a": 1, "b": 2, "c": 3}),
        (
            {"p": {"t": "x"}},
            {"p": {"t": "y"}},
            {"p": {"t": "x", "u": 1}},
            {"p": {"t": "y", "u": 1}},
        ),
        ({"a": 1, "b": 2}, {"a": 1}, {"a": 5, "b": 2}, {"a": 5}),  # a delete survives
        ({"l": [1]}, {"l": [1, 2]}, {"l": [1, 3]}, {"l": [1, 2]}),  # a list in a dict: a leaf
        ([1, 2], [], [1, 2, 3], [3]),  # cleared: its items removed, a later append kept
        ([1, 2], [5], [1, 2, 3], [3, 5]),  # edited in place: removals and an append
        (1, 2, 3, 2),  # a leaf: this (later) save wins
        ([1, 2, 3], [3, 2, 1], [1, 2, 3, 4], [4, 3, 2, 1]),  # reverse() replayed as such
        (["a", "b", "a"], ["a", "b"], ["a", "b", "a", "c"], ["a", "b", "c"]),  # pop / append
        (["c", "a", "b"], ["a", "b", "c"], ["c", "a", "b", "d"], ["a", "b", "c", "d"]),  # sort
        (["a", "b", "a"], ["a", "b"], ["a", "b"], ["a", "b"]),  # an item both removed: once
        ([1, 2, 3], [1, 9, 3], [1, 8, 3], [1, 9, 3]),  # one item set by both: the later save
        ([1, 2, 3], [1, 3], [1, 2, "x", 3], [1, "x", 3]),  # a removal beside an insertion
        ([1, 2, 3], [0, 1, 2, 3], [1, 2, 3, 4], [0, 1, 2, 3, 4]),  # insert(0) and append
        ({"a": 1}, {"a": 1, "b": 2}, [9], {"a": 1, "b": 2}),  # the type changed: mine wins
        (True, 1, True, 1),  # 1 and True stay distinct
        # remove(0) of [2, 0, 2, 0] is the item at 1, not "insert 2 at 0, drop the tail"
        # (what difflib's longest-block matcher reads); an insertion there lands beside it.
        ([2, 0, 2, 0], [2, 1, 0, 2, 0], [2, 2, 0], [2, 1, 2, 0]),
        ([2, 0, 2, 0], [2, 2, 0], [2, 1, 0, 2, 0], [2, 1, 2, 0]),
    ],
)
def test_replaying_a_change(old: Any, mine: Any, theirs: Any, merged: Any) -> None:
    """patch(theirs, diff(old, mine)) keeps both requests' changes, or the later leaf."""
    result = patch(copy.deepcopy(theirs), diff(old, mine))
    assert result == merged and type(result) is type(merged)


# -- overlapping requests against a serial oracle, on every store ------------------------

OPS = st.one_of(
    st.tuples(st.just("append"), st.sampled_from(["cart", "tags"]), st.integers(0, 9)),
    st.tuples(
        st.just("extend"), st.sampled_from(["cart"]), st.lists(st.integers(0, 9), max_size=3)
    ),
    st.tuples(st.just("remove"), st.sampled_from(["cart", "tags"]), st.integers(0, 9)),
    st.tuples(st.just("add"), st.just("tags"), st.integers(0, 9)),
    st.tuples(st.just("pref"), st.sampled_from(["a", "b", "c"]), st.integers(0, 99)),
    st.tuples(st.just("unpref"), st.sampled_from(["a", "b", "c"]), st.just(0)),
    st.tuples(st.just("deep"), st.sampled_from(["x", "y"]), st.integers(0, 99)),
    st.tuples(st.just("note"), st.sampled_from(["n1", "n2", "n3"]), st.integers(0, 99)),
)


def run_ops(session: Any, ops: list[tuple[str, str, Any]]) -> None:
    """A request's view code: every supported kind of change, as an app writes it."""
    for kind, name, value in ops:
        if kind == "append":
            session.setdefault(name, []).append(value)
        elif kind == "extend":
            session.setdefault(name, []).extend(value)
        elif kind == "remove":
            if value in session.get(name, []):
                session[name].remove(value)
        elif kind == "add":  # a set kept as a list
            if value not in session.setdefault(name, []):
                session[name].append(value)
        elif kind == "pref":
            session.setdefault("prefs", {})[name] = value
        elif kind == "unpref":
            session.setdefault("prefs", {}).pop(name, None)
        elif kind == "deep":
            session.setdefault("deep", {}).setdefault("inner", {})[name] = [value]
        else:  # a different top-level key each
            session[name] = value


class Plain(dict[str, Any]):
    """The serial oracle: a dict with the session's setdefault/get/pop."""


@pytest.fixture(params=["memory", "sqlite", "redis", "redis_cached", "postgres"])
def fresh_store(request: pytest.FixtureRequest, tmp_path_factory: Any) -> Any:
    """A factory of empty stores of one kind (Hypothesis calls the test many times)."""
    made: list[Store] = []

    def make() -> Store:
        if request.param == "memory":
            store: Store = MemoryStore()
        elif request.param == "sqlite":
            store = SQLiteStore(Path(tmp_path_factory.mktemp("merge")) / "s.sqlite3")
        elif request.param in ("redis", "redis_cached"):
            valkey = request.getfixturevalue("valkey")
            cache = "16MB" if request.param == "redis_cached" else 0
            store = RedisStore.from_url(
                valkey.url,
                prefix=f"merge{len(made)}:",
                cache=cache,
                socket_timeout=SERVER_TIMEOUT,
                connect_timeout=SERVER_TIMEOUT,
            )
        else:
            server = request.getfixturevalue("postgres")
            store = PostgresStore.from_url(
                server.url, prefix=f"merge{len(made)}:", timeout=SERVER_TIMEOUT
            )
        made.append(store)
        return store

    yield make
    for store in made:
        store.close()


def supported(start: list[Any], requests: list[list[Any]]) -> list[list[Any]]:
    """The requests, kept to what merging supports (docs/reliability.md, "Same-key merges").

    Each request adds its own elements to the set-like list (two requests adding
    the same element both add it), and removes only items (and deletes only
    keys) that were there when it loaded: a removal that was a no-op in its view
    cannot be replayed. It does not remove and append equal items of one list:
    those land in the list, but maybe in another order than any serial run. Two
    requests do not both remove an item the list holds more than once: which copy
    each removed cannot be told, and an item both removed goes once (the documented
    rule; ``test_replaying_a_change`` has it). And a write that leaves a value as
    the request loaded it saves nothing for it.
    """
    loaded = Plain(seen=True)
    run_ops(loaded, start)
    kept = []
    removed: set[tuple[str, Any]] = set()  # (list, item) some earlier request removes
    for i, ops in enumerate(requests):
        mine: list[Any] = []
        appended: set[tuple[str, Any]] = set()
        for kind, name, value in ops:  # items this request appends anywhere in it
            values = value if kind == "extend" else [value]
            if kind in ("append", "extend"):
                appended.update((name, v) for v in values)
        for kind, name, value in ops:
            if kind == "add":
                value = (i + 1) * 100 + value
            if kind == "remove" and (
                value not in loaded.get(name, [])
                or (name, value) in appended
                or ((name, value) in removed and loaded.get(name, []).count(value) > 1)
            ):
                continue
            if kind == "remove":
                removed.add((name, value))
            if kind == "unpref" and (
                name not in loaded.get("prefs", {}) or ("prefs", name) in appended
            ):
                continue
            if kind == "pref":
                appended.add(("prefs", name))
            if kind in ("append", "add"):
                appended.add((name, value))
            if kind == "extend":
                appended.update((name, v) for v in value)
            mine.append((kind, name, value))
        view = copy.deepcopy(loaded)
        run_ops(view, mine)
        kept.append([op for op in mine if changes_something(op, loaded, view)])
    return kept


def changes_something(op: tuple[str, str, Any], loaded: Plain, view: Plain) -> bool:
    """False for a write whose value ends as the request loaded it: nothing is saved for it."""
    kind, name = op[0], op[1]
    if kind in ("pref", "unpref"):
        place = ("prefs", name)
    elif kind == "deep":
        place = ("deep", "inner", name)
    elif kind == "note":
        place = (name,)
    else:
        return True

    def at(data: Any) -> Any:
        for step in place:
            data = data.get(step, ABSENT) if isinstance(data, dict) else ABSENT
        return data

    return bool(at(view) != at(loaded))


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    start=st.lists(OPS, max_size=4),
    requests=st.lists(st.lists(OPS, min_size=1, max_size=4), min_size=2, max_size=4),
    order=st.randoms(use_true_random=False),
)
def test_overlapping_requests_equal_the_serial_run_in_save_order(
    fresh_store: Any, start: list[Any], requests: list[list[Any]], order: Any
) -> None:
    """Requests that all load before any saves end as if run one after another, in the
    order they saved."""
    requests = supported(start, requests)
    manager = SessionManager(
        fresh_store(), CookieSigner(SECRET), Settings(idle_timeout=600, absolute_timeout=600,
                                                      max_size=1 << 20),
    )  # fmt: skip
    first = manager.open(None)
    first["seen"] = True
    run_ops(first, start)
    cookie = manager.save(first).new_cookie
    assert cookie is not None

    sessions = [manager.open(cookie) for _ in requests]
    for opened, ops in zip(sessions, requests, strict=True):
        run_ops(opened, ops)  # every request loads and changes before any saves
    saving = list(range(len(requests)))
    order.shuffle(saving)
    for i in saving:
        assert manager.save(sessions[i]).delete_cookie is False
    # The serial run in the order the requests saved (README: "in the order they saved").
    oracle = Plain(seen=True)
    run_ops(oracle, start)
    for i in saving:
        run_ops(oracle, requests[i])
    assert dict(manager.open(cookie)) == dict(oracle)


def test_appends_in_save_order_are_kept_in_that_order(fresh_store: Any) -> None:
    """Overlapping appends to one list all land, in the order their requests saved."""
    manager = SessionManager(
        fresh_store(), CookieSigner(SECRET), Settings(idle_timeout=600, absolute_timeout=600,
                                                      max_size=1 << 20),
    )  # fmt: skip
    first = manager.open(None)
    first["cart"] = ["first"]
    cookie = manager.save(first).new_cookie
    sessions = [manager.open(cookie) for _ in range(20)]
    for n, opened in enumerate(sessions):
        opened["cart"].append(n)
    for opened in reversed(sessions):
        manager.save(opened)
    assert manager.open(cookie)["cart"] == ["first", *reversed(range(20))]
    assert manager.counters.merges >= 19


def forty_overlapping_appends(store: Store) -> None:
    """40 requests of one session all load, then all append to one list: 40 kept."""
    app = Flask("cart")
    app.config.update(SECRET_KEY=SECRET)
    Satchel(app, store=store)
    barrier = threading.Barrier(40, timeout=20)

    @app.get("/start")
    def start() -> str:
        session["cart"] = ["first"]
        return "ok"

    @app.get("/add/<int:n>")
    def add(n: int) -> str:
        cart = session["cart"]
        barrier.wait()  # every request has loaded before any of them saves
        cart.append(n)
        return "ok"

    @app.get("/cart")
    def cart() -> Any:
        return session["cart"]

    starter = app.test_client()
    starter.get("/start")
    cookie = starter.get_cookie("session")
    assert cookie is not None
    statuses: list[int] = []

    def add_one(n: int) -> None:
        client = app.test_client()
        client.set_cookie("session", cookie.value)
        statuses.append(client.get(f"/add/{n}").status_code)

    threads = [threading.Thread(target=add_one, args=(n,)) for n in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert statuses == [200] * 40
    stored = starter.get("/cart").json
    assert stored[0] == "first" and sorted(stored[1:]) == list(range(40))


def test_forty_overlapping_appends_are_all_kept(store: Store) -> None:
    """The README's cart, 40 requests at once, no strict mode, on every store."""
    patient = unhurried(store)
    try:
        forty_overlapping_appends(patient)
    finally:
        if patient is not store:
            patient.close()


def unhurried(store: Store) -> Store:
    """``store`` again, waiting up to 30 s for a reply: 40 requests at once on a machine
    running other suites beside this one outlasted the 0.5 s default (a 503), and this
    test is about merges, not about a slow server (tests/test_outage.py is)."""
    if isinstance(store, RedisStore) and store._source is not None and not store._cluster:
        url = store._source[0]
        cache = "16MB" if store._tracked is not None else 0
        return RedisStore.from_url(url, socket_timeout=30, connect_timeout=30, cache=cache)
    if isinstance(store, PostgresStore) and store.conninfo is not None:
        return PostgresStore(store.conninfo, timeout=30.0)
    return store


# -- every list operation, lists with duplicates, against every serial order -----------

LIST_OPS = st.one_of(
    st.tuples(st.just("append"), st.integers(0, 3)),
    st.tuples(st.sampled_from(["extend", "iadd"]), st.lists(st.integers(0, 3), max_size=2)),
    st.tuples(st.just("insert"), st.tuples(st.integers(-5, 5), st.integers(0, 3))),
    st.tuples(st.just("remove"), st.integers(0, 3)),
    st.tuples(st.just("setitem"), st.tuples(st.integers(-5, 5), st.integers(0, 3))),
    # Rarer (each a branch shared with others), so that more examples reach the oracle.
    st.one_of(
        st.tuples(st.just("pop"), st.just(None)),
        st.tuples(st.sampled_from(["pop_at", "del"]), st.integers(-5, 5)),
        st.tuples(
            st.just("slice"),
            st.tuples(
                st.integers(0, 5), st.integers(0, 5), st.lists(st.integers(0, 3), max_size=2)
            ),
        ),
        st.tuples(st.just("clear"), st.just(None)),
    ),
    st.tuples(st.sampled_from(["sort", "sort_desc", "reverse"]), st.just(None)),
)


REORDERS = ("sort", "sort_desc", "reverse")


def run_list_op(cart: list[Any], op: tuple[str, Any]) -> None:
    """One list operation as a view writes it, guarded as a view would guard it."""
    kind, arg = op
    if kind == "append":
        cart.append(arg)
    elif kind == "extend":
        cart.extend(arg)
    elif kind == "iadd":
        cart += arg
    elif kind == "insert":
        cart.insert(*arg)
    elif kind == "pop":
        if cart:
            cart.pop()
    elif kind in ("pop_at", "del"):
        if -len(cart) <= arg < len(cart):
            if kind == "pop_at":
                cart.pop(arg)
            else:
                del cart[arg]
    elif kind == "remove":
        if arg in cart:
            cart.remove(arg)
    elif kind == "setitem":
        if -len(cart) <= arg[0] < len(cart):
            cart[arg[0]] = arg[1]
    elif kind == "slice":
        cart[arg[0] : arg[1]] = arg[2]
    elif kind == "sort":
        cart.sort()
    elif kind == "sort_desc":
        cart.sort(reverse=True)
    elif kind == "reverse":
        cart.reverse()
    else:
        cart.clear()


def added_and_removed(start: list[Any], ops: list[tuple[str, Any]]) -> tuple[set[Any], set[Any]]:
    """The values a request's operations added to the list, and those they removed."""
    view = list(start)
    added: set[Any] = set()
    removed: set[Any] = set()
    for kind, arg in ops:
        before = list(view)
        run_list_op(view, (kind, arg))
        if kind in REORDERS:
            continue
        for value in set(before) | set(view):
            grew = view.count(value) - before.count(value)
            if grew > 0:
                added.add(value)
            elif grew < 0:
                removed.add(value)
        if kind == "setitem" and before != view:
            removed.update(set(before) - set(view))
    return added, removed


def old_items_touched(
    start: list[Any], ops: list[tuple[str, Any]]
) -> tuple[set[int], bool, set[int]]:
    """The indexes of ``start`` a request removed or replaced, whether it only reordered,
    and the places (gaps before an index) where it added items other than by appending
    (worked out with difflib here, independently of satchel's merge)."""
    import difflib

    after = list(start)
    for op in ops:
        run_list_op(after, op)
    if after != start and sorted(after) == sorted(start) and all(k in REORDERS for k, _ in ops):
        return set(range(len(start))), True, set()
    touched: set[int] = set()
    places: set[int] = set()
    appends_only = all(kind in ("append", "extend", "iadd") for kind, _ in ops)
    for tag, i1, i2, _, _ in difflib.SequenceMatcher(None, start, after, False).get_opcodes():
        if tag in ("replace", "delete"):
            touched.update(range(i1, i2))
        if tag in ("replace", "insert") and not (appends_only and i1 == len(start)):
            places.add(i1)
            places.add(i2)
    return touched, False, places


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    start=st.lists(st.integers(0, 3), max_size=5),
    requests=st.lists(st.lists(LIST_OPS, min_size=1, max_size=3), min_size=2, max_size=3),
    order=st.randoms(use_true_random=False),
)
@example(  # a case the random search found once: difflib misread the removal
    start=[2, 0, 2, 0], requests=[[("remove", 0)], [("insert", (1, 1))]], order=random.Random(0)
)
def test_overlapping_list_operations_equal_a_serial_order(
    fresh_store: Any, start: list[Any], requests: list[list[Any]], order: Any
) -> None:
    """Every list operation, from 2-3 requests that all load before any saves, ends as if
    the requests ran one after another, where they removed or replaced different items
    (items removed or replaced by more than one request follow the documented rules,
    tested one by one in test_replaying_a_change)."""
    for ops in requests:  # a reorder merges as such when it is the request's only change
        view = list(start)
        for op in ops:
            run_list_op(view, op)
        looks_reordered = view != start and sorted(view) == sorted(start)
        if looks_reordered != old_items_touched(start, ops)[1] or (
            any(kind in REORDERS for kind, _ in ops) and not looks_reordered
        ):
            # The same items in another order read as a reorder (a sort when it is one).
            event("skipped: a reorder with other changes, or changes that look like one")
            return
    touched = [old_items_touched(start, ops) for ops in requests]
    adds = [
        len([x for op in ops for x in [op] if op[0] not in REORDERS]) > 0
        and any(
            kind in ("append", "extend", "iadd", "insert", "slice", "setitem") for kind, _ in ops
        )
        for ops in requests
    ]
    for n, ops in enumerate(requests):
        # A request removes only what it loaded: a clear() or a slice, or a removal by
        # position, does not reach items another request added meanwhile, as it would
        # in a serial run, and after another request's reorder it is replayed by value
        # (documented; the rules' own cases are in test_replaying_a_change).
        # Nor does it reach other items because another request's removal shifted the
        # positions: it removes the items it saw there (a serial run would remove others).
        positional = {"clear", "slice", "pop", "pop_at", "del", "setitem"}
        if any(kind in positional for kind, _ in ops) and any(
            adds[m] or touched[m][1] or touched[m][0] for m in range(len(requests)) if m != n
        ):
            event("skipped: a removal by position beside another request's changes")
            return
    for ops in requests:
        view = list(start)
        for op in ops:
            run_list_op(view, op)
        if any(kind == "reverse" for kind, _ in ops) and view in (
            sorted(start),
            sorted(start, reverse=True),
        ):
            # A reverse whose result is also a sort reads as the sort (documented).
            event("skipped: a reverse that is also a sort")
            return
        added, removed = added_and_removed(start, ops)
        if added & removed:
            # Removing an item and adding an equal one reads, from the states, as some
            # other change (removing 3 and appending 3, 0 to [3, 0] reads as inserting 0
            # at the front): documented, as in the serial-run test's supported().
            event("skipped: a request removed an item and added an equal one")
            return
    for ops in requests:
        view = list(start)
        for kind, arg in ops:
            if kind == "insert":
                at = max(min(arg[0] if arg[0] >= 0 else len(view) + arg[0], len(view)), 0)
                if arg[1] in view[max(at - 1, 0) : at + 1]:
                    # Where an item equal to its neighbour went cannot be told from the
                    # states: it counts as added after it (documented).
                    event("skipped: an item inserted beside an equal one")
                    return
            run_list_op(view, (kind, arg))
    for one, two in itertools.combinations(touched, 2):
        if one[1] and two[1]:
            event("skipped: both reordered")
            return
        if one[1] or two[1]:
            continue
        if one[0] & two[0]:
            event("skipped: one item removed or replaced by both")
            return
        end = {len(start)}
        if one[2] & (two[2] | two[0] | {i + 1 for i in two[0]} | end) or two[2] & (
            one[0] | {i + 1 for i in one[0]} | end
        ):
            event("skipped: additions by position where the other request edited")
            return
    manager = SessionManager(
        fresh_store(), CookieSigner(SECRET), Settings(idle_timeout=600, absolute_timeout=600,
                                                      max_size=1 << 20),
    )  # fmt: skip
    first = manager.open(None)
    first["cart"] = list(start)
    first["seen"] = True
    cookie = manager.save(first).new_cookie
    assert cookie is not None
    sessions = [manager.open(cookie) for _ in requests]
    for opened, ops in zip(sessions, requests, strict=True):
        for op in ops:
            run_list_op(opened["cart"], op)
    saving = list(range(len(requests)))
    order.shuffle(saving)
    for i in saving:
        manager.save(sessions[i])
    serial = []
    for ordered in itertools.permutations(requests):
        cart = list(start)
        for ops in ordered:
            for op in ops:
                run_list_op(cart, op)
        serial.append(cart)
    event("checked against every serial order")
    assert manager.open(cookie)["cart"] in serial


class AlwaysOverlapped(MemoryStore):
    """A store where another request always changed the key first: every save that
    expects a value is refused (CONFLICT), as under an endless stream of overlaps."""

    def __init__(self) -> None:
        super().__init__()
        self.conflicts = 0

    def save(self, key: str, change: Any, *, create: bool) -> Any:
        from satchel.stores.base import SaveResult

        if change.expect:
            self.conflicts += 1
            return SaveResult.CONFLICT
        return super().save(key, change, create=create)


def test_a_save_that_keeps_losing_the_merge_race_answers_503() -> None:
    """A save that never wins its compare-and-set answers 503 after the lock timeout,
    never overwrites, and leaves the stored session as it was."""
    store = AlwaysOverlapped()
    app = Flask("race")
    app.config.update(SECRET_KEY=SECRET, SATCHEL_LOCK_TIMEOUT=0.2)
    Satchel(app, store=store)

    @app.get("/start")
    def start() -> str:
        session["cart"] = ["first"]
        return "ok"

    @app.get("/add")
    def add() -> str:
        session["cart"].append("second")
        return "ok"

    client = app.test_client()
    assert client.get("/start").status_code == 200
    response = client.get("/add")
    assert response.status_code == 503
    assert store.conflicts > 1  # it replayed its change and tried again, then gave up
    (key,) = [k for _, k in store._records]
    record = store.load(key)
    assert record is not None and record.fields["cart"] == b'["first"]'
    with app.app_context():
        assert Satchel.stats(app)["merges"] == 1
