"""Configuration errors surface at start-up as ConfigError, with a clear message."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

import satchel
from satchel import ConfigError, Satchel, SatchelError
from satchel.stores import MemoryStore, SQLiteStore, Store, from_url, register_scheme

from .conftest import SECRET
from .support.flask_apps import (
    client_with,
    cookie_of,
    owner_app,
)


def test_public_names() -> None:
    """The package exports exactly the intended names."""
    assert sorted(satchel.__all__) == [
        "ConfigError",
        "LockLost",
        "LockTimeout",
        "Satchel",
        "SatchelError",
        "SerializationError",
        "Session",
        "SessionTooLarge",
        "StoreUnavailable",
        "current_session",
        "locked",
    ]
    for name in satchel.__all__:
        assert getattr(satchel, name).__doc__


def test_error_tree() -> None:
    """Every error derives from SatchelError."""
    for name in ("ConfigError", "SerializationError", "SessionTooLarge", "StoreUnavailable"):
        assert issubclass(getattr(satchel, name), SatchelError)
    assert issubclass(satchel.LockTimeout, satchel.StoreUnavailable)
    assert issubclass(satchel.LockLost, satchel.LockTimeout)


def test_missing_secret_key_fails_at_init() -> None:
    """init_app without SECRET_KEY raises ConfigError, before any request."""
    app = Flask("nokey")
    with pytest.raises(ConfigError, match="SECRET_KEY"):
        Satchel(app, store=MemoryStore())


def test_init_twice_fails() -> None:
    """A second init_app on one app is refused."""
    app = Flask("twice")
    app.config["SECRET_KEY"] = SECRET
    Satchel(app, store=MemoryStore())
    with pytest.raises(ConfigError, match="already"):
        Satchel(app, store=MemoryStore())


def test_factory_pattern(tmp_path: Path) -> None:
    """Satchel() then init_app(app) works and keeps no reference to the app."""
    ext = Satchel(store=MemoryStore())
    app = Flask("factory", instance_path=str(tmp_path))
    app.config["SECRET_KEY"] = SECRET
    ext.init_app(app)
    assert "satchel" in app.extensions
    assert not any(isinstance(v, Flask) for v in vars(ext).values())


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("SATCHEL_IDLE_TIMEOUT", "ten minutes", "SATCHEL_IDLE_TIMEOUT"),
        ("SATCHEL_IDLE_TIMEOUT", -5, "positive"),
        ("SATCHEL_ABSOLUTE_TIMEOUT", timedelta(0), "positive"),
        ("SATCHEL_ABSOLUTE_TIMEOUT", True, "SATCHEL_ABSOLUTE_TIMEOUT"),
        ("SATCHEL_MAX_SIZE", "1 megabyte", "SATCHEL_MAX_SIZE"),
        ("SATCHEL_MAX_SIZE", 0, "SATCHEL_MAX_SIZE"),
        ("SATCHEL_MAX_SIZE", "-1MB", "SATCHEL_MAX_SIZE"),
        ("SATCHEL_MAX_SIZE", 1.5, "SATCHEL_MAX_SIZE"),
        ("SATCHEL_STORE", "mysql://x", "unknown store URL scheme 'mysql'"),
        ("SATCHEL_STORE", "postgresql://h/db?create_schema=maybe", "create_schema must be"),
        ("SATCHEL_STORE", "not a url", "store URL"),
        ("SATCHEL_STORE", 42, "SATCHEL_STORE"),
        ("SECRET_KEY_FALLBACKS", "old-key", "SECRET_KEY_FALLBACKS"),
    ],
)
def test_bad_settings(key: str, value: Any, message: str) -> None:
    """Each malformed setting raises ConfigError naming it."""
    app = Flask("bad")
    app.config.update({"SECRET_KEY": SECRET, "SATCHEL_STORE": "memory://", key: value})
    with pytest.raises(ConfigError, match=message):
        Satchel(app)


@pytest.mark.parametrize(
    ("value", "size"),
    [
        (65536, 65536),
        ("64kB", 64_000),
        ("1MB", 1_000_000),
        ("1 MiB", 1 << 20),
        ("512KiB", 512 << 10),
    ],
)
def test_sizes_take_bytes_or_a_unit_as_the_cache_does(value: Any, size: int) -> None:
    """SATCHEL_MAX_SIZE, like ?cache=, takes a byte count or a size with its unit."""
    app = Flask("sizes")
    app.config.update(SECRET_KEY=SECRET, SATCHEL_STORE="memory://", SATCHEL_MAX_SIZE=value)
    Satchel(app)
    assert app.extensions["satchel"].settings.max_size == size


def test_durations_accept_timedelta_and_seconds() -> None:
    """Timeouts take a timedelta or a number of seconds."""
    for idle in (timedelta(minutes=30), 1800, 1800.0):
        app = Flask("durations")
        app.config.update(SECRET_KEY=SECRET, SATCHEL_IDLE_TIMEOUT=idle)
        Satchel(app, store=MemoryStore())
        assert app.extensions["satchel"].settings.idle_timeout == 1800.0


def test_defaults(tmp_path: Path) -> None:
    """With no store set, sessions go to a SQLite file in the instance folder."""
    app = Flask("defaults", instance_path=str(tmp_path / "inst"))
    app.config["SECRET_KEY"] = SECRET
    Satchel(app)
    manager = app.extensions["satchel"]
    assert isinstance(manager.store, SQLiteStore)
    assert manager.store.path == tmp_path / "inst" / "satchel-sessions.sqlite3"
    assert manager.settings.idle_timeout == app.permanent_session_lifetime.total_seconds()
    assert manager.settings.absolute_timeout == timedelta(days=90).total_seconds()
    assert manager.settings.max_size == 1024 * 1024
    manager.store.close()


@pytest.mark.parametrize(
    "url",
    [
        "sqlite://",
        "sqlite:///",
        "sqlite://host/x.db",
        "sqlite:///x.db?mode=ro",
        "sqlite:///x?timeout=a",
    ],
)
def test_bad_sqlite_urls(url: str) -> None:
    """Malformed SQLite URLs are a ConfigError."""
    with pytest.raises(ConfigError):
        from_url(url)


def test_sqlite_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Three slashes are relative to the working directory, four absolute."""
    monkeypatch.chdir(tmp_path)
    relative = from_url("sqlite:///rel/s.db?timeout=2.5")
    assert isinstance(relative, SQLiteStore)
    assert relative.path == Path("rel/s.db") and relative.timeout == 2.5
    assert (tmp_path / "rel" / "s.db").exists()
    absolute = from_url(f"sqlite:///{tmp_path}/abs.db")
    assert isinstance(absolute, SQLiteStore) and absolute.path == tmp_path / "abs.db"
    relative.close()
    absolute.close()


def test_register_scheme() -> None:
    """A third-party scheme plugs into from_url."""
    made: list[str] = []

    def factory(url: str) -> MemoryStore:
        made.append(url)
        return MemoryStore()

    from satchel import stores

    register_scheme("custom", factory)
    try:
        assert isinstance(from_url("custom://anything"), MemoryStore)
        assert made == ["custom://anything"]
    finally:  # the registry is process-wide: leave it as the other tests expect it
        del stores._SCHEMES["custom"]
    with pytest.raises(ConfigError):
        from_url("custom://anything")


def test_redis_client_must_not_decode() -> None:
    """A redis client that decodes responses is refused."""
    import redis

    from satchel.stores import RedisStore

    with pytest.raises(ConfigError, match="decode_responses"):
        RedisStore(redis.Redis(decode_responses=True))


def test_redis_urls_build_redis_stores(valkey: object) -> None:
    """redis://, valkey:// and unix:// URLs build a RedisStore on that address."""
    from satchel.stores import RedisStore

    from .valkey import ValkeyServer

    assert isinstance(valkey, ValkeyServer)
    for url in (valkey.url, valkey.url.replace("redis://", "valkey://")):
        store = from_url(url)
        assert isinstance(store, RedisStore)
        assert store.client.ping()
        store.close()
    socket_store = from_url("unix:///tmp/satchel-test.sock")
    assert repr(socket_store) == "RedisStore('/tmp/satchel-test.sock')"
    socket_store.close()


def test_a_quart_app_is_refused_at_init_app() -> None:
    """Satchel(app) on a Quart app raises ConfigError naming the Quart adapter, at once."""
    import quart

    from satchel import ConfigError

    app = quart.Quart("async")
    app.config["SECRET_KEY"] = SECRET
    with pytest.raises(ConfigError, match="Quart adapter"):
        Satchel(app)  # type: ignore[arg-type]


def test_version_is_one_value_everywhere() -> None:
    """satchel.__version__, the installed metadata and `satchel --version` agree."""
    import importlib.metadata

    from click.testing import CliRunner

    from satchel.cli import main

    assert satchel.__version__ == importlib.metadata.version("satchel")
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"satchel, version {satchel.__version__}"


# -- prefixes --------------------------------------------------------------------------


def prefixed_apps(store: Store) -> tuple[Flask, Flask]:
    """Two apps with the same secret on one store, under different prefixes."""
    apps = []
    for name in ("shop", "blog"):
        app = owner_app(store.with_prefix(f"{name}:"), "1")  # type: ignore[attr-defined]
        apps.append(app)
    return apps[0], apps[1]


def test_apps_with_different_prefixes_never_meet(store: Store) -> None:
    """one store, two prefixes: no shared session, listing or revocation."""
    shop, blog = prefixed_apps(store)
    shop_client, blog_client = shop.test_client(), blog.test_client()
    shop_client.get("/login")
    blog_client.get("/login")
    # The same secret key: the shop's cookie is genuine to the blog, but names nothing there.
    assert client_with(blog, cookie_of(shop_client)).get("/read").json == {}
    with blog.app_context():
        assert len(Satchel.list_sessions("1")) == 1
        assert Satchel.revoke_all("1", keep_current=False) == 1
    assert shop_client.get("/read").json == {"seen": True}
    assert blog_client.get("/read").json == {}


def test_key_prefix_setting_and_url_option(tmp_path: Any) -> None:
    """SATCHEL_KEY_PREFIX and ?prefix= build a namespaced store; conflicts refuse."""
    from satchel import ConfigError

    url = f"sqlite:///{tmp_path}/s.sqlite3"
    stores = []
    for config in (
        {"SATCHEL_STORE": url, "SATCHEL_KEY_PREFIX": "a:"},
        {"SATCHEL_STORE": url + "?prefix=a:"},
        {"SATCHEL_STORE": url + "?prefix=a:", "SATCHEL_KEY_PREFIX": "a:"},
    ):
        app = Flask("prefix")
        app.config.update(SECRET_KEY=SECRET, **config)
        Satchel(app)
        stores.append(app.extensions["satchel"].store)
    assert [s.prefix for s in stores] == ["a:", "a:", "a:"]
    for config in (
        {"SATCHEL_STORE": url + "?prefix=b:", "SATCHEL_KEY_PREFIX": "a:"},
        {"SATCHEL_KEY_PREFIX": 5},
    ):
        app = Flask("prefix")
        app.config.update(SECRET_KEY=SECRET, **config)
        with pytest.raises(ConfigError):
            Satchel(app)


# -- settings ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "setting",
    [
        {"SATCHEL_IDLE_TIMEOUT": float("nan")},
        {"SATCHEL_ABSOLUTE_TIMEOUT": float("inf")},
        {"SATCHEL_IDLE_TIMEOUT": -5},
        {"SATCHEL_IDLE_TIMEOUT": 0},
        {"PERMANENT_SESSION_LIFETIME": 0},
        {"SATCHEL_LOCK_LEASE": float("nan")},
    ],
)
def test_non_finite_and_non_positive_durations_are_refused(setting: dict[str, Any]) -> None:
    """NaN, infinite, negative and zero lifetimes raise ConfigError at init_app."""
    from satchel import ConfigError

    app = Flask("durations")
    app.config.update(SECRET_KEY=SECRET, SATCHEL_STORE="memory://", **setting)
    with pytest.raises(ConfigError, match="positive, finite"):
        Satchel(app)
