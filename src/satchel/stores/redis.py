"""A store on Redis or Valkey through redis-py: one hash per session.

A session is one hash, ``<prefix>s:<hashed ID>``: ``d:<name>`` fields hold the
values; ``m:c``, ``m:t`` and ``m:e`` the created, last-seen and expiry times;
``m:o`` and ``m:x`` the owner and client details. The key expires with the
session. Every save is one Lua script call, so it is atomic and costs one round
trip (a create with an owner first adds the key to ``<prefix>o:<owner>``, a set
that expires when its longest-lived member can); a load is one ``HGETALL``.
Strict-mode locks are ``<prefix>l:<hashed ID>``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError, StoreUnavailable
from ._connections import ConnectionList
from .base import Change, Record

if TYPE_CHECKING:
    import redis

__all__ = ["RedisStore"]

# ARGV: create flag, expiry (unix ms), number of names to delete, those names,
# then the name/value pairs to set (the times among them). Few redis.call()s,
# because each costs a few microseconds of server time.
_SAVE = """
local key = KEYS[1]
if (redis.call('EXISTS', key) == 1) == (ARGV[1] == '1') then return 0 end
-- unpack() takes a few thousand values at most: go in even-sized chunks.
local function each(command, first, last)
  for i = first, last, 1000 do
    redis.call(command, key, unpack(ARGV, i, math.min(i + 999, last)))
  end
end
local deletes = tonumber(ARGV[3])
each('HDEL', 4, 3 + deletes)
each('HSET', 4 + deletes, #ARGV)
redis.call('PEXPIREAT', key, ARGV[2])
return 1
"""

_TOUCH = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'm:t', ARGV[1], 'm:e', ARGV[2])
redis.call('PEXPIREAT', KEYS[1], ARGV[3])
return 1
"""


# Adds a session key to its owner's set and keeps the set alive as long as the
# longest-lived member can be (ARGV[2], unix ms), so an abandoned set expires.
_INDEX = """
redis.call('SADD', KEYS[1], ARGV[1])
local deadline = tonumber(ARGV[2])
local ttl = redis.call('PTTL', KEYS[1])
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
if ttl < 0 or now_ms + ttl < deadline then redis.call('PEXPIREAT', KEYS[1], deadline) end
return 1
"""

_ACQUIRE = """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def _ms(seconds: float) -> int:
    """Whole milliseconds, at least 1: for unix times and for durations alike."""
    return max(int(seconds * 1000), 1)


def _record(raw: dict[bytes, bytes] | list[bytes]) -> Record | None:
    """The Record a session hash holds; None if missing, expired, half-written or foreign.

    ``raw`` is the hash as redis-py's ``hgetall`` gives it, or as the flat
    name, value, name, value list the server sends.
    """
    if not raw:
        return None
    if isinstance(raw, list):
        pairs = iter(raw)
        raw = dict(zip(pairs, pairs, strict=False))
    try:
        expires = float(raw[b"m:e"])
        if expires <= time.time():
            return None
        fields = {
            name[2:].decode("utf-8"): value for name, value in raw.items() if name[:2] == b"d:"
        }
        owner = raw[b"m:o"].decode("utf-8") if b"m:o" in raw else None
        meta = json.loads(raw[b"m:x"]) if b"m:x" in raw else {}
        return Record(fields, float(raw[b"m:c"]), float(raw[b"m:t"]), expires, owner, meta)
    except (KeyError, ValueError):
        return None


class RedisStore:
    """Sessions in Redis or Valkey, through a ``redis.Redis`` client you pass.

    Every key starts with ``prefix`` (see the module's docstring). The client must not
    decode responses (values are bytes); set socket timeouts on it so a
    stalled server gives ``StoreUnavailable`` quickly rather than a hung
    worker (:meth:`from_url` does).
    """

    def __init__(
        self, client: redis.Redis | redis.cluster.RedisCluster, *, prefix: str = "satchel:"
    ) -> None:
        if client.get_connection_kwargs().get("decode_responses"):
            raise ConfigError("RedisStore needs a client made with decode_responses=False")
        self.client = client
        self.prefix = prefix
        #: Set by :meth:`from_url`: calls then borrow from ``_connections``.
        self._pool: redis.ConnectionPool | None = None
        self._connections: ConnectionList[Any] = ConnectionList(self._connect)
        import redis
        from redis.exceptions import NoScriptError

        # Bound once: an import statement in every call costs a few microseconds.
        self._connection_error = redis.ConnectionError
        self._response_error = redis.ResponseError
        self._redis_error = redis.RedisError
        self._no_script_error = NoScriptError
        self._save: Callable[..., Any] = client.register_script(_SAVE)
        self._touch: Callable[..., Any] = client.register_script(_TOUCH)
        self._acquire: Callable[..., Any] = client.register_script(_ACQUIRE)
        self._index: Callable[..., Any] = client.register_script(_INDEX)
        self._release: Callable[..., Any] = client.register_script(_RELEASE)

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        prefix: str = "satchel:",
        socket_timeout: float = 0.5,
        connect_timeout: float = 0.5,
    ) -> RedisStore:
        """Build a store on a new client for ``url`` with short timeouts.

        Accepts ``redis://``, ``rediss://`` and ``unix://`` URLs, and
        ``redis+cluster://host:port`` (or ``rediss+cluster://``) for a Redis or
        Valkey Cluster, given any one of its nodes. A broken connection is
        retried once, so a restarted server is picked up again without an
        error; a timeout is not retried, so a frozen server fails the call
        after ``socket_timeout`` seconds. A cluster client follows ``MOVED``
        and fail-overs as redis-py's ``RedisCluster`` does.
        """
        try:
            import redis
            from redis.backoff import NoBackoff
            from redis.exceptions import ConnectionError as RedisConnectionError
            from redis.retry import Retry
        except ImportError as exc:
            raise ConfigError(
                "the Redis store needs redis-py: pip install 'satchel[redis]'"
            ) from exc
        scheme, rest = url.split("://", 1)
        if scheme.endswith("+cluster"):
            from redis.cluster import RedisCluster

            cluster = RedisCluster.from_url(
                scheme.removesuffix("+cluster") + "://" + rest,
                socket_timeout=socket_timeout,
                socket_connect_timeout=connect_timeout,
                decode_responses=False,
            )
            return cls(cluster, prefix=prefix)
        client = redis.Redis.from_url(
            url,
            socket_timeout=socket_timeout,
            socket_connect_timeout=connect_timeout,
            retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
            decode_responses=False,
        )
        store = cls(client, prefix=prefix)
        store._pool = client.connection_pool
        return store

    def __repr__(self) -> str:
        if type(self.client).__name__ == "RedisCluster":
            first = self.client.get_nodes()[0].name  # type: ignore[union-attr]
            return f"RedisStore('cluster at {first}')"
        kwargs = self.client.get_connection_kwargs()
        where = kwargs.get("path") or f"{kwargs.get('host')}:{kwargs.get('port')}"
        return f"RedisStore({where!r})"

    def _unavailable(self, exc: Exception) -> StoreUnavailable:
        return StoreUnavailable(repr(self), f"{type(exc).__name__}: {exc}")

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except self._redis_error as exc:
            raise self._unavailable(exc) from exc

    def _connect(self) -> Any:
        """A new connection with the client's settings."""
        assert self._pool is not None
        return self._pool.connection_class(**self._pool.connection_kwargs)

    def _call(self, *args: Any) -> Any:
        """Send one command and return its reply: the path of every request.

        With a client :meth:`from_url` made, the store drives redis-py's
        connections itself, from a free list as long as the number of calls
        ever running at once, which skips the client's per-command pool and
        bookkeeping work (about a third of a call's time on a small machine)
        and keeps redis-py's sockets, parser and errors. A broken connection
        is retried once, as that client would; a timeout is not. Other
        clients (a cluster, or one you configured) are called as they are,
        with their own policies.
        """
        try:
            if self._pool is None:
                return self.client.execute_command(*args)  # type: ignore[no-untyped-call]
            conn = self._connections.take()
            try:
                try:
                    conn.send_command(*args)
                    return conn.read_response()
                except self._connection_error:
                    conn.disconnect()  # the server restarted, say: one more try
                    conn.send_command(*args)
                    return conn.read_response()
            except self._response_error:
                raise  # an error reply (NOSCRIPT, say): the connection is fine
            except BaseException:
                conn.disconnect()  # a reply may be half read: reconnect on next use
                raise
            finally:
                self._connections.give(conn)
        except self._redis_error as exc:
            raise self._unavailable(exc) from exc

    def _run(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        """Run a registered Lua script by its SHA-1, loading it first if the server lost it."""
        try:
            return self._call("EVALSHA", script.sha, len(keys), *keys, *args)
        except StoreUnavailable as exc:
            if not isinstance(exc.__cause__, self._no_script_error):
                raise
        self._call("SCRIPT", "LOAD", script.script)  # a restarted or flushed server
        return self._call("EVALSHA", script.sha, len(keys), *keys, *args)

    def load(self, key: str) -> Record | None:
        """Fetch the whole hash in one round trip."""
        return _record(self._call("HGETALL", self._key(key)))

    # Three namespaces under the prefix: s: session hashes, l: strict-mode
    # locks, o: each owner's set of session keys.
    # The braces are a cluster hash tag: a session's hash and its lock share a slot.
    def _key(self, key: str) -> str:
        return f"{self.prefix}s:{{{key}}}"

    def _lock_key(self, key: str) -> str:
        return f"{self.prefix}l:{{{key}}}"

    def _owner_key(self, owner: str) -> str:
        return f"{self.prefix}o:{owner}"

    def records(self, owner: str | None = None) -> Iterator[tuple[str, Record]]:
        """Yield live records: an owner's from their set (pruning what expired), or all by SCAN."""
        if owner is not None:
            owner_key = self._owner_key(owner)
            with self._errors():
                members = sorted(m.decode() for m in self.client.smembers(owner_key))  # type: ignore[union-attr]
            gone = []
            for key, record in self._fetch(members):
                if record is None:
                    gone.append(key)
                elif record.owner == owner:
                    yield key, record
            if gone:
                with self._errors():
                    self.client.srem(owner_key, *gone)
            return
        start = len(self._key("")) - 1  # the name without its closing brace
        with self._errors():
            keys = [
                name.decode()[start:-1]
                for name in self.client.scan_iter(self.prefix + "s:*", count=1000)
            ]
        for key, record in self._fetch(keys):
            if record is not None:
                yield key, record

    def _fetch(self, keys: list[str]) -> Iterator[tuple[str, Record | None]]:
        """Each key with its live record (or None), 500 HGETALLs to a pipeline."""
        for first in range(0, len(keys), 500):
            batch = keys[first : first + 500]
            with self._errors():
                pipe = self.client.pipeline(transaction=False)
                for key in batch:
                    pipe.hgetall(self._key(key))
                hashes = pipe.execute()
            for key, raw in zip(batch, hashes, strict=True):
                yield key, _record(raw)

    def save(self, key: str, change: Change, *, create: bool) -> bool:
        """Apply ``change`` with one script call."""
        args: list[Any] = ["1" if create else "0", _ms(change.expires_at)]
        args.append(len(change.delete))
        args += ["d:" + name for name in change.delete]
        if create:
            args += ("m:c", repr(change.created_at))
            if change.meta:
                args += ("m:x", json.dumps(dict(change.meta), ensure_ascii=False))
            if change.owner is not None:
                args += ("m:o", change.owner)
                # Indexed first: a failure after this leaves a member that the
                # next listing prunes, never a session that revoke_all misses.
                until = _ms(max(change.ends_by, change.expires_at))
                self._run(self._index, [self._owner_key(change.owner)], [key, until])
        args += ("m:t", repr(change.touched_at), "m:e", repr(change.expires_at))
        for name, value in change.set.items():
            args += ("d:" + name, value)
        return bool(self._run(self._save, [self._key(key)], args))

    def touch(self, key: str, touched_at: float, expires_at: float) -> bool:
        """Move the record's times with one script call."""
        args = [repr(touched_at), repr(expires_at), _ms(expires_at)]
        return bool(self._run(self._touch, [self._key(key)], args))

    def delete(self, key: str) -> None:
        """Delete the hash."""
        self._call("DEL", self._key(key))

    def acquire(self, key: str, token: str, lease: float) -> bool:
        """Set the lock key with a lease unless another token holds it: one script call."""
        args = [token, _ms(lease)]
        return bool(self._run(self._acquire, [self._lock_key(key)], args))

    def release(self, key: str, token: str) -> None:
        """Delete the lock only if ``token`` still holds it (a script, so atomic)."""
        self._run(self._release, [self._lock_key(key)], [token])

    def purge_expired(self) -> int:
        """Nothing to do: Redis expires keys itself. Returns 0."""
        return 0

    def close(self) -> None:
        """Close the client's connections and those of every thread."""
        for conn in self._connections.drain():
            conn.disconnect()
        self.client.close()
