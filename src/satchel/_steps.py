"""Running sans-I/O steps: generators that yield the calls they need and are sent the results.

satchel writes each rule that needs a store once, as such a generator (the
session lifecycle, the Redis store's scripts and listings), and runs it with
:func:`drive`, which makes each call, or :func:`drive_async`, which awaits
it. An error a call raises is thrown into the steps at the ``yield``, so their
own ``try``/``finally`` (releasing a lock, say) runs as in plain code.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Generator
from typing import Any, TypeVar

__all__ = ["drive", "drive_async"]

T = TypeVar("T")
OpT = TypeVar("OpT")


def drive(steps: Generator[OpT, Any, T], perform: Callable[[OpT], Any]) -> T:
    """Run ``steps`` to their answer, making each call they yield with ``perform``."""
    value: Any = None
    error: BaseException | None = None
    while True:
        try:
            op = steps.send(value) if error is None else steps.throw(error)
        except StopIteration as done:
            answer: T = done.value
            return answer
        value = error = None
        try:
            value = perform(op)
        except BaseException as exc:  # handed to the steps, which clean up and re-raise
            error = exc


async def drive_async(steps: Generator[OpT, Any, T], perform: Callable[[OpT], Awaitable[Any]]) -> T:
    """Run ``steps`` to their answer, awaiting each call they yield with ``perform``."""
    value: Any = None
    error: BaseException | None = None
    while True:
        try:
            op = steps.send(value) if error is None else steps.throw(error)
        except StopIteration as done:
            answer: T = done.value
            return answer
        value = error = None
        try:
            value = await perform(op)
        except BaseException as exc:  # cancellation too: the steps release what they hold
            error = exc
