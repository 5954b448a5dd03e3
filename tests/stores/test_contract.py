"""Every built-in store against the shared store contract."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from satchel.stores import MemoryStore, RedisStore, SQLiteStore, Store
from satchel.testing import FullStoreContract


class TestMemoryStore(FullStoreContract):
    @pytest.fixture
    def store(self) -> Iterator[MemoryStore]:
        store = MemoryStore()
        yield store
        store.close()


class TestSQLiteStore(FullStoreContract):
    @pytest.fixture
    def store(self, tmp_path: Path) -> Iterator[SQLiteStore]:
        store = SQLiteStore(tmp_path / "s.sqlite3")
        yield store
        store.close()


class TestRedisStore(FullStoreContract):
    @pytest.fixture
    def store(self, redis_store: RedisStore) -> RedisStore:
        return redis_store


class TestPostgresStore(FullStoreContract):
    @pytest.fixture
    def store(self, postgres_store: Store) -> Store:
        return postgres_store


class TestCachedRedisStore(FullStoreContract):
    """The same contract with each process's record cache on (``?cache=``)."""

    @pytest.fixture
    def store(self, redis_store: RedisStore) -> Iterator[RedisStore]:
        source = redis_store._source
        assert source is not None
        store = RedisStore.from_url(source[0], cache="16MB")
        yield store
        store.close()
