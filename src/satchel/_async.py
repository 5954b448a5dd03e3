"""Waiting on whichever event loop runs the app: asyncio, or another through AnyIO (trio).

The async lifecycle and the threaded stores pause and hand blocking calls to
worker threads through these two functions, so an ASGI app served on trio (as
Starlette's own suite runs under both) works as one on asyncio does. AnyIO,
which Starlette is built on, is imported only off asyncio.
"""

from __future__ import annotations

import asyncio
import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["on_asyncio", "running", "sleep", "to_thread"]

T = TypeVar("T")


def on_asyncio() -> bool:
    """Whether the running event loop is asyncio's."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def running() -> bool:
    """Whether this thread runs an event loop (asyncio's or trio's) now: blocking is banned."""
    if on_asyncio():
        return True
    trio = sys.modules.get("trio")
    if trio is None:
        return False
    try:
        trio.lowlevel.current_task()
    except RuntimeError:
        return False
    return True


async def sleep(seconds: float) -> None:
    """Pause this task for ``seconds`` without holding up the loop."""
    if on_asyncio():
        await asyncio.sleep(seconds)
        return
    import anyio

    await anyio.sleep(seconds)


async def to_thread(function: Callable[..., T], *args: Any) -> T:
    """``function(*args)`` on a worker thread (the loop's default executor's, on asyncio),
    awaited.

    A call runs to its end on its thread whatever its caller does, so a store
    call is never left half-made behind a request that gave up (on trio the
    cancelled caller also waits for it; on asyncio it stops waiting at once).
    """
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        import anyio.to_thread

        return await anyio.to_thread.run_sync(functools.partial(function, *args))
    return await loop.run_in_executor(None, function, *args)
