"""MLLP listener (HL7 Implementation Guide Appendix C, "Minimal Lower Layer Protocol").

A frame is ``0x0B`` message ``0x1C 0x0D``. Per connection, messages are handled one at
a time in arrival order and each ACK goes back on the same connection.
Robustness (a policy; Appendix C is silent on it): bytes before a start block are
discarded; a ``0x1C`` ends the frame even when the ``0x0D`` is missing (a stray ``0x0D``
is then discarded as garbage) so a sloppy sender never hangs a connection; a frame
over the size cap, a frame not finished within the frame deadline and a connection
silent for the idle timeout are all closed without handing anything on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl as ssl_module
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

START_BLOCK, END_BLOCK, CARRIAGE_RETURN = 0x0B, 0x1C, 0x0D
Handler = Callable[[bytes, str], Awaitable[bytes | None]]


class FrameTooLarge(Exception):
    """A frame grew past the configured maximum before its end block."""


class MLLPFrameDecoder:
    """Incremental MLLP deframer: feed bytes, get complete messages."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._buffer = bytearray()
        self.in_frame = False

    def feed(self, data: bytes) -> list[bytes]:
        messages: list[bytes] = []
        self._buffer += data
        while True:
            if not self.in_frame:
                start = self._buffer.find(START_BLOCK)
                if start < 0:
                    self._buffer.clear()  # garbage outside a frame
                    return messages
                del self._buffer[:start + 1]
                self.in_frame = True
            end = self._buffer.find(END_BLOCK)
            if end < 0:
                if len(self._buffer) > self.max_bytes:
                    raise FrameTooLarge(f"frame exceeds {self.max_bytes} bytes")
                return messages
            if end > self.max_bytes:
                raise FrameTooLarge(f"frame exceeds {self.max_bytes} bytes")
            messages.append(bytes(self._buffer[:end]))
            consumed = end + 1
            if consumed < len(self._buffer) and self._buffer[consumed] == CARRIAGE_RETURN:
                consumed += 1
            del self._buffer[:consumed]
            self.in_frame = False


class MLLPServer:
    """asyncio MLLP server calling ``handler(message, peer)`` for each message.

    The handler returns the ACK (unframed) or None to drop the connection.
    """

    def __init__(self, handler: Handler, *, host: str, port: int, max_frame_bytes: int,
                 idle_timeout: float, frame_timeout: float,
                 ssl: ssl_module.SSLContext | None = None,
                 max_connections_per_ip: int = 0) -> None:
        self.handler = handler
        self.host, self._port = host, port
        self.max_frame_bytes = max_frame_bytes
        self.idle_timeout, self.frame_timeout = idle_timeout, frame_timeout
        self.ssl = ssl
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        # peer "ip:port" -> socket of each open connection (for health and metrics).
        self.active: dict[str, socket.socket] = {}
        self.max_connections_per_ip = max_connections_per_ip
        self._per_ip: dict[str, int] = {}

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self._port,
                                                  ssl=self.ssl)

    @property
    def port(self) -> int:
        assert self._server is not None and self._server.sockets
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.gather(*self._connections, return_exceptions=True)
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        sock = writer.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peername = writer.get_extra_info("peername") or ("?", 0)
        peer = f"{peername[0]}:{peername[1]}"
        ip = str(peername[0])
        if self.max_connections_per_ip and self._per_ip.get(ip, 0) >= self.max_connections_per_ip:
            log.info("MLLP connection from %s refused: %d already open from that address", ip,
                     self.max_connections_per_ip)
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            return
        self._per_ip[ip] = self._per_ip.get(ip, 0) + 1
        if sock is not None:
            self.active[peer] = sock
        log.info("MLLP connection from %s", peer)
        try:
            await self._conversation(reader, writer, peer)
        except asyncio.CancelledError:
            pass
        except (ConnectionError, ssl_module.SSLError) as exc:
            log.info("MLLP connection %s ended: %s", peer, type(exc).__name__)
        except Exception as exc:
            log.error("MLLP connection %s closed after handler error %s", peer,
                      type(exc).__name__)
        finally:
            self._connections.discard(task)
            self.active.pop(peer, None)
            self._per_ip[ip] -= 1
            if not self._per_ip[ip]:
                del self._per_ip[ip]
            writer.close()
            with contextlib.suppress(Exception):  # the peer may already be gone
                await writer.wait_closed()

    async def _conversation(self, reader: asyncio.StreamReader,
                            writer: asyncio.StreamWriter, peer: str) -> None:
        loop = asyncio.get_running_loop()
        decoder = MLLPFrameDecoder(self.max_frame_bytes)
        frame_deadline: float | None = None
        while True:
            timeout = self.idle_timeout
            if frame_deadline is not None:
                timeout = min(timeout, frame_deadline - loop.time())
            try:
                async with asyncio.timeout(max(timeout, 0)):  # no task per read, unlike wait_for
                    data = await reader.read(65536)
            except TimeoutError:
                reason = "frame deadline" if frame_deadline is not None else "idle timeout"
                log.info("MLLP connection %s closed: %s", peer, reason)
                return
            if not data:
                return
            was_in_frame = decoder.in_frame
            try:
                messages = decoder.feed(data)
            except FrameTooLarge:
                log.warning("MLLP connection %s closed: frame over %d bytes", peer,
                            self.max_frame_bytes)
                return
            if not decoder.in_frame:
                frame_deadline = None
            elif messages or not was_in_frame:
                frame_deadline = loop.time() + self.frame_timeout
            for message in messages:
                ack = await self.handler(message, peer)
                if ack is None:
                    log.info("MLLP connection %s dropped by the handler", peer)
                    return
                writer.write(b"\x0b" + ack + b"\x1c\x0d")
                await writer.drain()
