"""A worker's cache of Redis/Valkey session records, kept correct by the server.

With the cache on, a :class:`~satchel.stores.redis.RedisStore` sends its
single commands over one connection per process that has asked the server to
report changes to the session records it read (``CLIENT TRACKING ON OPTIN
NOLOOP``, protocol 3). The server remembers which records this connection
read, and when any other connection changes one of them it sends a notice on
this same socket, in order with the replies. So:

* a reply is read only after every notice the server queued before it: any
  command on this connection (a load, a save, a strict-mode lock) is a
  barrier, after which the cache reflects every write the server finished
  before that command ran;
* before a record is served from memory, the notices already in the socket are
  read without waiting (one ``recv``), so a write another worker finished
  before this request began is normally seen;
* this process's own writes send it no notice (``NOLOOP``), and they end the
  server's tracking of the record; so the store's scripts read the record last,
  after writing it, which tracks it again in the same atomic step, and the
  cache applies the write to the record it held (exact, since a notice of any
  earlier write would have come first and dropped it); a regenerate() reads its
  new record back in the same round trip;
* on a Cluster, :class:`ClusterTracking` keeps one such connection per primary,
  picked by the record's slot;
* when the connection breaks or times out the whole cache is emptied, and a
  new connection starts with an empty cache: no record outlives the channel
  that kept it correct; and a connection that has had no reply for
  :data:`TRUST` seconds vouches for nothing until it has one (the next read
  goes to the server), so a failure that closes nothing (a partition, a frozen
  server) cannot keep stale records served for longer than that.

Notices and writes between processes: the server writes its notice to other
workers in the same turn of its loop as the writer's reply, not before it, so
the writer could answer its client, and that client reach another worker,
before the notice is out. Every write of this connection is therefore followed
by a PING, sent only once the write's reply has come (one more round trip per
write, none per read): the PING is read in a later turn, after the write's turn
wrote out all its notices, so when the writer's request ends, every other
worker's notice is in its socket on the same machine, and the drain before its
next hit reads it. Across machines the notice can still be in flight, delayed
by the network; that, and the extra round trip per write, is why the cache is
off unless asked for (``?cache=`` in the store URL): docs/performance.md gives
the figures.
"""

from __future__ import annotations

import collections
import secrets
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

import hiredis

from .._sizes import parse_size
from . import _connections
from ._resp import RespError, encode
from .base import Record

__all__ = ["CacheStats", "ClusterTracking", "RecordCache", "TrackingConnection", "parse_size"]

#: Bytes a cached record costs beyond its fields' names and values: the Record,
#: its dicts and the cache's own entry (measured with tracemalloc: bench/run.py).
ENTRY_OVERHEAD = 560
#: ... and per field.
FIELD_OVERHEAD = 150
#: A drain that reads more than this many bytes of notices means the worker fell
#: behind: the server may hold more in its buffers, so the read goes to the server.
LAG_LIMIT = 64 * 1024
#: How long after its last reply the connection vouches for the cache. A silent
#: failure (a network partition, a server that froze) sends no notice and closes
#: nothing; past this, the next read goes to the server, which checks the channel.
TRUST = 1.0
#: How long a connection's mark (see :meth:`TrackingConnection._check_mark`) outlives
#: its last check, in milliseconds: a worker gone quiet leaves nothing behind.
MARK_LIFETIME_MS = 60_000
#: Sent before a read whose keys the server is to track (the connection is OPTIN).
_CACHING = encode(("CLIENT", "CACHING", "YES"))
_PING = encode(("PING",))


def entry_size(record: Record) -> int:
    """What :class:`RecordCache` counts a record as: its bytes plus a measured overhead."""
    fields = record.fields
    return (
        ENTRY_OVERHEAD
        + FIELD_OVERHEAD * len(fields)
        + sum(len(name) + len(value) for name, value in fields.items())
    )


class CacheStats:
    """What a worker's record cache did: counters since it was made, and its size now."""

    __slots__ = ("bytes", "entries", "evictions", "flushes", "hits", "invalidations", "misses")

    def __init__(self) -> None:
        self.hits = self.misses = self.invalidations = self.evictions = self.flushes = 0
        self.entries = self.bytes = 0

    def as_dict(self) -> dict[str, int]:
        """The counters by name."""
        return {name: getattr(self, name) for name in self.__slots__}


class RecordCache:
    """Records by Redis key, the least recently used dropped beyond ``max_bytes``.

    Not thread-safe on its own: :class:`TrackingConnection` calls it under its lock.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._entries: collections.OrderedDict[str, tuple[Record, int]] = collections.OrderedDict()
        self.stats = CacheStats()

    def get(self, name: str) -> Record | None:
        found = self._entries.get(name)
        if found is None:
            return None
        self._entries.move_to_end(name)
        return found[0]

    def put(self, name: str, record: Record) -> None:
        size = entry_size(record)
        if size > self.max_bytes:
            self.drop(name)
            return
        stats = self.stats
        old = self._entries.pop(name, None)
        if old is not None:
            stats.bytes -= old[1]
        self._entries[name] = (record, size)
        stats.bytes += size
        while stats.bytes > self.max_bytes:
            _, (_, freed) = self._entries.popitem(last=False)
            stats.bytes -= freed
            stats.evictions += 1
        stats.entries = len(self._entries)

    def drop(self, name: str) -> None:
        old = self._entries.pop(name, None)
        if old is not None:
            self.stats.bytes -= old[1]
            self.stats.entries = len(self._entries)

    def clear(self) -> None:
        if self._entries:
            self.stats.flushes += 1
        self._entries.clear()
        self.stats.entries = self.stats.bytes = 0


def _timeval(seconds: float) -> bytes:
    whole = int(seconds)
    return struct.pack("ll", whole, int((seconds - whole) * 1_000_000))


class _Broken(ConnectionError):
    """The connection closed, timed out or fell out of step: it is gone, and the cache with it."""


class _TimedOut(_Broken):
    """No reply came within the timeout: the server may be frozen, so no second try."""


class TrackingConnection:
    """One socket per process: this store's commands, and the server's notices, in order.

    Calls from several threads take turns (a lock).
    """

    def __init__(
        self,
        *,
        max_bytes: int,
        host: str = "127.0.0.1",
        port: int = 6379,
        path: str | None = None,
        username: str | None = None,
        password: str | None = None,
        db: int = 0,
        timeout: float | None = 0.5,
        connect_timeout: float = 0.5,
        parse: Callable[[Any], Record | None],
        mark: str | None = None,
    ) -> None:
        self.host, self.port, self.path = host, port, path
        #: Where this connection's mark lives (a key name prefix; one server only: see
        #: :meth:`_check_mark`); ``None``: every reply renews the trust instead.
        self.mark_prefix = mark
        self._mark: str | None = None
        self._mark_n = 0
        self.username, self.password, self.db = username, password, db
        self.timeout, self.connect_timeout = timeout, connect_timeout
        #: Turns an HGETALL reply into a Record (None: missing, expired or unreadable).
        self.parse = parse
        self.cache = RecordCache(max_bytes)
        self.lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._reader: Any = None
        self._generation = -1
        self._trusted_until = 0.0

    # -- the socket ---------------------------------------------------------

    def _open(self) -> socket.socket:
        """Connect, switch to protocol 3 and turn tracking on; the cache starts empty."""
        self.cache.clear()
        if self.path is not None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self.connect_timeout)
            try:
                sock.connect(self.path)
            except BaseException:
                sock.close()
                raise
        else:
            sock = socket.create_connection((self.host, self.port), self.connect_timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # Blocking, with the kernel bounding each wait: a recv with MSG_DONTWAIT
        # then returns at once, where a Python-level timeout would wait first.
        sock.settimeout(None)
        if self.timeout:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _timeval(self.timeout))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, _timeval(self.timeout))
        self._sock, self._reader = sock, hiredis.Reader(replyError=RespError)
        self._generation = _connections._generation
        hello: list[Any] = ["HELLO", 3]
        if self.password is not None:
            hello += ["AUTH", self.username or "default", self.password]
        commands: list[tuple[Any, ...]] = [tuple(hello)]
        if self.db:
            commands.append(("SELECT", self.db))
        commands.append(("CLIENT", "TRACKING", "ON", "OPTIN", "NOLOOP"))
        if self.mark_prefix is not None:
            self._mark = self.mark_prefix + secrets.token_hex(8)  # this socket's own
            self._mark_n = 0
            commands.append(("SET", self._mark, 0, "PX", MARK_LIFETIME_MS))
        try:
            sock.sendall(b"".join(encode(command) for command in commands))
            for command in commands:
                reply = self._reply()
                if isinstance(reply, RespError):
                    raise _Broken(f"{command[0]} {command[1]} failed: {reply}")
        except BaseException:
            self.close()
            raise
        self._trusted_until = time.monotonic() + TRUST
        return sock

    def _socket(self) -> socket.socket:
        sock = self._sock
        if sock is None or self._generation != _connections._generation:
            if sock is not None:  # a forked child: the parent's socket is not ours to use
                self._sock = None
                self.cache.clear()
            sock = self._open()
        return sock

    def close(self) -> None:
        """Close the socket and forget every cached record."""
        sock, self._sock = self._sock, None
        self.cache.clear()
        if sock is not None and self._generation == _connections._generation:
            sock.close()

    def _notice(self, push: Any) -> None:
        if len(push) < 2 or push[0] != b"invalidate":
            return
        names = push[1]
        if names is None:  # FLUSHDB, FLUSHALL, or the server dropped what it tracked
            self.cache.clear()
            return
        for name in names:
            self.cache.drop(name.decode("utf-8", "surrogateescape"))
        self.cache.stats.invalidations += len(names)

    def _reply(self) -> Any:
        """The next reply, handling every notice before it."""
        reader, sock = self._reader, self._sock
        assert sock is not None
        while True:
            reply = reader.gets()
            if reply is False:
                try:
                    data = sock.recv(65536)
                except BlockingIOError:
                    raise _TimedOut(f"no reply within {self.timeout}s") from None
                if not data:
                    raise _Broken("the server closed the connection")
                reader.feed(data)
            elif isinstance(reply, hiredis.PushNotification):
                self._notice(reply)
            else:
                return reply

    def _drain(self) -> bool:
        """Handle the notices already received, without waiting; False if the
        channel cannot vouch for the cache (broken, or the worker fell behind)."""
        sock, reader = self._sock, self._reader
        if sock is None:
            return False
        read = 0
        while True:
            try:
                data = sock.recv(65536, socket.MSG_DONTWAIT)
            except BlockingIOError:
                break
            except OSError:
                self.close()
                return False
            if not data:
                self.close()
                return False
            read += len(data)
            reader.feed(data)
        while (push := reader.gets()) is not False:
            if not isinstance(push, hiredis.PushNotification):  # a reply nobody asked for
                self.close()
                return False
            self._notice(push)
        return read <= LAG_LIMIT

    # -- calls ---------------------------------------------------------------

    def _exchange(self, data: bytes, replies: int) -> list[Any]:
        """Send ``data`` and read ``replies`` replies, under the lock the caller holds.

        A broken connection is retried once on a new one; a timeout is not (a
        frozen server fails the call after ``timeout``).
        """
        for attempt in (1, 2):
            try:
                sock = self._socket()
                sock.sendall(data)
                answers = [self._reply() for _ in range(replies)]
                if self._mark is None:
                    self._trusted_until = time.monotonic() + TRUST
                return answers
            except (OSError, hiredis.ProtocolError) as exc:
                self.close()
                if attempt == 2 or isinstance(exc, _TimedOut | TimeoutError):
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _keep(self, name: str, reply: Any) -> Record | None:
        """Cache what a tracked read of ``name`` returned (or forget it: gone, or an error)."""
        record = None if isinstance(reply, RespError) else self.parse(reply)
        if record is None:
            self.cache.drop(name)
        else:
            self.cache.put(name, record)
        return record

    def call(
        self,
        args: tuple[Any, ...],
        *,
        refresh: str | None = None,
        derive: Callable[[Any, Record | None], Record | None] | None = None,
        forget: tuple[str, ...] = (),
        fence: bool = True,
        route: str | None = None,
    ) -> Any:
        """Send one command and return its reply (an error reply is returned as a
        :class:`~satchel.stores._resp.RespError`, not raised).

        ``refresh`` names a record the command writes, and the cache is to hold
        it as the write left it. With ``derive``, the command is a script that
        reads the record last, so the server (asked by ``CLIENT CACHING YES``
        just before it) goes on tracking it, and the cache holds
        ``derive(reply, cached)``: the cached record with the change applied.
        That is exact: a notice of any write the server ran before the script
        comes before its reply and drops the cached record first (``derive`` then
        returns ``None``, and the record is forgotten). Without ``derive`` the
        record is read back (and tracked) in the same round trip. ``forget``
        names records it ends, dropped from the cache before any other thread's
        command. A write (``refresh`` or ``forget``) is followed by a fence (see
        the module's docstring) unless ``fence`` is false: a record just created
        under a new random key is tracked by no other worker. ``route`` is for
        :class:`ClusterTracking`'s sake: one server needs no routing.
        """
        data = encode(args)
        with self.lock:
            if refresh is None:
                reply = self._exchange(data, 1)[0]
            elif derive is not None:
                reply = self._exchange(_CACHING + data, 2)[1]
                record = derive(reply, self.peek(refresh))
                if record is not None:
                    self.cache.put(refresh, record)
                else:
                    self.cache.drop(refresh)
            else:
                replies = self._exchange(data + _CACHING + encode(("HGETALL", refresh)), 3)
                reply = replies[0]
                self._keep(refresh, replies[2])
            for name in forget:
                self.cache.drop(name)
            if fence and (refresh is not None or forget):
                self._fence()
            return reply

    def _fence(self) -> None:
        """Wait until the server has sent every other connection its notice of the write
        just answered: a PING sent only now is read in a later turn of the server's
        loop than the write, after that turn wrote all its replies and notices out."""
        self._exchange(_PING, 1)

    def stats(self) -> CacheStats:
        """The cache's counters."""
        return self.cache.stats

    def peek(self, name: str) -> Record | None:
        """The cached record under ``name`` as it is (no expiry check, no count)."""
        found = self.cache._entries.get(name)
        return None if found is None else found[0]

    def _check_mark(self) -> None:
        """Renew the trust, after checking that the database is still the one the cache
        holds records of: empty the cache if it is not.

        Some operator actions change what a database holds and notify nobody
        (``SWAPDB``, a backup restored into another database and swapped in). Each
        connection keeps a mark of its own in the database, a counter it sets to the
        next number and reads back in one command (``SET ... GET``): any answer but
        the number it last wrote means the data under the connection changed. A
        busy worker pays one round trip a second for it.
        """
        assert self._mark is not None
        expected = self._mark_n
        self._mark_n += 1
        command = ("SET", self._mark, self._mark_n, "PX", MARK_LIFETIME_MS, "GET")
        reply = self._exchange(encode(command), 1)[0]
        if reply != str(expected).encode():
            self.cache.clear()
        self._trusted_until = time.monotonic() + TRUST

    def load(self, name: str) -> Record | None:
        """The record under ``name``: from memory when the channel vouches for it and it
        has not expired, else read from the server (tracked) and cached."""
        with self.lock:
            live = self._sock is not None and self._generation == _connections._generation
            if live and self._mark is not None and time.monotonic() >= self._trusted_until:
                self._check_mark()
            current = live and time.monotonic() < self._trusted_until
            record = self.cache.get(name) if current and self._drain() else None
            if record is not None:
                if record.expires_at > time.time():
                    self.cache.stats.hits += 1
                    return record
                self.cache.drop(name)
            self.cache.stats.misses += 1
            replies = self._exchange(_CACHING + encode(("HGETALL", name)), 2)
            if isinstance(replies[1], RespError):
                raise replies[1]
            return self._keep(name, replies[1])


class ClusterTracking:
    """A :class:`TrackingConnection` per Cluster primary, picked by the record's slot.

    Each primary tracks what this process read from it and sends its notices on
    that node's connection; each connection keeps its own share of the bound.
    A redirect (``MOVED``, ``ASK``), a node that does not answer, or any other
    sign that the layout changed empties every node's cache and sends the call
    through the Cluster client instead, which follows the new layout; keys that
    a resharding moves away are deleted from their old node, which notifies.
    """

    def __init__(self, client: Any, *, max_bytes: int, **settings: Any) -> None:
        self.client = client
        self.max_bytes = max_bytes
        self._settings = settings
        self._nodes: dict[str, TrackingConnection] = {}
        self._lock = threading.Lock()

    def _for(self, name: str) -> TrackingConnection:
        node = self.client.nodes_manager.get_node_from_slot(self.client.keyslot(name))
        found = self._nodes.get(node.name)
        if found is None:
            with self._lock:
                found = self._nodes.get(node.name)
                if found is None:
                    shares = max(len(self.client.get_primaries()), 1)
                    found = TrackingConnection(
                        max_bytes=self.max_bytes // shares,
                        host=node.host,
                        port=int(node.port),
                        **self._settings,
                    )
                    self._nodes[node.name] = found
        return found

    def _relayout(self) -> None:
        """The layout changed (or a node failed): forget everything every node vouched for."""
        with self._lock:
            nodes = list(self._nodes.values())
        for node in nodes:
            with node.lock:
                node.close()

    def _forget(self, names: tuple[str, ...]) -> None:
        with self._lock:
            nodes = list(self._nodes.values())
        for node in nodes:
            with node.lock:
                for name in names:
                    node.cache.drop(name)

    def _node_for(self, name: str) -> TrackingConnection | None:
        """The connection to ``name``'s node; None when the client cannot say (no node
        covers the slot while the cluster fails over, say): the call goes through it."""
        try:
            return self._for(name)
        except Exception:  # the client's layout is in flux: let the client answer
            return None

    def load(self, name: str) -> Record | None:
        """As :meth:`TrackingConnection.load`, on the node that holds ``name``."""
        node = self._node_for(name)
        try:
            if node is not None:
                return node.load(name)
        except RespError as exc:
            if not _redirected(exc):
                raise
        except (OSError, hiredis.ProtocolError):
            pass
        self._relayout()
        parse: Callable[[Any], Record | None] = self._settings["parse"]
        return parse(self.client.execute_command("HGETALL", name))

    def call(
        self,
        args: tuple[Any, ...],
        *,
        route: str | None = None,
        refresh: str | None = None,
        derive: Callable[[Any, Record | None], Record | None] | None = None,
        forget: tuple[str, ...] = (),
        fence: bool = True,
    ) -> Any:
        """As :meth:`TrackingConnection.call`, on the node of ``route`` (else of
        ``refresh``, else of the first name in ``forget``)."""
        target = route or refresh or (forget[0] if forget else None)
        if target is None:
            raise ValueError("a Cluster call through the record cache needs a key to route by")
        if forget:
            self._forget(forget)  # a name may be cached by another node's connection
        node = self._node_for(target)
        try:
            if node is not None:
                reply = node.call(args, refresh=refresh, derive=derive, forget=forget, fence=fence)
                if not (isinstance(reply, RespError) and _redirected(reply)):
                    return reply
        except (OSError, hiredis.ProtocolError):
            pass
        # Redirected, or the node did not answer: the client follows the layout (and
        # retries a fail-over); nothing this call wrote is cached.
        self._relayout()
        return self.client.execute_command(*args)

    def stats(self) -> CacheStats:
        """Every node's counters, summed."""
        total = CacheStats()
        with self._lock:
            nodes = list(self._nodes.values())
        for node in nodes:
            for name in CacheStats.__slots__:
                setattr(total, name, getattr(total, name) + getattr(node.cache.stats, name))
        return total

    def close(self) -> None:
        """Close every node's connection."""
        self._relayout()


def _redirected(error: RespError) -> bool:
    """Whether an error reply says the key lives elsewhere now (or the cluster is moving)."""
    return str(error).split(" ", 1)[0] in ("MOVED", "ASK", "TRYAGAIN", "CLUSTERDOWN")
