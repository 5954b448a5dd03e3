"""An in-process store: for tests and single-process development only."""

from __future__ import annotations

import threading
import time
from collections.abc import Collection, Iterator
from dataclasses import replace

from .base import MOVE_NOTE_SECONDS, Change, Conflict, Record, SaveResult, apply_change

__all__ = ["MemoryStore"]


class MemoryStore:
    """Keeps records in a dict guarded by a lock; lost when the process exits.

    ``prefix`` is a namespace: stores with different prefixes sharing one
    dict (see :meth:`with_prefix`) never see each other's records or locks.
    """

    def __init__(self, *, prefix: str = "") -> None:
        self.prefix = prefix
        self._records: dict[tuple[str, str], Record] = {}
        self._locks: dict[tuple[str, str], tuple[str, float]] = {}
        # Where a moved record went, and until when that is worth knowing (see revoke()).
        self._moves: dict[tuple[str, str], tuple[str, float]] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"MemoryStore(prefix={self.prefix!r})" if self.prefix else "MemoryStore()"

    def with_prefix(self, prefix: str) -> MemoryStore:
        """Another namespace on the same records (as two apps on one server would be)."""
        other = MemoryStore(prefix=prefix)
        other._records, other._locks, other._lock = self._records, self._locks, self._lock
        other._moves = self._moves
        return other

    def _live(self, key: str, now: float) -> Record | None:
        record = self._records.get((self.prefix, key))
        if record is not None and record.expires_at <= now:
            del self._records[(self.prefix, key)]
            return None
        return record

    def load(self, key: str) -> Record | None:
        """Return a copy of the live record under ``key``."""
        with self._lock:
            record = self._live(key, time.time())
            if record is None:
                return None
            return replace(record, fields=dict(record.fields), meta=dict(record.meta))

    def _held(self, key: str, token: str, now: float) -> bool:
        held = self._locks.get((self.prefix, key))
        return held is not None and held[0] == token and held[1] > now

    def save(self, key: str, change: Change, *, create: bool) -> SaveResult:
        """Apply ``change`` under the lock, so it is all-or-nothing."""
        with self._lock:
            now = time.time()
            source = change.replaces if create and change.replaces is not None else key
            if change.fence is not None and not self._held(source, change.fence, now):
                return SaveResult.FENCED
            record = self._live(key, now)
            if (record is None) is not create:
                return SaveResult.REFUSED
            base = record
            if create and change.replaces is not None:
                base = self._live(change.replaces, now)
                if base is None:
                    return SaveResult.REFUSED
            try:
                result = apply_change(base, change)
            except Conflict:
                return SaveResult.CONFLICT
            if source != key or result is None:
                self._records.pop((self.prefix, source), None)
            if result is None:
                return SaveResult.DELETED
            self._records[(self.prefix, key)] = result
            if source != key:
                self._moves[(self.prefix, source)] = (key, now + MOVE_NOTE_SECONDS)
            return SaveResult.SAVED

    def touch(self, key: str, touched_at: float, expires_at: float) -> bool:
        """Move the record's times, if it is still there."""
        with self._lock:
            record = self._live(key, time.time())
            if record is None:
                return False
            self._records[(self.prefix, key)] = replace(
                record, touched_at=touched_at, expires_at=expires_at
            )
            return True

    def _mine(self, now: float) -> list[tuple[str, Record]]:
        return [
            (key, record)
            for (prefix, key), record in self._records.items()
            if prefix == self.prefix and record.expires_at > now
        ]

    def records(self, owner: str | None = None) -> Iterator[tuple[str, Record]]:
        """The live records (of ``owner``), copied at the moment of the call."""
        with self._lock:
            found = [
                (key, record)
                for key, record in self._mine(time.time())
                if owner is None or record.owner == owner
            ]
        return iter(found)

    def references(self, start: str = "") -> Iterator[str]:
        """The keys of live records that begin with ``start``."""
        with self._lock:
            found = [key for key, _ in self._mine(time.time()) if key.startswith(start)]
        return iter(found)

    def count(self) -> tuple[int, int]:
        """How many live records there are, and how many distinct owners they have."""
        with self._lock:
            live = self._mine(time.time())
        return len(live), len({r.owner for _, r in live if r.owner is not None})

    def revoke(
        self, keys: Collection[str] = (), *, owner: str | None = None, keep: str | None = None
    ) -> int:
        """End records, following moves: all under the store's lock, so nothing moves meanwhile."""
        with self._lock:
            now = time.time()
            todo = list(keys)
            if owner is not None:
                todo += [key for key, record in self._mine(now) if record.owner == owner]
            ended = 0
            for key in todo:
                while key != keep:
                    if self._live(key, now) is not None:
                        del self._records[(self.prefix, key)]
                        ended += 1
                        break
                    move = self._moves.get((self.prefix, key))
                    if move is None or move[1] <= now:
                        break
                    key = move[0]
            return ended

    def delete(self, key: str) -> None:
        """Forget the record."""
        with self._lock:
            self._records.pop((self.prefix, key), None)

    def purge_expired(self) -> int:
        """Drop every expired record of this namespace."""
        now = time.time()
        with self._lock:
            dead = [
                k for k, r in self._records.items() if k[0] == self.prefix and r.expires_at <= now
            ]
            for key in dead:
                del self._records[key]
            for key in [k for k, m in self._moves.items() if k[0] == self.prefix and m[1] <= now]:
                del self._moves[key]
            return len(dead)

    def acquire(self, key: str, token: str, lease: float) -> bool:
        """Lease the lock on ``key`` to ``token`` if it is free or lapsed."""
        now = time.time()
        with self._lock:
            held = self._locks.get((self.prefix, key))
            if held is not None and held[1] > now and held[0] != token:
                return False
            self._locks[(self.prefix, key)] = (token, now + lease)
            return True

    def release(self, key: str, token: str) -> None:
        """Free the lock if ``token`` holds it."""
        with self._lock:
            if self._locks.get((self.prefix, key), ("", 0.0))[0] == token:
                del self._locks[(self.prefix, key)]

    def close(self) -> None:
        """Drop this namespace's records and locks."""
        with self._lock:
            for table in (self._records, self._locks, self._moves):
                for name in [k for k in table if k[0] == self.prefix]:
                    del table[name]
