"""One pipelined Redis/Valkey connection per event loop, for the async store's hot path.

Every coroutine of a worker sends its command on the same connection and waits
for its own reply: the protocol answers in order, so each reply goes to the
oldest waiting future. hiredis (redis-py's own C parser) reads the replies.
Measured here on loopback, an HGETALL of a 2 KB session costs about 16 µs this
way against 70 to 110 µs through ``redis.asyncio``'s client, whose per-command
pool and bookkeeping work is what the async store's read path would otherwise
pay on every request; the client still serves everything else (pipelines,
SCAN, a Cluster, TLS).

A timeout closes the connection, failing every command on it: a reply that came
late would otherwise be handed to the next command. The next command connects
again, and a broken connection is retried once, as the sync store does.
"""

from __future__ import annotations

import asyncio
import collections
import os
from collections.abc import Mapping
from typing import Any

import hiredis

__all__ = ["RespConnection", "RespError", "address"]


class RespError(Exception):
    """An error reply from the server (``NOSCRIPT``, ``WRONGTYPE``, ...)."""


class _Closed(ConnectionError):
    """The connection closed, or timed out, before the reply came."""


def address(found: Mapping[str, Any]) -> dict[str, Any]:
    """Where to connect and as whom (host, port, path, username, password, db), from
    redis-py's parsed URL or a client's connection settings, with Redis's defaults."""
    return {
        "host": found.get("host") or "127.0.0.1",
        "port": int(found.get("port") or 6379),
        "path": found.get("path"),
        "username": found.get("username"),
        "password": found.get("password"),
        "db": int(found.get("db") or 0),
    }


def encode(args: tuple[Any, ...]) -> bytes:
    """A command in the protocol's framing: an array of bulk strings.

    hiredis frames it in one call (3 µs for a save's 22 arguments, where the loop
    below takes 12); what it refuses (a bool, say) gets the loop's own answer.
    """
    try:
        packed: bytes = hiredis.pack_command(args)
    except TypeError:
        pass
    else:
        return packed
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, bytes):
            data = arg
        elif isinstance(arg, str):
            data = arg.encode("utf-8")
        elif isinstance(arg, int | float) and not isinstance(arg, bool):
            data = repr(arg).encode("ascii")
        else:
            raise TypeError(f"cannot send {type(arg).__name__} to Redis: {arg!r}")
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.reader = hiredis.Reader(replyError=RespError)
        self.waiting: collections.deque[asyncio.Future[Any]] = collections.deque()
        self.transport: asyncio.Transport | None = None
        self.lost: BaseException | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        reader = self.reader
        reader.feed(data)
        while (reply := reader.gets()) is not False:
            if not self.waiting:  # a reply nobody asked for: the stream is out of step
                self.close(_Closed("the server sent a reply nobody asked for"))
                return
            future = self.waiting.popleft()
            if future.done():
                continue  # its caller stopped waiting (cancelled): drop the reply
            if isinstance(reply, RespError):
                future.set_exception(reply)
            else:
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.close(exc or _Closed("the server closed the connection"))

    def close(self, error: BaseException) -> None:
        if self.lost is None:
            self.lost = error
        while self.waiting:
            future = self.waiting.popleft()
            if not future.done():
                future.set_exception(_Closed(str(error)))
        if self.transport is not None:
            self.transport.close()


def _expire(future: asyncio.Future[Any], timeout: float) -> None:
    """Fail a reply's future that waited ``timeout`` seconds (a late reply is dropped)."""
    if not future.done():
        future.set_exception(TimeoutError(f"no reply within {timeout}s"))


class RespConnection:
    """A lazily made, pipelined connection to one server, for one event loop.

    ``host``/``port`` or ``path`` (a Unix socket); ``password``, ``username``
    and ``db`` as in the URL; ``timeout`` bounds each reply and
    ``connect_timeout`` each connection attempt.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 6379,
        path: str | None = None,
        username: str | None = None,
        password: str | None = None,
        db: int = 0,
        timeout: float = 0.5,
        connect_timeout: float = 0.5,
    ) -> None:
        self.host, self.port, self.path = host, port, path
        self.username, self.password, self.db = username, password, db
        self.timeout, self.connect_timeout = timeout, connect_timeout
        self._protocol: _Protocol | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pid = 0
        self._connecting: asyncio.Future[_Protocol] | None = None

    async def _connect(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        while (pending := self._connecting) is not None and (
            self._loop is loop and self._pid == os.getpid()
        ):
            try:  # another coroutine is connecting: wait for its connection
                return await asyncio.shield(pending)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise  # this caller was cancelled
                # The connecting coroutine was cancelled, not this one: look again (a
                # caller woken with this one may have started connecting already).
        self._loop, self._pid = loop, os.getpid()
        connecting: asyncio.Future[_Protocol] = loop.create_future()
        self._connecting = connecting
        try:
            if self.path is not None:
                making = loop.create_unix_connection(_Protocol, self.path)
            else:
                making = loop.create_connection(_Protocol, self.host, self.port)
            _, protocol = await asyncio.wait_for(making, self.connect_timeout)
            hello: list[tuple[Any, ...]] = []
            if self.password is not None:
                auth = ("AUTH", self.username, self.password) if self.username else None
                hello.append(auth or ("AUTH", self.password))
            if self.db:
                hello.append(("SELECT", self.db))
            try:
                for command in hello:
                    await self._send(protocol, command)
            except BaseException as exc:
                protocol.close(exc)  # not left open behind a failed hello
                raise
        except BaseException as exc:
            if isinstance(exc, Exception):
                connecting.set_exception(exc)
                connecting.exception()  # retrieved: no "never retrieved" warning
            else:  # cancelled: whoever waits on this connection tries again
                connecting.cancel()
            if self._connecting is connecting:
                self._connecting = None
            raise
        self._protocol = protocol
        connecting.set_result(protocol)
        if self._connecting is connecting:
            self._connecting = None
        return protocol

    async def _send(self, protocol: _Protocol, args: tuple[Any, ...]) -> Any:
        if protocol.lost is not None or protocol.transport is None:
            raise _Closed(str(protocol.lost))
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        protocol.waiting.append(future)
        protocol.transport.write(encode(args))
        # A timer on the reply's own future, not asyncio.wait_for: on Python 3.11 that
        # chains a second future to it, one more turn of the loop on every reply.
        timer = loop.call_later(self.timeout, _expire, future, self.timeout)
        try:
            return await future
        except TimeoutError as exc:  # _expire's: every later reply is out of step
            protocol.close(exc)
            raise
        finally:
            timer.cancel()

    def _current(self) -> _Protocol | None:
        protocol = self._protocol
        if (
            protocol is None
            or protocol.lost is not None
            or self._loop is not asyncio.get_running_loop()
            or self._pid != os.getpid()
        ):
            return None
        return protocol

    async def call(self, *args: Any) -> Any:
        """Send one command and return its reply; a broken connection is retried once."""
        protocol = self._current() or await self._connect()
        try:
            return await self._send(protocol, args)
        except _Closed:
            if protocol.lost is not None and isinstance(protocol.lost, TimeoutError):
                raise  # a frozen server: no second wait
        protocol = await self._connect()  # the server restarted, say: one more try
        return await self._send(protocol, args)

    def close(self) -> None:
        """Close the connection (commands waiting on it fail)."""
        protocol, self._protocol = self._protocol, None
        if protocol is not None and self._loop is not None and not self._loop.is_closed():
            protocol.close(_Closed("closed by the store"))
