"""A store on Redis or Valkey through redis-py: one hash per session.

A session is one hash: ``d:<name>`` fields hold the values, ``m:c``, ``m:t``
and ``m:e`` the created, last-seen and expiry times, and the key itself
expires with the session. Every save is one Lua script call, so it is atomic
and costs one round trip; a load is one ``HGETALL``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError, StoreUnavailable
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


def _unix_ms(seconds: float) -> int:
    return max(int(seconds * 1000), 1)


class RedisStore:
    """Sessions in Redis or Valkey, through a ``redis.Redis`` client you pass.

    Keys are ``prefix`` followed by the hashed session ID. The client must not
    decode responses (values are bytes); set socket timeouts on it so a
    stalled server gives ``StoreUnavailable`` quickly rather than a hung
    worker (:meth:`from_url` does).
    """

    def __init__(self, client: redis.Redis, *, prefix: str = "satchel:") -> None:
        if client.get_connection_kwargs().get("decode_responses"):
            raise ConfigError("RedisStore needs a client made with decode_responses=False")
        self.client = client
        self.prefix = prefix
        self._save: Callable[..., Any] = client.register_script(_SAVE)
        self._touch: Callable[..., Any] = client.register_script(_TOUCH)
        self._acquire: Callable[..., Any] = client.register_script(_ACQUIRE)
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

        Accepts ``redis://``, ``rediss://`` and ``unix://`` URLs. A broken
        connection is retried once, so a restarted server is picked up again
        without an error; a timeout is not retried, so a frozen server fails
        the call after ``socket_timeout`` seconds.
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
        client = redis.Redis.from_url(
            url,
            socket_timeout=socket_timeout,
            socket_connect_timeout=connect_timeout,
            retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
            decode_responses=False,
        )
        return cls(client, prefix=prefix)

    def __repr__(self) -> str:
        kwargs = self.client.get_connection_kwargs()
        where = kwargs.get("path") or f"{kwargs.get('host')}:{kwargs.get('port')}"
        return f"RedisStore({where!r})"

    @contextmanager
    def _errors(self) -> Iterator[None]:
        import redis

        try:
            yield
        except redis.RedisError as exc:
            raise StoreUnavailable(repr(self), f"{type(exc).__name__}: {exc}") from exc

    def load(self, key: str) -> Record | None:
        """Fetch the whole hash in one round trip."""
        with self._errors():
            raw: dict[bytes, bytes] = self.client.hgetall(self.prefix + key)  # type: ignore[assignment]
        if not raw:
            return None
        try:
            expires = float(raw[b"m:e"])
            record = Record(
                {
                    name[2:].decode("utf-8"): value
                    for name, value in raw.items()
                    if name.startswith(b"d:")
                },
                float(raw[b"m:c"]),
                float(raw[b"m:t"]),
                expires,
            )
        except (KeyError, ValueError):
            return None  # a half-written or foreign hash: treat as missing
        return record if expires > time.time() else None

    def save(self, key: str, change: Change, *, create: bool) -> bool:
        """Apply ``change`` with one script call."""
        args: list[Any] = ["1" if create else "0", _unix_ms(change.expires_at)]
        args.append(len(change.delete))
        args += ["d:" + name for name in change.delete]
        if create:
            args += ("m:c", repr(change.created_at))
        args += ("m:t", repr(change.touched_at), "m:e", repr(change.expires_at))
        for name, value in change.set.items():
            args += ("d:" + name, value)
        with self._errors():
            return bool(self._save(keys=[self.prefix + key], args=args))

    def touch(self, key: str, touched_at: float, expires_at: float) -> bool:
        """Move the record's times with one script call."""
        args = [repr(touched_at), repr(expires_at), _unix_ms(expires_at)]
        with self._errors():
            return bool(self._touch(keys=[self.prefix + key], args=args))

    def delete(self, key: str) -> None:
        """Delete the hash."""
        with self._errors():
            self.client.delete(self.prefix + key)

    def acquire(self, key: str, token: str, lease: float) -> bool:
        """Set the lock key with a lease unless another token holds it: one script call."""
        args = [token, max(int(lease * 1000), 1)]
        with self._errors():
            return bool(self._acquire(keys=[self.prefix + key + ":lock"], args=args))

    def release(self, key: str, token: str) -> None:
        """Delete the lock only if ``token`` still holds it (a script, so atomic)."""
        with self._errors():
            self._release(keys=[self.prefix + key + ":lock"], args=[token])

    def purge_expired(self) -> int:
        """Nothing to do: Redis expires keys itself. Returns 0."""
        return 0

    def close(self) -> None:
        """Close the client's connections."""
        self.client.close()
