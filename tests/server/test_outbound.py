"""A client that stops reading is cut off; it never makes the hub wait (pure unit test: a fake socket)."""

from __future__ import annotations

import asyncio

from server.closecodes import Close
from server.hub import Outbound


class StuckSocket:
    """A WebSocket whose peer never reads: every send blocks forever."""

    def __init__(self) -> None:
        self.closed = False
        self.close_code: int | None = None
        self.sent = 0

    async def send_frame(self, data: bytes, opcode: int) -> None:
        self.sent += 1
        await asyncio.Event().wait()

    async def close(self, code: int, message: bytes = b"") -> None:
        self.closed = True
        self.close_code = code


async def test_overflow_closes_with_slow_consumer_and_never_blocks() -> None:
    ws = StuckSocket()
    out = Outbound(ws, limit=8)  # type: ignore[arg-type]
    out.put(b"first")
    await asyncio.sleep(0.01)  # the pump is now stuck in the socket
    for i in range(100):
        out.put(f"frame {i}".encode())  # put() is synchronous: it cannot block the hub whatever the peer does
    await asyncio.sleep(0.01)
    assert out.overflowed and ws.closed and ws.close_code == Close.SLOW_CONSUMER
    assert ws.sent == 1  # the one frame stuck in the socket; the rest were dropped, not buffered
    await out.stop()


async def test_a_reading_client_gets_everything_in_order() -> None:
    got: list[bytes] = []

    class Reader(StuckSocket):
        async def send_frame(self, data: bytes, opcode: int) -> None:
            got.append(data)

    out = Outbound(Reader(), limit=8)  # type: ignore[arg-type]
    for i in range(5):
        out.put(str(i).encode())
    await out.flush()
    assert got == [b"0", b"1", b"2", b"3", b"4"] and not out.overflowed
    await out.stop()
