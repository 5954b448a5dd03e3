"""The lifecycle driven by hand, without a store: each step's operation, and its answer.

As h11 tests its state machine by feeding it events, these run the lifecycle's
steps (satchel._lifecycle) one yield at a time: they check the typed operation
each step asks for and send back the answer a store would give, including the
awkward ones (a conflict, a lock held elsewhere, a record ended meanwhile). The
store the lifecycle holds fails the test if anything calls it.
"""

from __future__ import annotations

import time
from collections.abc import Generator, Iterator
from contextlib import ExitStack
from typing import Any

import pytest

from satchel._lifecycle import Lifecycle, Outcome, Settings
from satchel._ops import Acquire, Delete, Load, Op, Release, Save, Sleep, Touch
from satchel.errors import (
    ConfigError,
    LockLost,
    LockTimeout,
    SessionTooLarge,
    StoreUnavailable,
)
from satchel.serialization import dumps
from satchel.session import Session
from satchel.signals import (
    session_created,
    session_destroyed,
    session_expired,
    session_regenerated,
)
from satchel.signing import CookieSigner, new_id, store_key
from satchel.stores.base import Record, SaveResult

SECRET = "a long, random secret for the lifecycle's own tests"


class NoIO:
    """A store whose every method fails the test: the lifecycle must only yield."""

    def __getattr__(self, name: str) -> Any:
        # What the lifecycle may read about a store (getattr with a default) reads as
        # absent; anything else it calls fails too, as an attribute the store lacks.
        raise AttributeError(f"the lifecycle asked the store for {name}")

    # The protocols' methods, present so that isinstance checks pass, and refusing.
    def load(self, key: str) -> Any:
        raise AssertionError("load() called")

    save = touch = delete = purge_expired = close = acquire = release = load
    #: What the lifecycle reads (not calls) to know strict mode can work here.
    can_lock = True


def lifecycle(
    *, store: Any = None, signer: CookieSigner | None = None, sender: Any = None, **settings: Any
) -> Lifecycle:
    """A lifecycle on ``store`` (one that refuses every call by default), with ``settings``
    over an hour's idle timeout, a day's absolute one and a 1 MB limit."""
    values: dict[str, Any] = {"idle_timeout": 3600.0, "absolute_timeout": 86400.0}
    values["max_size"] = 1 << 20
    values.update(settings)
    return Lifecycle(
        NoIO() if store is None else store,
        CookieSigner(SECRET) if signer is None else signer,
        Settings(**values),
        sender=sender,
    )


class Steps:
    """One run of lifecycle steps, advanced by hand."""

    def __init__(self, steps: Generator[Op, Any, Any]) -> None:
        self.steps = steps
        self.answer: Any = None
        self.done = False

    def first(self) -> Op:
        return next(self.steps)

    def send(self, value: Any) -> Op | None:
        """Answer the last operation; the next one, or None when the steps returned."""
        try:
            return self.steps.send(value)
        except StopIteration as stop:
            self.answer, self.done = stop.value, True
            return None


def stored(data: dict[str, Any], *, owner: str | None = None, age: float = 0.0) -> Record:
    now = time.time()
    fields = {key: dumps(value, key) for key, value in data.items()}
    return Record(fields, now - age, now - age, now + 3600, owner, {})


def opened(life: Lifecycle, record: Record | None) -> tuple[Session, str]:
    """A session opened from a genuine cookie, its load answered with ``record``."""
    session_id = new_id()
    session = life.open(life.sign(session_id))
    assert session.session_id == session_id
    run = Steps(life._fill_steps(session))
    assert run.first() == Load(store_key(session_id))
    assert run.send(record) is None and run.done
    return session, store_key(session_id)


def locked(life: Lifecycle, record: Record) -> tuple[Session, Acquire]:
    """A session opened in strict mode: its lock granted, its load answered with ``record``."""
    session_id = new_id()
    session = life.open(life.sign(session_id))
    run = Steps(life._fill_steps(session))
    acquire = run.first()
    assert isinstance(acquire, Acquire)
    assert run.send(True) == Load(store_key(session_id))
    assert run.send(record) is None
    return session, acquire


def test_a_new_session_is_stored_by_one_create() -> None:
    """A first write: one Save with create=True of exactly what was set; a new cookie."""
    life = lifecycle()
    session = life.open(None)
    session["name"] = "Ada"
    run = Steps(life._save_steps(session))
    op = run.first()
    assert isinstance(op, Save) and op.create
    assert dict(op.change.set) == {"name": dumps("Ada", "name")}
    assert run.send(SaveResult.SAVED) is None
    outcome: Outcome = run.answer
    assert outcome.alive and outcome.new_cookie is not None
    assert life.signer.unsign(outcome.new_cookie) == session.session_id
    assert store_key(session.session_id or "") == op.key


def test_an_untouched_or_read_only_session_needs_no_operation() -> None:
    """Opened and never used, or only read with no refresh due: the save yields nothing."""
    life = lifecycle()
    session = life.open(None)
    run = Steps(life._save_steps(session))
    assert run.send(None) is None and run.answer == Outcome()
    session, _ = opened(life, stored({"n": 1}))
    assert session["n"] == 1
    run = Steps(life._save_steps(session))
    assert run.send(None) is None and run.answer.alive and not run.answer.wrote


def test_a_read_only_session_whose_refresh_is_due_is_touched() -> None:
    """Its idle expiry last moved long ago: one Touch, and the outcome says refreshed."""
    life = lifecycle()
    session, key = opened(life, stored({"n": 1}, age=600))
    assert session["n"] == 1
    run = Steps(life._save_steps(session))
    op = run.first()
    assert isinstance(op, Touch) and op.key == key
    assert run.send(True) is None and run.answer.refreshed


def test_a_conflicting_save_reloads_merges_and_saves_again() -> None:
    """CONFLICT: the step loads what is stored now, replays this request's append onto it,
    and saves the merge, expecting the new stored bytes."""
    life = lifecycle()
    session, key = opened(life, stored({"cart": ["a"]}))
    session["cart"].append("b")
    run = Steps(life._save_steps(session))
    first = run.first()
    assert isinstance(first, Save) and not first.create
    assert first.change.expect == {"cart": dumps(["a"], "cart")}
    assert run.send(SaveResult.CONFLICT) == Load(key)
    again = run.send(stored({"cart": ["a", "c"]}))
    assert isinstance(again, Save)
    assert dict(again.change.set) == {"cart": dumps(["a", "c", "b"], "cart")}
    assert again.change.expect == {"cart": dumps(["a", "c"], "cart")}
    assert run.send(SaveResult.SAVED) is None
    assert run.answer.wrote and session["cart"] == ["a", "c", "b"]


def test_a_session_ended_meanwhile_is_not_brought_back() -> None:
    """The update is refused (the record is gone): no create follows; the cookie expires."""
    life = lifecycle()
    session, _ = opened(life, stored({"n": 1}))
    session["n"] = 2
    run = Steps(life._save_steps(session))
    assert isinstance(run.first(), Save)
    assert run.send(SaveResult.REFUSED) is None
    assert run.answer == Outcome(delete_cookie=True) and session.session_id is None


def test_clear_deletes_and_stores_nothing_more() -> None:
    """clear() on a stored session: one Delete of its key, then nothing; cookie expired."""
    life = lifecycle()
    session, key = opened(life, stored({"n": 1}))
    session.clear()
    run = Steps(life._save_steps(session))
    assert run.first() == Delete(key)
    assert run.send(None) is None and run.answer.delete_cookie


def test_regenerate_moves_the_record_in_one_create() -> None:
    """regenerate(owner=...): one create that replaces the old key, with the owner."""
    life = lifecycle()
    session, key = opened(life, stored({"n": 1}))
    session.regenerate(owner=7)
    run = Steps(life._save_steps(session))
    op = run.first()
    assert isinstance(op, Save) and op.create
    assert op.change.replaces == key and op.change.owner == "7" and op.key != key
    assert run.send(SaveResult.SAVED) is None
    assert run.answer.new_cookie is not None and session.owner == "7"


def test_strict_mode_waits_for_the_lock_then_times_out() -> None:
    """Locking: Acquire refused → Sleep → Acquire again ... until lock_timeout: LockTimeout."""
    life = lifecycle(locking=True, lock_timeout=0.05)
    session = life.open(life.sign(new_id()))
    run = Steps(life._fill_steps(session))
    op = run.first()
    assert isinstance(op, Acquire)
    waits = 0
    with pytest.raises(LockTimeout) as caught:
        while True:
            nxt = run.send(False)
            if isinstance(nxt, Sleep):
                waits += 1
                time.sleep(nxt.seconds)
                assert isinstance(run.send(None), Acquire)
    assert waits >= 1 and life.counters.snapshot()["lock_waits"] == 1
    assert caught.value.store == repr(life.store)


def test_a_held_lock_is_released_after_the_save() -> None:
    """Locking: Acquire granted → Load; after the save, one Release of that lock."""
    life = lifecycle(locking=True)
    session, acquire = locked(life, stored({"n": 1}))
    session["n"] = 2
    save = Steps(life._save_steps(session))
    op = save.first()
    assert isinstance(op, Save) and op.change.fence == acquire.token
    assert save.send(SaveResult.SAVED) == Release(acquire.key, acquire.token)
    assert save.send(None) is None and session.state.lock_held is None


# -- what each save asks of the store, field by field ------------------------------------


class Signals:
    """What signals a test listens to were sent: each send's keyword arguments, and who
    sent them, in order. Receivers are connected through blinker's ``connected_to`` for
    the test's life only."""

    def __init__(self, stack: ExitStack) -> None:
        self._stack = stack
        #: Who sent each signal received, in order.
        self.senders: list[Any] = []

    def listen(self, signal: Any) -> list[dict[str, Any]]:
        received: list[dict[str, Any]] = []

        def receiver(sender: Any, **kwargs: Any) -> None:
            received.append(kwargs)
            self.senders.append(sender)

        self._stack.enter_context(signal.connected_to(receiver))
        return received


@pytest.fixture
def signals() -> Iterator[Signals]:
    with ExitStack() as stack:
        yield Signals(stack)


@pytest.mark.parametrize("idle,absolute", [(100.0, 5000.0), (5000.0, 100.0)])
def test_a_create_stores_the_times_owner_and_limit(
    idle: float, absolute: float, signals: Signals
) -> None:
    """A first write's create: both times now, its idle expiry no later than its absolute
    one, the absolute deadline itself, the size limit; nothing expected or replaced."""
    life = lifecycle(idle_timeout=idle, absolute_timeout=absolute, max_size=12345)
    created = signals.listen(session_created)
    session = life.open(None)
    session["a"] = 1
    before = time.time()
    run = Steps(life._save_steps(session))
    op = run.first()
    after = time.time()
    assert isinstance(op, Save) and op.create
    change = op.change
    assert before <= change.created_at <= after and change.touched_at == change.created_at
    assert change.expires_at == change.created_at + min(idle, absolute)
    assert change.ends_by == change.created_at + absolute
    assert change.max_size == 12345
    assert change.owner is None and change.replaces is None and change.fence is None
    assert not change.expect and not change.delete and change.delete_if_only is None
    assert run.send(SaveResult.SAVED) is None
    record = session.state.record
    assert record is not None and record.created_at == change.created_at
    assert record.expires_at == change.expires_at and dict(record.fields) == dict(change.set)
    assert created == [{"session": session, "fingerprint": op.key[:8]}]
    assert life.counters.snapshot()["creates"] == 1
    assert life.counters.snapshot()["saves"] == 1


def test_a_create_whose_id_is_taken_draws_another() -> None:
    """A create the store refuses (the key exists) is tried again under a new ID."""
    life = lifecycle()
    session = life.open(None)
    session["a"] = 1
    run = Steps(life._save_steps(session))
    first = run.first()
    second = run.send(SaveResult.REFUSED)
    assert isinstance(first, Save) and isinstance(second, Save) and second.create
    assert second.key != first.key and second.change == first.change
    assert run.send(SaveResult.SAVED) is None
    assert store_key(session.session_id or "") == second.key


def test_an_empty_new_session_stores_nothing_and_expires_a_stale_cookie() -> None:
    """Written then emptied in one request: no store call; a cookie it came with expires."""
    life = lifecycle()
    session, _ = opened(life, None)  # a genuine cookie whose record is gone
    session["a"] = 1
    del session["a"]
    run = Steps(life._save_steps(session))
    assert run.send(None) is None
    assert run.answer == Outcome(delete_cookie=True) and session.session_id is None
    fresh = life.open(None)
    fresh["a"] = 1
    del fresh["a"]
    run = Steps(life._save_steps(fresh))
    assert run.send(None) is None and run.answer == Outcome()


@pytest.mark.parametrize("age", [10.0, 86000.0])
def test_an_update_moves_the_idle_expiry_no_later_than_the_absolute(age: float) -> None:
    """An update: touched now, the idle expiry from now, capped by the absolute deadline
    counted from the record's creation; each changed field expects what was loaded."""
    life = lifecycle(max_size=999)
    session, key = opened(life, stored({"n": 1, "keep": 2}, age=age))
    record = session.state.record
    assert record is not None
    session["n"] = 2
    session["new"] = 3
    before = time.time()
    run = Steps(life._save_steps(session))
    op = run.first()
    assert isinstance(op, Save) and not op.create and op.key == key
    change = op.change
    assert before <= change.touched_at <= time.time()
    assert change.expires_at == min(change.touched_at + 3600.0, record.created_at + 86400.0)
    assert change.expect == {"n": dumps(1, "n"), "new": None}
    assert dict(change.set) == {"n": dumps(2, "n"), "new": dumps(3, "new")}
    assert not change.delete and change.delete_if_only is None
    assert change.max_size == 999 and change.fence is None and change.replaces is None
    assert run.send(SaveResult.SAVED) is None
    assert run.answer == Outcome(alive=True, wrote=True)
    assert life.counters.snapshot()["saves"] == 1


@pytest.mark.parametrize("owner", [None, "ada"])
def test_a_delete_removes_the_record_when_nothing_is_left_unless_owned(
    owner: str | None, signals: Signals
) -> None:
    """Deleting a key asks the store to remove a record left empty, unless a login owns it
    (an owned session says who logged in, emptied or not); DELETED ends the session."""
    from satchel._state import EMPTY_BUT

    life = lifecycle()
    destroyed = signals.listen(session_destroyed)
    session, key = opened(life, stored({"n": 1}, owner=owner))
    del session["n"]
    run = Steps(life._save_steps(session))
    op = run.first()
    assert isinstance(op, Save) and list(op.change.delete) == ["n"]
    assert op.change.delete_if_only == (EMPTY_BUT if owner is None else None)
    assert run.send(SaveResult.DELETED) is None
    assert run.answer == Outcome(delete_cookie=True) and session.session_id is None
    assert destroyed == [{"session": session, "fingerprint": key[:8]}]
    assert life.counters.snapshot()["deletes"] == 1


def test_a_move_keeps_the_creation_time_and_ends_the_old_key(signals: Signals) -> None:
    """regenerate(): a create under a new key replacing the old one, with the session's
    creation time and absolute deadline, the idle expiry capped by it, the owner, and
    each changed field expecting what was loaded from the old record."""
    life = lifecycle(idle_timeout=3600.0, absolute_timeout=4000.0, max_size=4321)
    regenerated = signals.listen(session_regenerated)
    session, old = opened(life, stored({"n": 1}, age=1000.0))
    origin = session.state.record
    assert origin is not None
    session["n"] = 2
    session.regenerate()
    run = Steps(life._save_steps(session))
    op = run.first()
    assert isinstance(op, Save) and op.create and op.key != old
    change = op.change
    assert change.replaces == old and change.created_at == origin.created_at
    assert change.ends_by == origin.created_at + 4000.0
    assert change.expires_at == min(change.touched_at + 3600.0, change.ends_by)
    assert change.expires_at == change.ends_by  # 3,000 s left of 4,000: the cap holds
    assert change.expect == {"n": dumps(1, "n")} and dict(change.set) == {"n": dumps(2, "n")}
    assert change.owner is None and change.max_size == 4321 and change.fence is None
    from satchel._state import EMPTY_BUT

    assert change.delete_if_only == EMPTY_BUT
    assert run.send(SaveResult.SAVED) is None
    assert run.answer.new_cookie is not None and run.answer.alive
    assert store_key(life.signer.unsign(run.answer.new_cookie) or "") == op.key
    record = session.state.record
    assert record is not None and record.created_at == origin.created_at
    assert dict(record.fields) == {"n": dumps(2, "n")}
    assert [r["fingerprint"] for r in regenerated] == [op.key[:8]]
    assert regenerated[0]["reason"] == session.state.reason
    counts = life.counters.snapshot()
    assert counts["saves"] == 1 and counts["deletes"] == 1


@pytest.mark.parametrize("result", [SaveResult.REFUSED, SaveResult.DELETED])
def test_a_move_of_a_session_ended_meanwhile_makes_no_new_one(result: SaveResult) -> None:
    """The old record is gone (REFUSED) or the move emptied it (DELETED): no new cookie."""
    life = lifecycle()
    session, _ = opened(life, stored({"n": 1}))
    session["n"] = 2
    session.regenerate()
    run = Steps(life._save_steps(session))
    assert isinstance(run.first(), Save)
    assert run.send(result) is None
    assert run.answer.new_cookie is None and run.answer.delete_cookie
    assert session.session_id is None
    assert life.counters.snapshot()["deletes"] == (1 if result == SaveResult.DELETED else 0)


def test_a_moved_record_keeps_what_a_merge_made() -> None:
    """A move that met an overlapping change of its field stores (and remembers) the merge."""
    life = lifecycle()
    session, old = opened(life, stored({"cart": ["a"], "other": 1}))
    session["cart"].append("b")
    session.regenerate()
    run = Steps(life._save_steps(session))
    assert isinstance(run.first(), Save)
    assert run.send(SaveResult.CONFLICT) == Load(old)
    again = run.send(stored({"cart": ["a", "c"], "other": 1}))
    assert isinstance(again, Save) and again.change.replaces == old
    assert run.send(SaveResult.SAVED) is None
    record = session.state.record
    assert record is not None
    assert record.fields["cart"] == dumps(["a", "c", "b"], "cart")
    assert record.fields["other"] == dumps(1, "other")


@pytest.mark.parametrize("idle,due_after", [(100.0, 10.0), (3600.0, 60.0)])
def test_a_read_only_session_is_touched_once_its_refresh_is_due(
    idle: float, due_after: float
) -> None:
    """The idle expiry moves at most every 60 s and every tenth of the idle window."""
    life = lifecycle(idle_timeout=idle)
    for age, due in ((due_after - 2, False), (due_after + 2, True)):
        session, key = opened(life, stored({"n": 1}, age=age))
        assert session["n"] == 1
        run = Steps(life._save_steps(session))
        op = run.send(None) if not due else run.first()
        if not due:
            assert op is None and run.answer == Outcome(alive=True)
            continue
        assert isinstance(op, Touch) and op.key == key
        record = session.state.record
        assert record is not None
        assert op.expires_at == min(op.touched_at + idle, record.created_at + 86400.0)
        assert run.send(True) is None
        assert run.answer == Outcome(alive=True, refreshed=True)
    assert life.counters.snapshot()["touches"] == 1


def test_a_touch_of_a_session_ended_meanwhile_expires_the_cookie() -> None:
    life = lifecycle()
    session, _ = opened(life, stored({"n": 1}, age=600))
    assert session["n"] == 1
    run = Steps(life._save_steps(session))
    assert isinstance(run.first(), Touch)
    assert run.send(False) is None
    assert run.answer == Outcome(delete_cookie=True) and session.session_id is None


def test_an_owned_session_is_touched_on_every_use_under_an_owner_limit() -> None:
    """With a limit per owner, "least recently seen" needs each use of an owned session
    recorded; an unowned one still refreshes at most every so often."""
    from satchel.stores import MemoryStore

    life = lifecycle(store=MemoryStore(), max_sessions_per_owner=3)
    owned, _ = opened(life, stored({"n": 1}, owner="ada", age=1.0))
    assert owned["n"] == 1
    assert isinstance(Steps(life._save_steps(owned)).first(), Touch)
    unowned, _ = opened(life, stored({"n": 1}, age=1.0))
    assert unowned["n"] == 1
    run = Steps(life._save_steps(unowned))
    assert run.send(None) is None and run.answer == Outcome(alive=True)


def test_the_merge_loop_counts_one_merge_spreads_retries_and_gives_up_when_ended() -> None:
    """CONFLICT after CONFLICT: one merge counted, a short random pause from the third try
    on, and a record gone meanwhile ends the session instead of recreating it."""
    life = lifecycle()
    session, key = opened(life, stored({"cart": ["a"]}))
    session["cart"].append("b")
    run = Steps(life._save_steps(session))
    assert isinstance(run.first(), Save)
    for attempt in range(4):
        op = run.send(SaveResult.CONFLICT)
        if attempt >= 2:
            assert isinstance(op, Sleep) and 0 <= op.seconds <= min(0.001 * attempt, 0.02)
            op = run.send(None)
        assert op == Load(key)
        assert isinstance(run.send(stored({"cart": ["a", str(attempt)]})), Save)
    assert life.counters.snapshot()["merges"] == 1
    assert isinstance(run.send(SaveResult.CONFLICT), Sleep)
    assert run.send(None) == Load(key)
    assert run.send(None) is None  # the record is gone: no create, no further save
    assert run.answer == Outcome(delete_cookie=True) and session.session_id is None


def test_the_merge_loop_gives_up_after_the_lock_timeout() -> None:
    """A save that keeps losing the race for ``lock_timeout`` answers LockTimeout."""
    life = lifecycle(lock_timeout=0.0)
    session, _ = opened(life, stored({"n": 1}))
    session["n"] = 2
    run = Steps(life._save_steps(session))
    assert isinstance(run.first(), Save)
    with pytest.raises(LockTimeout):
        run.send(SaveResult.CONFLICT)
    assert life.counters.snapshot()["merges"] == 1


def test_a_fenced_save_raises_lock_lost() -> None:
    life = lifecycle(locking=True)
    session, acquire = locked(life, stored({"n": 1}))
    session["n"] = 2
    save = Steps(life._save_steps(session))
    assert isinstance(save.first(), Save)
    # The lock is released (a no-op on the store's side) before the error leaves.
    assert save.send(SaveResult.FENCED) == Release(acquire.key, acquire.token)
    with pytest.raises(LockLost):
        save.send(None)


# -- what a merge replays (satchel._rebase) ----------------------------------------------


def conflicted(life: Lifecycle, session: Session, key: str, *stored_now: dict[str, Any]) -> Save:
    """Save ``session``, answering CONFLICT once per record in ``stored_now`` (each the
    record stored at that retry); the last save the steps ask for."""
    run = Steps(life._save_steps(session))
    op = run.first()
    for data in stored_now:
        assert isinstance(op, Save)
        nxt = run.send(SaveResult.CONFLICT)
        if isinstance(nxt, Sleep):
            nxt = run.send(None)
        assert nxt == Load(key)
        op = run.send(stored(data))
    assert isinstance(op, Save)
    assert run.send(SaveResult.SAVED) is None
    return op


def test_a_new_key_given_a_value_is_the_later_saves_in_a_merge() -> None:
    """``session["p"] = {...}`` on a key absent at load is a leaf: this save's value, whole."""
    life = lifecycle()
    session, key = opened(life, stored({"o": 1}))
    session["p"] = {"x": 1}
    op = conflicted(life, session, key, {"o": 1, "p": {"y": 2}})
    assert dict(op.change.set) == {"p": dumps({"x": 1}, "p")}
    assert op.change.expect == {"p": dumps({"y": 2}, "p")}


def test_a_list_given_anew_is_the_later_saves_in_a_merge() -> None:
    """``session["cart"] = [...]`` replaces the list: another request's append is not kept,
    as if the requests had run one after the other in save order."""
    life = lifecycle()
    session, key = opened(life, stored({"cart": [1]}))
    session["cart"] = [5]
    op = conflicted(life, session, key, {"cart": [1, 2]})
    assert dict(op.change.set) == {"cart": dumps([5], "cart")}


def test_a_first_setdefault_merges_with_another_requests_first_one() -> None:
    life = lifecycle()
    session, key = opened(life, stored({"o": 1}))
    session.setdefault("cart", []).append("a")
    op = conflicted(life, session, key, {"o": 1, "cart": ["b"]})
    assert dict(op.change.set) == {"cart": dumps(["b", "a"], "cart")}
    assert session["cart"] == ["b", "a"]  # the view's session holds the merge too


def test_a_field_deleted_meanwhile_keeps_only_this_requests_change() -> None:
    life = lifecycle()
    session, key = opened(life, stored({"cart": [1], "o": 1}))
    session["cart"].append(2)
    op = conflicted(life, session, key, {"o": 1})
    assert dict(op.change.set) == {"cart": dumps([2], "cart")}
    assert op.change.expect == {"cart": None}


def test_a_field_that_conflicts_twice_replays_the_requests_own_change_each_time() -> None:
    """The second merge replays what this request did (append 2), not the first merge."""
    life = lifecycle()
    session, key = opened(life, stored({"cart": [1], "n": 0}))
    session["cart"].append(2)
    session["n"] = 5
    op = conflicted(life, session, key, {"cart": [1, 3], "n": 0}, {"cart": [3, 4], "n": 7})
    assert dict(op.change.set) == {"cart": dumps([3, 4, 2], "cart"), "n": dumps(5, "n")}
    assert op.change.expect == {"cart": dumps([3, 4], "cart"), "n": dumps(7, "n")}
    assert session["cart"] == [3, 4, 2] and session["n"] == 5


def test_a_field_unchanged_meanwhile_is_saved_as_it_was() -> None:
    """Only the fields another request changed are merged; the others keep their bytes."""
    life = lifecycle()
    session, key = opened(life, stored({"a": [1], "b": [1]}))
    session["a"].append(2)
    session["b"].append(2)
    op = conflicted(life, session, key, {"a": [1], "b": [0, 1]})
    assert dict(op.change.set) == {"a": dumps([1, 2], "a"), "b": dumps([0, 1, 2], "b")}
    assert op.change.expect == {"a": dumps([1], "a"), "b": dumps([0, 1], "b")}


# -- unreadable records, clear, cookies ---------------------------------------------------


def test_an_unreadable_record_is_deleted_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    """A stored value that does not load back: the session counts as ended, its record is
    deleted, and the security log names the record (its fingerprint) and the error."""
    life = lifecycle()
    session_id = new_id()
    key = store_key(session_id)
    session = life.open(life.sign(session_id))
    run = Steps(life._fill_steps(session))
    assert run.first() == Load(key)
    broken = Record({"n": b"\xff not json"}, time.time(), time.time(), time.time() + 60, None, {})
    with caplog.at_level("WARNING", logger="satchel.security"):
        assert run.send(broken) == Delete(key)
        assert run.send(None) is None
    assert dict(session) == {}
    (line,) = [r for r in caplog.records if r.name == "satchel.security"]
    assert line.getMessage() == (
        f"session {key[:8]} holds a value that cannot be read back "
        "(UnicodeDecodeError); it counts as ended"
    )


def test_an_unreadable_record_the_store_cannot_delete_is_counted_not_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    life = lifecycle()
    session_id = new_id()
    key = store_key(session_id)
    session = life.open(life.sign(session_id))
    run = Steps(life._fill_steps(session))
    run.first()
    broken = Record({"n": b"\xff"}, time.time(), time.time(), time.time() + 60, None, {})
    with caplog.at_level("WARNING", logger="satchel.security"):
        assert run.send(broken) == Delete(key)
        try:
            run.steps.throw(StoreUnavailable("the store", "down"))
        except StopIteration:
            pass
        else:
            raise AssertionError("the steps went on after the failed delete")
    assert life.counters.snapshot()["store_errors"] == 1
    assert caplog.records[-1].getMessage() == (
        f"could not delete the unreadable session {key[:8]}: "
        "session store the store is unavailable: down"
    )


def test_clear_signals_the_destruction_and_forgets_the_id(signals: Signals) -> None:
    life = lifecycle()
    destroyed = signals.listen(session_destroyed)
    session, key = opened(life, stored({"n": 1}))
    session.clear()
    run = Steps(life._save_steps(session))
    assert run.first() == Delete(key)
    assert run.send(None) is None
    assert destroyed == [{"session": session, "fingerprint": key[:8]}]
    assert session.state.session_id is None and life.counters.snapshot()["deletes"] == 1


def test_the_cookie_is_the_one_it_came_in_or_signed_anew() -> None:
    life = lifecycle()
    session_id = new_id()
    cookie = life.sign(session_id) + ""
    session = life.open(cookie)
    assert life.cookie_of(session.state) is cookie
    fresh = life.open(None)
    fresh.state.session_id = session_id
    assert life.signer.unsign(life.cookie_of(fresh.state)) == session_id


def test_a_login_check_in_the_view_needs_a_driver_only_under_the_refuse_policy() -> None:
    """No limit, or evict-oldest: nothing to check; refuse: the driver's store call."""
    for settings in ({}, {"max_sessions_per_owner": 2}):
        life = lifecycle(store=_Listing(), **settings)
        assert life.check_login(life.open(None), "ada") is None
    life = lifecycle(store=_Listing(), max_sessions_per_owner=2, max_sessions_policy="refuse")
    with pytest.raises(NotImplementedError):
        life.check_login(life.open(None), "ada")


class _Listing(NoIO):
    """A store that can lock and list, as an owner limit needs (and is never called)."""

    records = revoke = NoIO.load


# -- moves, field by field ----------------------------------------------------------------


def test_a_move_in_strict_mode_is_fenced_by_the_old_records_lock_and_carries_deletes() -> None:
    """regenerate() in strict mode: the move holds the lock it loaded under (a lapsed lease
    must refuse it), deletes what the view deleted, and its record keeps the new times."""
    life = lifecycle(locking=True)
    meta = {"user_agent": "Firefox/140"}
    origin = Record(
        {"a": dumps(1, "a"), "b": dumps(2, "b")}, time.time() - 50, time.time() - 50,
        time.time() + 3000, None, meta,
    )  # fmt: skip
    session, acquire = locked(life, origin)
    session_id = session.session_id
    assert session_id is not None
    del session["b"]
    session.regenerate(owner="ada")
    save = Steps(life._save_steps(session))
    op = save.first()
    assert isinstance(op, Save) and op.create
    assert op.change.fence == acquire.token and list(op.change.delete) == ["b"]
    assert op.change.owner == "ada" and op.change.delete_if_only is None  # owned: kept
    assert op.key not in {store_key(i) for i in life.signer.renewed_ids(session_id)}
    assert save.send(SaveResult.SAVED) == Release(acquire.key, acquire.token)
    assert save.send(None) is None
    record = session.state.record
    assert record is not None
    assert (record.touched_at, record.expires_at) == (op.change.touched_at, op.change.expires_at)
    assert record.owner == "ada" and record.meta == dict(op.change.meta)
    assert record.created_at == origin.created_at and dict(record.fields) == {"a": dumps(1, "a")}


def test_a_read_only_session_renewed_meanwhile_joins_the_renewal() -> None:
    """Its touch finds the record gone, because another request renewed the ID: within the
    grace this request joins the renewed session (its cookie is sent) instead of ending."""
    life = lifecycle(renewal_interval=3600.0, renewal_grace=10.0)
    session, key = opened(life, stored({"n": 1}, age=600))
    old_id = session.session_id
    assert old_id is not None and session["n"] == 1
    run = Steps(life._save_steps(session))
    assert isinstance(run.first(), Touch)
    renewed = life.signer.renewed_ids(old_id)[0]
    assert run.send(False) == Load(store_key(renewed))
    assert run.send(stored({"n": 1})) is None
    assert run.answer.alive and run.answer.new_cookie is not None
    assert life.signer.unsign(run.answer.new_cookie) == renewed
    assert session.session_id == renewed and key != store_key(renewed)


# -- signals, errors and what a save leaves behind ---------------------------------------


def test_session_expired_is_sent_for_a_genuine_cookie_whose_record_is_gone(
    signals: Signals,
) -> None:
    life = lifecycle()
    expired = signals.listen(session_expired)
    opened(life, stored({"n": 1}))
    assert expired == []
    session, key = opened(life, None)
    assert expired == [{"session": session, "fingerprint": key[:8]}]
    assert life.counters.snapshot()["loads"] == 2


def test_signals_come_from_the_lifecycles_sender_with_the_session(signals: Signals) -> None:
    """Created, regenerated, destroyed (emptied, cleared) and expired: each sent by the
    lifecycle's sender (the Flask app) with the session and its record's fingerprint."""
    sender = object()
    life = lifecycle(sender=sender)
    got = {
        name: signals.listen(signal)
        for name, signal in (
            ("created", session_created),
            ("regenerated", session_regenerated),
            ("destroyed", session_destroyed),
            ("expired", session_expired),
        )
    }
    fresh = life.open(None)
    fresh["n"] = 1
    run = Steps(life._save_steps(fresh))
    created = run.first()
    assert isinstance(created, Save) and run.send(SaveResult.SAVED) is None
    moved, _ = opened(life, stored({"n": 1}))
    moved.regenerate()
    run = Steps(life._save_steps(moved))
    move = run.first()
    assert isinstance(move, Save) and run.send(SaveResult.SAVED) is None
    emptied, emptied_key = opened(life, stored({"n": 1}))
    del emptied["n"]
    run = Steps(life._save_steps(emptied))
    run.first()
    assert run.send(SaveResult.DELETED) is None
    cleared, cleared_key = opened(life, stored({"n": 1}))
    cleared.clear()
    run = Steps(life._save_steps(cleared))
    run.first()
    assert run.send(None) is None
    gone, gone_key = opened(life, None)
    assert got["created"] == [{"session": fresh, "fingerprint": created.key[:8]}]
    assert got["regenerated"] == [
        {"session": moved, "fingerprint": move.key[:8], "reason": "manual"}
    ]
    assert got["destroyed"] == [
        {"session": emptied, "fingerprint": emptied_key[:8]},
        {"session": cleared, "fingerprint": cleared_key[:8]},
    ]
    assert got["expired"] == [{"session": gone, "fingerprint": gone_key[:8]}]
    assert signals.senders == [sender] * 5


def test_strict_mode_refuses_a_store_that_says_it_cannot_lock() -> None:
    class CannotLock(NoIO):
        can_lock = False

    with pytest.raises(ConfigError, match="strict mode needs a store that can lock"):
        lifecycle(store=CannotLock(), locking=True)


def test_an_owner_limit_refuses_a_store_that_cannot_list_or_lock() -> None:
    """At start-up, not at the first login: the limit lists an owner's sessions under the
    owner's lock."""
    with pytest.raises(ConfigError, match="a limit of sessions per owner needs a store that lists"):
        lifecycle(store=NoIO(), max_sessions_per_owner=2)

    class CannotLock(_Listing):
        can_lock = False

    with pytest.raises(ConfigError, match="can lock"):
        lifecycle(store=CannotLock(), max_sessions_per_owner=2)
    assert (
        lifecycle(store=_Listing(), max_sessions_per_owner=2).settings.max_sessions_per_owner == 2
    )


def test_a_login_refused_at_its_save_stores_nothing_and_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Two logins of one owner pass the view's check before either is saved (a race the
    check loses): under "refuse", the second save stores nothing, sends no cookie, and
    the security log says why."""
    import logging

    from satchel._manager import SessionManager
    from satchel.stores import MemoryStore

    store = MemoryStore()
    settings = Settings(
        idle_timeout=3600.0, absolute_timeout=86400.0, max_size=1 << 20,
        max_sessions_per_owner=1, max_sessions_policy="refuse",
    )  # fmt: skip
    manager = SessionManager(store, CookieSigner(SECRET), settings)
    first, second = manager.open(None), manager.open(None)
    for n, session in enumerate((first, second)):
        session["n"] = n
        session.regenerate(owner="ada")  # each check finds no session of ada's yet
    assert manager.save(first).new_cookie
    with caplog.at_level(logging.INFO, logger="satchel.security"):
        assert manager.save(second) == Outcome()
    assert "a login over the owner's session limit was not stored" in caplog.text
    assert [record.fields["n"] for _, record in store.records("ada")] == [dumps(0, "n")]
    assert manager.counters.snapshot()["refused_logins"] == 1


def test_each_lock_is_taken_with_a_fresh_128_bit_token() -> None:
    life = lifecycle(locking=True)
    tokens = set()
    for _ in range(3):
        acquire = Steps(life._fill_steps(life.open(life.sign(new_id())))).first()
        assert isinstance(acquire, Acquire) and acquire.lease == 30.0
        assert len(acquire.token) == 32 and int(acquire.token, 16) >= 0
        tokens.add(acquire.token)
    assert len(tokens) == 3


def test_lock_errors_name_the_store_and_how_long_they_took() -> None:
    life = lifecycle(locking=True)
    started = time.monotonic()
    session, _ = locked(life, stored({"n": 1}))
    session["n"] = 2
    save = Steps(life._save_steps(session))
    save.first()
    save.send(SaveResult.FENCED)  # the release
    with pytest.raises(LockLost) as lost:
        save.send(None)
    assert lost.value.store == repr(life.store)
    assert 0 <= lost.value.waited <= time.monotonic() - started
    life = lifecycle(lock_timeout=0.0)
    session, _ = opened(life, stored({"n": 1}))
    session["n"] = 2
    started = time.monotonic()  # before the save's first step, where its own clock starts
    save = Steps(life._save_steps(session))
    save.first()
    with pytest.raises(LockTimeout) as timed_out:
        save.send(SaveResult.CONFLICT)
    assert timed_out.value.store == repr(life.store)
    assert 0 <= timed_out.value.waited <= time.monotonic() - started


def test_the_merge_loops_pauses_grow_with_the_attempts_up_to_20_ms() -> None:
    life = lifecycle(lock_timeout=60.0)
    session, key = opened(life, stored({"cart": ["a"]}))
    session["cart"].append("b")
    run = Steps(life._save_steps(session))
    run.first()
    pauses: list[tuple[int, float]] = []
    for attempt in range(60):
        op = run.send(SaveResult.CONFLICT)
        if isinstance(op, Sleep):
            pauses.append((attempt, op.seconds))
            op = run.send(None)
        assert op == Load(key)
        run.send(stored({"cart": ["a", str(attempt)]}))
    assert [attempt for attempt, _ in pauses] == list(range(2, 60))
    assert all(0 <= pause <= min(0.001 * attempt, 0.02) for attempt, pause in pauses)
    assert max(pause for attempt, pause in pauses if attempt >= 30) > 0.001  # not shrinking


def test_a_read_only_session_touched_under_renewal_asks_nothing_more() -> None:
    life = lifecycle(renewal_interval=3600.0)
    session, _ = opened(life, stored({"n": 1}, age=600))
    assert session["n"] == 1
    run = Steps(life._save_steps(session))
    assert isinstance(run.first(), Touch)
    assert run.send(True) is None and run.answer == Outcome(alive=True, refreshed=True)


def test_a_saved_session_stays_modified_and_an_ended_one_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """After the save ``modified`` stays true, as Flask's session's does: for an update,
    and for a session the save emptied at the store; one ended meanwhile is logged."""
    life = lifecycle()
    for result in (SaveResult.SAVED, SaveResult.DELETED):
        session, _ = opened(life, stored({"n": 1}))
        del session["n"]
        run = Steps(life._save_steps(session))
        run.first()
        assert run.send(result) is None
        assert session.modified is True
    session, _ = opened(life, stored({"n": 1}))
    session["n"] = 2
    run = Steps(life._save_steps(session))
    run.first()
    with caplog.at_level("INFO", logger="satchel.security"):
        assert run.send(SaveResult.REFUSED) is None
    assert [r.getMessage() for r in caplog.records if r.name == "satchel.security"] == [
        "session ended while a request was using it; its changes were dropped"
    ]


# -- the size limit, rejected cookies, renewal and resigning -----------------------------


def test_the_size_limit_counts_what_the_session_will_hold_exactly() -> None:
    """Names' UTF-8 bytes plus values' bytes of every key the session keeps: at the limit
    it saves, one byte over it raises SessionTooLarge before any store call; a deleted
    key no longer counts, and a session over a lowered limit may still shrink."""
    keep, big = dumps("k" * 50, "keep"), dumps("v" * 100, "big")
    for extra, too_large in ((0, False), (1, True)):
        limit = len("keep") + len(keep) + len("big") + len(big) - extra
        life = lifecycle(max_size=limit)
        session, _ = opened(life, stored({"keep": "k" * 50, "gone": "g" * 5}))
        del session["gone"]
        session["big"] = "v" * 100
        run = Steps(life._save_steps(session))
        if too_large:
            with pytest.raises(SessionTooLarge) as caught:
                run.first()
            assert (caught.value.size, caught.value.limit) == (limit + 1, limit)
        else:
            op = run.first()
            assert isinstance(op, Save) and op.change.max_size == limit
    life = lifecycle(max_size=10)
    session, _ = opened(life, stored({"a": "x" * 200, "b": "y" * 10}))
    session["a"] = "x" * 100  # still over the limit, but smaller than it was
    assert isinstance(Steps(life._save_steps(session)).first(), Save)


def test_a_rejected_cookie_is_logged_by_length_counted_and_signalled(
    caplog: pytest.LogCaptureFixture, signals: Signals
) -> None:
    from satchel.signals import cookie_rejected

    sender = object()
    life = lifecycle(sender=sender)
    rejected = signals.listen(cookie_rejected)
    forged = CookieSigner("another key of thirty-two bytes or more!!").sign(new_id())
    with caplog.at_level("WARNING", logger="satchel.security"):
        session = life.open([forged, "short"])
    assert session.session_id is None and dict(session) == {}
    assert rejected == [{"session": session}] and signals.senders == [sender]
    assert life.counters.snapshot()["rejected_cookies"] == 1
    assert caplog.records[-1].getMessage() == (
        f"rejected a session cookie that failed verification ({len(forged)}, 5 chars)"
    )


def test_an_update_of_a_session_renewed_meanwhile_is_saved_into_the_renewal() -> None:
    life = lifecycle(renewal_interval=3600.0, renewal_grace=10.0)
    session, _ = opened(life, stored({"n": 1}))
    old_id = session.session_id
    assert old_id is not None
    session["n"] = 2
    run = Steps(life._save_steps(session))
    assert isinstance(run.first(), Save)
    renewed = store_key(life.signer.renewed_ids(old_id)[0])
    assert run.send(SaveResult.REFUSED) == Load(renewed)
    again = run.send(stored({"n": 1}))
    assert isinstance(again, Save) and again.key == renewed and not again.create
    assert dict(again.change.set) == {"n": dumps(2, "n")}
    assert run.send(SaveResult.SAVED) is None and run.answer.new_cookie is not None


def test_a_create_under_renewal_records_when_its_id_was_issued() -> None:
    from satchel._renewal import ISSUED_AT

    life = lifecycle(renewal_interval=3600.0)
    session = life.open(None)
    session["a"] = 1
    run = Steps(life._save_steps(session))
    op = run.first()
    assert isinstance(op, Save) and op.change.meta[ISSUED_AT] == repr(op.change.created_at)
    assert run.send(SaveResult.SAVED) is None
    record = session.state.record
    assert record is not None and record.meta == dict(op.change.meta)
    assert record.owner is None


def test_a_cookie_signed_by_a_fallback_key_is_signed_anew_once() -> None:
    old_key = "the previous key, thirty-two bytes or more!"
    life = lifecycle(signer=CookieSigner(SECRET, fallbacks=[old_key]))
    session_id = new_id()
    session = life.open(CookieSigner(old_key).sign(session_id))
    run = Steps(life._fill_steps(session))
    run.first()
    assert run.send(stored({"n": 1})) is None
    first = life._alive(session)
    assert first.new_cookie == life.sign(session_id) and first.alive
    assert life._alive(session) == Outcome(alive=True)  # a second save sends none


def test_an_encrypted_store_counts_tampering_in_the_lifecycles_counters() -> None:
    """Sealed directly, or under the ASGI thread wrapper: the lifecycle hands its counters
    to the sealing layer, so ``tampered`` shows in ``stats()`` with every other count."""
    from satchel.encryption import EncryptionKeys, generate_key
    from satchel.stores import MemoryStore
    from satchel.stores.aio import ThreadedStore
    from satchel.stores.encrypted import EncryptedStore

    sealed = EncryptedStore(MemoryStore(), EncryptionKeys([generate_key()]))
    life = lifecycle(store=sealed)
    assert sealed.counters is life.counters
    inner = EncryptedStore(MemoryStore(), EncryptionKeys([generate_key()]))
    life = lifecycle(store=ThreadedStore(inner))
    assert inner.counters is life.counters
