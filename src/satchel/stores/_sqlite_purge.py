"""The SQLite store's purge: expired rows removed in batches that hold the write lock
briefly, so that the other writers of every process sharing the file hardly wait.

A batch finds expired rows by a read, which takes no lock, and removes them in one
``DELETE`` of at most a row limit that adapts to the time the deletes take
(:data:`PURGE_HOLD`), whatever the sessions' size. The table is walked by rowid:
an index on the expiry time would cost every save an index update.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

#: How long (seconds) one purge batch should hold the write lock: every other writer,
#: in every process, waits that long. A batch deletes at most a number of rows that
#: halves when a batch took longer and doubles (up to ``purge_batch``) when one took
#: under half of it, so the bound holds for sessions of any size (a batch of 2,000
#: rows of 2 KB held the lock for 85 ms).
PURGE_HOLD = 0.005
#: The row limit of a store's first purge batch.
PURGE_FIRST_LIMIT = 64
#: While a walk of the table is under way, the next periodic batch is due this many
#: seconds after the last one (not ``purge_interval`` later), so that purging keeps
#: up with sessions that expire faster than one batch an interval removes.
PURGE_STEP_SECONDS = 0.1


class Purged(Protocol):
    """What a batch needs of the store: its statements and the walk's state."""

    purge_batch: int
    purge_interval: float
    _purge_from: int
    _purge_limit: int
    _purge_held: float

    def _run(self, sql: str, args: tuple[object, ...]) -> tuple[list[Any], int]: ...


def first_limit(purge_batch: int) -> int:
    """The row limit a store's first batch starts from."""
    return min(PURGE_FIRST_LIMIT, purge_batch)


def purge_range(store: Purged, start: int, now: float) -> tuple[int, int]:
    """Delete expired rows with rowids in one batch from ``start``.

    Returns where the next batch starts (0 once the table is walked) and how many
    rows this one removed. Expired locks and move notes go when a walk starts.
    """
    run = store._run
    if start == 0:
        run("DELETE FROM satchel_lock WHERE expires_at <= ?", (now,))
        run("DELETE FROM satchel_moves WHERE expires_at <= ?", (now,))
    end = start + store.purge_batch
    limit = store._purge_limit
    found, _ = run(
        "SELECT id FROM satchel_sessions WHERE id >= ? AND id < ? AND expires_at <= ?"
        " ORDER BY id LIMIT ?",
        (start, end, now, limit),
    )
    removed = 0
    store._purge_held = 0.0
    if found:
        last_found = found[-1][0]
        began = time.perf_counter()
        _, removed = run(
            "DELETE FROM satchel_sessions WHERE id >= ? AND id <= ? AND expires_at <= ?",
            (start, last_found, now),
        )
        store._purge_held = held = time.perf_counter() - began
        if held > PURGE_HOLD:
            store._purge_limit = max(1, limit // 2)
        elif held < PURGE_HOLD / 2:
            store._purge_limit = min(store.purge_batch, limit * 2)
        if len(found) == limit:  # more may be left before ``end``: go on from here
            end = last_found + 1
    last = run("SELECT max(id) FROM satchel_sessions", ())[0][0][0]
    return (0 if last is None or end > last else end), removed


def next_due(store: Purged, now: float) -> float:
    """When the periodic purge's next batch is due: shortly while a walk is under way,
    ``purge_interval`` after the walk ended."""
    if store._purge_from:
        return now + min(PURGE_STEP_SECONDS, store.purge_interval)
    return now + store.purge_interval
