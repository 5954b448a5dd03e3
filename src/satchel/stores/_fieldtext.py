"""A field's bytes as text a database's JSON column can hold, and back.

Session values are UTF-8 JSON, so nearly always ``"="`` and the text itself;
other bytes (and text with NUL, which PostgreSQL's text cannot hold) are
``"~"`` and base64. The SQLite and PostgreSQL stores both file fields this way.
"""

from __future__ import annotations

from base64 import b64decode, b64encode

__all__ = ["from_text", "to_text"]


def to_text(value: bytes) -> str:
    """``value`` as ``=`` and its UTF-8 text, or ``~`` and base64."""
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        pass
    else:
        if "\x00" not in text:
            return "=" + text
    return "~" + b64encode(value).decode("ascii")


def from_text(text: str) -> bytes:
    """The bytes :func:`to_text` wrote."""
    return text[1:].encode("utf-8") if text[0] == "=" else b64decode(text[1:])
