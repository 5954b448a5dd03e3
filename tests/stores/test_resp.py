"""The async Redis store's own connection (satchel.stores._resp): its framing of
commands and its reply timeout."""

from __future__ import annotations

import asyncio

import pytest

from satchel.stores._resp import RespConnection, encode

from ..valkey import ValkeyServer


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


def test_a_reply_that_never_comes_fails_by_its_timeout_and_the_next_call_reconnects(
    own_valkey: ValkeyServer,
) -> None:
    """A frozen server: the command fails by the connection's own timeout (the outer
    bound only keeps a broken timer from hanging the suite), the connection closes so no
    late reply reaches another command, and once the server answers again so does the
    connection. A cancelled call leaves nothing that fires later."""

    async def check() -> None:
        connection = RespConnection(port=own_valkey.port, timeout=0.3)
        assert await connection.call("SET", "k", "1") == b"OK"
        own_valkey.freeze()
        try:
            with pytest.raises(TimeoutError, match=r"no reply within 0\.3s"):
                await asyncio.wait_for(connection.call("GET", "k"), 10)
            cancelled = asyncio.create_task(connection.call("GET", "k"))
            await asyncio.sleep(0.05)
            cancelled.cancel()
            with pytest.raises(asyncio.CancelledError):
                await cancelled
        finally:
            own_valkey.thaw()
        await asyncio.sleep(0.4)  # past the cancelled call's timeout: nothing may fire
        assert await asyncio.wait_for(connection.call("GET", "k"), 10) == b"1"
        assert await connection.call("INCR", "n") == 1
        connection.close()

    errors: list[dict[str, object]] = []
    loop = asyncio.new_event_loop()
    loop.set_exception_handler(lambda _, context: errors.append(context))
    try:
        loop.run_until_complete(check())
    finally:
        loop.close()
    assert errors == []
