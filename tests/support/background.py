"""Slow subprocess work some tests need, started when the tests are collected.

A few tests spend their time in other processes (pip, Sphinx, mypy, pyright, a
second pytest). conftest.py queues that work here as soon as the tests are
collected, and one thread runs it, in order, beside the rest of the suite; each
test then takes its job's result (running it itself if the thread has not got to
it, or waiting if it is running). The tests assert exactly what they did before.

Under pytest-xdist (``python3 tasks.py test`` runs two workers) the controlling
process runs the jobs instead (see :func:`start_shared`): each worker collects every
test, so no worker can tell that the work is its own. A job's result is pickled into
a folder the workers are told of (``$SATCHEL_BACKGROUND_DIR``), where the test that
asks, in whichever worker, waits for it.
"""

from __future__ import annotations

import os
import pickle
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["Job", "result", "start", "start_shared"]

#: The environment variable naming the folder of the controlling process's results.
SHARED = "SATCHEL_BACKGROUND_DIR"


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


def start_shared(jobs: list[Job], folder: Path) -> None:
    """Run ``jobs`` on a thread of this (the controlling) process, each result pickled into
    ``folder`` as ``<name>.result`` once done; ``<name>.queued`` says it will come."""
    for job in jobs:
        (folder / f"{job.name}.queued").touch()

    def run_all() -> None:
        for job in jobs:
            job.run()
            try:
                outcome = pickle.dumps((job._value, job._error))
            except Exception as exc:  # an unpicklable error: its text still reaches the test
                outcome = pickle.dumps((None, RuntimeError(f"{job.name}: {exc!r}")))
            partial = folder / f"{job.name}.partial"
            partial.write_bytes(outcome)
            partial.rename(folder / f"{job.name}.result")

    threading.Thread(target=run_all, name="background-jobs", daemon=True).start()


def _shared(name: str) -> Any:
    """The result the controlling process pickled for ``name``, waited for."""
    folder = Path(os.environ[SHARED])
    done = folder / f"{name}.result"
    deadline = time.monotonic() + 1800
    while not done.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"the background job {name} never finished")
        time.sleep(0.5)
    value, error = pickle.loads(done.read_bytes())
    if error is not None:
        raise error
    return value


def result(name: str, work: Callable[[], Any]) -> Any:
    """The result of the job ``name``; without a queued one (a test run on its own),
    ``work`` runs now."""
    folder = os.environ.get(SHARED)
    if folder and (Path(folder) / f"{name}.queued").exists():
        return _shared(name)
    job = _JOBS.get(name)
    if job is None:
        job = _JOBS[name] = Job(name, work)
    return job.result()
