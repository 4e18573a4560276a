"""A stand-in EHR: a real TCP MLLP listener that records every message it receives
and answers each with an ACK (AA by default; a test may answer AE, AR or nothing)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable

from broker.hl7.ack import build_ack
from broker.hl7.message import parse
from broker.hl7.mllp import MLLPFrameDecoder


class EHREndpoint:
    """``answer(message) -> 'AA' | 'AE' | 'AR' | None`` (None: stay silent)."""

    def __init__(self, port: int = 0, answer: Callable[[bytes], str | None] | None = None
                 ) -> None:
        self.port = port
        self.answer = answer or (lambda _m: "AA")
        self.received: list[bytes] = []
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._conns: list[socket.socket] = []

    def start(self) -> EHREndpoint:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        sock.listen(16)
        self.port = sock.getsockname()[1]
        self._sock = sock
        threading.Thread(target=self._accept, args=(sock,), daemon=True).start()
        return self

    def stop(self) -> None:
        """Close the listener and every open connection (the EHR goes down)."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        with self._lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()

    def _accept(self, sock: socket.socket) -> None:
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            with self._lock:
                self._conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        decoder = MLLPFrameDecoder(1024 * 1024)
        with conn:
            while True:
                try:
                    data = conn.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                for frame in decoder.feed(data):
                    code = self.answer(frame)
                    with self._lock:
                        self.received.append(frame)
                    if code is not None:
                        conn.sendall(b"\x0b" + build_ack(parse(frame), code) + b"\x1c\r")

    def messages(self) -> list[bytes]:
        with self._lock:
            return list(self.received)

    def wait_for(self, count: int, timeout: float = 30) -> list[bytes]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.messages()
            if len(got) >= count:
                return got
            time.sleep(0.05)
        raise AssertionError(f"EHR got {len(self.messages())} message(s), expected {count}")


def field(message: bytes, segment: str, number: int) -> str:
    """Field ``number`` of the first ``segment`` (HL7 numbering; MSH counts MSH-1)."""
    for line in message.decode("utf-8").split("\r"):
        if line.startswith(segment + "|"):
            parts = line.split("|")
            index = number - 1 if segment == "MSH" else number
            return parts[index] if index < len(parts) else ""
    raise AssertionError(f"no {segment} segment")
