"""The store contract for listing and revoking sessions, and for namespaces (prefixes).
Public through :mod:`satchel.testing`."""

from __future__ import annotations

import threading
import time
from typing import Any, TypeVar

from ._contract import StoreContract, _change
from .stores.base import (
    ListingStore,
    SaveResult,
    Store,
)

T = TypeVar("T")

#: Records the owner-listing race creates and moves (each listing reads them all, so the
#: race's cost grows with the square of this).
RACERS = 100

__all__ = ["ListingStoreContract", "NamespaceContract"]


class ListingStoreContract(StoreContract):
    """The contract plus owners, client details and listing, for stores that list."""

    def test_is_a_listing_store(self, store: Store) -> None:
        """The object satisfies the ListingStore protocol."""
        assert isinstance(store, ListingStore)

    def test_owner_and_meta_are_kept(self, store: ListingStore) -> None:
        """Owner and meta given at creation survive updates and touches."""
        meta = {"user_agent": "Mozilla/5.0 ünï", "ip": "127.0.0.1"}
        store.save("k1", _change({"a": b"1"}, owner="alice", meta=meta), create=True)
        store.save("k1", _change({"b": b"2"}), create=False)
        store.touch("k1", time.time(), time.time() + 60)
        record = store.load("k1")
        assert record is not None
        assert record.owner == "alice" and dict(record.meta) == meta
        plain = _change({"a": b"1"})
        store.save("k2", plain, create=True)
        other = store.load("k2")
        assert other is not None and other.owner is None and dict(other.meta) == {}

    def test_records_lists_live_records(self, store: ListingStore) -> None:
        """records() yields every live record once; records(owner) only that owner's."""
        store.save("a1", _change({"x": b"1"}, owner="alice"), create=True)
        store.save("a2", _change({"x": b"2"}, owner="alice"), create=True)
        store.save("b1", _change({"x": b"3"}, owner="bob"), create=True)
        store.save("n1", _change({"x": b"4"}), create=True)
        store.save("old", _change({"x": b"5"}, owner="alice", ttl=0.2), create=True)
        store.save("gone", _change({"x": b"6"}, owner="alice"), create=True)
        store.delete("gone")
        time.sleep(0.3)
        assert sorted(k for k, _ in store.records()) == ["a1", "a2", "b1", "n1"]
        alice = dict(store.records("alice"))
        assert sorted(alice) == ["a1", "a2"]
        assert dict(alice["a1"].fields) == {"x": b"1"}
        assert [k for k, _ in store.records("carol")] == []
        # Listing again is stable (and any index pruning did no harm).
        assert sorted(k for k, _ in store.records("alice")) == ["a1", "a2"]

    def test_records_pages_through_many(self, store: ListingStore) -> None:
        """Listing walks past any internal page size."""
        for i in range(1203):
            store.save(f"k{i:05d}", _change({"x": b"1"}, owner="many"), create=True)
        assert len(list(store.records())) == 1203
        assert len(list(store.records("many"))) == 1203

    def test_references_and_count(self, store: ListingStore) -> None:
        """references() finds keys by their start; count() counts sessions and owners."""
        store.save("abc1", _change({"x": b"1"}, owner="alice"), create=True)
        store.save("abc2", _change({"x": b"1"}, owner="alice"), create=True)
        store.save("abd3", _change({"x": b"1"}, owner="bob"), create=True)
        store.save("zzz4", _change({"x": b"1"}), create=True)
        store.save("abc5", _change({"x": b"1"}, ttl=0.2), create=True)
        time.sleep(0.3)
        assert sorted(store.references("abc")) == ["abc1", "abc2"]  # type: ignore[attr-defined]
        assert sorted(store.references("ab")) == ["abc1", "abc2", "abd3"]  # type: ignore[attr-defined]
        assert list(store.references("q")) == []  # type: ignore[attr-defined]
        assert store.count() == (4, 2)  # type: ignore[attr-defined]

    def test_owner_listing_never_loses_a_concurrent_create(self, store: ListingStore) -> None:
        """Creates and moves with an owner racing listings: every one stays listed."""
        stop = threading.Event()

        def list_forever() -> None:
            while not stop.is_set():
                list(store.records("racer"))

        listers = [threading.Thread(target=list_forever) for _ in range(2)]
        for t in listers:
            t.start()
        try:
            for i in range(RACERS):
                store.save(f"plain{i}", _change({"x": b"1"}), create=True)
                move = _change({"y": b"2"}, owner="racer", replaces=f"plain{i}")
                assert store.save(f"moved{i}", move, create=True) == SaveResult.SAVED
                store.save(f"made{i}", _change({"x": b"1"}, owner="racer"), create=True)
        finally:
            stop.set()
            for t in listers:
                t.join()
        listed = sorted(key for key, _ in store.records("racer"))
        assert len(listed) == 2 * RACERS
        expected = [f"moved{i}" for i in range(RACERS)] + [f"made{i}" for i in range(RACERS)]
        assert listed == sorted(expected)

    def test_revoke_ends_records_and_follows_moves(self, store: ListingStore) -> None:
        """revoke() counts the live records it ended and follows a record to where it moved."""
        store.save("r1", _change({"x": b"1"}), create=True)
        store.save("r2", _change({"x": b"1"}), create=True)
        assert store.save("r3", _change(replaces="r2"), create=True) == SaveResult.SAVED
        assert store.save("r4", _change(replaces="r3"), create=True) == SaveResult.SAVED
        assert store.revoke(["r1", "r2", "nothing"]) == 2
        assert [store.load(k) for k in ("r1", "r2", "r3", "r4")] == [None] * 4
        assert store.revoke(["r1", "r2"]) == 0
        # An ended record can no longer move or be updated.
        assert store.save("r5", _change(replaces="r4"), create=True) == SaveResult.REFUSED
        assert store.save("r4", _change({"y": b"2"}), create=False) == SaveResult.REFUSED

    def test_revoke_by_owner_keeps_one(self, store: ListingStore) -> None:
        """revoke(owner=...) ends every record of that owner but ``keep``, and no one else's."""
        for key in ("a1", "a2", "a3"):
            store.save(key, _change({"x": b"1"}, owner="alice"), create=True)
        store.save("b1", _change({"x": b"1"}, owner="bob"), create=True)
        store.save("n1", _change({"x": b"1"}), create=True)
        moved = _change(owner="alice", replaces="a3")
        assert store.save("a4", moved, create=True) == SaveResult.SAVED
        assert store.revoke(owner="alice", keep="a4") == 2
        assert [k for k, _ in store.records("alice")] == ["a4"]
        assert sorted(k for k, _ in store.records()) == ["a4", "b1", "n1"]
        assert store.revoke(owner="alice") == 1
        assert list(store.records("alice")) == []

    def test_revoke_by_owner_misses_no_session_that_keeps_moving(self, store: ListingStore) -> None:
        """Sessions that regenerate in a loop while revoke(owner=...) runs all end, exactly."""
        devices = 4
        moving = [threading.Event() for _ in range(devices)]
        moves = [0] * devices
        ends: list[SaveResult | None] = [None] * devices

        def device(n: int) -> None:
            key = f"dev{n}-0"
            store.save(key, _change({"x": b"1"}, owner="mover"), create=True)
            for i in range(1, 20_000):  # bounded: a device the revoke missed stops here
                if i == 3:
                    moving[n].set()  # and goes on moving
                new = f"dev{n}-{i}"
                result = store.save(new, _change(owner="mover", replaces=key), create=True)
                if result != SaveResult.SAVED:
                    ends[n] = result
                    return
                moves[n] += 1
                key = new

        pool = [threading.Thread(target=device, args=(n,)) for n in range(devices)]
        for t in pool:
            t.start()
        for event in moving:
            event.wait()
        # Every device is in its loop of moves when the revoke starts.
        assert ends == [None] * devices
        ended = store.revoke(owner="mover")
        for t in pool:
            t.join()
        assert all(m >= 2 for m in moves)
        # Each device's next move after the revoke was refused: its session was over.
        assert ends == [SaveResult.REFUSED] * devices
        assert ended == devices
        assert list(store.records("mover")) == []


class NamespaceContract(StoreContract):
    """Prefixes: for stores with ``with_prefix(prefix)``, another namespace on the same data."""

    def test_namespaces_never_meet(self, store: Any) -> None:
        """Records, locks, listings and owners of one prefix are invisible to another."""
        other = store.with_prefix("other-app:")
        try:
            store.save("k1", _change({"a": b"mine"}, owner="1"), create=True)
            assert other.load("k1") is None
            assert other.save("k1", _change({"a": b"theirs"}), create=False) == SaveResult.REFUSED
            theirs = _change({"a": b"theirs"}, owner="1")
            assert other.save("k1", theirs, create=True) == SaveResult.SAVED
            record = store.load("k1")
            assert record is not None and record.fields["a"] == b"mine"
            assert [k for k, _ in other.records("1")] == ["k1"]
            assert [k for k, _ in store.records()] == ["k1"]
            assert other.acquire("k1", "them", 30) and store.acquire("k1", "me", 30)
            other.delete("k1")
            assert store.load("k1") is not None
            assert other.count() == (0, 0) and store.count() == (1, 1)
        finally:
            other.close()
