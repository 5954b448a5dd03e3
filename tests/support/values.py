"""Comparing session values as the serialiser must keep them."""

from __future__ import annotations

from typing import Any


def same(a: Any, b: Any) -> bool:
    """Equal and of the same type all the way down."""
    if type(a) is not type(b):
        return False
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return bool(a == b)
