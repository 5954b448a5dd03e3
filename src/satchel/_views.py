"""The ``@locked`` mark on a view, and where adapters find the views that carry it.

Framework-free: the Flask and Quart adapters both read their app's
``view_functions`` through :func:`locked_endpoints`, and both export
:func:`locked` as their own.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, MutableMapping
from typing import Any, TypeVar

__all__ = ["locked", "locked_endpoints"]

ViewT = TypeVar("ViewT", bound=Callable[..., Any])


def locked(view: ViewT) -> ViewT:
    """Run this view in strict mode: one request of a session at a time.

    The view's session is locked from its first use until the response is
    saved, so a read-modify-write of one key (a counter) loses nothing to an
    overlapping request. Waiting longer than ``SATCHEL_LOCK_TIMEOUT`` gives 503.
    Put it below the route decorator::

        @app.post("/vote")
        @locked
        def vote(): ...
    """
    view._satchel_locked = True  # type: ignore[attr-defined]
    return view


def locked_endpoints(
    views: Mapping[str, Callable[..., Any]], extensions: MutableMapping[str, Any]
) -> frozenset[str]:
    """The endpoints of ``views`` that carry ``@locked``, found again only when views are added.

    ``extensions`` is the app's ``extensions`` dict, where the answer is kept.
    """
    state = extensions.get("satchel.locked")
    if state is None or state[0] != len(views):
        found = frozenset(
            name for name, view in views.items() if getattr(view, "_satchel_locked", False)
        )
        state = (len(views), found)
        extensions["satchel.locked"] = state
    answer: frozenset[str] = state[1]
    return answer
