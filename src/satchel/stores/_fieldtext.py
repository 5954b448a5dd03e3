"""A field's bytes as text a database's JSON column can hold, and back.

Session values are UTF-8 JSON, so nearly always ``"="`` and the text itself;
other bytes (and text with NUL, which PostgreSQL's text cannot hold) are
``"~"`` and base64. The SQLite and PostgreSQL stores both file fields this way.

Encrypted fields (``SATCHEL_ENCRYPTION_KEYS``) are all bytes, and the standard
library decodes base64 at about 200 MB/s here (14 µs for a 2 KB session's field):
the last few MB decoded are kept by their text, so a record read again costs a
dict lookup per field (its text's hash) instead.
"""

from __future__ import annotations

from binascii import a2b_base64, b2a_base64

__all__ = ["from_text", "to_text"]

#: Decoded base64 fields by their text, up to :data:`_DECODED_LIMIT` bytes in all.
_decoded: dict[str, bytes] = {}
_decoded_size = 0
_DECODED_LIMIT = 16 * 1024 * 1024
#: Shorter texts are decoded every time (faster than hashing them).
_WORTH_KEEPING = 256


def to_text(value: bytes) -> str:
    """``value`` as ``=`` and its UTF-8 text, or ``~`` and base64."""
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        pass
    else:
        if "\x00" not in text:
            return "=" + text
    text = "~" + b2a_base64(value, newline=False).decode("ascii")
    if len(text) >= _WORTH_KEEPING:
        _keep(text, value)  # the next read of what was just written finds it decoded
    return text


def _keep(text: str, value: bytes) -> None:
    global _decoded, _decoded_size
    if _decoded_size + len(text) + len(value) > _DECODED_LIMIT:
        _decoded, _decoded_size = {}, 0  # simplest bound: start again
    _decoded[text] = value
    _decoded_size += len(text) + len(value)


def from_text(text: str) -> bytes:
    """The bytes :func:`to_text` wrote."""
    if text[0] == "=":
        return text[1:].encode("utf-8")
    if len(text) < _WORTH_KEEPING:
        return a2b_base64(text[1:])  # binascii directly: base64's wrapper costs a µs more
    found = _decoded.get(text)
    if found is None:
        found = a2b_base64(text[1:])
        _keep(text, found)
    return found
