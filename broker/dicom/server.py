"""The broker's DICOM server: Verification (C-ECHO) and Modality Worklist C-FIND SCP
(PS3.4 Annex A and K) on one pynetdicom AE.

Each association runs in its own pynetdicom thread; each C-FIND opens one session on
the read-only engine and closes it when the last response is sent. TCP_NODELAY is set
on every accepted socket (Nagle costs about 80 ms per association here, DESIGN.md),
and pynetdicom's identifier logging is off: it is slow and would print patient data.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from typing import Any

from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, _config, evt
from sqlalchemy.orm import Session, sessionmaker

from broker.config import Settings
from broker.dicom.worklist import find_worklist

log = logging.getLogger(__name__)

# SOP classes by UID (PS3.4 A.4, K.4): pynetdicom's sop_class names are dynamic.
VERIFICATION = "1.2.840.10008.1.1"
MODALITY_WORKLIST_FIND = "1.2.840.10008.5.1.4.31"
TRANSFER_SYNTAXES = [ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian]

_config.LOG_REQUEST_IDENTIFIERS = False
_config.LOG_RESPONSE_IDENTIFIERS = False


class DicomServer:
    """Start/stop the DICOM listener; ``port`` is the bound port (0 = ephemeral)."""

    def __init__(self, settings: Settings, session_factory: sessionmaker[Session],
                 *, zone: str | None = None) -> None:
        from broker.runtime import local_zone_name

        self.settings = settings
        self.session_factory = session_factory
        self.zone = zone or settings.timezone or local_zone_name()
        self.ae = AE(ae_title=settings.ae_title)
        self.ae.maximum_associations = 64
        for sop_class in (VERIFICATION, MODALITY_WORKLIST_FIND):
            self.ae.add_supported_context(sop_class, TRANSFER_SYNTAXES)
        self._server: Any = None

    def start(self) -> None:
        handlers: list[Any] = [
            (evt.EVT_CONN_OPEN, self._on_connection),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_FIND, self._on_find),
        ]
        self._server = self.ae.start_server(
            (self.settings.dicom_host, self.settings.dicom_port), block=False,
            evt_handlers=handlers)
        log.info("DICOM server %s listening on port %s", self.settings.ae_title, self.port)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    @staticmethod
    def _on_connection(event: Any) -> None:
        sock = getattr(getattr(event.assoc.dul, "socket", None), "socket", None)
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    @staticmethod
    def _on_echo(event: Any) -> int:
        return 0x0000

    def _on_find(self, event: Any) -> Iterator[tuple[int, Any]]:
        """PS3.4 K.4.1.3: pending responses, then pynetdicom sends the final status."""
        calling = event.assoc.requestor.ae_title
        try:
            identifier = event.identifier
        except Exception as exc:
            log.info("C-FIND from %s: undecodable identifier (%s)", calling,
                     type(exc).__name__)
            yield 0xC000, None
            return
        count = 0
        with self.session_factory() as session:
            for status, ds in find_worklist(session, identifier, self.settings, zone=self.zone,
                                            is_cancelled=lambda: event.is_cancelled):
                if status in (0xFF00, 0xFF01):
                    count += 1
                yield status, ds
        log.info("C-FIND from %s: %d item(s)", calling, count)
