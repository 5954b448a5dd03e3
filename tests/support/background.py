"""Slow subprocess work some tests need, started when the tests are collected.

A few tests spend their time in other processes (pip, Sphinx, mypy, pyright, a
second pytest). conftest.py queues that work here as soon as the tests are
collected, and one thread runs it, in order, beside the rest of the suite; each
test then takes its job's result (running it itself if the thread has not got to
it, or waiting if it is running). The tests assert exactly what they did before.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

__all__ = ["Job", "result", "start"]


class Job:
    """One piece of work, run once, whoever asks first; its value or its error kept."""

    def __init__(self, name: str, work: Callable[[], Any]) -> None:
        self.name = name
        self.work = work
        self._lock = threading.Lock()
        self._done = False
        self._value: Any = None
        self._error: BaseException | None = None

    def run(self) -> None:
        with self._lock:
            if self._done:
                return
            try:
                self._value = self.work()
            except BaseException as exc:  # reported by the test that asks, not lost here
                self._error = exc
            finally:
                self._done = True

    def result(self) -> Any:
        self.run()  # waits while the thread runs it; at once if it is done
        if self._error is not None:
            raise self._error
        return self._value


_JOBS: dict[str, Job] = {}


def start(jobs: list[Job]) -> None:
    """Queue ``jobs`` and run them, in order, on one background thread."""
    for job in jobs:
        _JOBS[job.name] = job

    def run_all() -> None:
        for job in jobs:
            job.run()

    threading.Thread(target=run_all, name="background-jobs", daemon=True).start()


def result(name: str, work: Callable[[], Any]) -> Any:
    """The result of the job ``name``; without a queued one (a test run on its own),
    ``work`` runs now."""
    job = _JOBS.get(name)
    if job is None:
        job = _JOBS[name] = Job(name, work)
    return job.result()
