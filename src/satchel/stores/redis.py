"""A store on Redis or Valkey through redis-py: one hash per session.

A session is one hash, ``<prefix>s:{<hashed ID>}``: ``d:<name>`` fields hold
the values; ``m:c``, ``m:t`` and ``m:e`` the created, last-seen and expiry
times; ``m:o`` and ``m:x`` the owner and client details; ``m:s`` the size the
limit counts. The key expires with the session. Every save is one Lua script
call, so it is atomic and costs one round trip: it checks that the record is
(or is not) there, that a strict-mode lock is still held and that the size
limit holds, all against the hash as stored, then applies the change. Each
owner has a sorted set ``<prefix>i:<owner>`` of their sessions' keys, scored by
when each was added, that expires when its longest-lived member can.

On one server, a create adds its key to the owner's set in the same script,
and ``regenerate()`` moves a record to its new key in one script too. On a
Cluster those keys live in different slots, so the set is written first, and a
move takes the old record (checking and deleting it in one script on its
slot) before it creates the new one; a listing prunes a member without a
record only once it is older than a minute, so it never removes the entry of
a create still on its way. Strict-mode locks are ``<prefix>l:{<hashed ID>}``,
in the same slot as their session.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import hiredis

from .._steps import drive
from ..errors import ConfigError, SessionTooLarge, StoreUnavailable
from ._connections import ConnectionList
from ._redis_async import AsyncRedisStore
from ._redis_rules import (
    Call,
    Derive,
    Kill,
    Pipe,
    RedisOp,
    RevokeAll,
    Scan,
    Script,
    _check_client,
    _RedisRules,
    _split_cluster,
)
from ._redis_scripts import (
    _WRITES,
    ACQUIRE,
    CLUSTER_PRUNE_AFTER_MS,
    CREATE,
    KILL,
    RELEASE,
    REVOKE,
    SAVE,
    TAKE,
    _ms,
    _record,
    _Script,
)
from ._resp import RespError, address
from ._tracking import CacheStats, ClusterTracking, TrackingConnection, parse_size
from .base import Change, Conflict, Record, SaveResult, apply_change

if TYPE_CHECKING:
    import redis

__all__ = ["AsyncRedisStore", "RedisStore"]

_log = logging.getLogger("satchel")


def _send(conn: Any, args: tuple[Any, ...]) -> None:
    """``conn.send_command(*args)``, packed by hiredis in one call: redis-py's own packer
    first walks the arguments in Python (to turn memoryviews into bytes), about a
    microsecond for every four arguments of a save's script call. Arguments hiredis
    cannot pack go the usual way."""
    try:
        packed = hiredis.pack_command(args)
    except TypeError:
        conn.send_command(*args)
        return
    conn.send_packed_command((packed,))


class RedisStore(_RedisRules):
    """Sessions in Redis or Valkey, through a ``redis.Redis`` client you pass.

    Every key starts with ``prefix`` (see the module's docstring). The client must not
    decode responses (values are bytes); set socket timeouts on it so a
    stalled server gives ``StoreUnavailable`` quickly rather than a hung
    worker (:meth:`from_url` does).
    """

    def __init__(
        self,
        client: redis.Redis | redis.cluster.RedisCluster,
        *,
        prefix: str = "satchel:",
        cache: int | str = 0,
        fence: bool = False,
    ) -> None:
        self._cluster = _check_client(client)
        self.client = client
        self.prefix = prefix
        self._prune_after_ms = CLUSTER_PRUNE_AFTER_MS if self._cluster else 0
        #: With ``cache``: the connection single commands go through, whose
        #: notices keep this process's records correct (see satchel.stores._tracking).
        self._tracked = self._tracking(client, cache)
        #: Whether every write is followed by a PING (see :meth:`_fence_after`): always
        #: with the cache on, and with ``fence`` for an app that shares a store with one.
        self.fence = fence or self._tracked is not None
        #: Set by :meth:`from_url`: calls then borrow from ``_connections``.
        self._pool: redis.ConnectionPool | None = None
        # Set by from_url: the URL and timeouts, for to_async().
        self._source: tuple[str, float, float] | None = None
        self._connections: ConnectionList[Any] = ConnectionList(
            self._connect, close=lambda conn: conn.disconnect()
        )
        import redis
        from redis.exceptions import NoScriptError

        # Bound once: an import statement in every call costs a few microseconds.
        self._connection_error = redis.ConnectionError
        self._response_error = redis.ResponseError
        # A Cluster client's own failures (a slot no node covers, say) are not RedisErrors.
        self._redis_error: tuple[type[Exception], ...] = (
            redis.RedisError,
            redis.exceptions.RedisClusterException,
        )
        self._no_script_error = NoScriptError
        #: What a call through the record cache can fail with: the socket, the parser,
        #: an error reply, or the Cluster client a redirected call falls back to.
        self._tracked_errors: tuple[type[Exception], ...] = (
            OSError,
            hiredis.ProtocolError,
            RespError,
            *self._redis_error,
        )

    def _tracking(
        self, client: Any, cache: int | str
    ) -> TrackingConnection | ClusterTracking | None:
        try:
            max_bytes = parse_size(cache)
        except ValueError as exc:
            raise ConfigError(f"cache: {exc}") from None
        if not max_bytes:
            return None
        kwargs = client.get_connection_kwargs()
        if self._cluster:
            tls = bool(kwargs.get("ssl")) or "SSL" in str(kwargs.get("connection_class", ""))
        else:
            tls = "ssl" in client.connection_pool.connection_class.__name__.lower()
        if tls:
            raise ConfigError("the record cache (cache=) needs redis:// or unix://, not TLS")
        settings: dict[str, Any] = {
            "parse": _record,
            "timeout": kwargs.get("socket_timeout"),
            "connect_timeout": kwargs.get("socket_connect_timeout") or 0.5,
        }
        if self._cluster:  # each node's address comes from the cluster's layout
            return ClusterTracking(
                client,
                max_bytes=max_bytes,
                username=kwargs.get("username"),
                password=kwargs.get("password"),
                **settings,
            )
        mark = f"{self.prefix}c:"  # each connection's mark: see TrackingConnection
        return TrackingConnection(max_bytes=max_bytes, **address(kwargs), mark=mark, **settings)

    def cache_stats(self) -> CacheStats | None:
        """This process's record cache: hits, misses, notices, size; ``None`` when off."""
        return None if self._tracked is None else self._tracked.stats()

    def with_prefix(self, prefix: str) -> RedisStore:
        """A store on the same client and connections under another prefix (uncached, and
        fenced when this one caches or fences: its writes may be read by cached workers)."""
        other = RedisStore(self.client, prefix=prefix, fence=self.fence)
        other._pool, other._connections = self._pool, self._connections
        other._source = self._source
        return other

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        prefix: str = "satchel:",
        socket_timeout: float = 0.5,
        connect_timeout: float = 0.5,
        cache: int | str = 0,
        fence: bool = False,
    ) -> RedisStore:
        """Build a store on a new client for ``url`` with short timeouts.

        ``cache`` (bytes, or ``"64MB"``; in a URL ``?cache=64MB``) turns on each
        process's cache of the records it read, kept correct by the server's
        invalidation notices: see :mod:`satchel.stores._tracking` and
        docs/performance.md for what it saves and the one gap it leaves. Off (0)
        by default; on a Cluster, one tracking connection per primary; not over TLS.
        ``fence`` (in a URL ``?fence=1``) is for an app that does not cache but shares
        the store with apps that do: each of its writes is followed by a PING, so
        that the others' caches have the server's notice before the write's request
        ends (a cached store always does this).

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
        given = url
        url, cluster = _split_cluster(url)
        if cluster:
            from redis.cluster import RedisCluster

            store = cls(
                RedisCluster.from_url(
                    url,
                    socket_timeout=socket_timeout,
                    socket_connect_timeout=connect_timeout,
                    decode_responses=False,
                ),
                prefix=prefix,
                cache=cache,
                fence=fence,
            )
        else:
            client = redis.Redis.from_url(
                url,
                socket_timeout=socket_timeout,
                socket_connect_timeout=connect_timeout,
                retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
                decode_responses=False,
            )
            store = cls(client, prefix=prefix, cache=cache, fence=fence)
            store._pool = client.connection_pool
        store._source = (given, socket_timeout, connect_timeout)
        return store

    def to_async(self) -> AsyncRedisStore:
        """An :class:`AsyncRedisStore` on the same server (or Cluster), prefix and timeouts.

        Only for a store :meth:`from_url` made; one built on your client cannot
        tell how to make an async twin of it. The twin does not cache records, and
        fences its writes when this store caches or fences (see :meth:`from_url`).
        """
        if self._source is None:
            raise ConfigError(f"{self!r} was built on a client: build its async twin yourself")
        url, socket_timeout, connect_timeout = self._source
        return AsyncRedisStore.from_url(
            url,
            prefix=self.prefix,
            socket_timeout=socket_timeout,
            connect_timeout=connect_timeout,
            fence=self.fence,
        )

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
        if self._tracked is not None and not self._cluster:
            return self._tracked_call(args)
        try:
            if self._pool is None:
                return self.client.execute_command(*args)
            conn = self._connections.take()
            try:
                try:
                    _send(conn, args)
                    return conn.read_response()
                except self._connection_error:
                    conn.disconnect()  # the server restarted, say: one more try
                    _send(conn, args)
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

    def _tracked_call(
        self,
        args: tuple[Any, ...],
        refresh: str | None = None,
        forget: tuple[str, ...] = (),
        derive: Derive | None = None,
        fence: bool = True,
        route: str | None = None,
    ) -> Any:
        """A command on the tracking connection (see :meth:`TrackingConnection.call`);
        on a Cluster, on the connection to the node of ``route``."""
        assert self._tracked is not None
        try:
            reply = self._tracked.call(
                args, refresh=refresh, derive=derive, forget=forget, fence=fence, route=route
            )
        except self._tracked_errors as exc:
            raise self._unavailable(exc) from exc
        if isinstance(reply, RespError):
            raise self._unavailable(reply) from reply
        return reply

    def _run(
        self,
        script: _Script,
        keys: list[str],
        args: list[Any],
        refresh: str | None = None,
        forget: tuple[str, ...] = (),
        derive: Derive | None = None,
        fence: bool = True,
    ) -> Any:
        """Run a Lua script by its SHA-1, loading it first if the server lost it.

        ``refresh``, ``derive``, ``forget`` and ``fence`` (cache on only): see
        :meth:`TrackingConnection.call`.
        """
        command = ("EVALSHA", script.sha, len(keys), *keys, *args)
        tracked = self._tracked is not None and bool(keys)
        route = keys[0] if keys else None
        try:
            if not tracked:
                return self._call(*command)
            return self._tracked_call(command, refresh, forget, derive, fence, route)
        except StoreUnavailable as exc:
            cause = exc.__cause__
            lost = isinstance(cause, self._no_script_error) or (
                isinstance(cause, RespError) and str(cause).startswith("NOSCRIPT")
            )
            if not lost:
                raise
        self._call("SCRIPT", "LOAD", script.source)  # a restarted or flushed server
        if not tracked:
            return self._call(*command)
        return self._tracked_call(command, refresh, forget, derive, fence, route)

    def _fence_after(self, name: str) -> None:
        """Without the cache (whose connection fences itself), when ``fence`` is on: a
        PING to the node of ``name`` after a write's reply, read in a later turn of the
        server's loop than the write, so the server has sent every other worker's cache
        its notice of the write (see :mod:`satchel.stores._tracking`)."""
        if not self.fence or self._tracked is not None:
            return
        if not self._cluster:
            self._call("PING")
            return
        with self._errors():
            client: Any = self.client
            client.execute_command("PING", target_nodes=client.get_node_from_key(name))

    def _perform(self, op: RedisOp) -> Any:
        match op:
            case Script(script, keys, args):
                reply = self._run(script, keys, args)
                if script in _WRITES:
                    self._fence_after(keys[0])
                return reply
            case Call(command):
                return self._call(*command)
            case RevokeAll(keys, args):  # one server's: forget what it ended, then fence
                return self._revoke_all(keys, args)
            case Kill(keys) if self._cluster and self._tracked is None:
                return self._kill_pipelined(keys)
            case Kill(keys):
                replies = []
                for key in keys:  # a Cluster's, with the cache on: each by its node's connection
                    names = self._record_and_note(key)
                    replies += self._run(KILL, names, [], forget=(names[0],))
                    self._fence_after(names[0])
                return replies
            case Pipe(commands):
                with self._errors():
                    pipe = self.client.pipeline(transaction=False)
                    for command in commands:
                        pipe.execute_command(*command)
                    return pipe.execute()
            case Scan(pattern):
                with self._errors():
                    return list(self.client.scan_iter(pattern, count=1000))

    def _revoke_all(self, keys: list[str], args: list[Any]) -> Any:
        if self._tracked is None:
            reply = self._run(REVOKE, keys, args)
            self._fence_after("")
            return reply
        reply = self._run(REVOKE, keys, args, forget=(self._key(""),))
        tracked = self._tracked
        assert isinstance(tracked, TrackingConnection)  # one server's
        with tracked.lock:
            for name in reply[1]:
                tracked.cache.drop(name.decode())
        return reply

    def _kill_pipelined(self, keys: list[str]) -> list[Any]:
        """A Cluster's KILL calls for ``keys`` in one pipeline (each node's in one batch)."""
        client: Any = self.client
        with self._errors():
            client.script_load(KILL.source)  # every primary knows it before the batch
            pipe = client.pipeline(transaction=False)
            for key in keys:
                pipe.execute_command("EVALSHA", KILL.sha, 2, self._key(key), self._note_key(key))
            replies = [reply[0] for reply in pipe.execute()]
            if self.fence:  # one PING per node written to
                nodes = {client.get_node_from_key(self._key(key)).name: key for key in keys}
                for key in nodes.values():
                    self._fence_after(self._key(key))
        return replies

    def load(self, key: str) -> Record | None:
        """Fetch the whole hash in one round trip (with the cache on: none, when it holds it)."""
        if self._tracked is None:
            return _record(self._call("HGETALL", self._key(key)))
        try:
            return self._tracked.load(self._key(key))
        except self._tracked_errors as exc:
            raise self._unavailable(exc) from exc

    def records(self, owner: str | None = None) -> Iterator[tuple[str, Record]]:
        """Yield live records: an owner's from their set (pruning dead members), or all by SCAN."""
        if owner is not None:
            yield from drive(self._owner_records_steps(owner), self._perform)
            return
        keys = self.references()
        while batch := [key for _, key in zip(range(500), keys, strict=False)]:
            for key, record in drive(self._fetch_steps(batch), self._perform):
                if record is not None:
                    yield key, record

    def references(self, start: str = "") -> Iterator[str]:
        """The keys of live records that begin with ``start``, by SCAN (no record is read)."""
        return iter(drive(self._references_steps(start), self._perform))

    def count(self) -> tuple[int, int]:
        """How many live records there are, and how many distinct owners they have."""
        return drive(self._count_steps(), self._perform)

    def save(self, key: str, change: Change, *, create: bool) -> SaveResult:
        """Apply ``change`` with one script call (a Cluster's move and owned create: two)."""
        steps = self._save_steps(key, change, create)
        if self._tracked is None:
            return drive(steps, self._perform)
        # With the cache on, this process gets no notice of its own writes: the cached
        # record is the one it had with the change applied, when the server applied it
        # to that record (a notice of any write before it would have come first and
        # dropped it); a move's new record is read back, and its old one forgotten.
        name = self._key(key)
        gone = () if change.replaces is None else (self._key(change.replaces),)

        def derive(reply: Any, cached: Record | None) -> Record | None:
            if isinstance(reply, RespError) or reply[0] != SaveResult.SAVED:
                return None
            if not create and cached is None:
                return None
            try:
                return apply_change(None if create else cached, change)
            except (Conflict, SessionTooLarge):
                return None

        def perform(op: RedisOp) -> Any:
            if isinstance(op, Script) and op.script is TAKE:  # a Cluster's move ends the old
                return self._run(op.script, op.keys, op.args, forget=gone)
            if isinstance(op, Script) and (op.script is SAVE or op.script is CREATE):
                how = derive if change.replaces is None else None
                fence = not create or change.replaces is not None  # a new key: nobody tracks it
                return self._run(
                    op.script, op.keys, op.args, refresh=name, forget=gone, derive=how, fence=fence
                )
            return self._perform(op)

        return drive(steps, perform)

    def touch(self, key: str, touched_at: float, expires_at: float) -> bool:
        """Move the record's times with one script call."""
        op = self._touch_op(key, touched_at, expires_at)
        script, keys, args = op.script, op.keys, op.args
        if self._tracked is None:
            touched = bool(self._run(script, keys, args))
            self._fence_after(keys[0])
            return touched

        def derive(reply: Any, cached: Record | None) -> Record | None:
            if reply != 1 or cached is None:
                return None
            return replace(cached, touched_at=touched_at, expires_at=expires_at)

        return bool(self._run(script, keys, args, refresh=self._key(key), derive=derive))

    def delete(self, key: str) -> None:
        """Delete the hash (on a Cluster, and note that it ended: see :data:`_KILL`)."""
        if self._cluster:
            names = self._record_and_note(key)
            self._run(KILL, names, [], forget=(names[0],))
            self._fence_after(names[0])
        elif self._tracked is None:
            self._call("DEL", self._key(key))
            self._fence_after("")
        else:
            self._tracked_call(("DEL", self._key(key)), forget=(self._key(key),))

    def revoke(
        self, keys: Collection[str] = (), *, owner: str | None = None, keep: str | None = None
    ) -> int:
        """End records, following moves: one script call per 500 (on a Cluster, per record)."""
        return drive(self._revoke_steps(keys, owner, keep), self._perform)

    def acquire(self, key: str, token: str, lease: float) -> bool:
        """Set the lock key with a lease unless another token holds it: one script call."""
        return bool(self._run(ACQUIRE, [self._lock_key(key)], [token, _ms(lease)]))

    def release(self, key: str, token: str) -> None:
        """Delete the lock only if ``token`` still holds it (a script, so atomic)."""
        self._run(RELEASE, [self._lock_key(key)], [token])

    def purge_expired(self) -> int:
        """Nothing to do: Redis expires keys itself. Returns 0."""
        return 0

    def config_problems(self) -> list[str]:
        """What in the server's configuration can lose sessions (read at start-up).

        Any ``maxmemory-policy`` but ``noeviction`` lets a full server delete
        session keys (they all carry an expiry, so the ``volatile-*`` policies
        take them too), silently, after their writes were acknowledged. A server
        that hides ``CONFIG`` (some managed services) or cannot be reached yet
        reports nothing here.
        """
        client: Any = self.client
        nodes: list[Any] = client.get_primaries() if self._cluster else [None]
        problems = []
        for node in nodes:
            try:
                if node is None:
                    reply = client.config_get("maxmemory-policy")
                else:
                    reply = client.config_get("maxmemory-policy", target_nodes=node)
            except self._redis_error as exc:
                _log.info("could not read maxmemory-policy from %r: %s", self, exc)
                continue
            problem = self._policy_problem(reply, f" on {node.name}" if node is not None else "")
            if problem is not None:
                problems.append(problem)
        return problems

    def close(self) -> None:
        """Close the client's connections and those of every thread."""
        for conn in self._connections.drain():
            conn.disconnect()
        if self._tracked is not None:
            self._tracked.close()
        self.client.close()


# Defined in private modules; documented and imported from here.
for _public in (AsyncRedisStore,):
    _public.__module__ = __name__
