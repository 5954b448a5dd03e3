"""The lifecycle driven by hand, without a store: each step's operation, and its answer.

As h11 tests its state machine by feeding it events, these run the lifecycle's
steps (satchel._lifecycle) one yield at a time: they check the typed operation
each step asks for and send back the answer a store would give, including the
awkward ones (a conflict, a lock held elsewhere, a record ended meanwhile). The
store the lifecycle holds fails the test if anything calls it.
"""

from __future__ import annotations

import time
from collections.abc import Generator
from typing import Any

import pytest

from satchel._lifecycle import Lifecycle, Outcome, Settings
from satchel._ops import Acquire, Delete, Load, Op, Release, Save, Sleep, Touch
from satchel.errors import LockTimeout
from satchel.serialization import dumps
from satchel.session import Session
from satchel.signing import CookieSigner, new_id, store_key
from satchel.stores.base import Record, SaveResult

SECRET = "a long, random secret for the lifecycle's own tests"


class NoIO:
    """A store whose every method fails the test: the lifecycle must only yield."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the lifecycle called the store's {name}() itself")

    # The protocols' methods, present so that isinstance checks pass, and refusing.
    def load(self, key: str) -> Any:
        raise AssertionError("load() called")

    save = touch = delete = purge_expired = close = acquire = release = load
    #: What the lifecycle reads (not calls) to know strict mode can work here.
    can_lock = True


def lifecycle(**settings: Any) -> Lifecycle:
    values: dict[str, Any] = {"idle_timeout": 3600.0, "absolute_timeout": 86400.0}
    values["max_size"] = 1 << 20
    values.update(settings)
    return Lifecycle(NoIO(), CookieSigner(SECRET), Settings(**values))


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
    with pytest.raises(LockTimeout):
        while True:
            nxt = run.send(False)
            if isinstance(nxt, Sleep):
                waits += 1
                time.sleep(nxt.seconds)
                assert isinstance(run.send(None), Acquire)
    assert waits >= 1 and life.counters.snapshot()["lock_waits"] == 1


def test_a_held_lock_is_released_after_the_save() -> None:
    """Locking: Acquire granted → Load; after the save, one Release of that lock."""
    life = lifecycle(locking=True)
    session_id = new_id()
    session = life.open(life.sign(session_id))
    run = Steps(life._fill_steps(session))
    acquire = run.first()
    assert isinstance(acquire, Acquire)
    assert run.send(True) == Load(store_key(session_id))
    assert run.send(stored({"n": 1})) is None
    session["n"] = 2
    save = Steps(life._save_steps(session))
    op = save.first()
    assert isinstance(op, Save) and op.change.fence == acquire.token
    assert save.send(SaveResult.SAVED) == Release(acquire.key, acquire.token)
    assert save.send(None) is None and session.state.lock_held is None
