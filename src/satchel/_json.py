"""JSON to bytes and back, through orjson where it is installed, else the standard library.

orjson encodes a 50 KB string in a few microseconds where :mod:`json` takes a
few hundred on a small machine, and every session write and read goes through
here. It is a dependency on CPython; elsewhere (PyPy) the standard library does
the work. What orjson refuses (integers beyond 64 bits, float subclasses) or
reads differently (``NaN``) falls back to the standard library, so both give the
same values back; only the bytes for a few floats differ (``1e16`` or
``1e+16``), which at most makes a value look changed once.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

__all__ = ["dumps", "dumps_std", "loads", "loads_std"]

_fast_dumps: Callable[[Any], bytes] | None
_fast_loads: Callable[[bytes | str], Any] | None
try:
    import orjson

    _fast_dumps, _fast_loads = orjson.dumps, orjson.loads
except ImportError:  # pragma: no cover - PyPy, or a platform without a wheel
    _fast_dumps = _fast_loads = None

_encode = json.JSONEncoder(
    ensure_ascii=False, separators=(",", ":"), allow_nan=True, check_circular=True
).encode
_decode = json.JSONDecoder().decode


def dumps_std(value: Any) -> bytes:
    """Encode with the standard library only (compact, UTF-8, NaN allowed)."""
    return _encode(value).encode("utf-8")


def loads_std(data: bytes | str) -> Any:
    """Decode with the standard library only."""
    return _decode(data if isinstance(data, str) else data.decode("utf-8"))


def dumps(value: Any) -> bytes:
    """Encode ``value`` as compact UTF-8 JSON; raise ValueError or TypeError if it is not JSON."""
    if _fast_dumps is not None:
        try:
            return _fast_dumps(value)
        except (TypeError, ValueError):  # a big int, a float subclass (NaN), deep nesting
            pass
    return dumps_std(value)


def loads(data: bytes | str) -> Any:
    """Decode JSON bytes or text; raise ValueError if they are not JSON."""
    if _fast_loads is not None:
        try:
            return _fast_loads(data)
        except ValueError:  # NaN and Infinity, which only the standard library reads
            pass
    return loads_std(data)
