"""A TCP proxy that misbehaves on command, for the fault suite (no tc netem or iptables on these machines).

    proxy = FaultProxy("127.0.0.1", hub_port); port = await proxy.start()
    proxy.blackhole(True)      # nothing passes either way (held, as a dead route holds packets), FIN included
    proxy.blackhole(False)     # what was held goes on: both ends see whatever the other did meanwhile
    proxy.latency_s = 0.2      # every chunk waits this long, in each direction (order kept)
    await proxy.reset_all()    # each live connection: the next chunk is cut in half, then both sides get a RST

Each accepted connection is two pumps (client to server, server to client). A pump reads a chunk, waits while
the proxy is blackholed, sleeps the added latency, and writes it on; a pending reset writes only part of the
chunk (so the reader is left in the middle of a WebSocket frame) and aborts both sockets with SO_LINGER 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from dataclasses import dataclass, field


@dataclass(eq=False)
class _Link:
    client: tuple[asyncio.StreamReader, asyncio.StreamWriter]
    server: tuple[asyncio.StreamReader, asyncio.StreamWriter]
    reset: asyncio.Event = field(default_factory=asyncio.Event)
    done: asyncio.Event = field(default_factory=asyncio.Event)


def _rst(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP reset, not a FIN: what a crashed middlebox or a pulled cable looks like to the peer."""
    sock = writer.get_extra_info("socket")
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class FaultProxy:
    def __init__(self, target_host: str, target_port: int, listen_port: int = 0) -> None:
        self.target = (target_host, target_port)
        self.listen_port = listen_port
        self.latency_s = 0.0
        self._open = asyncio.Event()
        self._open.set()
        self._links: set[_Link] = set()
        self._server: asyncio.Server | None = None
        self.accepted = 0
        self.resets = 0

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.listen_port)
        self.listen_port = self._server.sockets[0].getsockname()[1]
        return self.listen_port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for link in list(self._links):
            _rst(link.client[1])
            _rst(link.server[1])
        self._open.set()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    def blackhole(self, on: bool) -> None:
        if on:
            self._open.clear()
        else:
            self._open.set()

    @property
    def live(self) -> int:
        return len(self._links)

    async def reset_all(self, within_s: float = 2.0) -> int:
        """Reset every live connection mid-chunk; one that carries nothing for `within_s` is reset anyway."""
        links = list(self._links)
        for link in links:
            link.reset.set()
        if links:
            await asyncio.wait([asyncio.ensure_future(link.done.wait()) for link in links], timeout=within_s)
        for link in links:
            if not link.done.is_set():
                self._abort(link)
        return len(links)

    def _abort(self, link: _Link) -> None:
        if link.done.is_set():
            return
        link.done.set()
        self.resets += 1
        _rst(link.client[1])
        _rst(link.server[1])
        self._links.discard(link)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        await self._open.wait()  # a blackholed route does not complete new connections either
        try:
            server = await asyncio.open_connection(*self.target)
        except OSError:
            _rst(writer)
            return
        link = _Link((reader, writer), server)
        self._links.add(link)
        try:
            await asyncio.gather(self._pump(link, reader, server[1]), self._pump(link, server[0], writer))
        finally:
            self._links.discard(link)
            for w in (writer, server[1]):
                with contextlib.suppress(Exception):
                    w.close()

    async def _pump(self, link: _Link, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while not link.done.is_set():
                data = await src.read(65536)
                await self._open.wait()
                if self.latency_s > 0:
                    await asyncio.sleep(self.latency_s)
                if link.done.is_set():
                    return
                if not data:
                    dst.write_eof() if dst.can_write_eof() else dst.close()
                    return
                if link.reset.is_set():
                    dst.write(data[: max(1, len(data) // 2)] if len(data) > 1 else b"")
                    with contextlib.suppress(Exception):
                        await dst.drain()
                    self._abort(link)
                    return
                dst.write(data)
                await dst.drain()
        except (ConnectionError, OSError):
            self._abort(link)
