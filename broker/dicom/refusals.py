"""Refused DICOM associations and connections: each is logged once, with the peer's
address, the calling and called AE titles when it sent them, and the reason (never
patient data), and counted in the ``dicom_refusal`` table for /metrics and the console.

Reasons, for the log, the metric label and the console:

* an A-ASSOCIATE-RJ, named as in PS3.8 Table 9-21 (``called-ae-title-not-recognized``,
  ``local-limit-exceeded``, ...), except that a calling AE title refused by the
  allow-list says what did not match (:func:`broker.security.access.refusal_reason`):
  ``calling-ae-title-not-recognized``, ``address-not-allowed``, ``certificate-missing``
  or ``certificate-mismatch``; on the wire all four are reason 3;
* a connection closed before its A-ASSOCIATE-RQ: ``address-limit-exceeded`` (too many
  open from that address), ``tls-handshake-failed``, ``not-dicom`` (its first byte is
  no PDU type of PS3.8 Table 9-11, e.g. an HL7 sender on the DICOM port).

Counting is cheap for the connection that is refused: counts are kept in memory per
(calling AE, called AE, address, reason) and written by one thread, at once when
nothing was written in the last :data:`FLUSH_INTERVAL` seconds and otherwise at the
end of it, in one transaction. A flood of refused connections so costs about one small
write a second, never one per connection (an embedded SQLite database has a single
writer, shared with the message store). Counts not yet written when the process dies
are lost; the log lines are not.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from datetime import UTC, datetime

from sqlalchemy import insert
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from broker.db import unit_of_work
from broker.models import DicomRefusal
from broker.outage import Outage

log = logging.getLogger(__name__)

FLUSH_INTERVAL = 1.0  # seconds between writes while refusals keep coming

REASONS = {
    # PS3.8 Table 9-21, source 1 (service user)
    "no-reason-given": "no reason given",
    "application-context-name-not-supported": "application context name not supported",
    "calling-ae-title-not-recognized": "calling AE title not on the allow-list",
    "address-not-allowed": "calling AE title not allowed from this address",
    "certificate-missing": "calling AE title without its certificate",
    "certificate-mismatch": "calling AE title with the certificate of another device",
    "called-ae-title-not-recognized": "called AE title not recognized",
    # source 2 (service provider, ACSE) and 3 (service provider, presentation)
    "protocol-version-not-supported": "protocol version not supported",
    "temporary-congestion": "temporary congestion",
    "local-limit-exceeded": "local limit exceeded (all association slots in use)",
    # before the A-ASSOCIATE-RQ
    "address-limit-exceeded": "too many connections open from this address",
    "tls-handshake-failed": "TLS handshake failed",
    "not-dicom": "not DICOM",
}

_REJECT_REASONS = {  # (source, reason/diag.) of an A-ASSOCIATE-RJ, PS3.8 Table 9-21
    (1, 1): "no-reason-given", (1, 2): "application-context-name-not-supported",
    (1, 3): "calling-ae-title-not-recognized", (1, 7): "called-ae-title-not-recognized",
    (2, 1): "no-reason-given", (2, 2): "protocol-version-not-supported",
    (3, 1): "temporary-congestion", (3, 2): "local-limit-exceeded",
}

PDU_TYPES = range(0x01, 0x08)  # PS3.8 Table 9-11: A-ASSOCIATE-RQ ... A-ABORT
TLS_HANDSHAKE = 0x16  # TLS record content type handshake (RFC 8446 5.1)
MLLP_START_BLOCK = 0x0B  # HL7 v2.5.1 C.4.3 (MLLP)


def reject_reason(source: int, diagnostic: int) -> str:
    """The name of an A-ASSOCIATE-RJ reason (PS3.8 Table 9-21)."""
    return _REJECT_REASONS.get((source, diagnostic), "no-reason-given")


def first_byte(value: int, *, tls_port: bool) -> str:
    """What a connection's first byte says about the peer, for the log."""
    if tls_port and value in PDU_TYPES:
        return f"0x{value:02X}, plaintext DICOM on the TLS port"
    if value == TLS_HANDSHAKE:
        return "0x16, a TLS handshake on the plaintext port"
    if value == MLLP_START_BLOCK:
        return "0x0B, an MLLP start block: an HL7 sender on the DICOM port?"
    return f"0x{value:02X}"


class RefusalLog:
    """Log and count refusals (see the module doc); :meth:`refused` is called from the
    connection threads, :meth:`start` / :meth:`stop` by the DICOM server."""

    def __init__(self, writer: sessionmaker[Session]) -> None:
        self.writer = writer
        self._lock = threading.Lock()
        self._counts: Counter[tuple[str, str, str, str]] = Counter()
        self._last: dict[tuple[str, str, str, str], datetime] = {}
        self._pending = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.health = Outage("refused-association counts (database)", log)

    def refused(self, reason: str, address: str, calling: str = "", called: str = "",
                detail: str = "") -> None:
        """One refusal: its log line now, its count with the next write."""
        why = REASONS.get(reason, reason) + (f": {detail}" if detail else "")
        if calling or called:
            log.warning("DICOM association from %s refused (calling AE %r, called AE %r): "
                        "%s", address, calling, called, why)
        else:
            log.warning("DICOM connection from %s refused: %s", address, why)
        key = (calling[:16], called[:16], address[:100], reason)
        with self._lock:
            self._counts[key] += 1
            self._last[key] = datetime.now(UTC)
        self._pending.set()

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="mwl-dicom-refusals",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Write what is still counted, then end the thread."""
        self._stop.set()
        self._pending.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            self._pending.wait()
            self._pending.clear()
            self.flush()
            self._stop.wait(FLUSH_INTERVAL)
        self.flush()

    def flush(self) -> None:
        """Write the counts taken since the last write; kept for the next one when the
        database refuses (logged as an outage, once)."""
        with self._lock:
            counts, last = self._counts, self._last
            self._counts, self._last = Counter(), {}
        if not counts:
            return
        rows = [{"at": last[key], "calling_ae_title": key[0], "called_ae_title": key[1],
                 "address": key[2], "reason": key[3], "count": n}
                for key, n in counts.items()]
        try:
            with unit_of_work(self.writer) as session:
                session.execute(insert(DicomRefusal), rows)
        except SQLAlchemyError as exc:
            self.health.failed(exc)
            with self._lock:
                self._counts.update(counts)
                for key, moment in last.items():
                    self._last.setdefault(key, moment)
            self._pending.set()
            return
        self.health.ok()
