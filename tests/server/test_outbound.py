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


class Transport(asyncio.WriteTransport):
    """What Outbound asks of the socket's transport: how much it still holds unsent."""

    def __init__(self) -> None:
        super().__init__()
        self.unsent = 0

    def get_write_buffer_size(self) -> int:
        return self.unsent


async def test_a_frame_to_an_idle_socket_is_written_at_once_without_a_task() -> None:
    got: list[bytes] = []

    class Reader(StuckSocket):
        async def send_frame(self, data: bytes, opcode: int) -> None:
            got.append(data)

    out = Outbound(Reader(), limit=8, transport=Transport())  # type: ignore[arg-type]
    out.put(b"ack 1")
    assert got == [b"ack 1"]  # before any await: written in put() itself
    assert out._task is None and out._queue is None  # nothing held for an idle connection
    await out.stop()


async def test_frames_behind_unsent_data_queue_and_keep_their_order() -> None:
    got: list[bytes] = []
    transport = Transport()

    class Reader(StuckSocket):
        async def send_frame(self, data: bytes, opcode: int) -> None:
            got.append(data)  # written first, as aiohttp writes a frame before it waits for a drain
            await asyncio.sleep(0)

    out = Outbound(Reader(), limit=8, transport=transport)  # type: ignore[arg-type]
    out.put(b"0")  # an idle socket: written at once (the wait that follows is dropped)
    transport.unsent = 100  # the peer is behind: what follows must queue behind the pump
    out.put(b"1")
    out.put(b"2")
    transport.unsent = 0  # the socket caught up, but the queue still holds frames: they go first
    out.put(b"3")
    await out.flush()
    assert got == [b"0", b"1", b"2", b"3"]
    await out.stop()


async def test_a_stuck_peer_is_still_cut_off_when_frames_went_straight_out() -> None:
    ws = StuckSocket()
    transport = Transport()
    out = Outbound(ws, limit=8, transport=transport)  # type: ignore[arg-type]
    out.put(b"first")  # the socket looked idle: written directly; its wait is dropped, put() did not block
    assert ws.sent == 1
    transport.unsent = 1 << 20  # the peer stopped reading: the transport fills up
    for i in range(100):
        out.put(f"frame {i}".encode())
    await asyncio.sleep(0.01)
    assert out.overflowed and ws.closed and ws.close_code == Close.SLOW_CONSUMER
    await out.stop()


def test_uvloop_transports_take_the_direct_path() -> None:
    """The hub runs on uvloop, whose transports are not asyncio.WriteTransport subclasses: the direct write must
    not depend on that (it once did, and every ack took a task)."""
    import uvloop

    got: list[bytes] = []

    class Reader(StuckSocket):
        async def send_frame(self, data: bytes, opcode: int) -> None:
            got.append(data)

    async def main() -> None:
        accepted: list[asyncio.StreamWriter] = []
        server = await asyncio.start_server(lambda r, w: accepted.append(w), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        out = Outbound(Reader(), limit=8, transport=writer.transport)  # type: ignore[arg-type]
        try:
            assert type(writer.transport).__module__.startswith("uvloop")
            out.put(b"ack")
            direct = got == [b"ack"] and out._task is None
        finally:
            await out.stop()
            for w in (writer, *accepted):
                w.close()
                await w.wait_closed()
            server.close()
            await server.wait_closed()
        assert direct

    uvloop.run(main())
