"""The Redis store for ASGI apps: the same keys, scripts and steps as
:class:`~satchel.stores.redis.RedisStore`, each call awaited on ``redis.asyncio``
(or satchel's own RESP connection, on one server)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection
from typing import TYPE_CHECKING, Any

from .._steps import drive_async
from ..errors import ConfigError, StoreUnavailable
from ._redis_rules import (
    Call,
    Kill,
    Pipe,
    RedisOp,
    RevokeAll,
    Script,
    _check_client,
    _RedisRules,
    _split_cluster,
)
from ._redis_scripts import (
    _WRITES,
    ACQUIRE,
    CLUSTER_PRUNE_AFTER_MS,
    KILL,
    RELEASE,
    REVOKE,
    _ms,
    _record,
    _Script,
)
from ._resp import RespConnection, RespError, address
from .base import Change, Record, SaveResult

if TYPE_CHECKING:
    import redis.asyncio

__all__ = ["AsyncRedisStore"]

_log = logging.getLogger("satchel")


class AsyncRedisStore(_RedisRules):
    """Sessions in Redis or Valkey for ASGI apps, through ``redis.asyncio``.

    The same keys, scripts and rules as :class:`RedisStore` (they are one
    code), so a Flask app on a :class:`RedisStore` and an ASGI app on this
    store, with the same prefix, share their sessions. Pass a
    ``redis.asyncio.Redis`` or ``redis.asyncio.cluster.RedisCluster`` made
    with ``decode_responses=False``, or use :meth:`from_url`.
    """

    def __init__(
        self,
        client: redis.asyncio.Redis | redis.asyncio.cluster.RedisCluster,
        *,
        prefix: str = "satchel:",
        fence: bool = False,
    ) -> None:
        self._cluster = _check_client(client)
        self.client = client
        self.prefix = prefix
        #: Whether every write is followed by a PING: see :meth:`RedisStore.from_url`.
        self.fence = fence
        self._prune_after_ms = CLUSTER_PRUNE_AFTER_MS if self._cluster else 0
        # Stores made by with_prefix() share the client, and leave closing it to this one.
        self._owns_client = True
        #: Set by from_url for a plain server: the pipelined connection single
        #: commands go through (see satchel.stores._resp); None: the client.
        self._fast: RespConnection | None = None
        # A Cluster client learns the cluster's layout once, before any command: left
        # to the first commands, several at once, one failing closes the others'
        # connections under them.
        self._ready = not self._cluster
        self._readying: asyncio.Lock | None = None
        import redis
        from redis.exceptions import NoScriptError

        self._redis_error = redis.RedisError
        self._no_script_error = NoScriptError

    def with_prefix(self, prefix: str) -> AsyncRedisStore:
        """A store on the same client under another prefix (closing it leaves the client open)."""
        other = AsyncRedisStore(self.client, prefix=prefix, fence=self.fence)
        other._owns_client = False
        other._fast = self._fast
        return other

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        prefix: str = "satchel:",
        socket_timeout: float = 0.5,
        connect_timeout: float = 0.5,
        fence: bool = False,
    ) -> AsyncRedisStore:
        """A store on a new ``redis.asyncio`` client: see :meth:`RedisStore.from_url`."""
        try:
            import redis.asyncio
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff
            from redis.exceptions import ConnectionError as RedisConnectionError
        except ImportError as exc:
            raise ConfigError(
                "the Redis store needs redis-py: pip install 'satchel[redis]'"
            ) from exc
        url, cluster = _split_cluster(url)
        client: Any
        if cluster:
            from redis.asyncio.cluster import RedisCluster

            client = RedisCluster.from_url(
                url,
                socket_timeout=socket_timeout,
                socket_connect_timeout=connect_timeout,
                decode_responses=False,
            )
        else:
            client = redis.asyncio.Redis.from_url(
                url,
                socket_timeout=socket_timeout,
                socket_connect_timeout=connect_timeout,
                retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
                decode_responses=False,
            )
        store = cls(client, prefix=prefix, fence=fence)
        if not cluster and url.split("://", 1)[0] in ("redis", "unix"):  # not TLS
            from redis.connection import parse_url

            found: dict[str, Any] = parse_url(url)  # type: ignore[no-untyped-call]
            store._fast = RespConnection(
                **address(found),
                timeout=socket_timeout,
                connect_timeout=connect_timeout,
            )
        return store

    async def _layout(self) -> None:
        if self._readying is None:
            self._readying = asyncio.Lock()
        async with self._readying:
            if not self._ready:
                await self.client.initialize()
                self._ready = True

    async def _call(self, *args: Any) -> Any:
        try:
            if self._fast is not None:
                return await self._fast.call(*args)
            if not self._ready:
                await self._layout()
            return await self.client.execute_command(*args)
        except (self._no_script_error, RespError) as exc:
            raise self._unavailable(exc) from exc
        except Exception as exc:
            # Any failure of the client is the store's: redis-py's async Cluster client,
            # when a node fails, closes every connection, and a command in flight on one
            # of them can fail with an AttributeError rather than a RedisError.
            raise self._unavailable(exc) from exc

    async def _run(self, script: _Script, keys: list[str], args: list[Any]) -> Any:
        """Run a Lua script by its SHA-1, loading it first if the server lost it."""
        try:
            return await self._call("EVALSHA", script.sha, len(keys), *keys, *args)
        except StoreUnavailable as exc:
            cause = exc.__cause__
            lost = isinstance(cause, self._no_script_error) or (
                isinstance(cause, RespError) and str(cause).startswith("NOSCRIPT")
            )
            if not lost:
                raise
        if self._fast is not None:  # a restarted or flushed server
            await self._call("SCRIPT", "LOAD", script.source)
        else:
            try:  # on a Cluster, every primary loads it
                await self.client.script_load(script.source)
            except self._redis_error as exc:
                raise self._unavailable(exc) from exc
        return await self._call("EVALSHA", script.sha, len(keys), *keys, *args)

    async def _fence_after(self, name: str) -> None:
        """With ``fence`` on, a PING to the node of ``name`` after a write's reply: see
        :meth:`RedisStore._fence_after`."""
        if not self.fence:
            return
        if not self._cluster:
            await self._call("PING")
            return
        try:
            client: Any = self.client
            await client.execute_command("PING", target_nodes=client.get_node_from_key(name))
        except Exception as exc:
            raise self._unavailable(exc) from exc

    async def _perform(self, op: RedisOp) -> Any:
        match op:
            case Script(script, keys, args):
                reply = await self._run(script, keys, args)
                if script in _WRITES:
                    await self._fence_after(keys[0])
                return reply
            case Call(command):
                return await self._call(*command)
            case RevokeAll(keys, args):
                reply = await self._run(REVOKE, keys, args)
                await self._fence_after("")
                return reply
            case Kill(keys):
                calls = [self._run(KILL, self._record_and_note(key), []) for key in keys]
                replies = [reply for each in await asyncio.gather(*calls) for reply in each]
                await asyncio.gather(*(self._fence_after(self._key(key)) for key in keys))
                return replies
        try:
            if not self._ready:
                await self._layout()
            if isinstance(op, Pipe):
                pipe: Any = self.client.pipeline(transaction=False)
                for command in op.commands:
                    pipe.execute_command(*command)
                return await pipe.execute()
            return [name async for name in self.client.scan_iter(op.pattern, count=1000)]
        except self._redis_error as exc:
            raise self._unavailable(exc) from exc

    async def load(self, key: str) -> Record | None:
        """Fetch the whole hash in one round trip."""
        return _record(await self._call("HGETALL", self._key(key)))

    async def save(self, key: str, change: Change, *, create: bool) -> SaveResult:
        """Apply ``change`` with one script call (a Cluster's move and owned create: two)."""
        return await drive_async(self._save_steps(key, change, create), self._perform)

    async def touch(self, key: str, touched_at: float, expires_at: float) -> bool:
        """Move the record's times with one script call."""
        return bool(await self._perform(self._touch_op(key, touched_at, expires_at)))

    async def delete(self, key: str) -> None:
        """Delete the hash (on a Cluster, and note that it ended: see :data:`_KILL`)."""
        if self._cluster:
            await self._run(KILL, self._record_and_note(key), [])
        else:
            await self._call("DEL", self._key(key))
        await self._fence_after(self._key(key))

    async def revoke(
        self, keys: Collection[str] = (), *, owner: str | None = None, keep: str | None = None
    ) -> int:
        """End records, following moves: one script call per 500 (on a Cluster, per record)."""
        return await drive_async(self._revoke_steps(keys, owner, keep), self._perform)

    async def acquire(self, key: str, token: str, lease: float) -> bool:
        """Set the lock key with a lease unless another token holds it: one script call."""
        return bool(await self._run(ACQUIRE, [self._lock_key(key)], [token, _ms(lease)]))

    async def release(self, key: str, token: str) -> None:
        """Delete the lock only if ``token`` still holds it (a script, so atomic)."""
        await self._run(RELEASE, [self._lock_key(key)], [token])

    async def records(self, owner: str | None = None) -> list[tuple[str, Record]]:
        """Live records: an owner's from their set (pruning dead members), or all by SCAN."""
        if owner is not None:
            return await drive_async(self._owner_records_steps(owner), self._perform)
        return await drive_async(self._all_records_steps(), self._perform)

    async def references(self, start: str = "") -> list[str]:
        """The keys of live records that begin with ``start``, by SCAN (no record is read)."""
        return await drive_async(self._references_steps(start), self._perform)

    async def count(self) -> tuple[int, int]:
        """How many live records there are, and how many distinct owners they have."""
        return await drive_async(self._count_steps(), self._perform)

    async def purge_expired(self) -> int:
        """Nothing to do: Redis expires keys itself. Returns 0."""
        return 0

    async def close(self) -> None:
        """Close the client and its connections."""
        if self._owns_client and self._fast is not None:
            self._fast.close()
        if self._owns_client:
            client: Any = self.client
            close = getattr(client, "aclose", None) or client.close  # aclose: redis-py 5.0.1
            await close()
