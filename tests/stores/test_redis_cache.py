"""The Redis store's record cache (``?cache=``): served from memory, never stale after a write.

Two stores on one server stand for two worker processes: each has its own
tracking connection and cache. The contract itself runs on a cached store in
test_contract.py.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from satchel.errors import ConfigError, StoreUnavailable
from satchel.stores import RedisStore, from_url
from satchel.stores._tracking import entry_size, parse_size
from satchel.stores.base import Change, Record, SaveResult

from ..conftest import true_in_a_forked_child
from ..valkey import ValkeyServer


def create(store: RedisStore, key: str, **fields: bytes) -> None:
    now = time.time()
    change = Change(set=fields, created_at=now, touched_at=now, expires_at=now + 600)
    assert store.save(key, change, create=True) == SaveResult.SAVED


def update(store: RedisStore, key: str, **fields: bytes) -> SaveResult:
    now = time.time()
    return store.save(key, Change(set=fields, touched_at=now, expires_at=now + 600), create=False)


def fields_of(record: Record | None) -> dict[str, bytes] | None:
    return None if record is None else dict(record.fields)


@pytest.fixture
def url(redis_store: RedisStore) -> str:
    source = redis_store._source
    assert source is not None
    return source[0]


@pytest.fixture
def workers(url: str) -> Iterator[tuple[RedisStore, RedisStore]]:
    """Two cached stores on one server: two workers' views."""
    one = RedisStore.from_url(url, cache="1MB")
    two = RedisStore.from_url(url, cache="1MB")
    yield one, two
    one.close()
    two.close()


def hits(store: RedisStore) -> int:
    stats = store.cache_stats()
    assert stats is not None
    return stats.hits


def test_an_unchanged_record_is_served_from_memory(workers: tuple[RedisStore, RedisStore]) -> None:
    one, _ = workers
    create(one, "k", a=b"1")
    assert fields_of(one.load("k")) == {"a": b"1"}
    before = hits(one)
    calls = one.client.info("commandstats").get("cmdstat_hgetall", {}).get("calls", 0)
    for _ in range(20):
        assert fields_of(one.load("k")) == {"a": b"1"}
    assert hits(one) == before + 20
    after = one.client.info("commandstats").get("cmdstat_hgetall", {}).get("calls", 0)
    assert after == calls  # not one HGETALL reached the server


def test_own_writes_are_applied_to_the_cached_record(
    workers: tuple[RedisStore, RedisStore], url: str
) -> None:
    one, _ = workers
    plain = RedisStore.from_url(url)
    try:
        create(one, "k", a=b"1", b=b"2")
        one.load("k")
        now = time.time()
        change = Change(set={"c": b"3"}, delete=("a",), touched_at=now, expires_at=now + 900)
        assert one.save("k", change, create=False) == SaveResult.SAVED
        before = hits(one)
        cached, stored = one.load("k"), plain.load("k")
        assert hits(one) == before + 1  # one round trip a read-modify-write, not two
        assert cached is not None and stored is not None
        assert dict(cached.fields) == dict(stored.fields) == {"b": b"2", "c": b"3"}
        assert cached.expires_at == stored.expires_at
        assert one.touch("k", now + 1, now + 1000)
        cached, stored = one.load("k"), plain.load("k")
        assert cached is not None and stored is not None
        assert (cached.touched_at, cached.expires_at) == (stored.touched_at, stored.expires_at)
    finally:
        plain.close()


@pytest.mark.parametrize("writer_cached", [True, False])
def test_a_write_in_one_worker_is_read_at_once_in_another(
    workers: tuple[RedisStore, RedisStore], url: str, writer_cached: bool
) -> None:
    """Thousands of alternations, each side writing and then the other reading: 0 stale."""
    one, two = workers
    plain = RedisStore.from_url(url)
    try:
        create(one, "k", n=b"0")
        stale = 0
        for n in range(1, 2001):
            writer, reader = (one, two) if n % 2 else (two, one)
            if not writer_cached:
                writer, reader = plain, (one, two)[n % 2]
            assert update(writer, "k", n=str(n).encode()) == SaveResult.SAVED
            stale += fields_of(reader.load("k")) != {"n": str(n).encode()}
            reader.load("k")  # and again, from memory
        assert stale == 0
        assert hits(one) + hits(two) >= 2000  # the cache was in play throughout
    finally:
        plain.close()


def test_revoke_clear_and_move_elsewhere_are_seen_at_once(
    workers: tuple[RedisStore, RedisStore],
) -> None:
    one, two = workers
    stale = 0
    before = hits(two)
    for n in range(300):
        create(one, f"r{n}", a=b"1")
        assert two.load(f"r{n}") is not None and two.load(f"r{n}") is not None
        if n % 3 == 0:
            one.delete(f"r{n}")  # a revoke
        elif n % 3 == 1:  # a clear: an emptying save removes the record
            now = time.time()
            change = Change(delete=("a",), touched_at=now, expires_at=now + 60, delete_if_only=())
            assert one.save(f"r{n}", change, create=False) == SaveResult.DELETED
        else:  # regenerate(): the record moves to a new key
            now = time.time()
            change = Change(created_at=now, touched_at=now, expires_at=now + 60, replaces=f"r{n}")
            assert one.save(f"m{n}", change, create=True) == SaveResult.SAVED
            stale += two.load(f"m{n}") is None
        stale += two.load(f"r{n}") is not None
    assert stale == 0
    assert hits(two) - before >= 300  # each record was served from two's cache before it ended


def test_a_server_side_expiry_or_flush_is_not_served(
    workers: tuple[RedisStore, RedisStore],
) -> None:
    one, _ = workers
    now = time.time()
    change = Change(set={"a": b"1"}, created_at=now, touched_at=now, expires_at=now + 1.0)
    assert one.save("short", change, create=True) == SaveResult.SAVED
    create(one, "long", a=b"1")
    assert one.load("short") is not None and one.load("long") is not None
    time.sleep(max(0.0, now + 1.05 - time.time()))
    assert one.load("short") is None  # the record's own expiry, checked on every hit
    one.client.flushdb()
    # Fenced, as every writer of a cached store is (?fence=1): a PING read in a later turn
    # of the server's loop than the flush, so its notice is out before the next read.
    # Unfenced, a loaded machine can read before the server has written the notice (a CI
    # run on two busy workers did): the documented limit for writers that do not fence.
    one.client.ping()
    assert one.load("long") is None  # the flush's notice empties the cache


def test_overlapping_writers_in_threads_and_workers_lose_nothing(
    workers: tuple[RedisStore, RedisStore],
) -> None:
    one, two = workers
    create(one, "k")
    one.load("k"), two.load("k")

    def write(n: int) -> None:
        store = (one, two)[n % 2]
        for i in range(25):
            store.load("k")
            assert update(store, "k", **{f"f{n}-{i}": b"x"}) == SaveResult.SAVED

    threads = [threading.Thread(target=write, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    expected = {f"f{n}-{i}": b"x" for n in range(8) for i in range(25)}
    assert fields_of(one.load("k")) == fields_of(two.load("k")) == expected


def test_a_lost_connection_empties_the_cache(own_valkey: ValkeyServer) -> None:
    store = RedisStore.from_url(own_valkey.url, cache="1MB")
    try:
        create(store, "k", a=b"1")
        assert store.load("k") is not None
        store.client.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
        before = hits(store)
        assert store.load("k") is not None  # read again from the server, on a new connection
        assert hits(store) == before
        # A restarted server forgets everything (no persistence here): so does the cache.
        assert store.load("k") is not None
        own_valkey.kill()
        own_valkey.start()
        assert store.load("k") is None
    finally:
        store.close()


def test_a_frozen_server_gives_store_unavailable_not_a_hang(own_valkey: ValkeyServer) -> None:
    store = RedisStore.from_url(own_valkey.url, cache="1MB")
    try:
        create(store, "k", a=b"1")
        assert own_valkey.process is not None
        os.kill(own_valkey.process.pid, signal.SIGSTOP)
        try:
            with pytest.raises(StoreUnavailable):  # the socket's own timeout: no hang
                update(store, "k", a=b"2")
        finally:
            os.kill(own_valkey.process.pid, signal.SIGCONT)
        plain = RedisStore.from_url(own_valkey.url)
        assert fields_of(store.load("k")) == fields_of(plain.load("k"))
        plain.close()
    finally:
        store.close()


def test_a_forked_worker_starts_with_its_own_connection_and_an_empty_cache(
    workers: tuple[RedisStore, RedisStore],
) -> None:
    one, two = workers
    create(one, "k", a=b"1")
    one.load("k")

    def child() -> bool:
        stats = one.cache_stats()
        assert stats is not None
        before = stats.hits
        ok = fields_of(one.load("k")) == {"a": b"1"} and stats.hits == before
        update(two, "k", a=b"2")  # another worker's write, seen by the child's new connection
        return ok and fields_of(one.load("k")) == {"a": b"2"}

    assert true_in_a_forked_child(child)
    assert fields_of(one.load("k")) == {"a": b"2"}


def test_the_cache_keeps_to_its_bound(url: str) -> None:
    record = Record({"a": b"x" * 2000}, 0, 0, 0)
    bound = entry_size(record) * 10
    store = RedisStore.from_url(url, cache=bound)
    try:
        for n in range(50):
            create(store, f"b{n}", a=b"x" * 2000)
            store.load(f"b{n}")
        stats = store.cache_stats()
        assert stats is not None
        assert stats.entries == 10 and stats.bytes <= bound and stats.evictions == 40
        assert store.load("b49") is not None and store.load("b0") is not None  # evicted: reloaded
    finally:
        store.close()


def test_cache_sizes_and_the_settings_that_refuse_it(url: str) -> None:
    assert parse_size("64MB") == 64_000_000
    assert parse_size("64 MiB") == 64 * 1024 * 1024
    assert parse_size(4096) == 4096 and parse_size("0") == 0
    for bad in ("lots", "-1", "12 parsecs", "1.5MB"):
        with pytest.raises(ConfigError, match="cache"):
            RedisStore.from_url(url, cache=bad)
    with pytest.raises(ConfigError, match="TLS"):
        RedisStore(redis.Redis(ssl=True), cache="1MB")
    plain = RedisStore.from_url(url, cache=0)
    assert plain.cache_stats() is None
    plain.close()
    store: Any = from_url(f"{url}?cache=2MB&prefix=app:")
    try:
        assert store.prefix == "app:" and store.cache_stats() is not None
        assert store._tracked.cache.max_bytes == 2_000_000
    finally:
        store.close()


def test_a_store_that_is_down_answers_store_unavailable(url: str) -> None:
    store = RedisStore.from_url("redis://127.0.0.1:1/0", cache="1MB")
    with pytest.raises(StoreUnavailable):
        store.load("k")
    store.close()


def stale_reads_after_uncached_writes(reader: RedisStore, write: Any, rounds: int) -> int:
    """Write with ``write`` (a function of key and round), then read through the cached
    ``reader`` at once; how many reads served what the write had replaced."""
    stale = 0
    for n in range(rounds):
        key = f"f{n}"
        now = time.time()
        change = Change(set={"v": b"0"}, created_at=now, touched_at=now, expires_at=now + 60)
        assert reader.save(key, change, create=True) == SaveResult.SAVED
        assert fields_of(reader.load(key)) == {"v": b"0"}  # cached now
        write(key, n)
        if n % 2:
            stale += reader.load(key) is not None
        else:
            stale += fields_of(reader.load(key)) != {"v": b"1"}
    return stale


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_fenced_uncached_writer_never_leaves_a_cached_reader_stale(url: str, kind: str) -> None:
    """Revokes and updates by an app without the cache but with ``?fence=1`` (sync, and
    the ASGI adapters' async store) are never read stale by a cached worker."""
    import asyncio

    from satchel.stores.aio import to_async
    from satchel.testing import BlockingStore

    reader = RedisStore.from_url(url, cache="1MB")
    sync = from_url(url + "?fence=1")
    assert isinstance(sync, RedisStore) and sync.fence and reader._source is not None
    writer: Any = sync if kind == "sync" else BlockingStore(to_async(sync))
    try:

        def write(key: str, n: int) -> None:
            if n % 2:
                assert writer.revoke([key]) == 1
            else:
                now = time.time()
                change = Change(set={"v": b"1"}, touched_at=now, expires_at=now + 60)
                assert writer.save(key, change, create=False) == SaveResult.SAVED

        hits = reader.cache_stats().hits  # type: ignore[union-attr]
        assert stale_reads_after_uncached_writes(reader, write, 400) == 0
        assert reader.cache_stats().hits - hits >= 400  # type: ignore[union-attr]
    finally:
        writer.close()
        if kind == "async":
            sync.close()
        reader.close()
        asyncio.set_event_loop(None)


def test_a_swapped_database_stops_being_served_within_the_trust_window(
    url: str, redis_store: RedisStore
) -> None:
    """After SWAPDB (which sends no notice), a worker reading without pause serves the
    old database's records no longer once the trust window has passed."""
    reader = RedisStore.from_url(url, cache="1MB")
    try:
        create(reader, "swapped", v=b"1")
        assert fields_of(reader.load("swapped")) == {"v": b"1"}
        hits = reader.cache_stats().hits  # type: ignore[union-attr]
        client = redis.Redis.from_url(url)
        db = client.connection_pool.connection_kwargs.get("db", 0)
        other = 15 if db != 15 else 14
        client.execute_command("SELECT", other)
        client.swapdb(db, other)
        try:
            # A busy worker: replies keep coming; none may renew its trust for good.
            until = time.monotonic() + 1.5
            while time.monotonic() < until:
                reader.load("swapped")
                reader.load("never-there")  # a miss: a round trip each time
            assert reader.load("swapped") is None
            assert reader.cache_stats().hits > hits  # it was served from memory at first
        finally:
            client.swapdb(db, other)
            client.close()
    finally:
        reader.close()
