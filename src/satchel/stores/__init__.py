"""Session stores: the :class:`Store` protocol, the built-in stores, and URLs.

Pick a store by passing an object (``Satchel(app, store=RedisStore(client))``)
or by URL through :func:`from_url`:

=======================================  ====================================
URL                                      store
=======================================  ====================================
``memory://``                            :class:`MemoryStore` (one process)
``sqlite:///relative/path.db``           :class:`SQLiteStore`, path relative
``sqlite:////absolute/path.db``          to the working directory, or absolute
``redis://[:password@]host:port/db``     :class:`RedisStore` (Redis or Valkey)
``rediss://…``, ``unix:///path.sock``    the same over TLS or a Unix socket
``valkey://…``, ``valkeys://…``          aliases of ``redis://`` and ``rediss://``
``redis+cluster://host:port``            a Redis or Valkey Cluster, by any node
``postgresql://user:pass@host:port/db``  :class:`PostgresStore` (also
                                         ``postgres://``)
=======================================  ====================================

Every URL takes ``?prefix=NAME``: the store's namespace (``SATCHEL_KEY_PREFIX``),
under which every key, index and lock of the store lives. ``sqlite`` URLs also
take ``?timeout=SECONDS`` (how long to wait for a lock); ``postgresql`` URLs take
``?timeout=SECONDS`` (the bound on each statement) and ``?create_schema=false``,
and pass every other query parameter (``sslmode=...``) to libpq. ``redis`` URLs take
``?cache=64MB``: each process keeps the records it read, kept correct by the
server's invalidation notices (off by default; see docs/performance.md), and
``?fence=1``: each write is followed by a PING, for an app that does not cache but
shares its store with apps that do (a cached store always fences); they pass
every other query parameter to redis-py. Third-party stores add
schemes with :func:`register_scheme`; their factories receive the whole URL,
``prefix`` included.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

from ..errors import ConfigError
from .base import AsyncStore, Change, Record, SaveResult, Store
from .memory import MemoryStore
from .sqlite import SQLiteStore

if TYPE_CHECKING:
    from .postgres import AsyncPostgresStore, PostgresStore
    from .redis import AsyncRedisStore, RedisStore

__all__ = [
    "AsyncPostgresStore",
    "AsyncRedisStore",
    "AsyncStore",
    "Change",
    "MemoryStore",
    "PostgresStore",
    "Record",
    "RedisStore",
    "SQLiteStore",
    "SaveResult",
    "Store",
    "from_url",
    "register_scheme",
    "url_prefix",
]

_SCHEMES: dict[str, Callable[[str], Store]] = {}


def register_scheme(scheme: str, factory: Callable[[str], Store]) -> None:
    """Make :func:`from_url` build stores for ``scheme://`` URLs with ``factory``."""
    _SCHEMES[scheme.lower()] = factory


def from_url(url: str) -> Store:
    """Build the store a URL names; an unknown scheme raises :class:`ConfigError`."""
    if not isinstance(url, str) or "://" not in url:
        raise ConfigError(f"a store URL looks like 'sqlite:///sessions.db', not {url!r}")
    scheme = url.split("://", 1)[0].lower()
    factory = _SCHEMES.get(scheme)
    if factory is None:
        known = ", ".join(sorted(f"{s}://" for s in _SCHEMES))
        raise ConfigError(f"unknown store URL scheme {scheme!r}; known: {known}")
    return factory(url)


def url_prefix(url: str) -> tuple[str, str | None]:
    """Split ``?prefix=`` off a store URL: the URL without it, and the prefix (or ``None``)."""
    base, _, query = url.partition("?")  # not urlunsplit: it drops sqlite:////'s slashes
    pairs = parse_qsl(query, keep_blank_values=True)
    prefixes = [value for name, value in pairs if name == "prefix"]
    if len(prefixes) > 1:
        raise ConfigError(f"the store URL {url!r} names more than one prefix")
    if not prefixes:
        return url, None
    rest = urlencode([(name, value) for name, value in pairs if name != "prefix"])
    return (f"{base}?{rest}" if rest else base), prefixes[0]


def _memory(url: str) -> Store:
    url, prefix = url_prefix(url)
    if urlsplit(url).query:
        raise ConfigError(f"unknown memory URL option in {url!r}")
    return MemoryStore(prefix=prefix or "")


def _sqlite(url: str) -> Store:
    url, prefix = url_prefix(url)
    parts = urlsplit(url)
    path = unquote(parts.path)
    if parts.netloc or not path.startswith("/") or path == "/":
        raise ConfigError(f"bad SQLite URL {url!r}: use sqlite:///relative.db or sqlite:////abs.db")
    path = path[1:]  # three slashes: relative; four: absolute
    options: dict[str, Any] = {"prefix": prefix or ""}
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name != "timeout":
            raise ConfigError(f"unknown SQLite URL option {name!r} in {url!r}")
        try:
            options["timeout"] = float(value)
        except ValueError:
            raise ConfigError(f"timeout must be a number of seconds in {url!r}") from None
    return SQLiteStore(path, **options)


def _redis(url: str) -> Store:
    from .redis import RedisStore

    url, prefix = url_prefix(url)
    if url[:6].lower() == "valkey":  # redis-py speaks the same protocol
        url = "redis" + url[6:]
    base, _, query = url.partition("?")
    options: dict[str, Any] = {} if prefix is None else {"prefix": prefix}
    passed = []
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name == "cache":
            options["cache"] = value
        elif name == "fence":
            if value.lower() not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                raise ConfigError(f"fence must be on or off in {url!r}")
            options["fence"] = value.lower() in ("1", "true", "yes", "on")
        else:
            passed.append((name, value))
    if passed:
        base = f"{base}?{urlencode(passed)}"
    return RedisStore.from_url(base, **options)


def _postgres(url: str) -> Store:
    from .postgres import PostgresStore

    url, prefix = url_prefix(url)
    base, _, query = url.partition("?")
    options: dict[str, Any] = {}
    passed = []
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name == "timeout":
            try:
                options["timeout"] = float(value)
            except ValueError:
                raise ConfigError(f"timeout must be a number of seconds in {url!r}") from None
        elif name == "create_schema":
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ConfigError(f"create_schema must be true or false in {url!r}")
            options["create_schema"] = value.lower() in ("true", "1", "yes")
        else:
            passed.append((name, value))
    if passed:
        base = f"{base}?{urlencode(passed)}"
    return PostgresStore.from_url(base, prefix=prefix or "", **options)


register_scheme("memory", _memory)
register_scheme("sqlite", _sqlite)
for _scheme in ("redis", "rediss", "unix", "valkey", "valkeys"):
    register_scheme(_scheme, _redis)
for _scheme in ("redis", "rediss", "valkey", "valkeys"):
    register_scheme(_scheme + "+cluster", _redis)
register_scheme("postgresql", _postgres)
register_scheme("postgres", _postgres)


def __getattr__(name: str) -> Any:
    # The Redis and PostgreSQL stores import lazily, so that redis-py and psycopg stay
    # optional extras.
    if name in ("RedisStore", "AsyncRedisStore"):
        from . import redis

        return getattr(redis, name)
    if name in ("PostgresStore", "AsyncPostgresStore"):
        from . import postgres

        return getattr(postgres, name)
    raise AttributeError(name)
