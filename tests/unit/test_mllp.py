"""MLLP framing and the listener's robustness (docs/swf-conformance.md A1, A2 a-f), real sockets."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from broker.hl7.mllp import FrameTooLarge, MLLPFrameDecoder, MLLPServer

SB, EB = b"\x0b", b"\x1c\x0d"


def test_decoder_splits_pipelined_frames_and_drops_garbage() -> None:
    d = MLLPFrameDecoder(1000)
    assert d.feed(b"noise" + SB + b"MSH|1" + EB + SB + b"MSH|2") == [b"MSH|1"]
    assert d.in_frame
    assert d.feed(EB) == [b"MSH|2"]
    assert not d.in_frame


def test_decoder_end_block_without_cr_is_lenient() -> None:
    d = MLLPFrameDecoder(1000)
    assert d.feed(SB + b"MSH|1\x1c" + SB + b"MSH|2\x1c\r") == [b"MSH|1", b"MSH|2"]


@pytest.mark.parametrize(("stream", "frames"), [
    # Segment ends inside the frame's tail stay in the message (the reader drops them).
    (SB + b"MSH|1\r\r\n" + EB, [b"MSH|1\r\r\n"]),
    (SB + b"MSH|1\n" + EB, [b"MSH|1\n"]),
    (SB + b"MSH|1\r\x1c\r" + SB + b"MSH|2\r\x1c\r", [b"MSH|1\r", b"MSH|2\r"]),
    # After the end block: a CR LF or LF instead of CR is garbage outside a frame.
    (SB + b"MSH|1\x1c\r\n" + SB + b"MSH|2\x1c\n" + SB + b"MSH|3" + EB,
     [b"MSH|1", b"MSH|2", b"MSH|3"]),
    # A byte order mark travels inside the frame, for the reader.
    (SB + b"\xef\xbb\xbfMSH|1" + EB, [b"\xef\xbb\xbfMSH|1"]),
])
def test_decoder_tails(stream: bytes, frames: list[bytes]) -> None:
    assert MLLPFrameDecoder(1000).feed(stream) == frames
    d = MLLPFrameDecoder(1000)  # the same bytes one at a time
    assert [m for i in range(len(stream)) for m in d.feed(stream[i:i + 1])] == frames
    assert not d.in_frame


def test_decoder_caps_the_frame() -> None:
    d = MLLPFrameDecoder(10)
    with pytest.raises(FrameTooLarge):
        d.feed(SB + b"x" * 11)


class Server:
    """An MLLPServer on an event loop thread with a recording handler."""

    def __init__(self, **options: Any) -> None:
        self.received: list[bytes] = []
        self.behaviour = "ack"
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        defaults = {"max_frame_bytes": 1000, "idle_timeout": 5.0, "frame_timeout": 5.0}
        defaults.update(options)
        self.server = MLLPServer(self.handle, host="127.0.0.1", port=0, **defaults)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(5)
        self.port = self.server.port

    async def handle(self, message: bytes, peer: str) -> bytes | None:
        self.received.append(message)
        if self.behaviour == "drop":
            return None
        if self.behaviour == "raise":
            raise RuntimeError("handler bug")
        return b"ACK " + message

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.close(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture
def server() -> Iterator[Server]:
    s = Server(idle_timeout=1.0, frame_timeout=0.5)
    yield s
    s.close()


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    return sock


def read_frames(sock: socket.socket, count: int) -> list[bytes]:
    data = b""
    while data.count(EB) < count:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return [f.lstrip(SB) for f in data.split(EB) if f]


def closed(sock: socket.socket) -> bool:
    sock.settimeout(3)
    try:
        return sock.recv(10) == b""
    except ConnectionResetError:
        return True


def test_a1_one_framed_ack_on_the_same_socket(server: Server) -> None:
    with connect(server.port) as sock:
        sock.sendall(SB + b"MSH|05" + EB)
        data = sock.recv(4096)
    assert data == SB + b"ACK MSH|05" + EB


def test_a2a_split_writes(server: Server) -> None:
    with connect(server.port) as sock:
        for part in (SB + b"MSH|sp", b"lit", EB):
            sock.sendall(part)
            time.sleep(0.2)
        assert read_frames(sock, 1) == [b"ACK MSH|split"]
    assert server.received == [b"MSH|split"]


def test_a2b_two_messages_in_one_write_get_two_acks_in_order(server: Server) -> None:
    with connect(server.port) as sock:
        sock.sendall(SB + b"MSH|03" + EB + SB + b"MSH|04" + EB)
        assert read_frames(sock, 2) == [b"ACK MSH|03", b"ACK MSH|04"]


def test_a2c_garbage_before_the_start_block(server: Server) -> None:
    with connect(server.port) as sock:
        sock.sendall(b"\x00\xffGARBAGE" + SB + b"MSH|ok" + EB)
        assert read_frames(sock, 1) == [b"ACK MSH|ok"]


def test_a2d_frame_deadline_closes_without_handing_on(server: Server) -> None:
    with connect(server.port) as sock:
        sock.sendall(SB + b"MSH|never ends")
        assert closed(sock)
    assert server.received == []


def test_idle_connection_is_closed(server: Server) -> None:
    with connect(server.port) as sock:
        assert closed(sock)


def test_a2e_oversize_frame_closes_without_handing_on(server: Server) -> None:
    with connect(server.port) as sock:
        sock.sendall(SB + b"x" * 2000)
        assert closed(sock)
    assert server.received == []


def test_a2f_end_block_without_cr_never_hangs(server: Server) -> None:
    with connect(server.port) as sock:
        sock.sendall(SB + b"MSH|lenient\x1c")
        assert read_frames(sock, 1) == [b"ACK MSH|lenient"]


def test_handler_none_drops_the_connection(server: Server) -> None:
    server.behaviour = "drop"
    with connect(server.port) as sock:
        sock.sendall(SB + b"MSH|x" + EB)
        assert closed(sock)


def test_handler_error_closes_only_that_connection(server: Server) -> None:
    server.behaviour = "raise"
    with connect(server.port) as sock:
        sock.sendall(SB + b"MSH|x" + EB)
        assert closed(sock)
    server.behaviour = "ack"
    with connect(server.port) as sock:
        sock.sendall(SB + b"MSH|y" + EB)
        assert read_frames(sock, 1) == [b"ACK MSH|y"]


def test_tcp_nodelay_on_accepted_sockets(server: Server) -> None:
    """Nagle would add ~40-80 ms to every ACK (measured here)."""
    with connect(server.port) as sock:
        sock.sendall(SB + b"MSH|n" + EB)
        read_frames(sock, 1)
        [accepted] = server.server.active.values()
        assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
