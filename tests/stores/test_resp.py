"""The async Redis store's own framing of commands (satchel.stores._resp.encode)."""

from __future__ import annotations

import pytest

from satchel.stores._resp import encode


def framed(*parts: bytes) -> bytes:
    """RESP's array of bulk strings, written out by hand."""
    return b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)


def test_every_argument_kind_is_framed_as_its_text() -> None:
    args = ("EVALSHA", "é", b"\xff\x00", 7, -1, 2.5, 1796339906.9578736, memoryview(b"mv"))
    assert encode(args) == framed(
        b"EVALSHA", "é".encode(), b"\xff\x00", b"7", b"-1", b"2.5", b"1796339906.9578736", b"mv"
    )


@pytest.mark.parametrize("bad", [True, None, bytearray(b"x"), [1]])
def test_what_no_command_can_hold_is_refused(bad: object) -> None:
    with pytest.raises(TypeError, match="cannot send"):
        encode(("SET", "k", bad))
