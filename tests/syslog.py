"""A stand-in audit repository: a real syslog receiver (RFC 6587 octet-counted TCP, or
RFC 5426 UDP) that keeps every message it gets."""

from __future__ import annotations

import socket
import threading
import time
from xml.etree import ElementTree as ET


class SyslogReceiver:
    def __init__(self, port: int = 0, udp: bool = False) -> None:
        self.port, self.udp = port, udp
        self.messages: list[bytes] = []
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._conns: list[socket.socket] = []

    def start(self) -> SyslogReceiver:
        kind = socket.SOCK_DGRAM if self.udp else socket.SOCK_STREAM
        sock = socket.socket(socket.AF_INET, kind)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        self.port = sock.getsockname()[1]
        if not self.udp:
            sock.listen(8)
        self._sock = sock
        target = self._datagrams if self.udp else self._accept
        threading.Thread(target=target, args=(sock,), daemon=True).start()
        return self

    def stop(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        for conn in self._conns:
            conn.close()

    def _keep(self, message: bytes) -> None:
        with self._lock:
            self.messages.append(message)

    def _datagrams(self, sock: socket.socket) -> None:
        while True:
            try:
                self._keep(sock.recv(65536))
            except OSError:
                return

    def _accept(self, sock: socket.socket) -> None:
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            self._conns.append(conn)
            threading.Thread(target=self._read, args=(conn,), daemon=True).start()

    def _read(self, conn: socket.socket) -> None:
        buffer = b""
        while True:
            try:
                data = conn.recv(65536)
            except OSError:
                return
            if not data:
                return
            buffer += data
            while b" " in buffer:
                length, _, rest = buffer.partition(b" ")
                if len(rest) < int(length):
                    break
                self._keep(rest[:int(length)])
                buffer = rest[int(length):]

    def events(self) -> list[ET.Element]:
        """The audit messages received, parsed."""
        with self._lock:
            raw = list(self.messages)
        return [ET.fromstring(m.split(b"\xef\xbb\xbf", 1)[1].decode()) for m in raw]

    def wait_for(self, predicate: object, timeout: float = 30) -> list[ET.Element]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            events = self.events()
            if predicate(events):  # type: ignore[operator]
                return events
            time.sleep(0.1)
        raise AssertionError(f"audit receiver: condition not met; got {codes(self.events())}")


def codes(events: list[ET.Element]) -> list[str]:
    """EventID codes, with the EventTypeCode when there is one ("110100/110120")."""
    out = []
    for event in events:
        ident = event.find("EventIdentification")
        assert ident is not None
        event_id = ident.find("EventID")
        type_code = ident.find("EventTypeCode")
        code = event_id.get("csd-code", "") if event_id is not None else ""
        if type_code is not None:
            code += "/" + type_code.get("csd-code", "")
        out.append(code)
    return out
