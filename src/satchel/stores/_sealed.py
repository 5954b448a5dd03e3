"""How a record looks encrypted, and how a change is said in its encrypted names.

A sealed record holds ``~s`` (the format's version, the session's *seal*, 16
random bytes drawn when it was created and carried to each new ID, and a tag
binding the seal to the record's key, rewritten at each move) and one field per
session key, named by a keyed hash of the seal and the key, holding the key and
its value encrypted (see :mod:`satchel.encryption`). The record's
client details (its ``meta``) are one more such field, under a name no session
key can have. The store sees nothing else: its own ``meta`` is empty.

:class:`Sealer` turns a sealed record into the clear one the lifecycle reads,
and the lifecycle's :class:`~satchel.stores.base.Change` into the one the store
applies. A change's conditions (``expect``: a field still holds what the request
loaded) name ciphertexts, which differ on every save: the sealer remembers, for
each record it opened or saved lately, the ciphertext behind each clear value.
When it cannot say what was stored (forgotten, or an older value), it answers
``CONFLICT``, and the lifecycle loads the record again and merges, as it does
when another request changed the field. Both wrappers
(:mod:`satchel.stores.encrypted`) do their I/O around it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from .._json import dumps as json_dumps
from .._json import loads as json_loads
from ..encryption import EncryptionKeys, Unreadable
from .base import Change, Record, SaveResult

__all__ = ["META_NAME", "SEAL_FIELD", "NotReadable", "Sealer"]


#: The field holding the format's version and the session's seal, in clear.
SEAL_FIELD = "~s"
#: The clear name of the field holding a record's ``meta`` (a session key has no NUL).
META_NAME = "\x00meta"
_SEAL_BYTES = 16
#: Remembered ciphertexts, at most (their clear values and ciphertexts, in bytes).
_MEMORY_LIMIT = 32 * 1024 * 1024


class NotReadable(Exception):
    """A record this process must not read: ``tampered`` (a field did not open) or
    stored in clear after ``SATCHEL_ENCRYPTION_ACCEPT_PLAINTEXT_UNTIL``."""

    def __init__(self, tampered: bool, detail: str) -> None:
        super().__init__(detail)
        self.tampered = tampered


@dataclass(frozen=True, slots=True)
class _Known:
    """What a record held when this process last opened or saved it."""

    #: ``None``: stored in clear (before encryption was on).
    seal: bytes | None
    #: Clear name -> (clear value, stored name, stored bytes).
    fields: Mapping[str, tuple[bytes, str, bytes]]
    meta: Mapping[str, str]
    size: int
    #: The seal field as stored (its tag binds it to the record's key).
    stored_seal: bytes | None = None
    #: The record's fields as stored, when known whole (a record read back with these
    #: very bytes is this one again, and nothing is decrypted).
    raw: Mapping[str, bytes] | None = None
    #: The clear fields the lifecycle reads (``meta`` apart).
    clear: Mapping[str, bytes] | None = None

    def by_stored(self) -> dict[str, tuple[str, bytes, bytes]]:
        """Stored name -> (clear name, clear value, stored bytes)."""
        return {entry[1]: (name, entry[0], entry[2]) for name, entry in self.fields.items()}


class Sealer:
    """Opens sealed records and seals changes, remembering what it saw (see the module)."""

    def __init__(self, keys: EncryptionKeys) -> None:
        self.keys = keys
        self._known: dict[str, _Known] = {}
        self._size = 0
        #: The clear record last opened from each remembered record.
        self._opened: dict[str, tuple[_Known, Record]] = {}

    # -- reading ---------------------------------------------------------------

    def open(self, key: str, record: Record, *, remember: bool = True) -> Record:
        """The clear record ``record`` (stored under ``key``) holds; raises
        :class:`NotReadable` when a field does not open or a clear record is no longer read."""
        known = self.known(key, record)
        if remember and self._known.get(key) is not known:
            self._remember(key, known)
        if known.seal is None:
            return record
        last = self._opened.get(key)
        if (
            last is not None
            and last[0] is known
            and last[1].touched_at == record.touched_at
            and last[1].expires_at == record.expires_at
            and last[1].created_at == record.created_at
            and last[1].owner == record.owner
        ):
            return last[1]  # the same bytes and times: the same (immutable) clear record
        clear = known.clear
        if clear is None:
            clear = {name: entry[0] for name, entry in known.fields.items() if name != META_NAME}
        # ``clear`` is shared by the records opened from the same bytes: nothing changes a
        # loaded record's fields in place (the lifecycle copies them).
        opened = Record(
            clear, record.created_at, record.touched_at, record.expires_at, record.owner,
            known.meta,
        )  # fmt: skip
        if remember:
            self._opened[key] = (known, opened)
        return opened

    def known(self, key: str, record: Record) -> _Known:
        """What ``record`` (filed under ``key``) holds, each clear value with its stored
        name and bytes. A field whose bytes this process already opened (or wrote) under
        this record's seal is not decrypted again: the same bytes hold the same value."""
        stored_seal = record.fields.get(SEAL_FIELD)
        size = 0
        if stored_seal is None:
            if not self.keys.accepts_plaintext():
                raise NotReadable(False, "stored in clear, and clear records are no longer read")
            fields = {name: (value, name, value) for name, value in record.fields.items()}
            size = sum(len(value) for value in record.fields.values())
            return _Known(None, fields, record.meta, size)
        keys = self.keys
        previous = self._known.get(key)
        if previous is not None and previous.raw == record.fields:
            return previous  # the very bytes this process opened or wrote last
        if previous is not None and previous.stored_seal == stored_seal:
            seal = previous.seal
            seen = previous.by_stored()
            meta = previous.meta
        else:
            try:
                seal = keys.open_seal(stored_seal, key)
            except Unreadable as exc:
                raise NotReadable(True, str(exc)) from None
            seen = {}
            meta = {}
        assert seal is not None
        opened: dict[str, tuple[bytes, str, bytes]] = {}
        for stored, sealed in record.fields.items():
            if stored == SEAL_FIELD:
                continue
            same = seen.get(stored)
            if same is not None and same[2] == sealed:
                name, value = same[0], same[1]
            else:
                try:
                    name, value = keys.open(seal, stored, sealed)
                except Unreadable as exc:
                    raise NotReadable(True, f"a field {exc}") from None
                if name == META_NAME:
                    try:
                        meta = json_loads(value)
                    except ValueError:
                        raise NotReadable(True, "its client details do not read") from None
            size += len(value) + len(sealed)
            if name in opened and not keys.is_current(sealed):
                continue  # under two keys' names (a leftover): the first key's wins
            opened[name] = (value, stored, sealed)
        if META_NAME not in opened:
            meta = {}
        clear = {name: entry[0] for name, entry in opened.items() if name != META_NAME}
        return _Known(seal, opened, meta, size, stored_seal, dict(record.fields), clear)

    def forget(self, key: str) -> None:
        """Drop what is remembered of ``key``'s record."""
        gone = self._known.pop(key, None)
        self._opened.pop(key, None)
        if gone is not None:
            self._size -= gone.size

    def _remember(self, key: str, known: _Known) -> None:
        if self._size + known.size > _MEMORY_LIMIT or len(self._known) > 200_000:
            self._known = {}  # simplest bound: start again; a miss costs one merge retry
            self._opened = {}
            self._size = 0
        old = self._known.get(key)
        self._known[key] = known
        self._size += known.size - (old.size if old is not None else 0)

    # -- writing ---------------------------------------------------------------

    def remembered(self, key: str) -> _Known | None:
        """What this process last saw of ``key``'s record, if it remembers it."""
        return self._known.get(key)

    def remember(self, key: str, record: Record) -> _Known:
        """Open ``record`` (just loaded from ``key``) and remember it; :class:`NotReadable`."""
        known = self.known(key, record)
        self._remember(key, known)
        return known

    def seal(
        self, key: str, change: Change, create: bool, base: _Known | None
    ) -> tuple[Change, _Known] | SaveResult:
        """``change`` as the store applies it to a sealed record, and what the record
        holds once it is applied; ``CONFLICT`` when the sealer cannot say what a
        condition expects. ``base`` is the record the change builds on (the one
        updated, or the one a move takes); ``None`` only for a plain create. ``key`` is
        where the record is filed (for a move, the new key)."""
        keys = self.keys
        plain = base is not None and base.seal is None
        seal = os.urandom(_SEAL_BYTES) if base is None or plain else base.seal
        assert seal is not None
        cipher = keys.cipher()
        names = keys.stored_names
        sets: dict[str, bytes] = {}
        deletes: set[str] = set()
        expect: dict[str, bytes | None] = {}
        after: dict[str, tuple[bytes, str, bytes]] = {}
        if base is not None and not plain:
            after.update(base.fields)

        def put(name: str, value: bytes) -> None:
            stored = names(seal, name)
            sealed = cipher.seal(seal, stored[0], name, value)
            sets[stored[0]] = sealed
            deletes.update(stored[1:])
            after[name] = (value, stored[0], sealed)

        if change.expect:
            for name, wanted in change.expect.items():
                entry = None if base is None else base.fields.get(name)
                if wanted is None:
                    if entry is not None:
                        return SaveResult.CONFLICT
                    if not plain:
                        for stored in names(seal, name):
                            expect[stored] = None
                elif entry is None or (entry[0] is not wanted and entry[0] != wanted):
                    return SaveResult.CONFLICT
                elif not plain:
                    expect[entry[1]] = entry[2]
                    for stored in names(seal, name):
                        if stored != entry[1]:
                            expect[stored] = None
        if plain:
            # Stored in clear: the first write seals every field, each expected unchanged.
            assert base is not None
            expect[SEAL_FIELD] = None
            for value, stored, _ in base.fields.values():
                expect[stored] = value
                deletes.add(stored)
            kept = {name: entry[0] for name, entry in base.fields.items()}
            for name in change.delete:
                kept.pop(name, None)
            kept.update(change.set)
            for name, value in kept.items():
                put(name, value)
            if not create:
                put(META_NAME, json_dumps(dict(base.meta)))
        else:
            for name in change.delete:
                deletes.update(names(seal, name))
                after.pop(name, None)
            for name, value in change.set.items():
                put(name, value)
        stored_seal = base.stored_seal if base is not None else None
        if create or plain:
            stored_seal = sets[SEAL_FIELD] = keys.seal_field(seal, key)
        if create:
            if change.meta:
                put(META_NAME, json_dumps(dict(change.meta)))
            elif META_NAME in after:
                deletes.update(names(seal, META_NAME))
                after.pop(META_NAME, None)
        only = change.delete_if_only
        if only is not None:
            hidden = {SEAL_FIELD, *names(seal, META_NAME)}
            only = hidden.union(*(names(seal, name) for name in only))
        deletes.difference_update(sets)
        sealed_change = Change(
            set=sets,
            delete=tuple(deletes),
            created_at=change.created_at,
            touched_at=change.touched_at,
            expires_at=change.expires_at,
            owner=change.owner,
            meta={},
            ends_by=change.ends_by,
            replaces=change.replaces,
            delete_if_only=only,
            max_size=change.max_size,
            fence=change.fence,
            expect=expect or None,
        )
        size = sum(len(entry[0]) + len(entry[2]) for entry in after.values())
        meta = change.meta if create else (base.meta if base is not None else {})
        raw: dict[str, bytes] | None = None
        if base is None or (base.raw is not None and not plain):
            raw = {} if base is None or base.raw is None else dict(base.raw)
            for stored in sealed_change.delete:
                raw.pop(stored, None)
            raw.update(sets)
        clear = {name: entry[0] for name, entry in after.items() if name != META_NAME}
        return sealed_change, _Known(seal, after, meta, size, stored_seal, raw, clear)

    def saved(self, key: str, change: Change, create: bool, after: _Known, result: Any) -> None:
        """Remember what a save stored (``after``), or forget what it made stale."""
        if result == SaveResult.SAVED:
            if create and change.replaces is not None:
                self.forget(change.replaces)
            self._remember(key, after)
        elif result != SaveResult.CONFLICT and result != SaveResult.FENCED and not create:
            self.forget(key)  # gone, or emptied and deleted

    # -- rekey -----------------------------------------------------------------

    def resealed(self, key: str, record: Record) -> tuple[Change, _Known] | None:
        """A change that seals every field of ``record`` (filed under ``key``) under the
        first key, each expected unchanged, its times kept; ``None`` when there is
        nothing to do."""
        known = self.known(key, record)
        keys = self.keys
        stale_seal = known.stored_seal is not None and not keys.is_current(known.stored_seal)
        if (
            known.seal is not None
            and not stale_seal
            and all(keys.is_current(sealed) for _, _, sealed in known.fields.values())
        ):
            return None
        values = {name: entry[0] for name, entry in known.fields.items()}
        change = Change(
            set={} if known.seal is None else values,
            touched_at=record.touched_at,
            expires_at=record.expires_at,
            expect=None if known.seal is None else values,
        )
        sealed = self.seal(key, change, False, known)
        assert not isinstance(sealed, SaveResult)  # every expectation is the record's own
        if not stale_seal:
            return sealed
        sealed_change, after = sealed
        assert known.seal is not None and known.stored_seal is not None
        tagged = keys.seal_field(known.seal, key)
        return replace(
            sealed_change,
            set={**sealed_change.set, SEAL_FIELD: tagged},
            expect={**(sealed_change.expect or {}), SEAL_FIELD: known.stored_seal},
        ), replace(after, stored_seal=tagged)
