"""The merge's parts one by one (satchel._merge): sameness, lists' edits, reorders.

tests/test_merge.py checks whole merges against the rules and a serial oracle;
these pin each part's own answer, so that a change to one part shows here by
name (the mutation score in docs/reliability.md counts on them).
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from satchel._merge import (
    ABSENT,
    EXACT_PAIRS,
    _canon,
    _lcs_opcodes,
    _opcodes,
    _overlap,
    _reordered,
    _same,
    diff,
    merge_list,
    patch,
)


@pytest.mark.parametrize(
    "a,b,same",
    [
        (1, 1, True),
        (1, 1.0, False),
        (1, True, False),
        ("a", "a", True),
        ("a", "b", False),
        ([1, 2], [1, 2], True),
        ([1, 2], [1, 2, 3], False),
        ([1, 2], (1, 2), False),
        ((1, [2]), (1, [2]), True),
        ([1, [2]], [1, [2.0]], False),
        ([1], [True], False),
        ({"a": 1}, {"a": 1}, True),
        ({"a": 1}, {"a": 1.0}, False),
        ({"a": 1}, {"b": 1}, False),
        ({"a": 1}, {"a": 1, "b": 2}, False),
        ({"a": {"b": [1]}}, {"a": {"b": [1]}}, True),
        ({"a": {"b": [1]}}, {"a": {"b": [True]}}, False),
        (None, None, True),
        (None, 0, False),
    ],
)
def test_same_means_equal_with_the_same_types_all_the_way_down(a: Any, b: Any, same: bool) -> None:
    assert _same(a, b) is same and _same(b, a) is same
    assert (_canon(a) == _canon(b)) is same  # the hashable stand-ins agree
    # Equal values that are distinct objects (small ints and short strings are shared).
    assert _same("ab" * 40, "".join(["ab"] * 40)) and _same(10.0**300, float("1e300"))


def test_a_canon_is_hashable_and_tells_apart_what_does_not_hash() -> None:
    """Values the serialiser never stores (a set) still get a stand-in: one per object."""
    one, other = {1}, {1}
    assert _canon(one) == _canon(one) and _canon(one) != _canon(other)
    assert _canon([one]) == _canon([one]) and _canon([one]) != _canon([other])
    assert hash(_canon({"a": [1, (2, {"b": 3})]})) == hash(_canon({"a": [1, (2, {"b": 3})]}))
    assert _canon({"b": 1, "a": 2}) == _canon({"a": 2, "b": 1})  # key order is no difference
    assert _canon([1, 2]) != _canon((1, 2)) and _canon({"a": 1}) != _canon([("a", 1)])


@pytest.mark.parametrize(
    "old,new,change",
    [
        (ABSENT, 1, ("set", 1)),
        (1, ABSENT, ("del",)),
        ([1], [1, 2], ("list", [1], [1, 2])),
        (ABSENT, [1], ("set", [1])),  # a new key's list is a leaf
        ((1,), [1], ("set", [1])),
        ({"a": 1, "b": [1]}, {"a": 1, "b": [1]}, ("dict", {}, {"a": 1, "b": [1]})),
        ({"a": 1, "b": 2}, {"a": 1, "c": 3}, ("dict", {"b": ("del",), "c": ("set", 3)}, None)),
        ({"a": 1}, {"a": True}, ("dict", {"a": ("set", True)}, None)),
        ({"a": [1]}, {"a": [1, 2]}, ("dict", {"a": ("set", [1, 2])}, None)),  # nested: a leaf
        (
            {"a": {"x": 1}},
            {"a": {"x": 1, "y": 2}},
            ("dict", {"a": ("dict", {"y": ("set", 2)}, None)}, None),
        ),
        (ABSENT, {"x": 1}, ("dict", {"x": ("set", 1)}, None)),
        (1, {"x": 1}, ("set", {"x": 1})),
    ],
)
def test_diff_names_exactly_what_changed(old: Any, new: Any, change: tuple[Any, ...]) -> None:
    found = diff(old, new)

    def without_values(part: Any) -> Any:  # a dict patch's last item is the whole new value
        if part[0] == "dict":
            return ("dict", {k: without_values(v) for k, v in part[1].items()}, None)
        return part

    assert without_values(found) == without_values(change)
    if found[0] == "dict":
        assert found[2] is new


def test_a_nested_dict_removed_meanwhile_gets_only_the_keys_this_request_set() -> None:
    change = diff({"p": {"a": 1, "b": 2}}, {"p": {"a": 1, "b": 3}})
    assert patch({"x": 1}, change) == {"x": 1, "p": {"b": 3}}


def test_patch_of_a_type_changed_meanwhile_or_gone_takes_this_requests_value() -> None:
    assert patch(ABSENT, diff([1], [1, 2])) == [2]  # gone meanwhile: only what this one added
    assert patch("text", diff([1], [1, 2])) == [1, 2]
    assert patch(5, diff({"a": 1}, {"a": 2})) == {"a": 2}
    assert patch(ABSENT, diff({"a": 1}, {"a": 2})) == {"a": 2}
    assert patch({"a": 1, "z": 0}, ("dict", {"a": ("del",), "q": ("del",)}, {})) == {"z": 0}


def rebuilt(old: list[Any], new: list[Any], ops: list[Any]) -> list[Any]:
    """``new`` put together from ``old`` by following the opcodes, checking they tile both."""
    out: list[Any] = []
    i = j = 0
    for tag, i1, i2, j1, j2 in ops:
        assert (i1, j1) == (i, j), "the opcodes cover both lists without gaps"
        assert tag in ("equal", "delete", "insert", "replace")
        if tag == "equal":
            assert old[i1:i2] == new[j1:j2] and i2 - i1 == j2 - j1 > 0
            out += old[i1:i2]
        elif tag == "delete":
            assert i2 > i1 and j2 == j1
        elif tag == "insert":
            assert i2 == i1 and j2 > j1
            out += new[j1:j2]
        else:
            assert i2 > i1 and j2 > j1
            out += new[j1:j2]
        i, j = i2, j2
    assert (i, j) == (len(old), len(new))
    return out


def longest_common(old: list[Any], new: list[Any]) -> int:
    """The longest common subsequence's length, by trying every subsequence (tiny lists)."""
    for size in range(min(len(old), len(new)), 0, -1):
        picks = {tuple(old[i] for i in c) for c in itertools.combinations(range(len(old)), size)}
        if any(
            tuple(new[i] for i in c) in picks for c in itertools.combinations(range(len(new)), size)
        ):
            return size
    return 0


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 3), max_size=6), st.lists(st.integers(0, 3), max_size=6))
def test_lcs_opcodes_keep_a_longest_common_subsequence(old: list[int], new: list[int]) -> None:
    """The exact opcodes rebuild the new list and keep as many items as can be kept."""
    ops = _lcs_opcodes(old, new)
    assert rebuilt(old, new, ops) == new
    kept = sum(i2 - i1 for tag, i1, i2, _, _ in ops if tag == "equal")
    assert kept == longest_common(old, new)
    for first, second in itertools.pairwise(ops):
        assert not (first[0] == second[0] == "equal"), "runs of kept items are joined"
    for op in _opcodes(old, new):
        assert not (op[0] == "replace" and op[2] == len(old) and op[4] == len(new))
    assert rebuilt(old, new, _opcodes(old, new)) == new


@pytest.mark.parametrize(
    "old,new,ops",
    [
        ([1, 1], [1], [("equal", 0, 1, 0, 1), ("delete", 1, 2, 1, 1)]),  # matched early
        (
            [2, 0, 2, 0],
            [2, 2, 0],
            [("equal", 0, 1, 0, 1), ("delete", 1, 2, 1, 1), ("equal", 2, 4, 1, 3)],
        ),
        ([1, 2], [1, 3], [("equal", 0, 1, 0, 1), ("replace", 1, 2, 1, 2)]),
        ([], [1], [("insert", 0, 0, 0, 1)]),
        ([1], [], [("delete", 0, 1, 0, 0)]),
        ([1, 2], [1, 2], [("equal", 0, 2, 0, 2)]),
        ([5, 1], [6, 1], [("replace", 0, 1, 0, 1), ("equal", 1, 2, 1, 2)]),
        # Two ways to keep one item: the old list's later item, at the new list's start.
        ([1, 2], [2, 1], [("delete", 0, 1, 0, 0), ("equal", 1, 2, 0, 1), ("insert", 2, 2, 1, 2)]),
    ],
)
def test_lcs_opcodes_exactly(old: list[int], new: list[int], ops: list[Any]) -> None:
    assert _lcs_opcodes(old, new) == ops


def test_a_change_at_the_end_reads_as_a_removal_then_an_append() -> None:
    assert _opcodes([1, 2], [1, 3]) == [
        ("equal", 0, 1, 0, 1),
        ("delete", 1, 2, 1, 1),
        ("insert", 2, 2, 1, 2),
    ]
    assert _opcodes([5, 1], [6, 1])[0] == ("replace", 0, 1, 0, 1)  # not at the end: kept


def test_the_faster_matcher_keeps_common_items_however_often_they_occur() -> None:
    """difflib's "autojunk" would skip items frequent in a long list (here every 0),
    reading one changed item as a change of the whole tail."""
    old = [0] * 100 + [1] + [0] * 100
    new = [0] * 100 + [2] + [0] * 100
    assert _opcodes(old, new) == [
        ("equal", 0, 100, 0, 100),
        ("replace", 100, 101, 100, 101),
        ("equal", 101, 201, 101, 201),
    ]


def test_long_lists_are_compared_by_the_faster_matcher_and_still_rebuild() -> None:
    old = list(range(250))
    new = [*old[:100], -1, *old[101:], 999]
    assert len(old) * len(new) > EXACT_PAIRS
    ops = _opcodes(old, new)
    assert rebuilt(old, new, ops) == new
    assert [op[0] for op in ops] == ["equal", "replace", "equal", "insert"]


@pytest.mark.parametrize(
    "a,b,overlap",
    [
        (("insert", 2, 2, 0, 1), ("insert", 2, 2, 0, 1), True),  # one place
        (("insert", 2, 2, 0, 1), ("insert", 3, 3, 0, 1), False),
        (("insert", 2, 2, 0, 1), ("delete", 1, 3, 0, 0), True),  # inside a removal
        (("insert", 1, 1, 0, 1), ("delete", 1, 3, 0, 0), False),  # at its edge
        (("insert", 3, 3, 0, 1), ("delete", 1, 3, 0, 0), False),
        (("delete", 1, 3, 0, 0), ("insert", 1, 1, 0, 1), False),
        (("delete", 1, 3, 0, 0), ("insert", 2, 2, 0, 1), True),
        (("delete", 1, 3, 0, 0), ("insert", 3, 3, 0, 1), False),
        (("delete", 1, 3, 0, 0), ("delete", 2, 4, 0, 0), True),
        (("delete", 1, 3, 0, 0), ("delete", 3, 4, 0, 0), False),
        (("delete", 3, 4, 0, 0), ("delete", 1, 3, 0, 0), False),
        (("replace", 0, 2, 0, 1), ("replace", 1, 2, 0, 1), True),
    ],
)
def test_overlap_is_a_shared_part_or_one_place(a: Any, b: Any, overlap: bool) -> None:
    assert _overlap(a, b) is overlap


@pytest.mark.parametrize(
    "old,new,current,replayed",
    [
        ([3, 1, 2], [1, 2, 3], [3, 1, 2, 0], [0, 1, 2, 3]),  # sort()
        ([3, 1, 2], [3, 2, 1], [3, 1, 2, 0], [3, 2, 1, 0]),  # sort(reverse=True)
        ([3, 1, 2], [3, 2, 1], [3, 1, 2, 5], [5, 3, 2, 1]),  # ... not another reorder
        ([1, 3, 2], [2, 3, 1], [1, 3, 2, 9], [9, 2, 3, 1]),  # reverse()
        ([1, 2, 3], [3, 2, 1], [1, 2, 3, 9], [9, 3, 2, 1]),  # reverse() = sort(reverse=True)
        ([1, "a", 2], [2, "a", 1], [1, "a", 2, 5], [5, 2, "a", 1]),  # no order: reverse()
        ([1, "a", 2], ["a", 2, 1], [1, "a", 2, 5], ["a", 2, 1, 5]),  # another reorder
        ([1, 2, 3], [2, 3, 1], [1, 2, 3, 4], [2, 3, 1, 4]),  # by a key: new items after
        ([1, 2, 2, 3], [2, 3, 1, 2], [1, 2, 3], [2, 3, 1]),  # a removed duplicate stays gone
        ([1, 2, 2, 3], [2, 3, 1, 2], [2, 1, 2, 3, 2], [2, 3, 1, 2, 2]),
        ([1, 2, 3], [2, 3, 1], [1, 3], [3, 1]),  # an item the other removed stays gone
        ([1, 2], [1, 3], [1, 2], None),  # not the same items
        ([1, 2, 2], [2, 1, 1], [1, 2, 2], None),  # the same values, other counts
        ([1, 1.0, 2], [1.0, 2, 1], [1, 1.0, 2, 3], [1.0, 2, 1, 3]),  # 1, 1.0: two items
    ],
)
def test_reordered_replays_the_reorder_onto_the_list_stored_now(
    old: list[Any], new: list[Any], current: list[Any], replayed: list[Any] | None
) -> None:
    assert _reordered(old, new, current) == replayed
    if replayed is not None:
        assert [type(x) for x in _reordered(old, new, current) or []] == [type(x) for x in replayed]


@pytest.mark.parametrize(
    "old,mine,current,merged",
    [
        ([1, 2], [1, 2], [2, 1, 5], [2, 1, 5]),  # unchanged here: what is stored now
        ([1, 2], [1, 2, 5], [1, 2], [1, 2, 5]),  # unchanged there: this request's list
        ([3, 1, 2], [3, 1, 2, 5], [1, 2, 3], [1, 2, 3, 5]),  # the other sorted: append lands
        ([3, 1, 2], [1, 2], [1, 2, 3], [1, 2]),  # ... a removal by value
        ([3, 1, 2, 4], [3, 2, 4, 7], [4, 3, 2, 1], [4, 3, 2, 7]),
        ([1, 2, 3], [0, 1, 2, 3], [3, 2, 1], [0, 3, 2, 1]),  # an insertion at its place
        ([1, 2, 3], [1, 9, 2, 3], [3, 2, 1], [3, 9, 2, 1]),
        ([1, 1, 2], [1, 2], [2, 1, 1], [2, 1]),  # one of two equal items removed: one
        ([1, 2, 3, 4], [1, 4], [1, 2, 3, 4, 5], [1, 4, 5]),
        ([1, 2, 3, 4], [1, 2, 3, 4, 5], [2, 3], [2, 3, 5]),
        ([1, 2, 3, 4], [9, 1, 2, 3, 4], [1, 2, 3, 4, 8], [9, 1, 2, 3, 4, 8]),
        ([1, 2, 3, 4], [1, 2, 9, 3, 4], [1, 8, 2, 3, 4], [1, 8, 2, 9, 3, 4]),
        ([1, 2, 3, 4], [1, 2, 9, 3, 4], [1, 2, 8, 3, 4], [1, 2, 8, 9, 3, 4]),  # one place
        ([1, 2, 3, 4], [1, 3, 4], [1, 3, 4], [1, 3, 4]),  # both removed one item: once
        ([1, 2, 3, 4], [1, 4], [1, 3, 4], [1, 4]),  # removals of overlapping parts
        ([1, 2, 3, 4], [1, 3, 4], [1, 4], [1, 4]),
        ([1, 2, 3, 4], [1, 4], [1, 2, 7, 3, 4], [1, 7, 4]),  # removed here, added there
        ([1, 2, 3, 4], [1, 2, 7, 3, 4], [1, 4], [1, 7, 4]),  # added here, removed there
        ([0, 3], [1, 3], [3], [1, 3]),  # replaced here, removed there: the new item stays
        ([1, 2, 3, 4], [1, 8, 3, 4], [1, 9, 3, 4], [1, 8, 3, 4]),  # both set it: this save
        ([1, 2, 3, 4], [1, 8, 9, 4], [1, 7, 3, 4], [1, 8, 9, 4]),
        ([1, 2, 3], [1, 2, 3, 5], [1, 2, 3, 5], [1, 2, 3, 5, 5]),  # two appends: both kept
        ([1, 2, 3], [1, 9, 3], [3, 2, 1], [3, 9, 1]),  # an item set, after a reverse
        # One part changed by both: the later save's version of all of it, kept items too.
        ([1, 2, 3, 4, 5, 6], [1, "A", 3, 4, 5, 6], [1, "B", 4, 5, 6], [1, "A", 3, 4, 5, 6]),
        ([1, 2, 3, 4, 5, 6], [1, 2, "A", 4, 5, 6], [1, "B", 4, 5, 6], [1, 2, "A", 4, 5, 6]),
    ],
)
def test_merge_list_follows_the_rules(
    old: list[Any], mine: list[Any], current: list[Any], merged: list[Any]
) -> None:
    assert merge_list(old, mine, current) == merged
