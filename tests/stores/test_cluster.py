"""The Redis store on a real local Valkey Cluster: 3 masters, 3 replicas, one fail-over."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask, session
from redis.cluster import RedisCluster

from satchel import Satchel
from satchel._contract import _race_creates
from satchel.errors import StoreUnavailable
from satchel.stores import RedisStore, from_url
from satchel.stores._tracking import CacheStats
from satchel.stores.aio import to_async
from satchel.stores.base import AsyncStore, Change, SaveResult
from satchel.stores.redis import AsyncRedisStore
from satchel.testing import AsyncStoreContract, BlockingStore, FullStoreContract

from ..conftest import SECRET
from ..valkey import ValkeyCluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ValkeyCluster]:
    """A fresh cluster for this module (the fail-over test leaves it changed)."""
    cluster = ValkeyCluster(tmp_path_factory.mktemp("cluster"))
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture
def cluster_store(cluster: ValkeyCluster) -> Iterator[RedisStore]:
    store = from_url(cluster.url)
    assert isinstance(store, RedisStore)
    store.client.flushall(target_nodes=RedisCluster.PRIMARIES)  # type: ignore[call-arg]
    yield store
    store.close()


class TestRedisClusterStore(FullStoreContract):
    """The whole store contract, against the cluster."""

    @pytest.fixture
    def store(self, cluster_store: RedisStore) -> RedisStore:
        return cluster_store


class TestCachedRedisClusterStore(FullStoreContract):
    """The whole store contract, on the cluster, with the record cache on."""

    @pytest.fixture
    def store(self, cluster_store: RedisStore, cluster: ValkeyCluster) -> Iterator[RedisStore]:
        store = RedisStore.from_url(cluster.url, cache="16MB")
        yield store
        store.close()


def _fields(record: Any) -> dict[str, bytes] | None:
    return None if record is None else dict(record.fields)


def test_two_cached_workers_never_read_stale_on_a_cluster(
    cluster_store: RedisStore, cluster: ValkeyCluster
) -> None:
    """Writes, revokes and moves by one cached store read at once by another: 0 stale."""
    one = RedisStore.from_url(cluster.url, cache="16MB")
    two = RedisStore.from_url(cluster.url, cache="16MB")
    try:
        keys = [f"k{n}" for n in range(16)]  # over several slots and all three primaries
        now = time.time()
        for key in keys:
            change = Change(set={"n": b"0"}, created_at=now, touched_at=now, expires_at=now + 600)
            assert one.save(key, change, create=True) == SaveResult.SAVED
        stale = 0
        for n in range(1, 2001):
            writer, reader = (one, two) if n % 2 else (two, one)
            key = keys[n % len(keys)]
            reader.load(key)  # cached before the write, so the write must reach it
            now = time.time()
            change = Change(set={"n": str(n).encode()}, touched_at=now, expires_at=now + 600)
            assert writer.save(key, change, create=False) == SaveResult.SAVED
            stale += _fields(reader.load(key)) != {"n": str(n).encode()}
        for n in range(60):  # revoke, and regenerate (a move across slots)
            now = time.time()
            change = Change(set={"a": b"1"}, created_at=now, touched_at=now, expires_at=now + 60)
            assert one.save(f"r{n}", change, create=True) == SaveResult.SAVED
            assert two.load(f"r{n}") is not None
            if n % 2:
                one.delete(f"r{n}")
            else:
                move = Change(created_at=now, touched_at=now, expires_at=now + 60,
                              replaces=f"r{n}")  # fmt: skip
                assert one.save(f"m{n}", move, create=True) == SaveResult.SAVED
                stale += two.load(f"m{n}") is None
            stale += two.load(f"r{n}") is not None
        hits = (one.cache_stats() or CacheStats()).hits + (two.cache_stats() or CacheStats()).hits
        assert stale == 0
        assert hits >= 1600  # most reads came from memory, so a stale one would show
    finally:
        one.close()
        two.close()


class TestAsyncRedisClusterStore(AsyncStoreContract):
    """The whole store contract, on the cluster, through redis.asyncio."""

    @pytest.fixture
    def async_store(self, cluster_store: RedisStore) -> AsyncStore:
        native = to_async(cluster_store)
        assert isinstance(native, AsyncRedisStore) and native._cluster
        return native


def test_sessions_spread_across_slots_and_nodes(cluster_store: RedisStore) -> None:
    """Sessions land on every master; each session's hash and lock share one slot."""
    app = Flask("spread")
    app.config.update(SECRET_KEY=SECRET)
    Satchel(app, store=cluster_store)

    @app.get("/set")
    def set_() -> str:
        session["x"] = 1
        return "ok"

    for _ in range(60):
        app.test_client().get("/set")
    client: RedisCluster = cluster_store.client  # type: ignore[assignment]
    keys = [k for k, _ in cluster_store.records()]
    assert len(keys) == 60
    nodes = {client.get_node_from_key(cluster_store._key(k)).name for k in keys}
    assert len(nodes) == 3
    for key in keys:
        assert client.keyslot(cluster_store._key(key)) == client.keyslot(
            cluster_store._lock_key(key)
        )


def test_failover_under_load(cluster: ValkeyCluster, capsys: Any) -> None:
    """A master killed under load: requests get 200 or 503, never 500; the app recovers."""
    store = from_url(cluster.url)
    assert isinstance(store, RedisStore)
    app = Flask("failover")
    app.config.update(SECRET_KEY=SECRET)
    Satchel(app, store=store)

    @app.get("/write/<n>")
    def write(n: str) -> str:
        session[n] = n
        return "ok"

    @app.get("/read")
    def read() -> dict[str, Any]:
        return dict(session)

    clients = []
    for i in range(30):
        client = app.test_client()
        assert client.get(f"/write/start{i}").status_code == 200
        clients.append(client)
    time.sleep(0.5)  # let replication catch up before the fault
    client_: RedisCluster = store.client  # type: ignore[assignment]
    victim = client_.get_node_from_key(store._key("anything"))
    (server,) = [n for n in cluster.nodes if n.port == victim.port]
    statuses: dict[int, int] = {}
    stop = threading.Event()

    def kill() -> None:
        time.sleep(0.3)
        server.kill()
        stop.wait(8)

    killer = threading.Thread(target=kill)
    killer.start()
    deadline = time.monotonic() + 6
    rounds = 0
    while time.monotonic() < deadline:
        for i, client in enumerate(clients):
            status = client.get(f"/write/r{rounds}-{i}").status_code
            statuses[status] = statuses.get(status, 0) + 1
        rounds += 1
    stop.set()
    killer.join()
    cluster.wait_ok()
    with capsys.disabled():
        print(f"\n[cluster] master {victim.port} killed under load: statuses {statuses}")
    assert set(statuses) <= {200, 503}
    # Recovered without a restart: every session can be read and written again.
    for i, client in enumerate(clients):
        assert client.get(f"/write/after{i}").status_code == 200
        data = client.get("/read").json
        assert data is not None and f"after{i}" in data
    # The async twin, made after the fail-over, serves overlapping calls too.
    blocking = BlockingStore(to_async(store))
    try:
        results = _race_creates(blocking, "after-failover", 6)  # type: ignore[arg-type]
        assert sorted(results.values()) == [0, 0, 0, 0, 0, 1]
        record = blocking.load("after-failover")
        assert record is not None
    finally:
        blocking.close()
    store.close()


def test_cluster_eviction_policy_is_read_on_every_primary(cluster_store: RedisStore) -> None:
    """The start-up check asks each primary; a default cluster reports nothing."""
    assert cluster_store.config_problems() == []
    node = cluster_store.client.get_primaries()[1]  # type: ignore[union-attr]
    cluster_store.client.config_set("maxmemory-policy", "allkeys-lru", target_nodes=node)  # type: ignore[call-arg]
    try:
        (problem,) = cluster_store.config_problems()
        assert "allkeys-lru" in problem and node.name in problem
    finally:
        cluster_store.client.config_set("maxmemory-policy", "noeviction", target_nodes=node)  # type: ignore[call-arg]


def test_a_cached_store_after_a_failover_reads_what_was_written(cluster: ValkeyCluster) -> None:
    """A primary killed: the cached worker's connection to it breaks, its records are
    forgotten, and after the fail-over it reads what another worker wrote since."""
    cached = RedisStore.from_url(cluster.url, cache="16MB")
    plain = RedisStore.from_url(cluster.url)
    try:
        now = time.time()
        keys = [f"f{n}" for n in range(30)]
        for key in keys:
            change = Change(set={"v": b"old"}, created_at=now, touched_at=now, expires_at=now + 600)
            assert plain.save(key, change, create=True) == SaveResult.SAVED
            assert _fields(cached.load(key)) == {"v": b"old"}
        time.sleep(0.5)  # replication catches up before the fault
        client: RedisCluster = plain.client  # type: ignore[assignment]
        victim = client.get_node_from_key(plain._key(keys[0]))
        (server,) = [n for n in cluster.nodes if n.port == victim.port]
        server.kill()
        cluster.wait_ok()
        written = set()
        deadline = time.monotonic() + 20
        for key in keys:  # write through the other worker once the cluster serves again
            while True:
                try:
                    now = time.time()
                    change = Change(set={"v": b"new"}, touched_at=now, expires_at=now + 600)
                    if plain.save(key, change, create=False) == SaveResult.SAVED:
                        written.add(key)
                    break
                except StoreUnavailable:
                    assert time.monotonic() < deadline, "the cluster did not come back"
                    time.sleep(0.2)
        stale = 0
        for key in keys:
            while True:
                try:
                    record = cached.load(key)
                    break
                except StoreUnavailable:
                    assert time.monotonic() < deadline, "the cached store did not recover"
                    time.sleep(0.2)
            if key in written:
                stale += _fields(record) != {"v": b"new"}
            else:  # lost in the fail-over: gone for every worker, never served from memory
                assert plain.load(key) is None
                stale += record is not None
        # Every key counts: read anew, or gone everywhere; the fail-over kept most of them.
        assert stale == 0 and len(written) >= len(keys) // 2
    finally:
        cached.close()
        plain.close()


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_fenced_uncached_writer_never_leaves_a_cached_reader_stale_on_a_cluster(
    cluster_store: RedisStore, cluster: ValkeyCluster, kind: str
) -> None:
    """On a Cluster too: updates and revokes by an uncached writer with ?fence=1 (sync,
    and its async twin) are never read stale by a cached worker, which did serve them."""
    reader = RedisStore.from_url(cluster.url, cache="16MB")
    sync = from_url(cluster.url + "?fence=1")
    assert isinstance(sync, RedisStore) and sync.fence
    writer: Any = sync if kind == "sync" else BlockingStore(to_async(sync))
    try:
        stats = reader.cache_stats()
        assert stats is not None
        hits, stale = stats.hits, 0
        for n in range(200):
            key, now = f"f{n}", time.time()
            first = Change(set={"v": b"0"}, created_at=now, touched_at=now, expires_at=now + 60)
            assert reader.save(key, first, create=True) == SaveResult.SAVED
            assert _fields(reader.load(key)) == {"v": b"0"}  # cached now
            if n % 2:
                assert writer.revoke([key]) == 1
                stale += reader.load(key) is not None
            else:
                change = Change(set={"v": b"1"}, touched_at=now, expires_at=now + 60)
                assert writer.save(key, change, create=False) == SaveResult.SAVED
                stale += _fields(reader.load(key)) != {"v": b"1"}
        assert stale == 0
        after = reader.cache_stats()
        assert after is not None and after.hits - hits >= 200  # each was served from memory
    finally:
        writer.close()
        if kind == "async":
            sync.close()
        reader.close()
