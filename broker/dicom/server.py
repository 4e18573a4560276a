"""The broker's DICOM server, one pynetdicom AE (PS3.4):

* Verification (C-ECHO, Annex A) and Modality Worklist C-FIND (Annex K), read-only;
* Modality Performed Procedure Step N-CREATE / N-SET (Annex F) and Instance
  Availability Notification N-CREATE (Annex R): every request is kept in the
  ``dicom_request`` store with the status answered; an accepted one is committed
  before its response, and linking runs in a task, except that an
  MPPS N-CREATE naming its steps unambiguously links them and takes them off the
  worklist in its own transaction (:func:`broker.services.mpps.create`);
* Storage C-STORE (Annex B) for the common modalities, see :mod:`broker.dicom.storage`;
* Unified Procedure Step Push, Pull, Watch and Query (Annex CC), see
  :mod:`broker.dicom.ups_scp`; UPS Event N-EVENT-REPORTs go out to the subscribers of
  MWLB_UPS_EVENT_DESTINATIONS (:mod:`broker.dicom.ups_events`).

Handlers are thin: unpack the event, call one use case (:mod:`broker.application`,
which owns the transaction and the dispatch of the follow-up job), map its result or
exception to a status. Each association runs in its own pynetdicom
threads with their own sessions. TCP_NODELAY is set on every accepted socket (Nagle
costs about 80 ms per association here), and TCP_QUICKACK after every write (a
modality that keeps Nagle's algorithm on would otherwise wait 40 ms for our ACK before
each data set); pynetdicom's identifier logging is off: it is slow and would print
patient data. Whatever reaches beneath pynetdicom's public API (the C-FIND fast path,
C-ECHO / C-STORE / N-CREATE / N-SET served as they arrive, the transport socket) is in
:mod:`broker.dicom.fastpath`; ``MWLB_DICOM_FAST_PATH=false`` turns the fast path off.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

from pydicom.dataset import Dataset
from pydicom.uid import (
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    generate_uid,
)
from pynetdicom import AE, evt
from pynetdicom.pdu_primitives import A_RELEASE
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from broker.application import UseCases
from broker.audit import hooks as audit
from broker.config import Settings
from broker.db import unit_of_work
from broker.dicom import fastpath
from broker.dicom.limits import LOCAL_LIMIT_EXCEEDED, AssociationGuard, DeferredHandshake
from broker.dicom.modality_rules import Answer, ModalityProfiles, ProfilesInForce
from broker.dicom.recording import QueryRecord, QueryRecorder
from broker.dicom.refusals import REASONS, RefusalLog, reject_reason
from broker.dicom.storage import (
    CANNOT_UNDERSTAND,
    OUT_OF_RESOURCES,
    STORAGE_SOP_CLASSES,
    STORAGE_TRANSFER_SYNTAXES,
    file_path,
    write_file,
)
from broker.dicom.ups_events import EventReportSender
from broker.dicom.ups_scp import UPS_EVENT, UPS_SERVED, UPSProvider
from broker.dicom.worklist import QueryCache, find_worklist
from broker.models import DicomRequest, utcnow
from broker.security.access import calling_entry, refusal_reason, uses_reserve
from broker.security.tls import certificate_cn
from broker.services.dimse_status import PROCESSING_FAILURE, MppsError

log = logging.getLogger(__name__)

# SOP classes by UID (PS3.4 A.4, K.4, F.7, R.3): pynetdicom's sop_class names are dynamic.
VERIFICATION = "1.2.840.10008.1.1"
MODALITY_WORKLIST_FIND = "1.2.840.10008.5.1.4.31"
MPPS = "1.2.840.10008.3.1.2.3.3"
INSTANCE_AVAILABILITY = "1.2.840.10008.5.1.4.33"
TRANSFER_SYNTAXES = [ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian]
RESOURCE_LIMITATION = 0x0213  # PS3.7 Annex C: the SCU may try again later

fastpath.quiet_identifier_logging()


def _status(code: int, comment: str, error_id: int | None = None,
            tags: list[int] | None = None) -> Dataset:
    """A status dataset: Error Comment is LO (64 chars), Error ID US."""
    ds = Dataset()
    ds.Status = code
    ds.ErrorComment = comment[:64]
    if error_id is not None:
        ds.ErrorID = error_id
    if tags:
        ds.AttributeIdentifierList = tags
    return ds


def _quick_ack(sock: socket.socket) -> None:
    """ACK at once instead of delaying: a modality that keeps Nagle's algorithm on (DCMTK
    since 3.6.2 does unless TCP_NODELAY=1) sends a PDU's first bytes and then waits for
    our ACK before the rest, on every C-STORE and N-CREATE; delayed, that ACK comes
    ~40 ms later."""
    quickack = getattr(socket, "TCP_QUICKACK", None)
    if quickack is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, quickack, 1)


class DicomServer:
    """Start/stop the DICOM listener; ``port`` is the bound port (0 = ephemeral).
    ``profiles(connection)``: the mapping profiles in force, read at each worklist
    query (its modality profiles, :mod:`broker.dicom.modality_rules`); None: no
    modality profiles."""

    def __init__(self, settings: Settings, session_factory: sessionmaker[Session],
                 use_cases: UseCases, *, writer: sessionmaker[Session] | None = None,
                 zone: str | None = None, profiles: ProfilesInForce | None = None) -> None:
        from broker.runtime import local_zone_name

        self.settings = settings
        self.session_factory = session_factory
        self.writer = writer or session_factory
        self.use_cases = use_cases
        self.zone = zone or settings.timezone or local_zone_name()
        self.ae = AE(ae_title=settings.ae_title)
        self.refusals = RefusalLog(self.writer)
        self.guard = AssociationGuard(settings, self.refusals)
        self.ae.maximum_associations = self.guard.backstop
        self.ae.acse_timeout = settings.dicom_acse_timeout  # ARTIM (PS3.8 9.1.5)
        self.ae.network_timeout = settings.dicom_network_timeout
        self.ae.maximum_pdu_size = 0  # no limit on what we receive
        # An association for another AE title is rejected (PS3.8 A-ASSOCIATE-RJ, reason
        # "called AE title not recognized"): a modality pointed at the wrong AE learns it.
        self.ae.require_called_aet = True
        for sop_class in (VERIFICATION, MODALITY_WORKLIST_FIND, MPPS, INSTANCE_AVAILABILITY):
            self.ae.add_supported_context(sop_class, TRANSFER_SYNTAXES)
        for sop_class in STORAGE_SOP_CLASSES.values():
            self.ae.add_supported_context(sop_class, STORAGE_TRANSFER_SYNTAXES)
        for sop_class in UPS_SERVED:
            self.ae.add_supported_context(sop_class, TRANSFER_SYNTAXES)
        # UPS Event (PS3.4 CC.3.1): a requestor proposing it as SCU (to receive event
        # reports) is accepted in that role, never as SCP (the broker receives none).
        self.ae.add_supported_context(UPS_EVENT, TRANSFER_SYNTAXES, scu_role=True,
                                      scp_role=False)
        self._server: Any = None
        self._tls_server: Any = None
        self._recorder = QueryRecorder(self.writer)
        # UPS reads (N-GET, UPS C-FIND) are recorded off the response path, in order.
        self._ups_reads = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mwl-ups-log")
        self._queries = QueryCache(settings)
        self._modalities = ModalityProfiles(profiles)
        self.ups = UPSProvider(use_cases.ups, settings, self._record_ups)
        self.event_reports: EventReportSender | None = None
        # Studies stored per association: reconciled once the association ends.
        self._studies: dict[int, dict[str, list[Any]]] = {}
        self._lock = threading.Lock()

    def start(self, tls_context: ssl.SSLContext | None = None) -> None:
        """Listen on MWLB_DICOM_PORT (unless it is -1 or MWLB_TLS_ONLY is set), and on
        MWLB_DICOM_TLS_PORT with ``tls_context`` (PS3.15 B.1 secure transport)."""
        handlers: list[Any] = [
            (evt.EVT_CONN_OPEN, self._on_connection),
            *self.guard.handlers(),
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_REJECTED, self._on_rejected),
            (evt.EVT_DATA_SENT, self._on_sent),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_FIND, self._on_find),
            (evt.EVT_N_CREATE, self._on_n_create),
            (evt.EVT_N_SET, self._on_n_set),
            (evt.EVT_N_GET, self._on_n_get),
            (evt.EVT_N_ACTION, self._on_n_action),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_ACSE_RECV, self._on_acse),
            (evt.EVT_RELEASED, self._on_association_end),
            (evt.EVT_ABORTED, self._on_association_end),
            (evt.EVT_CONN_CLOSE, self._on_association_end),
        ]
        self.guard.start()
        self.refusals.start()
        if self.settings.ups_event_destinations:
            self.event_reports = EventReportSender(
                self.settings.ae_title, self.settings.ups_event_destinations,
                self.use_cases.ups, self.use_cases.runtime.engine,
                transfer_syntaxes=TRANSFER_SYNTAXES, timeout=self.settings.dicom_acse_timeout)
            self.use_cases.ups.on_events(self.event_reports.wake)
            self.event_reports.start()
        if self.settings.dicom_port >= 0 and not self.settings.tls_only:
            self._server = self.ae.start_server(
                (self.settings.dicom_host, self.settings.dicom_port), block=False,
                evt_handlers=handlers)
            if self.settings.dicom_fast_path:
                fastpath.tune_server(self._server)
            log.info("DICOM server %s listening on port %s", self.settings.ae_title,
                     self.port)
        else:
            log.info("DICOM plaintext port off")
        if tls_context is not None and self.settings.dicom_tls_port >= 0:
            self._tls_server = self.ae.start_server(
                (self.settings.dicom_host, self.settings.dicom_tls_port), block=False,
                evt_handlers=handlers,
                ssl_context=cast(ssl.SSLContext, DeferredHandshake(tls_context)))
            if self.settings.dicom_fast_path:
                fastpath.tune_server(self._tls_server)
            log.info("DICOM TLS on port %s", self.tls_port)

    @property
    def port(self) -> int | None:
        """The plaintext port, None when it is off."""
        return int(self._server.server_address[1]) if self._server else None

    @property
    def tls_port(self) -> int | None:
        return int(self._tls_server.server_address[1]) if self._tls_server else None

    def stop(self) -> None:
        for server in (self._server, self._tls_server):
            if server is not None:
                server.shutdown()
        self._server = self._tls_server = None
        if self.event_reports is not None:
            self.event_reports.stop()
            self.event_reports = None
        self.guard.stop()
        self.refusals.stop()
        self._recorder.stop()
        self._ups_reads.shutdown(wait=True)

    def _on_requested(self, event: Any) -> None:
        """Access control, then admission, before negotiation (PS3.8 9.3.4).

        A calling AE title that is not allowed from this address, or that its entry
        binds to a certificate and comes without that verified client certificate
        (plaintext, or TLS without a certificate or with another CN), is rejected with
        result 1 (permanent), source 1 (service user), reason 3 "calling AE title not
        recognized" and a Security Alert is audited. An allowed one beyond the
        association limits (:mod:`broker.dicom.limits`) is rejected with result 2
        (transient), source 3 (service provider, presentation), reason 2
        "local-limit-exceeded". Either is logged and counted
        (:mod:`broker.dicom.refusals`) with the specific reason."""
        primitive = event.assoc.requestor.primitive
        calling = str(primitive.calling_ae_title).strip()
        called = str(primitive.called_ae_title).strip()
        address = str(event.assoc.requestor.address)
        sock = fastpath.transport_socket(event.assoc)
        cn = certificate_cn(sock.getpeercert()) if isinstance(sock, ssl.SSLSocket) else None
        allowed = self.settings.dicom_allowed_calling
        entry = calling_entry(allowed, calling, address, cn)
        if allowed and entry is None:
            reason = refusal_reason(allowed, calling, address, cn)
            self.refusals.refused(reason, address, calling, called)
            try:
                with unit_of_work(self.writer) as session:
                    audit.security_alert(session, calling, address,
                                         f"DICOM association rejected: {REASONS[reason]}")
            except SQLAlchemyError as exc:
                log.error("security alert not recorded: %s", type(exc).__name__)
            self._reject(event, 0x01, 0x01, 0x03)
            return
        if not self.guard.admit(event.assoc, uses_reserve(entry)):
            self.refusals.refused("local-limit-exceeded", address, calling, called)
            self._reject(event, *LOCAL_LIMIT_EXCEEDED)

    def _on_rejected(self, event: Any) -> None:
        """pynetdicom's own A-ASSOCIATE-RJ (the called AE title is not ours, PS3.8
        reason 7; its thread limit :attr:`AssociationGuard.backstop`): logged and
        counted like ours."""
        rq, rj = event.assoc.requestor.primitive, event.assoc.acceptor.primitive
        self.refusals.refused(reject_reason(rj.result_source, rj.diagnostic),
                              str(event.assoc.requestor.address),
                              str(rq.calling_ae_title).strip(), str(rq.called_ae_title).strip())

    @staticmethod
    def _reject(event: Any, result: int, source: int, reason: int) -> None:
        event.assoc.acse.send_reject(result, source, reason)
        # As pynetdicom's own rejections do: wait until the A-ASSOCIATE-RJ is out
        # and the transport is closed, else the peer may only see the socket close.
        event.assoc.kill()

    def _on_connection(self, event: Any) -> None:
        sock = fastpath.transport_socket(event.assoc)
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            _quick_ack(sock)
        if self.settings.dicom_fast_path:
            fastpath.serve_on_arrival(event.assoc)

    @staticmethod
    def _on_sent(event: Any) -> None:
        """Linux goes back to delaying ACKs when it sends an answer soon after a read
        (its "pingpong" mode), so TCP_QUICKACK set once is gone after our first
        response: set it again after every write."""
        sock = fastpath.transport_socket(event.assoc)
        if sock is not None:
            _quick_ack(sock)

    @staticmethod
    def _on_echo(event: Any) -> int:
        return 0x0000

    def _on_find(self, event: Any) -> Iterator[tuple[int | Dataset, Any]]:
        """PS3.4 K.4.1.3, PS3.7 9.1.2: each match is answered by the
        :func:`~broker.dicom.fastpath.find_responder` (written beneath pynetdicom on the
        fast path, else yielded as a (status, Dataset) pair), then the final status goes
        back to pynetdicom, which sends it. The calling AE title's modality profile in
        force at the query restricts, caps and shapes the answer."""
        if str(event.request.AffectedSOPClassUID) in UPS_SERVED:
            yield from self.ups.c_find(event)
            return
        calling = event.assoc.requestor.ae_title
        try:
            identifier = event.identifier
        except Exception as exc:
            log.info("C-FIND from %s: undecodable identifier (%s)", calling,
                     type(exc).__name__)
            yield 0xC000, None
            return
        began = time.perf_counter()
        returned: list[int] = []
        final = 0x0000
        encoded = event.request.Identifier.getvalue()
        syntax = str(event.context.transfer_syntax)
        with self.session_factory() as session:
            rules, version = self._modalities.for_query(session.connection(),
                                                        str(calling).strip())
            if rules is None:
                responder = fastpath.find_responder(event, identifier, self.zone,
                                                    fast=self.settings.dicom_fast_path)
                select = functools.partial(self._queries.select, encoded, syntax)
                cap = None
            else:
                responder = fastpath.find_responder(
                    event, identifier, self.zone, fast=self.settings.dicom_fast_path,
                    answer=Answer(rules, identifier) if rules.transforms else None)
                select = functools.partial(self._queries.select, encoded, syntax, rules)
                cap = rules.max_results
            for status, item in find_worklist(session, identifier, self.settings,
                                              is_cancelled=lambda: event.is_cancelled,
                                              returned=returned, select=select, cap=cap):
                if item is None:
                    final = status
                    break
                yield from responder.pending(status, item)
        responder.close()
        log.info("C-FIND from %s: %d item(s)%s", calling, len(returned),
                 f", modality profile {rules.name}" if rules is not None else "")
        requestor = event.assoc.requestor
        self._recorder.submit(QueryRecord(
            str(requestor.ae_title), str(requestor.address), int(requestor.port), identifier,
            final, returned, (time.perf_counter() - began) * 1000, utcnow(),
            modality_profile=rules.name if rules is not None else "",
            profile_version=version))
        yield final, None

    # -- MPPS and IAN ------------------------------------------------------------------

    def _request_row(self, event: Any, command: str, sop_class: str, uid: str,
                     raw: Any) -> DicomRequest:
        return DicomRequest(
            calling_ae_title=str(event.assoc.requestor.ae_title)[:16],
            peer=f"{event.assoc.requestor.address}:{event.assoc.requestor.port}"[:100],
            command=command, sop_class_uid=sop_class, sop_instance_uid=uid[:64],
            transfer_syntax_uid=str(event.context.transfer_syntax),
            dataset=raw.getvalue() if raw is not None else b"", status=0)

    def _handle_n(self, event: Any, command: str, sop_class: str, uid: str, raw: Any,
                  decode: Callable[[], Dataset],
                  apply: Callable[[Dataset, DicomRequest], None]) -> int | Dataset:
        """Decode, then apply with the request row (one use case: one transaction, then
        the job); a refusal or failure is stored with its status in a transaction of
        its own."""
        record = self._request_row(event, command, sop_class, uid, raw)
        try:
            ds = decode()
            apply(ds, record)
        except MppsError as exc:
            # An N-CREATE response has no Attribute Identifier List field (pynetdicom
            # drops it): there the Error Comment names the tags.
            return self._refuse(record, exc.status, exc.comment, exc.error_id,
                                exc.tags if command == "N-SET" else None)
        except SQLAlchemyError as exc:
            log.error("%s %s: database error %s", command, sop_class, type(exc).__name__)
            return self._refuse(record, RESOURCE_LIMITATION, "database unavailable, retry")
        except Exception as exc:  # an attribute list we cannot read
            log.info("%s: unreadable attribute list (%s)", command, type(exc).__name__)
            return self._refuse(record, PROCESSING_FAILURE,
                                f"cannot read the attribute list: {type(exc).__name__}")
        return 0x0000

    def _refuse(self, record: DicomRequest, code: int, comment: str,
                error_id: int | None = None,
                tags: list[int] | None = None) -> Dataset:
        record.status, record.error_comment = code, comment[:1024]
        log.info("%s %s refused: 0x%04X", record.command, record.sop_instance_uid, code)
        try:
            self.use_cases.record_refusal(record)
        except SQLAlchemyError as exc:
            log.error("could not store the refused request: %s", type(exc).__name__)
        return _status(code, comment, error_id, tags)

    def _on_n_create(self, event: Any) -> tuple[int | Dataset, Dataset | None]:
        req = event.request
        sop_class = str(req.AffectedSOPClassUID)
        if sop_class in UPS_SERVED:
            return self.ups.n_create(event)
        given = str(req.AffectedSOPInstanceUID or "")
        uid = given or generate_uid()
        calling = str(event.assoc.requestor.ae_title)

        def apply(ds: Dataset, record: DicomRequest) -> None:
            if sop_class == MPPS:
                self.use_cases.record_mpps_create(
                    uid, ds, calling, str(event.assoc.requestor.address), record)
            else:
                self.use_cases.record_availability(uid, ds, calling, record)

        status = self._handle_n(event, "N-CREATE", sop_class, uid, req.AttributeList,
                                lambda: event.attribute_list, apply)
        if status != 0x0000 or given:
            return status, None
        reply = Dataset()
        reply.AffectedSOPInstanceUID = uid
        return status, reply

    def _on_n_set(self, event: Any) -> tuple[int | Dataset, Dataset | None]:
        req = event.request
        if str(req.RequestedSOPClassUID) in UPS_SERVED:
            return self.ups.n_set(event)
        uid = str(req.RequestedSOPInstanceUID or "")

        def apply(ds: Dataset, record: DicomRequest) -> None:
            self.use_cases.record_mpps_set(uid, ds, str(event.assoc.requestor.ae_title),
                                           str(event.assoc.requestor.address), record)

        status = self._handle_n(event, "N-SET", str(req.RequestedSOPClassUID), uid,
                                req.ModificationList, lambda: event.modification_list, apply)
        return status, None

    # -- Unified Procedure Step (PS3.4 Annex CC) ------------------------------------------

    def _on_n_get(self, event: Any) -> tuple[int | Dataset, Dataset | None]:
        """N-GET: UPS only (the broker's other SOP Classes have none)."""
        return self.ups.n_get(event)

    def _on_n_action(self, event: Any) -> tuple[int | Dataset, Dataset | None]:
        """N-ACTION: UPS only."""
        return self.ups.n_action(event)

    def _record_ups(self, record: DicomRequest, durable: bool) -> None:
        """Keep a UPS request: a change before its response, a read off the response
        path (in a recording thread of its own)."""
        if durable:
            self.use_cases.record_request(record)
        else:
            self._ups_reads.submit(self._record_quietly, record)

    def _record_quietly(self, record: DicomRequest) -> None:
        try:
            self.use_cases.record_request(record)
        except SQLAlchemyError as exc:
            log.warning("%s record not stored: %s", record.command, type(exc).__name__)

    # -- Storage -----------------------------------------------------------------------

    def _on_store(self, event: Any) -> int:
        """Index, then keep / spool / discard (PS3.4 B.2.3 statuses)."""
        req = event.request
        sop_class, sop = str(req.AffectedSOPClassUID), str(req.AffectedSOPInstanceUID)
        try:
            ds = event.dataset
            study, series = str(ds.StudyInstanceUID), str(ds.get("SeriesInstanceUID", ""))
        except Exception as exc:
            log.info("C-STORE %s: unreadable dataset (%s)", sop, type(exc).__name__)
            return CANNOT_UNDERSTAND
        path = file_path(self.settings, study, series, sop)
        try:
            if path is not None:
                write_file(path, event.encoded_dataset())
            self.use_cases.record_instance(
                ds, sop_class_uid=sop_class, sop_instance_uid=sop,
                calling_ae_title=str(event.assoc.requestor.ae_title),
                transfer_syntax_uid=str(event.context.transfer_syntax),
                file_path=str(path or ""))
        except (OSError, SQLAlchemyError) as exc:
            log.error("C-STORE %s: not stored (%s)", sop, type(exc).__name__)
            return OUT_OF_RESOURCES
        with self._lock:
            stored = self._studies.setdefault(id(event.assoc), {})
            entry = stored.setdefault(study, [0, str(ds.get("PatientID", ""))])
            entry[0] += 1
        return 0x0000

    def _on_acse(self, event: Any) -> None:
        """An A-RELEASE-RQ ends the association's transfer before the A-RELEASE-RP goes
        out (PS3.8 7.2): the modality has its answer only once the instances it stored
        are durable."""
        if isinstance(event.primitive, A_RELEASE) and event.primitive.result is None:
            self._on_association_end(event)

    def _on_association_end(self, event: Any) -> None:
        with self._lock:
            stored = self._studies.pop(id(event.assoc), {})
        self.use_cases.instances_received(
            str(event.assoc.requestor.ae_title), str(event.assoc.requestor.address),
            {study: (count, patient_id) for study, (count, patient_id) in stored.items()})
