"""The worker threads a ThreadedStore hands its calls to (satchel.stores._threads)."""

from __future__ import annotations

import asyncio
import threading

import pytest

from satchel.stores._threads import Workers


def test_calls_run_at_once_up_to_the_limit_and_no_further() -> None:
    """Four calls that wait for each other finish on four threads; a limit of two runs
    two at a time, and the others wait their turn (none is lost)."""
    together = threading.Barrier(4, timeout=10)
    names: set[str] = set()

    def meet() -> str:
        together.wait()  # only returns once four calls run at the same moment
        names.add(threading.current_thread().name)
        return "met"

    async def four(workers: Workers, call: object) -> list[object]:
        return list(await asyncio.gather(*(workers.call(call) for _ in range(4))))  # type: ignore[arg-type]

    assert asyncio.run(four(Workers(4, "t"), meet)) == ["met"] * 4
    assert len(names) == 4

    running = 0
    most = 0
    guard = threading.Lock()
    release = threading.Event()

    def hold() -> int:
        nonlocal running, most
        with guard:
            running += 1
            most = max(most, running)
        release.wait(10)
        with guard:
            running -= 1
        return 1

    async def limited() -> list[object]:
        workers = Workers(2, "t")
        calls = [workers.call(hold) for _ in range(4)]
        while running < 2:  # both threads have taken a call
            await asyncio.sleep(0.001)
        await asyncio.sleep(0.05)
        assert running == 2  # the other two are queued, not run
        release.set()
        return list(await asyncio.gather(*calls))

    assert asyncio.run(limited()) == [1] * 4
    assert most == 2


def test_an_error_reaches_the_caller_as_raised() -> None:
    def fail() -> None:
        raise KeyError("gone")

    async def check() -> None:
        with pytest.raises(KeyError, match="gone"):
            await Workers(2, "t").call(fail)

    asyncio.run(check())


def test_a_cancelled_caller_leaves_its_call_to_finish() -> None:
    """A request that stops waiting does not cut a store call short."""
    started, finish, finished = threading.Event(), threading.Event(), threading.Event()

    def save() -> None:
        started.set()
        finish.wait(10)
        finished.set()

    async def check() -> None:
        workers = Workers(2, "t")
        task = asyncio.ensure_future(workers.call(save))
        while not started.is_set():
            await asyncio.sleep(0.001)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        finish.set()
        assert await asyncio.get_running_loop().run_in_executor(None, finished.wait, 10)

    asyncio.run(check())


def test_calls_after_a_shutdown_get_new_threads() -> None:
    async def check() -> None:
        workers = Workers(2, "t")
        first = await workers.call(lambda: threading.current_thread())
        workers.shutdown()
        second = await workers.call(lambda: threading.current_thread())
        assert second is not first and second.is_alive()
        first.join(5)
        assert not first.is_alive()  # the first thread ended at the shutdown

    asyncio.run(check())


def test_a_store_is_closed_only_once_no_call_of_it_runs() -> None:
    """A call still running on a thread (a cancelled request's, a checkpoint) ends before
    the store's close runs: closing an SQLite connection under a running statement
    crashed the process."""
    from satchel.stores import MemoryStore
    from satchel.stores.aio import ThreadedStore

    order: list[str] = []
    started, finish = threading.Event(), threading.Event()

    class Slow(MemoryStore):
        def load(self, key: str) -> None:
            started.set()
            finish.wait(10)
            order.append("load ended")

        def close(self) -> None:
            order.append("closed")

    async def check() -> None:
        store = ThreadedStore(Slow())
        loading = asyncio.ensure_future(store.load("k"))
        while not started.is_set():
            await asyncio.sleep(0.001)
        loading.cancel()  # the request gave up; its call runs on
        closing = asyncio.ensure_future(store.close())
        for _ in range(20):
            await asyncio.sleep(0.005)
        assert order == [] and not closing.done()  # close waits for the load
        finish.set()
        await closing

    asyncio.run(check())
    assert order == ["load ended", "closed"]
