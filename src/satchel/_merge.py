"""What a request did to one session value, replayed onto a value another request changed.

When two overlapping requests change the same key, the second save finds the
stored value is no longer the one its request loaded. Rather than overwrite the
first request's change, the manager derives what its own request did
(:func:`diff`, from the value as loaded to the value as left) and replays that
onto the value as stored now (:func:`patch`):

* a session value that is a list, changed in place so that it only lost some
  items and gained items at its end: remove those items (each by its first
  equal, if still there) and append the new ones, so overlapping ``append``,
  ``extend``, ``+=`` and ``remove`` all survive;
* a dict, at any depth: the keys the request set or deleted, each replayed the
  same way, so ``session["prefs"]["theme"] = ...`` from two requests both
  survive; a dict new inside a dict (``prefs.setdefault("inner", {})``) merges its
  keys the same way;
* anything else is a leaf: the request's value replaces the stored one, so the
  last save wins, as it would if the requests had run one after another in save
  order. Leaves are numbers, strings, tuples and the like, a list reordered or
  changed in its middle, a list given anew (``session["cart"] = [...]``, which
  the session tells from an in-place change), and any list inside a dict
  (whether it was appended to or assigned anew cannot be told apart there).

At the top level the manager knows more: a key absent when the request loaded
merges as a container when its first value in the request was an empty list or
dict (``session.setdefault("cart", []).append(item)``: two first additions to
one cart both survive), and is a leaf otherwise (``session["cart"] = [item]``).

The result equals running the requests one after another in the order they
saved, for every change described above. Pure functions; values are compared
with their types all the way down, so ``1``, ``1.0`` and ``True`` stay distinct.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ABSENT", "Patch", "diff", "patch"]


class _Absent:
    def __repr__(self) -> str:
        return "ABSENT"


#: A key that is not in the session (before a request set it, or after it deleted it).
ABSENT: Any = _Absent()

#: ("set", value) | ("del",) | ("list", removed, appended, value) | ("dict", {key: Patch}, value)
Patch = tuple[Any, ...]


def _same(a: Any, b: Any) -> bool:
    """Equal and of the same types all the way down (``1``, ``1.0`` and ``True`` differ)."""
    if a is b:
        return True
    kind = type(a)
    if kind is not type(b):
        return False
    if kind is list or kind is tuple:
        return len(a) == len(b) and all(map(_same, a, b))
    if kind is dict:
        return a.keys() == b.keys() and all(_same(value, b[name]) for name, value in a.items())
    return bool(a == b)


def _list_change(old: list[Any], new: list[Any]) -> tuple[list[Any], list[Any]] | None:
    """The items ``new`` lost from ``old`` and the items appended, or None if not that shape."""
    removed: list[Any] = []
    j = 0
    for item in old:
        if j < len(new) and _same(item, new[j]):
            j += 1
        else:
            removed.append(item)
    appended = new[j:]
    if any(_same(gone, added) for gone in removed for added in appended):
        return None  # a reorder or a change in the middle: not an append or a removal
    return removed, appended


def diff(old: Any, new: Any, *, nested: bool = False) -> Patch:
    """What turned ``old`` into ``new`` (either may be :data:`ABSENT`), as a patch.

    ``nested`` is true for values inside a dict, where a list is a leaf.
    """
    if new is ABSENT:
        return ("del",)
    if type(new) is list and type(old) is list and not nested:
        change = _list_change(old, new)
        if change is not None:
            return ("list", change[0], change[1], new)
    if type(new) is dict and (type(old) is dict or old is ABSENT):
        before: dict[str, Any] = {} if old is ABSENT else old
        keys: dict[str, Patch] = {}
        for name in before:
            if name not in new:
                keys[name] = ("del",)
        for name, value in new.items():
            was = before.get(name, ABSENT)
            if was is ABSENT or not _same(was, value):
                keys[name] = diff(was, value, nested=True)
        return ("dict", keys, new)
    return ("set", new)


def patch(current: Any, change: Patch) -> Any:
    """``current`` with ``change`` replayed onto it; :data:`ABSENT` when it deletes the key."""
    kind = change[0]
    if kind == "set":
        return change[1]
    if kind == "del":
        return ABSENT
    if kind == "list":
        if current is ABSENT:
            current = []
        elif type(current) is not list:
            return change[3]  # its type changed meanwhile: this request's value wins
        out = list(current)
        for gone in change[1]:
            for i, item in enumerate(out):
                if _same(item, gone):
                    del out[i]
                    break
        return out + list(change[2])
    if current is ABSENT:
        current = {}
    elif type(current) is not dict:
        return change[2]
    merged = dict(current)
    for name, inner in change[1].items():
        value = patch(merged.get(name, ABSENT), inner)
        if value is ABSENT:
            merged.pop(name, None)
        else:
            merged[name] = value
    return merged
