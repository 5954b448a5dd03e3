"""The questionnaire demo: a small app that shows, live, what a session is.

Home explains sessions; Page 1 asks for ``firstName`` and ``lastName``; Page 2
for ``favoriteColor``; Page 3 shows all three. Every page's footer shows what
the session holds, and "Start over" discards it on the server. The
"What's in my session?" page shows the cookie and the stored record side by
side. Each *slot* (``/s/1/…``, ``/s/2/…``) has its own cookie, so two tabs of
one browser can be two different visitors. Run it with ``satchel demo``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._shared import FIELDS, SLOTS, describe_session, footer_rows, load_secret_key

if TYPE_CHECKING:
    from .flask import create_app

__all__ = [
    "FIELDS",
    "SLOTS",
    "create_app",
    "describe_session",
    "footer_rows",
    "load_secret_key",
]


def __getattr__(name: str) -> Any:
    # The Flask demo needs Flask; the ASGI demo (satchel.demo.asgi) must not import it.
    if name == "create_app":
        from .flask import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
