"""Worker threads for a sync store's calls from an asyncio loop, with one wake-up each way.

A call handed to a thread costs two wake-ups: the thread's, then the loop's when
the answer is back. ``loop.run_in_executor`` adds to them a
``concurrent.futures.Future`` (a condition variable and its lock), a work item,
a semaphore and the chaining of two futures through callbacks; on this project's
2-core machines that doubled a hop, to 85-100 µs from 40-50. Here a call is a
tuple on a queue, and its answer one ``call_soon_threadsafe`` that settles the
loop's own future. A call whose caller stopped waiting (a cancelled task) still
runs to its end on its thread, so a save is never left half-made.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["Workers"]

T = TypeVar("T")

_Job = tuple[asyncio.AbstractEventLoop, "asyncio.Future[Any]", Callable[..., Any], tuple[Any, ...]]


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.cancelled():
        return
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)


class Workers:
    """Up to ``most`` daemon threads named ``name``, made as calls need them.

    They belong to the process that made them: a forked child needs its own
    ``Workers`` (``ThreadedStore`` makes one per process)."""

    def __init__(self, most: int, name: str) -> None:
        self.most = most
        self.name = name
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._idle = threading.Semaphore(0)
        self._threads: list[threading.Thread] = []
        self._guard = threading.Lock()
        #: Calls handed over and not yet ended, and who waits for there to be none.
        self._running = 0
        self._waiting: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []

    def call(self, function: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """``function(*args)`` on a worker; a future of the running loop that it settles."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        with self._guard:
            self._running += 1
        if not self._idle.acquire(blocking=False) and len(self._threads) < self.most:
            self._spawn()
        self._jobs.put((loop, future, function, args))
        return future

    async def idle(self) -> None:
        """Return once no call handed to these threads is running or queued (a store's
        connections closed under a running statement would crash the process)."""
        loop = asyncio.get_running_loop()
        with self._guard:
            if self._running == 0:
                return
            future: asyncio.Future[None] = loop.create_future()
            self._waiting.append((loop, future))
        await future

    def _ended(self) -> None:
        """One call ended: wake whoever waits for none to run, if it was the last."""
        with self._guard:
            self._running -= 1
            waiting, self._waiting = (
                (self._waiting, []) if self._running == 0 else ([], self._waiting)
            )
        for loop, future in waiting:
            with contextlib.suppress(RuntimeError):  # a loop closed meanwhile
                loop.call_soon_threadsafe(_settle, future, None, None)

    def _spawn(self) -> None:
        with self._guard:
            if len(self._threads) >= self.most:
                return
            thread = threading.Thread(
                target=self._work,
                args=(self._jobs, self._idle),
                name=f"{self.name}_{len(self._threads)}",
                daemon=True,
            )
            self._threads.append(thread)
            thread.start()

    def _work(self, jobs: queue.SimpleQueue[_Job | None], idle: threading.Semaphore) -> None:
        while True:
            job = jobs.get()
            if job is None:
                return
            loop, future, function, args = job
            result, error = None, None
            try:
                result = function(*args)
            except BaseException as exc:  # the caller's to see, as the call raised it
                error = exc
            del job, function, args
            with contextlib.suppress(RuntimeError):  # a loop closed meanwhile: nobody waits
                loop.call_soon_threadsafe(_settle, future, result, error)
            del loop, future, result, error
            self._ended()
            idle.release()

    def shutdown(self) -> None:
        """Let every thread end once the calls queued before now are done; later calls
        go to new threads."""
        with self._guard:
            jobs, threads = self._jobs, self._threads
            self._jobs, self._idle, self._threads = queue.SimpleQueue(), threading.Semaphore(0), []
        for _ in threads:
            jobs.put(None)
