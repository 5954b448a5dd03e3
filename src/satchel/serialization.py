"""Session values to bytes and back: JSON with a few tags, never pickle.

Plain JSON loses types a Flask session relies on, so values of these types are
wrapped in a one-key object whose key is a tag starting with a space:

=========================  ===================================
type                       stored as
=========================  ===================================
``tuple``                  ``{" t": [...]}``
``bytes``                  ``{" b": "<base64>"}``
``markupsafe.Markup``      ``{" m": "<html>"}``
``uuid.UUID``              ``{" u": "<hex>"}``
``datetime.datetime``      ``{" d": "<ISO 8601>"}`` (time zone kept)
``datetime.date``          ``{" D": "<ISO 8601>"}``
an ``int`` beyond 64 bits  ``{" i": "<decimal digits>"}``
a dict that looks tagged   ``{" di": {...}}``
=========================  ===================================

Values nested deeper than :data:`MAX_DEPTH` levels of JSON are refused with a
:class:`~satchel.errors.SerializationError` at the assignment: every JSON
reader on the way back has a depth limit, and a value that is stored must
always load.

Everything else JSON holds natively (``str``, ``int``, ``float``, ``bool``,
``None``, lists and dicts with string keys) is stored as is; a subclass of
``str``, ``int`` or ``float`` (an ``enum.StrEnum`` member, say) comes back as
the plain base type. Any other type,
or a dict key that is not a string, raises
:class:`~satchel.errors.SerializationError` rather than being silently
changed.
"""

from __future__ import annotations

import math
from base64 import b64decode, b64encode
from datetime import date, datetime
from typing import Any
from uuid import UUID

from markupsafe import Markup

from . import _json
from .errors import SerializationError

__all__ = ["MAX_DEPTH", "dumps", "loads"]

#: The deepest nesting of lists, dicts and tagged values a session value may have,
#: counted in levels of the JSON stored (a tuple counts two: its tag and its list).
MAX_DEPTH = 128

_TAGS = frozenset({" t", " b", " m", " u", " d", " D", " i", " di"})
# JSON readers (orjson among them) may turn a longer integer into a float.
_INT64 = 2**63
_PLAIN = (str, int, float, bool, type(None))


class _NonFinite(float):
    """NaN or an infinity: written as ``NaN``/``Infinity`` by the standard library.

    A float subclass, so the fast encoder refuses it (rather than writing
    ``null``) and the value goes through :mod:`json`, as it always has.
    """


def _too_deep(key: str | None, kind: type) -> SerializationError:
    reason = f"it is nested deeper than {MAX_DEPTH} levels, which could not be read back"
    return SerializationError(key, kind, reason=reason)


def _tag(value: Any, key: str | None, depth: int = 0) -> Any:
    kind = type(value)
    if kind not in _PLAIN and depth >= MAX_DEPTH:
        raise _too_deep(key, kind)
    depth += 1
    if kind in _PLAIN:
        if kind is float and not math.isfinite(value):
            return _NonFinite(value)
        if kind is int and not -_INT64 <= value < _INT64:
            return {" i": str(value)}
        return value
    if kind is list:
        return [_tag(item, key, depth) for item in value]
    if kind is dict:
        out = {}
        for name, item in value.items():
            if type(name) is not str:
                if not isinstance(name, str):
                    raise SerializationError(
                        key, type(name), "dict keys must be strings, as in JSON"
                    )
                name = str.__str__(name)  # a StrEnum member, say: its text, as json writes it
            out[name] = _tag(item, key, depth)
        if len(out) == 1 and next(iter(out)) in _TAGS:
            if depth >= MAX_DEPTH:
                raise _too_deep(key, kind)
            return {" di": out}
        return out
    if kind is tuple:
        if depth >= MAX_DEPTH:
            raise _too_deep(key, kind)
        return {" t": [_tag(item, key, depth + 1) for item in value]}
    if kind is bytes:
        return {" b": b64encode(value).decode("ascii")}
    if isinstance(value, Markup):
        return {" m": str(value)}
    if isinstance(value, UUID):
        return {" u": value.hex}
    if isinstance(value, datetime):
        return {" d": value.isoformat()}
    if isinstance(value, date):
        return {" D": value.isoformat()}
    if hasattr(value, "__html__"):
        return {" m": str(value.__html__())}
    for plain in _PLAIN[:3]:
        if isinstance(value, plain):  # an IntEnum or StrEnum member, say
            return _tag(plain(value), key, depth - 1)
    raise SerializationError(key, kind)


def _untag(value: Any) -> Any:
    kind = type(value)
    if kind is list:
        return [_untag(item) for item in value]
    if kind is not dict:
        return value
    if len(value) == 1:
        ((name, inner),) = value.items()
        if name == " t":
            return tuple(_untag(item) for item in inner)
        if name == " b":
            return b64decode(inner)
        if name == " m":
            return Markup(inner)
        if name == " u":
            return UUID(inner)
        if name == " d":
            return datetime.fromisoformat(inner)
        if name == " D":
            return date.fromisoformat(inner)
        if name == " i":
            return int(inner)
        if name == " di":
            return {k: _untag(v) for k, v in inner.items()}
    return {k: _untag(v) for k, v in value.items()}


def dumps(value: Any, key: str | None = None) -> bytes:
    """Serialise one session value to UTF-8 JSON bytes.

    ``key`` only names the value in a :class:`SerializationError`.
    """
    try:
        return _json.dumps(_tag(value, key))
    except ValueError as exc:  # a container that holds itself, a lone surrogate
        raise SerializationError(key, type(value), str(exc)) from exc
    except RecursionError as exc:
        raise SerializationError(key, type(value), "nested too deeply") from exc


def loads(data: bytes) -> Any:
    """Deserialise bytes written by :func:`dumps`."""
    return _untag(_json.loads(data))
