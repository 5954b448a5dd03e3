"""Byte sizes as people write them in settings and URLs: ``65536``, ``"64MB"``, ``"1 MiB"``.

One parser for every size setting (``SATCHEL_MAX_SIZE``, ``max_size=``, the Redis
record cache's ``?cache=``), so each accepts the same spellings.
"""

from __future__ import annotations

import re

__all__ = ["parse_size"]

_UNITS = {"": 1, "b": 1, "kb": 1000, "mb": 1000**2, "gb": 1000**3}
_UNITS.update({"kib": 1024, "mib": 1024**2, "gib": 1024**3})


def parse_size(text: str | int) -> int:
    """A byte count from ``65536``, ``"64MB"``, ``"64 MiB"`` or ``"0"``.

    Units are B, kB, MB, GB (powers of 1000) and KiB, MiB, GiB (of 1024), in any
    case. Raises :class:`ValueError` for anything else, or a negative count.
    """
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    else:
        found = re.fullmatch(r"\s*(\d+)\s*([a-zA-Z]*)\s*", str(text))
        unit = found.group(2).lower() if found else ""
        if found is None or unit not in _UNITS:
            raise ValueError(f"a size looks like 65536, 64MB or 64MiB, not {text!r}")
        value = int(found.group(1)) * _UNITS[unit]
    if value < 0:
        raise ValueError(f"a size cannot be negative: {text!r}")
    return value
