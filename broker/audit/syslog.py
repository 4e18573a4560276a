"""Audit export to a syslog receiver (IHE ITI-20 "Record Audit Event"):
RFC 5424 messages carrying the DICOM audit message XML, over UDP (RFC 5426, one
datagram each), TCP (RFC 6587 octet counting) or TLS (RFC 5425).

The ``audit_event`` table is the buffer: the exporter sends unexported rows in id
order and marks them exported; while the receiver is down nothing is lost, it retries
every few seconds and catches up when it is back. One exporter per process; with
several processes each sends what it finds (the update marks rows once: a row may be
sent twice around a crash, never lost).
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
from datetime import UTC
from urllib.parse import urlparse

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from broker.db import unit_of_work
from broker.models import AuditEvent

log = logging.getLogger(__name__)

FACILITY_AUTH = 10  # RFC 5424 "security/authorization messages"
APP_NAME = "mwl-broker"
MSGID = "IHE+RFC-3881"  # IHE ITI TF-2a 3.20.4.1.1.1


def frame(row: AuditEvent, hostname: str) -> bytes:
    """One RFC 5424 message: PRI VERSION TIMESTAMP HOSTNAME APP-NAME PROCID MSGID SD MSG."""
    severity = 5 if row.outcome == 0 else 4  # notice; warning for failures
    at = row.at if row.at.tzinfo else row.at.replace(tzinfo=UTC)
    stamp = at.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    header = f"<{FACILITY_AUTH * 8 + severity}>1 {stamp} {hostname} {APP_NAME} - {MSGID} - "
    return header.encode("ascii") + b"\xef\xbb\xbf" + row.message.encode("utf-8")


class SyslogSender:
    """Sends frames to ``udp://``, ``tcp://`` or ``tls://host:port``."""

    def __init__(self, url: str, ca_file: str | None = None, timeout: float = 5.0) -> None:
        parsed = urlparse(url)
        if parsed.scheme not in ("udp", "tcp", "tls") or not parsed.hostname:
            raise ValueError(f"audit syslog URL must be udp://, tcp:// or tls://host:port: {url}")
        self.scheme, self.host = parsed.scheme, parsed.hostname
        self.port = parsed.port or {"udp": 514, "tcp": 601, "tls": 6514}[parsed.scheme]
        self.ca_file, self.timeout = ca_file, timeout
        self._sock: socket.socket | None = None

    def _connect(self) -> socket.socket:
        if self.scheme == "udp":
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.connect((self.host, self.port))
            return sock
        sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        if self.scheme == "tls":
            context = ssl.create_default_context(cafile=self.ca_file)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            sock = context.wrap_socket(sock, server_hostname=self.host)
        return sock

    def send(self, message: bytes) -> None:
        if self._sock is None:
            self._sock = self._connect()
        if self.scheme == "udp":
            self._sock.send(message)
        else:
            self._sock.sendall(f"{len(message)} ".encode() + message)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def export_pending(factory: sessionmaker[Session], sender: SyslogSender,
                   batch: int = 200) -> int:
    """Send unexported events in order; returns how many went out."""
    hostname = socket.gethostname()
    with factory() as session:
        rows = list(session.scalars(select(AuditEvent).where(AuditEvent.exported.is_(False))
                                    .order_by(AuditEvent.id).limit(batch)))
    sent: list[int] = []
    try:
        for row in rows:
            sender.send(frame(row, hostname))
            sent.append(row.id)
    except OSError as exc:
        sender.close()
        log.warning("audit syslog unavailable (%s): %d event(s) kept for later",
                    type(exc).__name__, len(rows) - len(sent))
    if sent:
        with unit_of_work(factory) as session:
            session.execute(update(AuditEvent).where(AuditEvent.id.in_(sent))
                            .values(exported=True))
    return len(sent)


class AuditExporter(threading.Thread):
    """Exports every ``interval`` seconds (sooner after :meth:`wake`)."""

    def __init__(self, factory: sessionmaker[Session], sender: SyslogSender,
                 interval: float = 2.0) -> None:
        super().__init__(name="mwl-audit", daemon=True)
        self.factory, self.sender, self.interval = factory, sender, interval
        self._wake = threading.Event()
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            try:
                while export_pending(self.factory, self.sender) == 200:
                    pass
            except Exception as exc:  # the database may be down
                log.warning("audit export pass failed: %s", type(exc).__name__)
            self._wake.wait(self.interval)
            self._wake.clear()

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stop_event.set()
        self._wake.set()
        self.join(10)
        try:
            export_pending(self.factory, self.sender)  # what the last moments recorded
        except Exception as exc:
            log.warning("final audit export failed: %s", type(exc).__name__)
        self.sender.close()


