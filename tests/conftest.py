"""Fixtures shared by the whole suite: a real Valkey server and one store per kind."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from flask import Flask

from satchel import Satchel
from satchel.stores import MemoryStore, RedisStore, SQLiteStore, Store

from .postgres import PostgresServer
from .valkey import ValkeyCluster, ValkeyServer

SECRET = "test-secret-key-that-is-long-enough-0123456789"
#: Every kind of store the Flask-level tests run on; "redis_cached" is the Redis store
#: with its record cache on (``?cache=``), so every guarantee is checked with it too;
#: "cluster" is the Redis store on a 3-primary Valkey Cluster.
STORE_KINDS = ["memory", "sqlite", "redis", "redis_cached", "postgres", "cluster"]
#: Socket and statement timeouts of the shared store fixtures, in seconds. The stores'
#: own defaults (0.5 s for Redis/Valkey, 1 s for PostgreSQL) are for production, where
#: a slow store must fail fast; here a loaded machine (the suite beside a CPU hog)
#: can stall a healthy server that long, and a test not about slowness must not fail
#: for it. Tests about slowness (a frozen or stopped server) build their own stores.
SERVER_TIMEOUT = 5.0


@pytest.fixture(scope="session")
def valkey(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ValkeyServer]:
    """One real server for the run; tests that break it get their own (see ``own_valkey``)."""
    server = ValkeyServer(tmp_path_factory.mktemp("valkey"))
    server.start()
    yield server
    server.kill()


@pytest.fixture
def own_valkey(tmp_path: Path) -> Iterator[ValkeyServer]:
    """A private server that a test may kill, freeze or restart."""
    server = ValkeyServer(tmp_path)
    server.start()
    yield server
    server.kill()


@pytest.fixture
def redis_store(valkey: ValkeyServer) -> Iterator[RedisStore]:
    client = redis.Redis.from_url(valkey.url)
    client.flushdb()
    client.close()
    store = RedisStore.from_url(
        valkey.url, socket_timeout=SERVER_TIMEOUT, connect_timeout=SERVER_TIMEOUT
    )
    yield store
    store.close()


@pytest.fixture
def redis_cached_store(valkey: ValkeyServer) -> Iterator[RedisStore]:
    client = redis.Redis.from_url(valkey.url)
    client.flushdb()
    client.close()
    store = RedisStore.from_url(
        valkey.url, cache="16MB", socket_timeout=SERVER_TIMEOUT, connect_timeout=SERVER_TIMEOUT
    )
    yield store
    store.close()


@pytest.fixture(scope="session")
def shared_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ValkeyCluster]:
    """One real 3-primary Valkey Cluster for the app-level tests (test_cluster.py, whose
    fail-over test changes its cluster, starts one of its own)."""
    cluster = ValkeyCluster(tmp_path_factory.mktemp("shared-cluster"))
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture
def cluster_store(shared_cluster: ValkeyCluster) -> Iterator[RedisStore]:
    from redis.cluster import RedisCluster

    store = RedisStore.from_url(
        shared_cluster.url, socket_timeout=SERVER_TIMEOUT, connect_timeout=SERVER_TIMEOUT
    )
    store.client.flushall(target_nodes=RedisCluster.PRIMARIES)  # type: ignore[call-arg]
    yield store
    store.close()


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    """One real PostgreSQL server for the run; fault tests start their own."""
    server = PostgresServer(tmp_path_factory.mktemp("postgres"))
    server.start()
    yield server
    server.kill()


@pytest.fixture
def postgres_store(postgres: PostgresServer) -> Iterator[Store]:
    from satchel.stores.postgres import PostgresStore

    store = PostgresStore.from_url(postgres.url, timeout=SERVER_TIMEOUT)
    store._run("TRUNCATE satchel_sessions, satchel_locks, satchel_moves")
    yield store
    store.close()


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[SQLiteStore]:
    store = SQLiteStore(tmp_path / "sessions.sqlite3")
    yield store
    store.close()


@pytest.fixture(params=STORE_KINDS)
def store(request: pytest.FixtureRequest) -> Iterator[Store]:
    """Each kind of store in turn, empty."""
    if request.param == "memory":
        memory = MemoryStore()
        yield memory
        memory.close()
    else:
        yield request.getfixturevalue(f"{request.param}_store")


@pytest.fixture
def make_app(store: Store) -> Callable[..., Flask]:
    """Build a Flask app with satchel on the current store; config overrides as keywords."""

    def build(**config: Any) -> Flask:
        app = Flask("satchel_test")
        app.config.update(SECRET_KEY=SECRET, TESTING=True)
        app.config.update(config)
        Satchel(app, store=store)
        return app

    return build


def stored_keys(store: Store) -> list[str]:
    """Every record key a store holds right now (reaches into each store's internals)."""
    if isinstance(store, MemoryStore):
        return [key for prefix, key in store._records if prefix == store.prefix]
    if isinstance(store, SQLiteStore):
        rows, _ = store._run("SELECT key FROM satchel_sessions WHERE ns = ?", (store.prefix,))
        return [row[0][len(store.prefix) :] for row in rows]
    if isinstance(store, RedisStore):
        if store._cluster:  # every primary's keys
            from redis.cluster import RedisCluster

            keys = store.client.keys(  # type: ignore[call-arg]
                store.prefix + "s:*", target_nodes=RedisCluster.PRIMARIES
            )
        else:
            keys = store.client.keys(store.prefix + "s:*")
        return [k.decode()[len(store.prefix) + 3 : -1] for k in keys]  # type: ignore[union-attr]
    from satchel.stores.postgres import PostgresStore

    if isinstance(store, PostgresStore):
        rows, _ = store._run("SELECT key FROM satchel_sessions WHERE ns = %s", (store.prefix,))
        return [row[0][len(store.prefix) :] for row in rows]
    raise TypeError(store)


def session_id_of(cookie_value: str) -> str:
    """The raw session ID inside a signed cookie value."""
    return cookie_value.rsplit(".", 1)[0]


def true_in_a_forked_child(check: Callable[[], bool]) -> bool:
    """Run ``check`` in a child made by ``os.fork()`` and return what it returned there."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: answer through the pipe, never return into pytest
        try:
            os.write(write, b"y" if check() else b"n")
        finally:
            os._exit(0)
    os.close(write)
    answer = os.read(read, 1)
    os.waitpid(pid, 0)
    os.close(read)
    return answer == b"y"


def _background_jobs(wanted: set[str], mktemp: Callable[[str], Path]) -> list[Any]:
    """The slow subprocess work of the ``wanted`` tests (their node IDs), as jobs."""
    if not wanted.intersection(BACKGROUND):
        return []  # nothing to import: a run of a few modules needs no docs or packages
    from . import test_docs, test_docs_types, test_oldest_dependencies, test_package
    from .support import background

    jobs = []
    if "tests/test_docs.py::test_the_documentation_site_builds_without_a_warning" in wanted:
        site = mktemp("docs-site") / "html"
        jobs.append(background.Job("docs-site", lambda: (test_docs.build_site(site), site)))
    if "tests/test_docs_types.py::test_every_example_type_checks_strictly" in wanted:
        typed = mktemp("docs-mypy")
        jobs.append(background.Job("docs-mypy", lambda: test_docs_types.run_mypy(typed)))
    if "tests/test_docs_types.py::test_every_example_passes_pyright_strict" in wanted:
        checked = mktemp("docs-pyright")
        jobs.append(background.Job("docs-pyright", lambda: test_docs_types.run_pyright(checked)))
    if (
        "tests/test_oldest_dependencies.py::test_the_tests_pass_on_the_oldest_dependencies"
        in wanted
    ):
        base = mktemp("oldest-dependencies")
        jobs.append(
            background.Job(
                "oldest-dependencies", lambda: test_oldest_dependencies.run_selected(base)
            )
        )
    for name, test, extra in (
        ("fresh-flask", "test_the_readme_install_line_works_in_a_fresh_environment", "flask"),
        ("fresh-asgi", "test_an_asgi_only_install_has_no_flask", "asgi"),
    ):
        if f"tests/test_package.py::{test}" in wanted:
            where = mktemp(name)
            target = f"{test_package.ROOT}[{extra}]"
            jobs.append(
                background.Job(name, lambda w=where, t=target: test_package._fresh(w, "env", t))
            )
    return jobs


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    """Under pytest-xdist, in the controlling process, before the workers start: run the
    background jobs of a whole-suite run here, and tell the workers where their results
    go (tests/support/background.py). Each worker collects every test, so none of them
    can tell which of the jobs' tests it will run."""
    config = session.config
    if hasattr(config, "workerinput") or not getattr(config.option, "numprocesses", None):
        return
    if config.args_source != pytest.Config.ArgsSource.TESTPATHS:
        return  # some tests chosen: each that needs a job runs it itself
    from .support import background

    factory: pytest.TempPathFactory = config._tmp_path_factory  # type: ignore[attr-defined]
    folder = factory.mktemp("background")
    os.environ[background.SHARED] = str(folder)
    background.start_shared(_background_jobs(set(BACKGROUND), factory.mktemp), folder)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Start the slow subprocess work of the collected tests that need it (Sphinx, mypy
    and pyright on the docs, the oldest-dependencies run, fresh installs of the package)
    on a thread beside the rest of the suite; each of those tests waits for its job's
    result (tests/support/background.py). Under pytest-xdist the controlling process
    runs them instead (pytest_sessionstart)."""
    from .support import background

    if hasattr(session.config, "workerinput"):
        return
    factory: pytest.TempPathFactory = session.config._tmp_path_factory  # type: ignore[attr-defined]
    wanted = {item.nodeid.split("[")[0] for item in session.items}
    jobs = _background_jobs(wanted, factory.mktemp)
    if jobs:
        background.start(jobs)


#: The tests whose work runs in the background (see pytest_collection_finish).
BACKGROUND = (
    "tests/test_docs.py::test_the_documentation_site_builds_without_a_warning",
    "tests/test_docs_types.py::test_every_example_type_checks_strictly",
    "tests/test_docs_types.py::test_every_example_passes_pyright_strict",
    "tests/test_oldest_dependencies.py::test_the_tests_pass_on_the_oldest_dependencies",
    "tests/test_package.py::test_the_readme_install_line_works_in_a_fresh_environment",
    "tests/test_package.py::test_an_asgi_only_install_has_no_flask",
)
