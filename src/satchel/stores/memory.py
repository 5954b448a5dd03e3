"""An in-process store: for tests and single-process development only."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import replace

from .base import Change, Record

__all__ = ["MemoryStore"]


class MemoryStore:
    """Keeps records in a dict guarded by a lock; lost when the process exits."""

    def __init__(self) -> None:
        self._records: dict[str, Record] = {}
        self._locks: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return "MemoryStore()"

    def _live(self, key: str, now: float) -> Record | None:
        record = self._records.get(key)
        if record is not None and record.expires_at <= now:
            del self._records[key]
            return None
        return record

    def load(self, key: str) -> Record | None:
        """Return a copy of the live record under ``key``."""
        with self._lock:
            record = self._live(key, time.time())
            if record is None:
                return None
            return Record(
                dict(record.fields),
                record.created_at,
                record.touched_at,
                record.expires_at,
                record.owner,
                dict(record.meta),
            )

    def save(self, key: str, change: Change, *, create: bool) -> bool:
        """Apply ``change`` under the lock, so it is all-or-nothing."""
        with self._lock:
            record = self._live(key, time.time())
            if (record is None) is not create:
                return False
            fields = {} if record is None else dict(record.fields)
            fields.update(change.set)
            for name in change.delete:
                fields.pop(name, None)
            if record is None:
                self._records[key] = Record(
                    fields,
                    change.created_at,
                    change.touched_at,
                    change.expires_at,
                    change.owner,
                    dict(change.meta),
                )
            else:
                self._records[key] = replace(
                    record,
                    fields=fields,
                    touched_at=change.touched_at,
                    expires_at=change.expires_at,
                )
            return True

    def touch(self, key: str, touched_at: float, expires_at: float) -> bool:
        """Move the record's times, if it is still there."""
        with self._lock:
            record = self._live(key, time.time())
            if record is None:
                return False
            self._records[key] = replace(record, touched_at=touched_at, expires_at=expires_at)
            return True

    def records(self, owner: str | None = None) -> Iterator[tuple[str, Record]]:
        """The live records (of ``owner``), copied at the moment of the call."""
        now = time.time()
        with self._lock:
            found = [
                (key, record)
                for key, record in self._records.items()
                if record.expires_at > now and (owner is None or record.owner == owner)
            ]
        return iter(found)

    def delete(self, key: str) -> None:
        """Forget the record."""
        with self._lock:
            self._records.pop(key, None)

    def purge_expired(self) -> int:
        """Drop every expired record."""
        now = time.time()
        with self._lock:
            dead = [k for k, r in self._records.items() if r.expires_at <= now]
            for key in dead:
                del self._records[key]
            return len(dead)

    def acquire(self, key: str, token: str, lease: float) -> bool:
        """Lease the lock on ``key`` to ``token`` if it is free or lapsed."""
        now = time.time()
        with self._lock:
            held = self._locks.get(key)
            if held is not None and held[1] > now and held[0] != token:
                return False
            self._locks[key] = (token, now + lease)
            return True

    def release(self, key: str, token: str) -> None:
        """Free the lock if ``token`` holds it."""
        with self._lock:
            if self._locks.get(key, ("", 0.0))[0] == token:
                del self._locks[key]

    def close(self) -> None:
        """Drop everything."""
        with self._lock:
            self._records.clear()
            self._locks.clear()
