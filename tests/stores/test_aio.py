"""The async stores against the whole store contract, and the event loop kept free."""

from __future__ import annotations

import asyncio
import sqlite3
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from satchel.errors import ConfigError
from satchel.stores import MemoryStore, RedisStore, SQLiteStore, Store, aio
from satchel.stores.aio import InlineStore, SQLiteLoopStore, ThreadedStore, is_async, to_async
from satchel.stores.base import AsyncStore, Change, SaveResult
from satchel.stores.postgres import AsyncPostgresStore, PostgresStore
from satchel.stores.redis import AsyncRedisStore
from satchel.testing import AsyncStoreContract, BlockingStore

from ..postgres import PostgresServer
from ..valkey import ValkeyServer


class TestInlineMemoryStore(AsyncStoreContract):
    @pytest.fixture
    def async_store(self) -> AsyncStore:
        return InlineStore(MemoryStore())


class TestThreadedSQLiteStore(AsyncStoreContract):
    @pytest.fixture
    def async_store(self, tmp_path: Path) -> AsyncStore:
        return ThreadedStore(SQLiteStore(tmp_path / "s.sqlite3"))


class TestSQLiteLoopStore(AsyncStoreContract):
    @pytest.fixture
    def async_store(self, tmp_path: Path) -> AsyncStore:
        return SQLiteLoopStore(SQLiteStore(tmp_path / "s.sqlite3"))


class TestAsyncRedisStore(AsyncStoreContract):
    @pytest.fixture
    def async_store(self, redis_store: RedisStore) -> AsyncStore:
        native = to_async(redis_store)
        assert isinstance(native, AsyncRedisStore)
        return native


class TestAsyncPostgresStore(AsyncStoreContract):
    @pytest.fixture
    def async_store(self, postgres_store: Store) -> AsyncStore:
        native = to_async(postgres_store)
        assert isinstance(native, AsyncPostgresStore)
        return native


class TestAsyncPostgresStoreOnAnAppsPool(AsyncStoreContract):
    """AsyncPostgresStore(pool=AsyncConnectionPool(...)): the whole contract on the app's
    own pool, opened on the loop the store's calls run on (as an ASGI app opens it)."""

    @pytest.fixture
    def loop(self) -> Iterator[asyncio.AbstractEventLoop]:
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, daemon=True)
        thread.start()
        yield loop
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()

    @pytest.fixture
    def async_store(
        self, postgres: PostgresServer, postgres_store: Store, loop: asyncio.AbstractEventLoop
    ) -> Iterator[AsyncStore]:
        from psycopg_pool import AsyncConnectionPool

        async def opened() -> AsyncConnectionPool:
            pool = AsyncConnectionPool(postgres.url, min_size=1, max_size=4, open=False)
            await pool.open()
            return pool

        pool = asyncio.run_coroutine_threadsafe(opened(), loop).result()
        yield AsyncPostgresStore(pool=pool)
        asyncio.run_coroutine_threadsafe(pool.close(), loop).result()

    @pytest.fixture
    def store(
        self, async_store: AsyncStore, loop: asyncio.AbstractEventLoop
    ) -> Iterator[BlockingStore]:
        blocking = BlockingStore(async_store, loop)
        yield blocking
        blocking.close()

    def test_the_calls_borrow_from_the_apps_pool(
        self, async_store: AsyncStore, store: BlockingStore, loop: asyncio.AbstractEventLoop
    ) -> None:
        now = time.time()
        change = Change(set={"a": b"1"}, created_at=now, touched_at=now, expires_at=now + 60)
        assert store.save("k" * 64, change, create=True) == SaveResult.SAVED
        pool = async_store.pool  # type: ignore[attr-defined]
        stats = pool.get_stats()
        assert stats["requests_num"] >= 1 and stats["connections_num"] >= 1
        assert not async_store._free  # type: ignore[attr-defined]  # none of its own


class TestThreadedPostgresStore(AsyncStoreContract):
    """A sync store you built yourself (here on your own pool) still serves an ASGI app."""

    @pytest.fixture
    def async_store(self, postgres_store: Store) -> AsyncStore:
        assert isinstance(postgres_store, PostgresStore)
        return ThreadedStore(postgres_store)


def test_to_async_picks_the_native_twin_or_a_wrapper(
    tmp_path: Path, redis_store: RedisStore
) -> None:
    memory = MemoryStore()
    assert isinstance(to_async(memory), InlineStore)
    sqlite = SQLiteStore(tmp_path / "x.sqlite3")
    assert isinstance(to_async(sqlite), ThreadedStore)
    native = to_async(redis_store)
    assert isinstance(native, AsyncRedisStore) and native.prefix == redis_store.prefix
    assert to_async(native) is native and is_async(native) and not is_async(redis_store)
    # A store on a client you made has no URL to make a twin from: it runs on threads.
    assert isinstance(to_async(RedisStore(redis_store.client)), ThreadedStore)
    with pytest.raises(ConfigError, match="not a satchel Store"):
        ThreadedStore(object())  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="threads"):
        ThreadedStore(memory, threads=0)
    sqlite.close()


def test_what_one_side_writes_the_other_reads(redis_store: RedisStore) -> None:
    """A sync store and its async twin are one store: same keys, same records."""
    native = to_async(redis_store)
    now = time.time()
    change = Change(set={"a": b"1"}, created_at=now, touched_at=now, expires_at=now + 60)
    assert redis_store.save("k", change, create=True) == SaveResult.SAVED

    async def read_and_write() -> Any:
        record = await native.load("k")
        more = Change(set={"b": b"2"}, touched_at=now, expires_at=now + 60)
        await native.save("k", more, create=False)
        await native.close()
        return record

    record = asyncio.run(read_and_write())
    assert record is not None and dict(record.fields) == {"a": b"1"}
    again = redis_store.load("k")
    assert again is not None and dict(again.fields) == {"a": b"1", "b": b"2"}


class SlowStore(MemoryStore):
    """A memory store whose every load waits until the event loop has ticked: a store
    under strain, which a store call made on the loop itself would wait for in vain."""

    def __init__(self) -> None:
        super().__init__()
        self.ticked = threading.Event()

    def load(self, key: str) -> Any:
        if not self.ticked.wait(30):
            raise AssertionError("the loop never ticked while a store call waited")
        return super().load(key)


def test_a_slow_store_call_never_stalls_the_event_loop() -> None:
    """While threaded store calls wait, the loop keeps running: the calls wait for the
    loop itself to tick 20 times, which it could not do if a call blocked it."""
    slow = SlowStore()
    store = ThreadedStore(slow)

    async def check() -> int:
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while not slow.ticked.is_set():
                await asyncio.sleep(0.001)
                ticks += 1
                if ticks == 20:
                    slow.ticked.set()

        ticker = asyncio.create_task(tick())
        found = await asyncio.gather(*(store.load(f"k{n}") for n in range(4)))
        await ticker
        await store.close()
        assert found == [None] * 4
        return ticks

    assert asyncio.run(check()) == 20


def test_threads_belong_to_the_process() -> None:
    """A store used before a fork makes its own threads in the child."""
    from ..conftest import true_in_a_forked_child

    store = ThreadedStore(MemoryStore())
    asyncio.run(store.load("k"))
    parent_pool = store._pool()

    def child_has_its_own() -> bool:
        pool = store._pool()
        answered = asyncio.run(store.load("k")) is None
        return pool is not parent_pool and answered

    assert true_in_a_forked_child(child_has_its_own)


def _saved(store: Any, key: str, **fields: bytes) -> Any:
    now = time.time()
    change = Change(set=fields, created_at=now, touched_at=now, expires_at=now + 60)
    return store.save(key, change, create=True)


def test_async_redis_picks_up_a_restarted_server_and_a_flushed_script(
    own_valkey: ValkeyServer,
) -> None:
    """The pipelined connection reconnects once after a restart; a lost script is reloaded."""
    native = to_async(RedisStore.from_url(own_valkey.url))
    assert isinstance(native, AsyncRedisStore) and native._fast is not None

    async def check() -> None:
        assert await _saved(native, "a", x=b"1")
        own_valkey.restart()  # the connection the store held is gone, and so is the script
        assert await native.load("a") is None  # no persistence: the record went too
        assert await _saved(native, "b", x=b"2")
        redis.Redis.from_url(own_valkey.url).script_flush()
        assert await _saved(native, "c", x=b"3")
        record = await native.load("c")
        assert record is not None and record.fields["x"] == b"3"
        await native.close()

    asyncio.run(check())


def test_async_redis_authenticates_and_selects_the_database(own_valkey: ValkeyServer) -> None:
    """A password and a database number in the URL reach the pipelined connection."""
    admin = redis.Redis.from_url(own_valkey.url)
    admin.config_set("requirepass", "s3cret")
    url = f"redis://:s3cret@127.0.0.1:{own_valkey.port}/3"
    native = to_async(RedisStore.from_url(url))

    async def check() -> None:
        assert await _saved(native, "k", x=b"1")
        await native.close()

    asyncio.run(check())
    authed = redis.Redis.from_url(url)
    assert authed.keys("satchel:s:*") == [b"satchel:s:{k}"]
    assert redis.Redis.from_url(url.replace("/3", "/0")).keys("*") == []
    authed.close()
    admin.close()


def test_pipelined_commands_of_many_coroutines_get_their_own_replies(
    valkey: ValkeyServer,
) -> None:
    """200 coroutines at once on one connection: each reads back exactly its own record.

    Its subject is which reply goes to whom, not the store's half-second timeouts, which
    the first connect can outlast on a loaded machine while 200 coroutines start: the
    store here waits up to 30 s (a CI run on two busy workers timed the connect out)."""
    redis.Redis.from_url(valkey.url).flushdb()
    store = RedisStore.from_url(valkey.url, socket_timeout=30, connect_timeout=30)
    native = to_async(store)

    async def check() -> None:
        keys = [f"k{n}" for n in range(200)]
        assert all(await asyncio.gather(*(_saved(native, k, v=k.encode()) for k in keys)))
        records = await asyncio.gather(*(native.load(k) for k in keys))
        assert [r.fields["v"] for r in records if r is not None] == [k.encode() for k in keys]
        await native.close()

    asyncio.run(check())
    store.close()


def test_sqlite_calls_that_would_wait_go_to_a_thread_and_the_loop_runs_on(tmp_path: Path) -> None:
    """Another process holds the write lock: reads go on inline, a write waits on a thread."""
    path = tmp_path / "s.sqlite3"
    store = SQLiteLoopStore(SQLiteStore(path, timeout=2.0))
    blocker = sqlite3.connect(path, isolation_level=None)

    async def check() -> None:
        assert await _saved(store, "a", x=b"1")
        blocker.execute("BEGIN IMMEDIATE")  # holds the write lock
        saving = asyncio.Event()
        ticks = 0

        async def release_after_ticks() -> None:
            # The lock is let go only by the loop, 20 ticks into the save: a save that
            # blocked the loop would never see it go, and fail after its 2 s timeout.
            nonlocal ticks
            await saving.wait()
            while ticks < 20:
                await asyncio.sleep(0.001)
                ticks += 1
            blocker.execute("ROLLBACK")

        releaser = asyncio.create_task(release_after_ticks())
        record = await store.load("a")  # WAL: a reader never waits for the writer
        assert record is not None and record.fields["x"] == b"1"
        saving.set()
        assert await _saved(store, "b", x=b"2")  # waited on a thread for the lock
        await releaser
        assert ticks == 20
        await store.close()

    asyncio.run(check())
    blocker.close()


def test_sqlite_checkpoints_and_purges_run_off_the_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every CHECKPOINT_EVERY inline writes, maintain() runs on a worker thread."""
    monkeypatch.setattr(aio, "CHECKPOINT_EVERY", 20)
    sqlite = SQLiteStore(tmp_path / "s.sqlite3")
    store = SQLiteLoopStore(sqlite)
    threads: list[str] = []
    maintain = sqlite.maintain

    def counted() -> int:
        threads.append(threading.current_thread().name)
        return maintain()

    monkeypatch.setattr(sqlite, "maintain", counted)

    async def check() -> None:
        for n in range(60):
            await _saved(store, f"k{n}", x=b"1")
            await asyncio.sleep(0.005)  # lets a finished maintenance report back
        await asyncio.sleep(0.2)
        await store.close()

    asyncio.run(check())
    assert len(threads) >= 2 and all(name.startswith("satchel-store") for name in threads)


def test_the_loop_store_walks_the_purge_on_shortly_until_the_table_is_clean(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A maintenance that left a walk of the purge under way is due again at the
    walk's next step (PURGE_STEP_SECONDS), not purge_interval later."""
    from satchel.stores import _sqlite_purge as sqlite_module

    monkeypatch.setattr(sqlite_module, "PURGE_STEP_SECONDS", 0.0)
    sqlite = SQLiteStore(tmp_path / "s.sqlite3", purge_batch=10)
    now = time.time()
    with sqlite._connection() as conn:
        for n in range(100):
            conn.execute(
                "INSERT INTO satchel_sessions (key, created_at, touched_at, expires_at, data)"
                " VALUES (?, ?, ?, ?, '{}')",
                (f"old{n}", now, now, now - 10),
            )
    store = SQLiteLoopStore(sqlite)
    store._next_maintenance = 0.0  # the interval is up

    async def check() -> int:
        for n in range(40):
            await _saved(store, f"k{n}", x=b"1")
            while store._maintaining:
                await asyncio.sleep(0.001)
            rows, _ = sqlite._run("SELECT count(*) FROM satchel_sessions WHERE key LIKE 'old%'", ())
            if rows[0][0] == 0 and sqlite._purge_from == 0:  # clean, and the walk over
                return n + 1
        return 0

    writes = asyncio.run(check())
    # A batch of ten rowids each write: 100 expired rows, then the new ones' rowids.
    assert 10 <= writes <= 15, writes
    assert store._next_maintenance > time.time() + 299  # the walk ended: next in 300 s
    asyncio.run(store.close())


def _log_frames(path: Path) -> int:
    """How many frames the write-ahead log of ``path`` holds now, read from the header
    of its shared-memory index (mxFrame, a native-endian u32 at byte 16), without
    touching the database: a checkpoint would change what it measures."""
    header = Path(str(path) + "-shm").read_bytes()[:20]
    return int.from_bytes(header[16:20], sys.byteorder)


def test_maintain_starts_the_log_over_though_its_checkpoint_could_not_copy_it_all(
    tmp_path: Path,
) -> None:
    """A passive checkpoint copies no further than what a reader still reads (here one
    that began before the last writes; in steady traffic, the writes the loop makes
    while the checkpoint runs): with part of the log not copied when the next writer
    looks, the log would go on growing; maintain() makes it start over."""
    path = tmp_path / "s.sqlite3"
    sqlite = SQLiteStore(path)
    inline = sqlite.inline_twin()  # never checkpoints: the log grows
    now = time.time()
    blob = b'"' + b"x" * 2000 + b'"'
    inline.save("k", Change(set={"x": b"0", "blob": blob}, created_at=now, expires_at=now + 60),
                create=True)  # fmt: skip

    def write(n: int) -> None:
        change = Change(set={"x": str(n).encode()}, touched_at=now, expires_at=now + 60)
        assert inline.save("k", change, create=False) == SaveResult.SAVED

    for n in range(1, 1100):
        write(n)
    reader = sqlite3.connect(path, isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM satchel_sessions").fetchall()  # its snapshot: now
    for n in range(1100, 1200):
        write(n)
    run = sqlite._run

    def reader_done_after_the_checkpoint(sql: str, args: tuple[object, ...]) -> Any:
        rows = run(sql, args)
        if "PASSIVE" in sql:
            reader.execute("COMMIT")
        return rows

    sqlite._run = reader_done_after_the_checkpoint  # type: ignore[method-assign]
    sqlite.maintain()
    write(5000)
    assert _log_frames(path) < 10  # started over
    reader.close()
    inline.close()
    sqlite.close()


def test_sqlite_loop_writes_under_steady_traffic_keep_the_log_bounded(tmp_path: Path) -> None:
    """Writes that never pause still let the write-ahead log start over.

    A passive checkpoint on a thread copies the log back while the loop keeps
    writing, so it never finds the whole log copied, and the log only grows (and
    every read searches more of it) unless a checkpoint makes it start over.
    """
    sqlite = SQLiteStore(tmp_path / "s.sqlite3")
    store = SQLiteLoopStore(sqlite)
    maintained: list[int] = []
    maintain = sqlite.maintain

    def counted() -> int:
        maintained.append(1)
        return maintain()

    sqlite.maintain = counted  # type: ignore[method-assign]
    blob = b'"' + b"x" * 2000 + b'"'

    log: list[int] = []

    async def check() -> None:
        assert await _saved(store, "k", x=b"0", blob=blob)
        for n in range(1, 6001):
            now = time.time()
            change = Change(set={"x": str(n).encode()}, touched_at=now, expires_at=now + 60)
            assert await store.save("k", change, create=False)
            await asyncio.sleep(0)  # as between requests: a finished maintenance reports back
            if n % 500 == 250:
                log.append(_log_frames(tmp_path / "s.sqlite3"))
        await store.close()

    asyncio.run(check())
    # 6,000 writes of a 2 KB record make over 6,000 frames in a log never started over.
    assert len(maintained) >= 2  # a maintenance still running skips the next turn
    assert max(log) < 3000, log


def test_a_cancelled_connect_does_not_fail_the_others_waiting_for_it(
    redis_store: RedisStore,
) -> None:
    """The first caller, cancelled while it connects, leaves the others to connect and go on."""
    native = to_async(redis_store)
    assert isinstance(native, AsyncRedisStore)

    async def check() -> None:
        first = asyncio.create_task(native.load("k"))
        await asyncio.sleep(0)  # it has started to connect
        others = [asyncio.create_task(native.load("k")) for _ in range(5)]
        await asyncio.sleep(0)
        first.cancel()
        assert await asyncio.gather(*others) == [None] * 5
        with pytest.raises(asyncio.CancelledError):
            await first
        await native.close()

    asyncio.run(check())
