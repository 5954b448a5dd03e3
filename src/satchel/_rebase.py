"""Replaying one request's change onto what overlapping requests stored meanwhile.

A save compares each field it changes with the bytes the request loaded; when
the store answers CONFLICT, :func:`rebase` merges this request's own change
(what it appended, removed, set or deleted, at any depth: see
:mod:`satchel._merge`) into the value stored now, and the save is tried again.
"""

from __future__ import annotations

from dataclasses import replace

from ._merge import ABSENT, Patch, diff, patch
from ._state import State
from .serialization import dumps, loads
from .stores.base import Change, Record

__all__ = ["rebase"]


def rebase(state: State, change: Change, current: Record, patches: dict[str, Patch]) -> Change:
    """``change`` with each field another request changed replaced by the merge of both.

    ``patches`` keeps each field's own change between attempts, so a field that
    conflicts again is diffed once. The merged values also become what the
    view's session holds (:meth:`State.merged`).
    """
    assert change.expect is not None
    values, expect = dict(change.set), dict(change.expect)
    for name in change.set:
        stored = current.fields.get(name)
        if stored == expect[name]:
            continue
        if name not in patches:
            loaded = state.raw.get(name)
            mine = state.data[name]  # a changed field is one the view's session holds
            if loaded is not None:
                before = loads(loaded)
            elif state.fresh.get(name):  # setdefault(name, []) and friends
                before = type(mine)()
            else:
                before = ABSENT
            # A new key given a non-empty value, or a key given a new object, is a
            # leaf: the last save wins, as in save order.
            leaf = before is ABSENT or name in state.replaced
            patches[name] = ("set", mine) if leaf else diff(before, mine)
        merged = patch(ABSENT if stored is None else loads(stored), patches[name])
        values[name] = dumps(merged, name)
        expect[name] = stored
        state.merged(name, merged)  # what the view's session holds now
    return replace(change, set=values, expect=expect)
