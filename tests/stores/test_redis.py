"""The Redis/Valkey store's own connection handling, beyond the shared contract."""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import pytest
import redis

from satchel.errors import StoreUnavailable
from satchel.stores import RedisStore
from satchel.stores.base import Change, SaveResult

from ..conftest import true_in_a_forked_child
from ..valkey import ValkeyServer

KEY = "a" * 64


def create(store: RedisStore, key: str = KEY, value: bytes = b'"v"') -> None:
    now = time.time()
    change = Change(set={"x": value}, created_at=now, touched_at=now, expires_at=now + 60)
    assert store.save(key, change, create=True) == SaveResult.SAVED


def connections_received(server: ValkeyServer) -> int:
    """How many connections the server has accepted so far, this one included."""
    with redis.Redis.from_url(server.url) as admin:
        return int(admin.info("stats")["total_connections_received"])


def clients_connected(server: ValkeyServer) -> int:
    with redis.Redis.from_url(server.url) as admin:
        return int(admin.info("clients")["connected_clients"]) - 1  # not counting itself


def test_scripts_lost_by_the_server_are_loaded_again(redis_store: RedisStore) -> None:
    create(redis_store)
    redis_store.client.script_flush()
    now = time.time()
    change = Change(set={"x": b'"w"'}, touched_at=now, expires_at=now + 60)
    assert redis_store.save(KEY, change, create=False) == SaveResult.SAVED
    record = redis_store.load(KEY)
    assert record is not None and record.fields["x"] == b'"w"'


def test_commands_are_packed_whatever_their_arguments(redis_store: RedisStore) -> None:
    """Arguments hiredis packs in one call (str, bytes, int, float, memoryview) reach the
    server as their text; one it refuses (a bytearray) fares as redis-py itself has it
    fare (stored by newer releases, refused by 5.0); one no packer takes is a store
    error, and the connection stays in step."""
    key = redis_store._key("packed")
    for value, stored in (
        ("text é", "text é".encode()), (b"\xff\x00", b"\xff\x00"), (7, b"7"), (2.5, b"2.5"),
        (memoryview(b"view"), b"view"),
    ):  # fmt: skip
        assert redis_store._call("SET", key, value) in (True, b"OK", "OK")
        assert redis_store._call("GET", key) == stored
    try:
        redis_store.client.execute_command("SET", key, bytearray(b"array"))
    except redis.DataError:
        with pytest.raises(StoreUnavailable, match="DataError"):
            redis_store._call("SET", key, bytearray(b"array"))
    else:
        redis_store._call("SET", key, b"other")
        assert redis_store._call("SET", key, bytearray(b"array")) in (True, b"OK", "OK")
        assert redis_store._call("GET", key) == b"array"
    with pytest.raises(StoreUnavailable, match="DataError"):
        redis_store._call("SET", key, None)
    redis_store._call("SET", key, "after")
    assert redis_store._call("GET", key) == b"after"  # the connection is still in step
    redis_store._call("DEL", key)


def test_connections_are_reused_across_threads_and_closed(own_valkey: ValkeyServer) -> None:
    """Calls share a free list: as many connections as calls at once, never one per thread."""
    store = RedisStore.from_url(own_valkey.url)
    create(store)
    for _ in range(20):
        store.load(KEY)
    assert clients_connected(own_valkey) == 1

    # A thread per request, as Flask's development server runs: no new connections.
    before = connections_received(own_valkey)
    for _ in range(20):
        thread = threading.Thread(target=store.load, args=(KEY,))
        thread.start()
        thread.join()
    assert connections_received(own_valkey) == before + 1  # only the counting one
    assert clients_connected(own_valkey) == 1

    ready = threading.Barrier(4)

    def worker() -> None:
        ready.wait()
        for _ in range(50):
            assert store.load(KEY) is not None

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert 1 <= clients_connected(own_valkey) <= 4
    store.close()
    assert clients_connected(own_valkey) == 0


def test_a_restarted_server_is_picked_up_without_an_error(own_valkey: ValkeyServer) -> None:
    store = RedisStore.from_url(own_valkey.url)
    create(store)
    own_valkey.restart()  # the thread's connection is now dead, and the data gone
    assert store.load(KEY) is None
    create(store)
    assert store.load(KEY) is not None
    store.close()


def test_a_server_that_is_down_is_a_store_error(own_valkey: ValkeyServer) -> None:
    store = RedisStore.from_url(own_valkey.url)
    create(store)
    own_valkey.kill()
    with pytest.raises(StoreUnavailable, match="ConnectionError"):
        store.load(KEY)
    store.close()


def test_a_forked_child_opens_its_own_connection(own_valkey: ValkeyServer) -> None:
    store = RedisStore.from_url(own_valkey.url)
    create(store)
    assert true_in_a_forked_child(
        lambda: (
            store.load(KEY) is not None
            and [c.pid for c in store._connections.idle] == [os.getpid()]
        )
    )
    assert store.load(KEY) is not None  # the parent's connection still works
    store.close()


def test_a_client_passed_in_is_used_as_it_is(valkey: ValkeyServer) -> None:
    sent: list[Any] = []

    class Counting(redis.Redis):
        def execute_command(self, *args: Any, **options: Any) -> Any:
            sent.append(args[0])
            return super().execute_command(*args, **options)

    client = Counting.from_url(valkey.url)
    store = RedisStore(client, prefix="passed-in:")
    create(store)
    assert store.load(KEY) is not None
    assert sent.count("HGETALL") == 1 and "EVALSHA" in sent
    store.delete(KEY)
    assert store.load(KEY) is None
    store.close()


def test_an_evicting_server_is_warned_about_or_refused(
    tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Hardening item 13: a maxmemory-policy that can evict sessions: warning, or ConfigError."""
    import logging

    from flask import Flask

    from satchel import ConfigError, Satchel

    from ..conftest import SECRET

    server = ValkeyServer(
        tmp_path, None, "--maxmemory", "64mb", "--maxmemory-policy", "volatile-lru"
    )
    server.start()
    try:
        app = Flask("evicting")
        app.config.update(SECRET_KEY=SECRET, SATCHEL_STORE=server.url)
        with caplog.at_level(logging.WARNING, logger="satchel"):
            Satchel(app)
        assert "maxmemory-policy is volatile-lru" in caplog.text
        strict = Flask("strict")
        strict.config.update(SECRET_KEY=SECRET, SATCHEL_STORE=server.url, SATCHEL_STRICT_STORE=True)
        with pytest.raises(ConfigError, match="noeviction"):
            Satchel(strict)
    finally:
        server.kill()


def test_a_safe_or_unreachable_server_gives_no_eviction_warning(
    redis_store: RedisStore, caplog: pytest.LogCaptureFixture
) -> None:
    """noeviction, or a server not up yet at start-up, raises nothing and warns of nothing."""
    import logging

    assert redis_store.config_problems() == []
    down = RedisStore.from_url("redis://127.0.0.1:1/0")
    with caplog.at_level(logging.WARNING, logger="satchel"):
        assert down.config_problems() == []
    assert caplog.text == ""


def test_a_burst_of_threads_leaves_few_connections_open(own_valkey: ValkeyServer) -> None:
    """Hardening item 13: 100 calls at once, then quiet: the server keeps few of them."""
    store = RedisStore.from_url(own_valkey.url)
    create(store)
    holding = threading.Semaphore(0)
    hold = threading.Event()

    def burst() -> None:
        conn = store._connections.take()  # held as a slow command would hold it
        conn.send_command("PING")
        conn.read_response()
        holding.release()
        hold.wait(10)
        store._connections.give(conn)

    threads = [threading.Thread(target=burst) for _ in range(100)]
    for t in threads:
        t.start()
    for _ in threads:
        assert holding.acquire(timeout=10)
    assert clients_connected(own_valkey) >= 100
    hold.set()
    for t in threads:
        t.join()
    assert clients_connected(own_valkey) <= store._connections.max_idle
    assert store.load(KEY) is not None
    store.close()


@pytest.mark.parametrize("limit", [None, 10_000])
def test_a_plain_create_takes_the_short_script_and_stores_what_the_save_script_does(
    own_valkey: ValkeyServer, limit: int | None
) -> None:
    """A create with no owner, fence, expectation or deletion runs CREATE (a third of
    the save script's server time); the record it stores is the one SAVE stores, field
    for field (the size field included), and a key taken is refused the same way."""
    from satchel.errors import SessionTooLarge
    from satchel.stores._redis_scripts import CREATE, SAVE

    store = RedisStore.from_url(own_valkey.url)
    now = time.time()
    fields = {"name": "Zoë".encode(), "blob": b"\x00\xff" * 300, "n": b"7"}

    def made(**extra: Any) -> Change:
        given: dict[str, Any] = {"set": fields, "max_size": limit, **extra}
        return Change(created_at=now, touched_at=now, expires_at=now + 60, **given)

    assert store.save("short", made(), create=True) == SaveResult.SAVED
    assert store.client.script_exists(CREATE.sha, SAVE.sha) == [True, False]
    # An expectation of an absent field holds for a new key and sends it through SAVE.
    assert store.save("long", made(expect={"x": None}), create=True) == SaveResult.SAVED
    assert store.client.script_exists(SAVE.sha) == [True]
    short = store.client.hgetall(store._key("short"))
    assert short == store.client.hgetall(store._key("long"))
    assert (b"m:s" in short) is (limit is not None)
    if limit is not None:
        size = sum(len(name.encode()) + len(value) for name, value in fields.items())
        assert short[b"m:s"] == str(size).encode()
    assert 0 < store.client.pttl(store._key("short")) <= 60_000  # type: ignore[operator]
    assert store.save("short", made(), create=True) == SaveResult.REFUSED
    assert store.load("short") == store.load("long")
    # A key whose record a revoke ended (its note says so) stays ended, as with SAVE.
    store.client.set(store._note_key("ended"), "!")
    assert store.save("ended", made(), create=True) == SaveResult.REFUSED
    assert store.load("ended") is None
    if limit is not None:  # too large: the save script decides, and says so
        with pytest.raises(SessionTooLarge):
            store.save("big", made(set={"x": b"y" * limit}), create=True)
    store.close()
