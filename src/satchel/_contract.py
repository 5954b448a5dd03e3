"""The store contract's core: what every store must do (:class:`StoreContract`) and what
strict mode's locks must (:class:`LockingStoreContract`). Public through :mod:`satchel.testing`."""

from __future__ import annotations

import threading
import time
from typing import Any, TypeVar

import pytest

from .errors import SessionTooLarge
from .stores.base import (
    Change,
    LockingStore,
    SaveResult,
    Store,
    size_of,
)

T = TypeVar("T")

__all__ = ["LockingStoreContract", "StoreContract"]


def _change(fields: dict[str, bytes] | None = None, ttl: float = 60.0, **kw: Any) -> Change:
    now = time.time()
    return Change(
        set=fields or {},
        created_at=kw.pop("created_at", now),
        touched_at=kw.pop("touched_at", now),
        expires_at=kw.pop("expires_at", now + ttl),
        **kw,
    )


def _race_creates(store: Store, key: str, threads: int) -> dict[int, SaveResult]:
    """Create ``key`` from ``threads`` threads released at once; each one's result."""
    barrier = threading.Barrier(threads)
    results: dict[int, SaveResult] = {}

    def work(n: int) -> None:
        barrier.wait()
        results[n] = store.save(key, _change({"who": str(n).encode()}), create=True)

    pool = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return results


class StoreContract:
    """Behaviour every :class:`~satchel.stores.Store` must show.

    Subclasses provide a ``store`` fixture returning a fresh, empty store. A store
    whose server expires records itself (so that ``purge_expired`` finds none) says
    so with a true ``expires_by_itself`` attribute.
    """

    def test_is_a_store(self, store: Store) -> None:
        """The object satisfies the Store protocol."""
        assert isinstance(store, Store)

    def test_missing_record_loads_as_none(self, store: Store) -> None:
        """A key never saved loads as None."""
        assert store.load("0" * 64) is None

    def test_create_then_load(self, store: Store) -> None:
        """A created record loads with its fields and times."""
        change = _change({"a": b"1", "b": b"\x00\xff binary"})
        assert store.save("k1", change, create=True) == SaveResult.SAVED
        record = store.load("k1")
        assert record is not None
        assert dict(record.fields) == {"a": b"1", "b": b"\x00\xff binary"}
        assert record.created_at == change.created_at
        assert record.touched_at == change.touched_at
        assert record.expires_at == change.expires_at

    def test_create_refuses_an_existing_record(self, store: Store) -> None:
        """create=True on a live record writes nothing and returns False."""
        store.save("k1", _change({"a": b"1"}), create=True)
        assert store.save("k1", _change({"a": b"2"}), create=True) == SaveResult.REFUSED
        record = store.load("k1")
        assert record is not None and dict(record.fields) == {"a": b"1"}

    def test_update_refuses_a_missing_record(self, store: Store) -> None:
        """create=False on a missing record writes nothing and returns False."""
        assert store.save("k1", _change({"a": b"1"}), create=False) == SaveResult.REFUSED
        assert store.load("k1") is None

    def test_update_sets_and_deletes_only_named_fields(self, store: Store) -> None:
        """An update leaves fields it does not name alone."""
        store.save("k1", _change({"a": b"1", "b": b"2", "c": b"3"}), create=True)
        created = store.load("k1")
        assert created is not None
        change = Change(
            set={"b": b"20", "d": b"4"},
            delete=["c", "never-there"],
            touched_at=created.touched_at + 5,
            expires_at=created.expires_at + 5,
        )
        assert store.save("k1", change, create=False) == SaveResult.SAVED
        record = store.load("k1")
        assert record is not None
        assert dict(record.fields) == {"a": b"1", "b": b"20", "d": b"4"}
        assert record.created_at == created.created_at
        assert record.touched_at == created.touched_at + 5
        assert record.expires_at == created.expires_at + 5

    def test_field_names_are_kept_exactly(self, store: Store) -> None:
        """Names with colons, spaces, quotes and non-ASCII survive."""
        fields = {"d:x": b"1", "m:c": b"2", " ": b"3", "naïve 'q'": b"4", "": b"5"}
        store.save("k1", _change(fields), create=True)
        record = store.load("k1")
        assert record is not None and dict(record.fields) == fields

    def test_many_fields_in_one_save(self, store: Store) -> None:
        """A save of thousands of fields (and deletes) is applied whole."""
        many = {f"f{i}": str(i).encode() for i in range(5000)}
        assert store.save("k1", _change(many), create=True) == SaveResult.SAVED
        change = _change(
            {f"g{i}": b"x" for i in range(3000)}, delete=[f"f{i}" for i in range(4000)]
        )
        assert store.save("k1", change, create=False) == SaveResult.SAVED
        record = store.load("k1")
        assert record is not None
        assert len(record.fields) == 1000 + 3000
        assert record.fields["f4999"] == b"4999" and "f0" not in record.fields

    def test_delete(self, store: Store) -> None:
        """A deleted record is gone; deleting again is fine."""
        store.save("k1", _change({"a": b"1"}), create=True)
        store.save("k2", _change({"a": b"2"}), create=True)
        store.delete("k1")
        store.delete("k1")
        assert store.load("k1") is None
        assert store.load("k2") is not None

    def test_expired_record_is_gone(self, store: Store) -> None:
        """A record past expires_at neither loads nor accepts updates."""
        store.save("k1", _change({"a": b"1"}, ttl=0.3), create=True)
        assert store.load("k1") is not None
        time.sleep(0.4)
        assert store.load("k1") is None
        assert store.save("k1", _change({"b": b"2"}), create=False) == SaveResult.REFUSED
        assert store.touch("k1", time.time(), time.time() + 60) is False

    def test_expired_key_can_be_created_again(self, store: Store) -> None:
        """After expiry a create under the same key starts from nothing."""
        store.save("k1", _change({"a": b"1"}, ttl=0.2), create=True)
        time.sleep(0.3)
        assert store.save("k1", _change({"b": b"2"}), create=True) == SaveResult.SAVED
        record = store.load("k1")
        assert record is not None and dict(record.fields) == {"b": b"2"}

    def test_touch_moves_times_only(self, store: Store) -> None:
        """touch changes last-seen and expiry, not the fields."""
        saved = time.time()
        store.save("k1", _change({"a": b"1"}, ttl=1.5), create=True)
        later = time.time() + 100
        assert store.touch("k1", later - 50, later) is True
        time.sleep(max(0.0, saved + 1.6 - time.time()))  # past the expiry it was saved with
        record = store.load("k1")
        assert record is not None
        assert dict(record.fields) == {"a": b"1"}
        assert (record.touched_at, record.expires_at) == (later - 50, later)
        assert store.touch("missing", later, later) is False

    def test_purge_expired(self, store: Store) -> None:
        """purge_expired removes the expired records and keeps the live ones."""
        for i in range(5):
            store.save(f"old{i}", _change({"a": b"1"}, ttl=0.2), create=True)
        store.save("live", _change({"a": b"1"}), create=True)
        time.sleep(0.3)
        removed = store.purge_expired()
        # Exactly the expired records; none where the server expires keys itself.
        assert removed == (0 if getattr(store, "expires_by_itself", False) else 5)
        assert store.load("live") is not None
        assert all(store.load(f"old{i}") is None for i in range(5))

    def test_overlapping_updates_of_different_fields_all_survive(self, store: Store) -> None:
        """Threads saving different fields of one record at once lose nothing."""
        store.save("k1", _change({"start": b"0"}), create=True)
        threads, rounds = 8, 25
        barrier = threading.Barrier(threads)
        errors: list[BaseException] = []

        def work(n: int) -> None:
            try:
                barrier.wait()
                for i in range(rounds):
                    saved = store.save("k1", _change({f"t{n}-{i}": b"x"}), create=False)
                    assert saved == SaveResult.SAVED
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        pool = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
        for t in pool:
            t.start()
        for t in pool:
            t.join()
        assert errors == []
        record = store.load("k1")
        assert record is not None
        assert len(record.fields) == 1 + threads * rounds

    def test_overlapping_creates_of_one_key_save_once(self, store: Store) -> None:
        """Threads creating one key at once: exactly one is SAVED, and its fields are kept."""
        for round_ in range(10):
            key = f"race{round_}"
            results = _race_creates(store, key, threads=6)
            winners = [n for n, result in results.items() if result == SaveResult.SAVED]
            assert len(results) == 6 and len(winners) == 1, results
            record = store.load(key)
            assert record is not None and record.fields == {"who": str(winners[0]).encode()}

    def test_move_takes_the_stored_fields_and_ends_the_old_record(self, store: Store) -> None:
        """A create that replaces a record carries its fields as stored, plus the change."""
        store.save("old", _change({"a": b"1", "b": b"2"}), create=True)
        # Another request added "late" after the mover loaded: it must survive the move.
        store.save("old", _change({"late": b"3"}), create=False)
        move = _change({"c": b"4"}, created_at=12345.0, delete=["b"], replaces="old")
        assert store.save("new", move, create=True) == SaveResult.SAVED
        assert store.load("old") is None
        record = store.load("new")
        assert record is not None
        assert dict(record.fields) == {"a": b"1", "late": b"3", "c": b"4"}
        assert record.created_at == 12345.0

    def test_move_of_an_ended_record_is_refused(self, store: Store) -> None:
        """A record cleared or revoked meanwhile is never brought back under a new key."""
        store.save("old", _change({"a": b"1"}), create=True)
        store.delete("old")
        move = _change({"c": b"4"}, replaces="old")
        assert store.save("new", move, create=True) == SaveResult.REFUSED
        assert store.load("new") is None and store.load("old") is None

    def test_emptying_save_keeps_keys_another_request_wrote(self, store: Store) -> None:
        """delete_if_only removes the record only when nothing else is stored in it."""
        store.save("k1", _change({"_flashes": b"[]", "_permanent": b"true"}), create=True)
        store.save("k1", _change({"cart": b"[1]"}), create=False)  # an overlapping request
        emptying = _change(delete=["_flashes"], delete_if_only={"_permanent"})
        assert store.save("k1", emptying, create=False) == SaveResult.SAVED
        record = store.load("k1")
        assert record is not None
        assert dict(record.fields) == {"_permanent": b"true", "cart": b"[1]"}
        emptying = _change(delete=["cart"], delete_if_only={"_permanent"})
        assert store.save("k1", emptying, create=False) == SaveResult.DELETED
        assert store.load("k1") is None

    def test_size_limit_counts_the_merged_record(self, store: Store) -> None:
        """max_size holds for the record after the merge, names included; nothing is written."""
        store.save("k1", _change({"a": b"x" * 600}), create=True)
        store.save("k1", _change({"b": b"x" * 300}), create=False)
        assert size_of(store.load("k1").fields) == 902  # type: ignore[union-attr]
        # On its own this change is small, but the record it makes is not.
        with pytest.raises(SessionTooLarge) as raised:
            store.save("k1", _change({"c": b"x" * 200}, max_size=1000), create=False)
        assert raised.value.size == 1103 and raised.value.limit == 1000
        record = store.load("k1")
        assert record is not None and sorted(record.fields) == ["a", "b"]
        with pytest.raises(SessionTooLarge):
            store.save("k2", _change({"long-name": b"x" * 995}, max_size=1000), create=True)
        assert store.load("k2") is None

    def test_record_over_a_lowered_limit_can_still_shrink(self, store: Store) -> None:
        """A record already over max_size accepts saves that do not grow it."""
        store.save("k1", _change({"a": b"x" * 800, "b": b"x" * 800}), create=True)
        shrink = _change({"a": b"x" * 10}, max_size=1000)
        assert store.save("k1", shrink, create=False) == SaveResult.SAVED
        with pytest.raises(SessionTooLarge):
            store.save("k1", _change({"c": b"x" * 100}, max_size=500), create=False)
        record = store.load("k1")
        assert record is not None and sorted(record.fields) == ["a", "b"]

    def test_expect_is_a_compare_and_set_per_field(self, store: Store) -> None:
        """A save whose expected bytes no longer hold writes nothing (CONFLICT)."""
        store.save("k1", _change({"cart": b"[1]", "x": b"0"}), create=True)
        stale = _change({"cart": b"[1,2]", "y": b"1"}, expect={"cart": b"[]", "y": None})
        assert store.save("k1", stale, create=False) == SaveResult.CONFLICT
        record = store.load("k1")
        assert record is not None and dict(record.fields) == {"cart": b"[1]", "x": b"0"}
        absent = _change({"y": b"1"}, expect={"x": None})
        assert store.save("k1", absent, create=False) == SaveResult.CONFLICT
        fresh = _change({"cart": b"[1,2]", "y": b"1"}, expect={"cart": b"[1]", "y": None})
        assert store.save("k1", fresh, create=False) == SaveResult.SAVED
        record = store.load("k1")
        assert record is not None and record.fields["cart"] == b"[1,2]"
        move = _change({"z": b"2"}, replaces="k1", expect={"cart": b"[1]"})
        assert store.save("k2", move, create=True) == SaveResult.CONFLICT
        assert store.load("k2") is None and store.load("k1") is not None

    def test_size_limit_holds_under_overlapping_saves(self, store: Store) -> None:
        """Threads each adding a field under one limit: the record never ends over it."""
        store.save("k1", _change({"start": b"0"}), create=True)
        barrier = threading.Barrier(8)
        outcomes: list[str] = []

        def grow(n: int) -> None:
            barrier.wait()
            try:
                store.save("k1", _change({f"f{n}": b"x" * 9000}, max_size=10_000), create=False)
                outcomes.append("saved")
            except SessionTooLarge:
                outcomes.append("too large")

        pool = [threading.Thread(target=grow, args=(n,)) for n in range(8)]
        for t in pool:
            t.start()
        for t in pool:
            t.join()
        assert sorted(outcomes) == ["saved"] + ["too large"] * 7
        record = store.load("k1")
        assert record is not None and size_of(record.fields) <= 10_000


class LockingStoreContract(StoreContract):
    """The contract plus strict mode's lease locks, for stores that offer them."""

    def test_is_a_locking_store(self, store: Store) -> None:
        """The object satisfies the LockingStore protocol."""
        assert isinstance(store, LockingStore)

    def test_lock_excludes_other_tokens(self, store: LockingStore) -> None:
        """A held lock refuses other tokens until released; its holder may renew it."""
        assert store.acquire("k1", "me", 30) is True
        assert store.acquire("k1", "you", 30) is False
        assert store.acquire("k1", "me", 30) is True
        assert store.acquire("k2", "you", 30) is True  # locks are per key
        store.release("k1", "you")  # not the holder: no effect
        assert store.acquire("k1", "you", 30) is False
        store.release("k1", "me")
        assert store.acquire("k1", "you", 30) is True

    def test_lease_lapses(self, store: LockingStore) -> None:
        """A lock whose holder vanished lapses after its lease."""
        assert store.acquire("k1", "crashed", 0.3) is True
        assert store.acquire("k1", "next", 30) is False
        time.sleep(0.4)
        assert store.acquire("k1", "next", 30) is True

    def test_lock_does_not_touch_the_record(self, store: LockingStore) -> None:
        """Locking and releasing leaves the session record as it was."""
        store.save("k1", _change({"a": b"1"}), create=True)
        store.acquire("k1", "me", 30)
        store.release("k1", "me")
        record = store.load("k1")
        assert record is not None and dict(record.fields) == {"a": b"1"}

    def test_one_holder_at_a_time_under_contention(self, store: LockingStore) -> None:
        """Threads racing for one lock never hold it together."""
        holders: list[int] = []
        overlaps: list[int] = []
        barrier = threading.Barrier(6)

        def work(n: int) -> None:
            barrier.wait()
            for _ in range(10):
                while not store.acquire("k1", f"t{n}", 30):
                    time.sleep(0.001)
                holders.append(n)
                if len(holders) > 1:
                    overlaps.append(n)
                time.sleep(0.001)
                holders.remove(n)
                store.release("k1", f"t{n}")

        pool = [threading.Thread(target=work, args=(n,)) for n in range(6)]
        for t in pool:
            t.start()
        for t in pool:
            t.join()
        assert overlaps == []

    def test_save_fenced_by_a_lapsed_lock_is_refused(self, store: LockingStore) -> None:
        """A save whose lease lapsed and was taken over writes nothing (FENCED)."""
        store.save("k1", _change({"a": b"1"}), create=True)
        assert store.acquire("k1", "slow", 0.2)
        time.sleep(0.3)
        assert store.acquire("k1", "fast", 30)
        fast = _change({"a": b"fast"}, fence="fast")
        assert store.save("k1", fast, create=False) == SaveResult.SAVED
        late = _change({"a": b"slow"}, fence="slow")
        assert store.save("k1", late, create=False) == SaveResult.FENCED
        move = _change({"a": b"slow"}, fence="slow", replaces="k1")
        assert store.save("k2", move, create=True) == SaveResult.FENCED
        record = store.load("k1")
        assert record is not None and record.fields["a"] == b"fast"
        assert store.load("k2") is None
