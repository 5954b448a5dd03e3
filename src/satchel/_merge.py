"""What a request did to one session value, replayed onto a value another request changed.

When two overlapping requests change the same key, the second save finds the
stored value is no longer the one its request loaded. Rather than overwrite the
first request's change, the manager derives what its own request did
(:func:`diff`, from the value as loaded to the value as left) and replays that
onto the value as stored now (:func:`patch`):

* a session value that is a list, changed in place: a three-way merge of the
  two requests' edits, each found from its states (the list as loaded, as left,
  and as stored now), by position. Edits to different parts of the list both
  land: ``append``, ``extend``, ``+=``, ``insert``, ``pop()``, ``pop(i)``,
  ``remove``, ``del``, slice and item assignment, from both requests. Where
  both requests changed the same part, the rules are: two sets of items added at
  one place land in save order (the earlier save's first); an item both removed
  is removed once; a part one request removed and the other only added to loses
  the removed items and keeps the added ones; any other change of one part by
  both (two item assignments of one index, say) is the later save's. ``sort()``
  and ``reverse()`` (and ``sort(reverse=True)``) are replayed as such onto the
  list stored now; a reorder of another kind (a sort by a key) keeps every item
  either request left, in the reordering request's order, the other request's
  new items at the end;
* a dict, at any depth: the keys the request set or deleted, each replayed the
  same way, so ``session["prefs"]["theme"] = ...`` from two requests both
  survive; a dict new inside a dict (``prefs.setdefault("inner", {})``) merges its
  keys the same way;
* anything else is a leaf: the request's value replaces the stored one, so the
  last save wins, as it would if the requests had run one after another in save
  order. Leaves are numbers, strings, tuples and the like, a list given anew
  (``session["cart"] = [...]``, which the session tells from an in-place
  change), and any list inside a dict (whether it was changed in place or
  assigned anew cannot be told apart there).

At the top level the manager knows more: a key absent when the request loaded
merges as a container when its first value in the request was an empty list or
dict (``session.setdefault("cart", []).append(item)``: two first additions to
one cart both survive), and is a leaf otherwise (``session["cart"] = [item]``).

The result equals running the requests one after another, in the order they
saved where the states tell the edits apart, for every change described above:
two states cannot tell ``pop()`` from ``remove(x)`` of the last item, nor an
``append`` from an ``insert`` at the end, so where they differ the rules above
choose the reading that neither drops an item nobody removed nor loses one
somebody added. Pure functions; values are compared
with their types all the way down, so ``1``, ``1.0`` and ``True`` stay distinct.
"""

from __future__ import annotations

from collections.abc import Sequence
from difflib import SequenceMatcher
from typing import Any

__all__ = ["ABSENT", "Patch", "diff", "merge_list", "patch"]


class _Absent:
    def __repr__(self) -> str:
        return "ABSENT"


#: A key that is not in the session (before a request set it, or after it deleted it).
ABSENT: Any = _Absent()

#: ("set", value) | ("del",) | ("list", old, new) | ("dict", {key: Patch}, value)
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


def _canon(value: Any) -> Any:
    """A hashable stand-in for ``value``, equal only for values :func:`_same` calls equal."""
    kind = type(value)
    if kind is list or kind is tuple:
        return (kind.__name__, tuple(map(_canon, value)))
    if kind is dict:
        return ("dict", tuple(sorted((name, _canon(item)) for name, item in value.items())))
    try:
        hash(value)
    except TypeError:  # nothing the serialiser stores, but never fail a merge on it
        return (kind.__name__, id(value))
    return (kind.__name__, value)


#: (tag, i1, i2, j1, j2) as difflib gives them: old[i1:i2] became new[j1:j2].
_Op = tuple[str, int, int, int, int]


#: Lists up to this many item pairs (old × new) are compared exactly (a longest common
#: subsequence); longer ones by difflib's faster matcher, which can miss the fewest edits.
EXACT_PAIRS = 40_000


def _lcs_opcodes(old: list[Any], new: list[Any]) -> list[_Op]:
    """difflib-style opcodes from a longest common subsequence: the fewest removals and
    insertions, each item kept matched as early as it can be. difflib's matcher takes
    the longest matching block first, so removing one item of ``[2, 0, 2, 0]`` can come
    out as an insertion at the front and a removal at the end, which a merge with
    another request's insertion then misplaces."""
    n, m = len(old), len(new)
    # longest[i][j]: the length of the longest common subsequence of old[i:] and new[j:]
    longest = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(n - 1, -1, -1):
        row, below, item = longest[i], longest[i + 1], old[i]
        for j in range(m - 1, -1, -1):
            row[j] = below[j + 1] + 1 if item == new[j] else max(below[j], row[j + 1])
    pairs: list[tuple[int, int]] = []
    i = j = 0
    while i < n and j < m:
        if old[i] == new[j] and longest[i][j] == longest[i + 1][j + 1] + 1:
            pairs.append((i, j))
            i, j = i + 1, j + 1
        elif longest[i + 1][j] >= longest[i][j + 1]:
            i += 1
        else:
            j += 1
    ops: list[_Op] = []
    i = j = 0
    for a, b in [*pairs, (n, m)]:
        if i < a and j < b:
            ops.append(("replace", i, a, j, b))
        elif i < a:
            ops.append(("delete", i, a, j, j))
        elif j < b:
            ops.append(("insert", i, i, j, b))
        if a < n:  # a kept item: extend the run of equal ones, or start one
            if ops and ops[-1][0] == "equal" and ops[-1][2] == a and ops[-1][4] == b:
                tag, i1, _, j1, _ = ops[-1]
                ops[-1] = (tag, i1, a + 1, j1, b + 1)
            else:
                ops.append(("equal", a, a + 1, b, b + 1))
        i, j = a + 1, b + 1
    return ops


def _opcodes(old: list[Any], new: list[Any]) -> list[_Op]:
    """How ``new`` differs from ``old``, by position; a change that reaches the end of
    both is split into a removal and an insertion at the end (an append)."""
    ops: list[_Op] = []
    n_old, n_new = len(old), len(new)
    found: Sequence[_Op]
    if n_old * n_new <= EXACT_PAIRS:
        found = _lcs_opcodes(old, new)
    else:
        found = SequenceMatcher(None, old, new, autojunk=False).get_opcodes()
    for tag, i1, i2, j1, j2 in found:
        if tag == "replace" and i2 == n_old and j2 == n_new:
            ops += [("delete", i1, i2, j1, j1), ("insert", i2, i2, j1, j2)]
        else:
            ops.append((tag, i1, i2, j1, j2))
    return ops


def _part(
    new: list[Any], ops: list[_Op], members: list[_Op], low: int, high: int
) -> list[tuple[Any, int | None]]:
    """One side's version of ``old[low:high]``: its items there, each with the index in
    the old list it was kept from (``None`` for an item the side added). Only the
    side's edits in the cluster (``members``) count; around them, what it kept."""
    found: list[tuple[Any, int | None]] = []
    for op in ops:
        tag, i1, i2, j1, j2 = op
        if tag == "equal":
            first, last = max(i1, low), min(i2, high)
            found += [(new[j1 + i - i1], i) for i in range(first, last)]
        elif op in members:
            found += [(item, None) for item in new[j1:j2]]
    return found


def _overlap(a: _Op, b: _Op) -> bool:
    """Whether two edits touch the same part of the old list (or insert at one place)."""
    _, a1, a2, _, _ = a
    _, b1, b2, _, _ = b
    if a1 == a2 and b1 == b2:
        return a1 == b1
    if a1 == a2:
        return b1 < a1 < b2
    if b1 == b2:
        return a1 < b1 < a2
    return a1 < b2 and b1 < a2


def _reordered(old: list[Any], new: list[Any], current: list[Any]) -> list[Any] | None:
    """``current`` put in the order ``new`` put ``old`` in, when ``new`` is a reorder of
    ``old`` (the same items): sort(), sort(reverse=True) and reverse() are replayed as
    such; another reorder keeps every item of ``current``, those it shares with
    ``new`` in ``new``'s order and the rest after them. None if not a reorder."""
    keys_new = [_canon(item) for item in new]
    if sorted(map(repr, keys_new)) != sorted(repr(_canon(item)) for item in old):
        return None
    for descending in (False, True):  # a sort first: it may look like a reverse too
        try:
            if keys_new == [_canon(item) for item in sorted(old, reverse=descending)]:
                return sorted(current, reverse=descending)
        except TypeError:  # items of kinds that do not order: not a plain sort
            break
    if keys_new == [_canon(item) for item in reversed(old)]:
        return current[::-1]
    left: dict[Any, int] = {}
    for item in current:
        left[_canon(item)] = left.get(_canon(item), 0) + 1
    out = []
    for item in new:
        key = _canon(item)
        if left.get(key, 0):
            left[key] -= 1
            out.append(item)
    for item in current:
        key = _canon(item)
        if left.get(key, 0):
            left[key] -= 1
            out.append(item)
    return out


def merge_list(old: list[Any], mine: list[Any], current: list[Any]) -> list[Any]:
    """The list after this request's change (``old`` to ``mine``) is replayed onto
    ``current``, which another request changed from ``old`` meanwhile and saved first.

    See the module's docstring for the rules.
    """
    k_old = [_canon(item) for item in old]
    k_mine = [_canon(item) for item in mine]
    k_current = [_canon(item) for item in current]
    if k_mine == k_old:
        return current
    if k_current == k_old:
        return mine
    replayed = _reordered(old, mine, current)
    if replayed is not None:
        return replayed
    theirs = _opcodes(k_old, k_current)
    if _reordered(old, current, old) is not None:
        # The other request reordered: replay this one's removals by value and its
        # additions at their places (at the end for an append).
        edited = list(current)
        steps = _opcodes(k_old, k_mine)
        for tag, i1, i2, _j1, _j2 in steps:
            for gone in old[i1:i2] if tag != "equal" else ():
                for n, item in enumerate(edited):
                    if _same(item, gone):
                        del edited[n]
                        break
        for tag, _i1, _i2, j1, j2 in steps:
            if tag in ("insert", "replace"):
                # Each old item is still there, in the other order, until removed above:
                # so an append's place (j1) is the end of the list edited so far.
                where = min(j1, len(edited))
                edited[where:where] = mine[j1:j2]
        return edited
    ours = _opcodes(k_old, k_mine)
    edits = [(op, 0) for op in ours if op[0] != "equal"]
    edits += [(op, 1) for op in theirs if op[0] != "equal"]
    edits.sort(key=lambda edit: (edit[0][1], edit[0][2], edit[1]))
    clusters: list[list[tuple[_Op, int]]] = []
    for edit in edits:
        if clusters and any(_overlap(edit[0], other[0]) for other in clusters[-1]):
            clusters[-1].append(edit)
        else:
            clusters.append([edit])
    out: list[Any] = []
    done = 0
    for cluster in clusters:
        low = min(op[1] for op, _ in cluster)
        high = max(op[2] for op, _ in cluster)
        out += old[done:low]
        done = high
        mine_part = _part(mine, ours, [op for op, side in cluster if side == 0], low, high)
        their_part = _part(current, theirs, [op for op, side in cluster if side == 1], low, high)
        sides = {side for _, side in cluster}
        if sides == {0}:
            out += [item for item, _ in mine_part]
        elif sides == {1}:
            out += [item for item, _ in their_part]
        elif low == high:  # both added at one place: in save order, theirs first
            out += [item for item, _ in their_part + mine_part]
        elif [_canon(i) for i, _ in mine_part] == [_canon(i) for i, _ in their_part]:
            out += [item for item, _ in mine_part]  # the same items changed alike: once
        elif all(origin is not None for _, origin in mine_part + their_part):
            # Removals only: an item either removed is gone (once).
            kept = {origin for _, origin in their_part}
            out += [item for item, origin in mine_part if origin in kept]
        elif all(origin is not None for _, origin in mine_part):
            # This side only removed, the other added too: every removal and addition lands.
            kept = {origin for _, origin in mine_part}
            out += [item for item, origin in their_part if origin is None or origin in kept]
        elif all(origin is not None for _, origin in their_part):
            kept = {origin for _, origin in their_part}
            out += [item for item, origin in mine_part if origin is None or origin in kept]
        else:  # both changed the same items: the later save's part, as in save order
            out += [item for item, _ in mine_part]
    out += old[done:]
    return out


def diff(old: Any, new: Any, *, nested: bool = False) -> Patch:
    """What turned ``old`` into ``new`` (either may be :data:`ABSENT`), as a patch.

    ``nested`` is true for values inside a dict, where a list is a leaf.
    """
    if new is ABSENT:
        return ("del",)
    if type(new) is list and type(old) is list and not nested:
        return ("list", old, new)
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
            return change[2]  # its type changed meanwhile: this request's value wins
        return merge_list(change[1], change[2], current)
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
