"""An MLLP client (HL7 Implementation Guide Appendix C) for ``mwl-broker send-hl7``,
outbound delivery and tests: send a framed message, read the framed ACK."""

from __future__ import annotations

import re
import socket
import ssl as ssl_module
from pathlib import Path
from types import TracebackType

START, END = b"\x0b", b"\x1c\x0d"


class MLLPTimeout(TimeoutError):
    """No complete ACK arrived within the timeout."""


class MLLPClient:
    """A blocking MLLP connection; use as a context manager."""

    def __init__(self, host: str, port: int, timeout: float = 10.0,
                 ssl: ssl_module.SSLContext | None = None) -> None:
        self.host, self.port, self.timeout, self.ssl = host, port, timeout, ssl
        self._sock: socket.socket | None = None
        self._buffer = b""

    def __enter__(self) -> MLLPClient:
        self.connect()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def connect(self) -> None:
        sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.ssl is not None:
            sock = self.ssl.wrap_socket(sock, server_hostname=self.host)
        self._sock = sock

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def send(self, message: bytes) -> bytes:
        """Send one message; return the ACK without its framing."""
        if self._sock is None:
            self.connect()
        assert self._sock is not None
        self._sock.sendall(START + message + END)
        return self.receive()

    def receive(self) -> bytes:
        """Read one framed message from the connection."""
        assert self._sock is not None
        while True:
            start = self._buffer.find(START)
            end = self._buffer.find(END, start + 1) if start >= 0 else -1
            if start >= 0 and end >= 0:
                frame = self._buffer[start + 1:end]
                self._buffer = self._buffer[end + 2:]
                return frame
            try:
                chunk = self._sock.recv(65536)
            except TimeoutError:
                raise MLLPTimeout(f"no ACK within {self.timeout}s") from None
            if not chunk:
                raise ConnectionError("connection closed before an ACK arrived")
            self._buffer += chunk

    def send_many(self, messages: list[bytes]) -> list[bytes]:
        return [self.send(m) for m in messages]


def read_hl7_file(path: Path) -> list[bytes]:
    """The messages in a file: one or more, each starting with MSH; LF and CRLF
    segment ends become CR."""
    data = path.read_bytes().replace(b"\r\n", b"\r").replace(b"\n", b"\r")
    parts = re.split(rb"\r(?=MSH)", data)
    return [p.strip(b"\r") for p in parts if p.strip(b"\r\x0b\x1c")]
