"""How many DICOM connections the broker holds, and for how long.

A peer must not be able to take every association slot and so lock the modalities
out. The rules, each a setting:

* Per address: at most ``dicom_max_associations_per_ip`` connections (associated or
  not) from one IP address; a further one is closed as soon as it is accepted, before
  anything is read (as the MLLP listener does).
* Before the association: a connection has ``dicom_acse_timeout`` seconds for its TLS
  handshake and again for its A-ASSOCIATE-RQ (the ARTIM timer, PS3.8 9.1.5; counted
  from its first byte, which must arrive within that time too); the TLS handshake
  runs in the connection's own thread, never in the accept loop. The first byte is
  looked at, not read: on the TLS port it must open a TLS handshake, on the plaintext
  port it must be a PDU type (PS3.8 Table 9-11), else the connection is closed with
  one log line (an HL7 sender on the DICOM port would otherwise get an A-ABORT, and
  a log line, for every six bytes it sends). At most
  ``dicom_max_associations + dicom_reserved_associations`` connections may wait for
  their A-ASSOCIATE-RQ at once: a new connection closes the one that has waited
  longest, so silent sockets cannot keep a modality from connecting.
* Admission (after access control): an association is accepted while fewer than
  ``dicom_max_associations`` are open; a calling AE title whose allow-list entry binds
  it to hosts or a certificate may also use the ``dicom_reserved_associations`` above
  that. Otherwise A-ASSOCIATE-RJ rejected-transient, service-provider (presentation),
  reason 2 "local-limit-exceeded" (PS3.8 9.3.4, Table 9-21): the SCU may try again.
* Silence: an association that sends nothing for ``dicom_network_timeout`` seconds is
  aborted (A-ABORT), and so is a PDU that stops half-way for that long.
* Idleness: an association that has asked for nothing but C-ECHO (a keep-alive) for
  ``dicom_idle_timeout`` seconds is aborted; a request in progress (a C-FIND being
  answered, a C-STORE still arriving) is never idle.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from typing import Any

from pynetdicom import evt
from pynetdicom.dimse_messages import C_CANCEL_RQ, C_ECHO_RQ, C_ECHO_RSP

from broker.config import Settings
from broker.dicom import fastpath
from broker.dicom.refusals import PDU_TYPES, TLS_HANDSHAKE, RefusalLog, first_byte

log = logging.getLogger(__name__)

P_DATA_TF = 0x04
KEEP_ALIVE = (C_ECHO_RQ, C_ECHO_RSP, C_CANCEL_RQ)  # messages that do not make a link busy
LOCAL_LIMIT_EXCEEDED = (0x02, 0x03, 0x02)  # PS3.8 Table 9-21: transient, provider, reason 2


class DeferredHandshake:
    """An :class:`ssl.SSLContext` stand-in for pynetdicom's server: it wraps accepted
    sockets without the handshake, which pynetdicom would otherwise do in its accept
    loop, where one peer that never finishes it stalls every other connection. The
    handshake is done by :meth:`AssociationGuard.on_connection` in the connection's
    own thread, within the ACSE timeout."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self.context = context

    def wrap_socket(self, sock: socket.socket, server_side: bool = True,
                    **_: Any) -> ssl.SSLSocket:
        return self.context.wrap_socket(sock, server_side=server_side,
                                        do_handshake_on_connect=False)


@dataclass(eq=False)
class _Connection:
    assoc: Any
    sock: socket.socket | None
    ip: str
    opened: float
    last_useful: float
    associated: bool = False
    reserved: bool = False
    closed: bool = False  # refused or evicted by us: no longer counted
    partial: float | None = None  # last P-DATA of a message not yet complete
    busy: bool = False  # a request received and not yet answered


def _transport(assoc: Any) -> socket.socket | None:
    return fastpath.transport_socket(assoc)


def _peek(sock: socket.socket, timeout: float) -> int | None:
    """The connection's first byte, left unread (the raw socket's, beneath TLS); None
    when the peer closes or sends nothing within ``timeout``."""
    sock.settimeout(timeout)
    try:
        data = socket.socket.recv(sock, 1, socket.MSG_PEEK)
    except OSError:  # timeouts too
        return None
    return data[0] if data else None


def _tls_failure(exc: Exception, timeout: float) -> str:
    """Why a TLS handshake failed, in OpenSSL's words (no peer data)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"client certificate not accepted: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason)
    if isinstance(exc, TimeoutError):
        return f"not done within {timeout:g} s"
    return type(exc).__name__


def _close(sock: socket.socket | None) -> None:
    """Shut the connection down from any thread (the base socket's shutdown, so an
    SSLSocket in another thread's handshake just sees its connection end)."""
    if sock is not None:
        with contextlib.suppress(OSError):
            socket.socket.shutdown(sock, socket.SHUT_RDWR)


class AssociationGuard:
    """Connection and association bookkeeping of one :class:`DicomServer` (all its
    ports): event handlers for pynetdicom, :meth:`admit` for the EVT_REQUESTED
    handler, and a thread that aborts idle associations."""

    def __init__(self, settings: Settings, refusals: RefusalLog) -> None:
        self.refusals = refusals
        self.general = settings.dicom_max_associations
        self.reserve = settings.dicom_reserved_associations
        self.per_ip = settings.dicom_max_associations_per_ip
        self.acse_timeout = settings.dicom_acse_timeout
        self.network_timeout = settings.dicom_network_timeout
        self.idle_timeout = settings.dicom_idle_timeout
        self._lock = threading.Lock()
        self._connections: dict[int, _Connection] = {}
        self._stop = threading.Event()
        self._reaper: threading.Thread | None = None

    @property
    def backstop(self) -> int:
        """pynetdicom's own limit, which counts every connection thread still alive
        (those refused or evicted linger until their ARTIM wait ends); the limits above
        are the ones that decide, this only bounds the threads."""
        return max(4 * (self.general + self.reserve), 256)

    def handlers(self) -> list[tuple[Any, Any]]:
        return [(evt.EVT_CONN_OPEN, self.on_connection),
                (evt.EVT_CONN_CLOSE, self._on_close),
                (evt.EVT_DATA_RECV, self._on_data),
                (evt.EVT_DIMSE_RECV, self._on_dimse_received),
                (evt.EVT_DIMSE_SENT, self._on_dimse_sent)]

    # -- connection --------------------------------------------------------------------

    def on_connection(self, event: Any) -> None:
        """Per-address cap and waiting-room eviction, then the first byte and the TLS
        handshake (runs in the connection's thread before its association starts)."""
        assoc = event.assoc
        sock = _transport(assoc)
        ip = str(event.address[0]) if event.address else "?"
        now = time.monotonic()
        conn = _Connection(assoc, sock, ip, now, now)
        victim: _Connection | None = None
        with self._lock:
            live = [c for c in self._connections.values() if not c.closed]
            from_ip = sum(1 for c in live if c.ip == ip)
            refused = bool(self.per_ip) and from_ip >= self.per_ip
            if not refused:
                waiting = [c for c in live if not c.associated]
                if len(waiting) >= self.general + self.reserve:
                    victim = min(waiting, key=lambda c: c.opened)
                    victim.closed = True
            conn.closed = refused
            self._connections[id(assoc)] = conn
        if victim is not None:
            log.info("DICOM connection from %s closed: waited longest without an "
                     "A-ASSOCIATE-RQ while the waiting room was full", victim.ip)
            _close(victim.sock)
        if refused:
            self.refusals.refused("address-limit-exceeded", ip,
                                  detail=f"{self.per_ip} already open")
            self._refuse(assoc)
            return
        if sock is None:
            return
        tls = isinstance(sock, ssl.SSLSocket)
        first = _peek(sock, self.acse_timeout)
        if first is None:  # closed, or silent for the whole ARTIM time: just close
            self._refuse(assoc)
            return
        expected = (first == TLS_HANDSHAKE) if tls else (first in PDU_TYPES)
        if not expected:
            self.refusals.refused("tls-handshake-failed" if tls else "not-dicom", ip,
                                  detail=first_byte(first, tls_port=tls))
            self._refuse(assoc)
            return
        if isinstance(sock, ssl.SSLSocket):
            timeout = max(self.acse_timeout - (time.monotonic() - now), 0.01)
            sock.settimeout(timeout)
            try:
                sock.do_handshake()
            except (OSError, ValueError) as exc:  # ssl.SSLError and timeouts are OSError
                self.refusals.refused("tls-handshake-failed", ip,
                                      detail=_tls_failure(exc, self.acse_timeout))
                self._refuse(assoc)
                return
        # Bounds a PDU that stops half-way; pynetdicom reads only when data is ready.
        sock.settimeout(self.network_timeout)

    def _refuse(self, assoc: Any) -> None:
        with self._lock:
            conn = self._connections.get(id(assoc))
            if conn is not None:
                conn.closed = True
        assoc.acse_timeout = 0.01  # nothing will come: end its ARTIM wait at once
        fastpath.close_transport(assoc)

    def _on_close(self, event: Any) -> None:
        with self._lock:
            self._connections.pop(id(event.assoc), None)

    # -- admission ---------------------------------------------------------------------

    def admit(self, assoc: Any, reserved: bool) -> bool:
        """Take an association slot for an allowed A-ASSOCIATE-RQ: False when the
        general limit (or, for a ``reserved`` peer, general + reserve) is reached, or
        the connection was closed meanwhile; the caller then rejects it."""
        with self._lock:
            conn = self._connections.get(id(assoc))
            if conn is None or conn.closed:
                return False
            held = sum(1 for c in self._connections.values()
                       if c.associated and not c.closed and c is not conn)
            if held >= self.general + (self.reserve if reserved else 0):
                return False
            conn.associated, conn.reserved = True, reserved
            conn.last_useful = time.monotonic()
            return True

    def counts(self) -> dict[str, int]:
        """Open connections: waiting for their A-ASSOCIATE-RQ, associated, in reserve."""
        with self._lock:
            live = [c for c in self._connections.values() if not c.closed]
        return {"waiting": sum(1 for c in live if not c.associated),
                "associated": sum(1 for c in live if c.associated),
                "reserved": sum(1 for c in live if c.reserved)}

    # -- activity ----------------------------------------------------------------------

    def _conn(self, event: Any) -> _Connection | None:
        return self._connections.get(id(event.assoc))

    def _on_data(self, event: Any) -> None:
        conn = self._conn(event)
        if conn is not None and event.data[:1] == bytes([P_DATA_TF]):
            conn.partial = time.monotonic()

    def _on_dimse_received(self, event: Any) -> None:
        conn = self._conn(event)
        if conn is None:
            return
        conn.partial = None
        if not isinstance(event.message, KEEP_ALIVE):
            conn.busy, conn.last_useful = True, time.monotonic()

    def _on_dimse_sent(self, event: Any) -> None:
        conn = self._conn(event)
        if conn is not None and not isinstance(event.message, KEEP_ALIVE):
            conn.busy, conn.last_useful = False, time.monotonic()

    # -- idle associations -------------------------------------------------------------

    def start(self) -> None:
        self._stop.clear()
        self._reaper = threading.Thread(target=self._reap_loop, name="mwl-dicom-idle",
                                        daemon=True)
        self._reaper.start()

    def stop(self) -> None:
        self._stop.set()
        if self._reaper is not None:
            self._reaper.join(5)
            self._reaper = None

    def _reap_loop(self) -> None:
        interval = min(1.0, self.idle_timeout / 4) if self.idle_timeout else 1.0
        while not self._stop.wait(max(interval, 0.05)):
            try:
                self.reap()
            except Exception as exc:  # never let the reaper die
                log.error("idle association check failed: %s", type(exc).__name__)

    def reap(self) -> None:
        """Abort associations idle past ``dicom_idle_timeout``; forget threads gone."""
        now = time.monotonic()
        idle: list[_Connection] = []
        with self._lock:
            for key, conn in list(self._connections.items()):
                thread_done = conn.assoc.ident is not None and not conn.assoc.is_alive()
                if thread_done or (conn.closed and now - conn.opened > 2 * self.acse_timeout
                                   + 5):
                    del self._connections[key]
                    continue
                if not self.idle_timeout or not conn.associated or conn.closed or conn.busy:
                    continue
                since = max(conn.last_useful, conn.partial or 0.0)
                if now - since > self.idle_timeout:
                    conn.closed = True
                    idle.append(conn)
        for conn in idle:
            log.info("DICOM association from %s aborted: no request but C-ECHO for %.0f s",
                     conn.ip, self.idle_timeout)
            with contextlib.suppress(Exception):
                conn.assoc.abort()
