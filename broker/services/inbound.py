"""Receiving an HL7 message into the message store (the MLLP hot path).

Contract (HL7 v2.5.1 2.9.2 original-mode acknowledgement with Table 0357 error codes;
2.10.1 duplicate messages):

1. The raw bytes are stored whatever they hold: unreadable or unsupported messages are
   stored with status ``rejected`` and answered AR with an ERR naming the field.
2. A message whose (MSH-3, MSH-4, MSH-10) and content (everything but MSH-7, see
   :func:`broker.hl7.message.content_hash`) are already stored is a duplicate: the ACK
   stored for it is replayed and no new work is done. The same key with other content
   is a new message (senders reset their counters): it is stored and processed, and
   flagged with a warning (Table 0357 code 205) so the reuse is visible. An ACK is
   therefore only ever replayed to the message it was built for.
3. AA is only ever sent after the row (raw bytes + dedup key) is committed. In
   ``store`` ACK mode the AA is written into that same row, so one commit suffices; in
   ``application`` mode the processor writes the ACK with the outcome, in the same
   commit when the writer applies messages as it stores them
   (:mod:`broker.services.apply_at_receipt`). Rows are committed in groups by
   :mod:`broker.services.message_store`.
4. When the database cannot commit, the answer is AR with ERR 207 and nothing is kept,
   so the sender's resend is processed as new.

Only the header is read here (a few fields of MSH and the first PID-3 / accession for
search and ordering); mapping happens in the processor.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.orm import Session

from broker.audit import hooks as audit
from broker.config import AckMode, AllowedSender
from broker.hl7.ack import build_ack
from broker.hl7.errors import ErrorCode, ErrorLocation, HL7Error, field_error
from broker.hl7.message import HL7_VERSIONS, Message, ReadOptions, content_hash, parse
from broker.hl7.warnings import CONTROL_ID_REUSED, HL7Warning, to_json
from broker.models import MessageStatus
from broker.security.access import peer_ip, sender_allowed
from broker.services.message_store import MessageStoreWriter, Pending, Stored

log = logging.getLogger(__name__)

SUPPORTED_EVENTS: dict[str, frozenset[str]] = {
    "ADT": frozenset({"A01", "A02", "A03", "A04", "A05", "A06", "A07", "A08", "A11",
                      "A12", "A13", "A31", "A38", "A40", "A47"}),
    "ORM": frozenset({"O01"}),
    # General order (HL7 v2.5.1 4.4.6), sent for imaging by some placers (IHE Eye Care):
    # ORC/OBR groups as in ORM^O01.
    "OMG": frozenset({"O19"}),
    "OMI": frozenset({"O23"}),
}
# HL7 v2 is backward compatible for the segments read here (later versions add fields):
# 2.1 to 2.8.2 by default; MWLB_HL7_VERSIONS narrows the list.
SUPPORTED_VERSIONS = frozenset(HL7_VERSIONS)
SUPPORTED_PROCESSING_IDS = frozenset({"P", "T", "D"})
# Messages larger than this are parsed off the MLLP event loop.
OFF_LOOP_BYTES = 64 * 1024


@dataclass(frozen=True)
class Received:
    """What the listener does next: send ``ack`` now, or (``ack`` None) wait for the
    processor to finish message ``message_pk`` and send the ACK it stored. ``new`` is
    True when this call stored the message; ``pending`` when it was committed
    ``received`` (it must be dispatched for processing)."""

    message_pk: int | None
    ack: bytes | None
    new: bool = False
    pending: bool = False


def check_header(msg: Message, *, accept_any_version: bool = False,
                 versions: Collection[str] = SUPPORTED_VERSIONS) -> None:
    """Refuse what we do not handle (AR 200-203, HL7 v2.5.1 2.9.2) or what lacks the
    MSH keys (AE 101). MSH-12 must be one of ``versions`` unless ``accept_any_version``
    (a version we do not know is then read with the current rules, with a warning from
    :func:`broker.hl7.message.parse`)."""
    for number in (9, 10):
        if not msg.msh.get(number, 1 if number == 9 else 0):
            raise field_error(ErrorCode.REQUIRED_FIELD_MISSING, "MSH", number,
                              f"MSH-{number} is required")
    code, event = msg.message_code.upper(), msg.trigger_event.upper()
    if code not in SUPPORTED_EVENTS:
        raise field_error(ErrorCode.UNSUPPORTED_MESSAGE_TYPE, "MSH", 9,
                          f"message type {code} is not supported", component=1)
    if event not in SUPPORTED_EVENTS[code]:
        raise field_error(ErrorCode.UNSUPPORTED_EVENT_CODE, "MSH", 9,
                          f"event {code}^{event} is not supported", component=2)
    processing = msg.msh.get(11, 1).upper()
    if processing not in SUPPORTED_PROCESSING_IDS:
        raise field_error(ErrorCode.UNSUPPORTED_PROCESSING_ID, "MSH", 11,
                          f"processing id {processing or '(empty)'} is not supported")
    if not accept_any_version and msg.version not in versions:
        raise field_error(ErrorCode.UNSUPPORTED_VERSION_ID, "MSH", 12,
                          f"version {msg.version or '(empty)'} is not supported")


def patient_key(msg: Message) -> str:
    """id|authority of the first PID-3 repetition ('' when the message has no PID)."""
    pid = msg.segment("PID")
    if pid is None:
        return ""
    return f"{pid.get(3, 1)}|{pid.get(3, 4, 1)}"


def _accession(msg: Message) -> str | None:
    value = msg.get("OBR-18") or msg.get("IPC-1.1")
    return value[:64] or None


class Inbox:
    """Stores inbound messages; one instance per process, thread-safe. ``prepare``
    (parsing, header checks, the row's values) is pure work; storing goes through the
    group-commit writer (:mod:`broker.services.message_store`)."""

    def __init__(self, writer: MessageStoreWriter, ack_mode: AckMode,
                 *, accept_any_version: bool = False,
                 allowed_senders: Sequence[AllowedSender] = (),
                 versions: Collection[str] = SUPPORTED_VERSIONS,
                 read_options: ReadOptions | Callable[[], ReadOptions] | None = None,
                 ) -> None:
        self.writer = writer
        self.ack_mode = ack_mode
        self.accept_any_version = accept_any_version
        self.allowed_senders = list(allowed_senders)
        self.versions = frozenset(versions)
        self.read_options = read_options or ReadOptions()

    def read(self, raw: bytes) -> Message:
        """Parse with this receiver's options (the charset aliases of the profiles in
        force, when ``read_options`` is a callable giving them)."""
        options = self.read_options
        return parse(raw, options() if callable(options) else options)

    async def receive(self, raw: bytes, peer: str) -> Received:
        """Store one message and say what to answer; on the MLLP event loop, only
        the commit is waited for. Reading is linear and capped, tens of microseconds
        for a usual message; one over ``OFF_LOOP_BYTES`` is read in a worker thread so
        that it never holds up the other connections."""
        if len(raw) > OFF_LOOP_BYTES:
            msg, pending = await asyncio.to_thread(self.prepare, raw, peer)
        else:
            msg, pending = self.prepare(raw, peer)
        stored = await asyncio.wrap_future(self.writer.store(pending))
        return self.outcome(msg, pending, stored)

    def prepare(self, raw: bytes, peer: str) -> tuple[Message | None, Pending]:
        msg: Message | None = None
        error: HL7Error | None = None
        alert: Callable[[Session], None] | None = None
        try:
            msg = self.read(raw)
            check_header(msg, accept_any_version=self.accept_any_version,
                         versions=self.versions)
            alert = self._refused_sender(msg, peer)
            if alert is not None:
                error = HL7Error(ErrorCode.APPLICATION_INTERNAL_ERROR,  # 207 answers AR
                                 "sender (MSH-3/MSH-4) not allowed from this address",
                                 ErrorLocation("MSH", 3))
        except HL7Error as exc:
            error = exc
            msg = msg or exc.partial
        except Exception as exc:  # a reader bug must still get an answer and keep the bytes
            log.error("message from %s could not be read: %s", peer, type(exc).__name__)
            error = HL7Error(ErrorCode.APPLICATION_INTERNAL_ERROR,
                             f"the message could not be read ({type(exc).__name__})")
        values = row_values(raw, peer, msg)
        warnings = list(msg.warnings) if msg is not None else []
        _set_warnings(values, warnings)
        if error is not None:
            values.update(status=MessageStatus.REJECTED.value, error_code=error.code,
                          error_text=error.text, error_location=str(error.location or ""),
                          ack=build_ack(msg, error.ack_code, error), ack_code=error.ack_code)
        elif self.ack_mode is AckMode.STORE:
            values.update(ack=build_ack(msg, "AA", warnings=warnings), ack_code="AA")

        def on_reuse(row: dict[str, Any]) -> None:
            log.warning("sender %s/%s reused MSH-10 %s for another message: stored as new",
                        row["sending_application"], row["sending_facility"],
                        row["control_id"])
            warnings.append(CONTROL_ID_REUSED)
            _set_warnings(row, warnings)
            if row["ack_code"] == "AA":
                row["ack"] = build_ack(msg, "AA", warnings=warnings)

        return msg, Pending(values, alert, on_reuse,
                            message=msg if error is None else None)

    def outcome(self, msg: Message | None, pending: Pending,
                stored: Stored | None) -> Received:
        if stored is None:  # the database could not commit: nothing was kept
            return Received(None, build_ack(msg, "AR", HL7Error(
                ErrorCode.APPLICATION_INTERNAL_ERROR,
                "message store unavailable; nothing was kept, please resend")))
        pk, ack, new, status = stored
        values = pending.values
        if not new:
            log.info("duplicate of message %s (MSH-10 %s): replaying its ACK", pk,
                     values.get("control_id"))
            return Received(pk, ack)
        # Applied at receipt: the processor's line says the outcome. One line per message
        # is enough; a second cost as much as reading and checking the message.
        applied = status in (MessageStatus.PROCESSED.value, MessageStatus.FAILED.value)
        log.log(logging.DEBUG if applied else logging.INFO,
                "stored message %s type %s MSH-10 %s status %s", pk,
                values.get("message_type"), values.get("control_id"), status)
        return Received(pk, ack, new=True, pending=status == MessageStatus.RECEIVED.value)

    def _refused_sender(self, msg: Message, peer: str) -> Callable[[Session], None] | None:
        """MSH-3/MSH-4 must be allowed from the peer's address. For a
        refused sender, the security alert to store beside the rejected message."""
        application, facility = msg.msh.get(3), msg.msh.get(4)
        if sender_allowed(self.allowed_senders, application, facility, peer_ip(peer)):
            return None
        log.warning("HL7 sender %s/%s from %s not allowed: AR", application, facility,
                    peer_ip(peer))
        return functools.partial(audit.security_alert, who=f"{application}|{facility}",
                                 address=peer_ip(peer),
                                 what="HL7 sender not allowed from this address")


def _set_warnings(row: dict[str, Any], warnings: list[HL7Warning]) -> None:
    row.update(warnings=to_json(warnings), warning_count=len(warnings))


def row_values(raw: bytes, peer: str, msg: Message | None) -> dict[str, Any]:
    """Column values of the message store row (header fields for search and order)."""
    now = datetime.now(UTC)
    row: dict[str, Any] = {
        "raw": raw, "peer": peer[:100], "status": MessageStatus.RECEIVED.value,
        "attempts": 0, "received_at": now, "updated_at": now, "ack": None, "ack_code": None,
        "sending_application": None, "sending_facility": None, "control_id": None,
        "receiving_application": None, "receiving_facility": None, "message_type": "",
        "version": "", "message_datetime": "", "patient_key": None, "ordering_key": "",
        "accession_number": None, "error_code": None, "error_text": None,
        "error_location": None, "content_hash": content_hash(raw),
        "control_id_reused": False, "warnings": None, "warning_count": 0,
    }
    if msg is None:
        return row
    msh = msg.msh
    key = patient_key(msg)
    row.update(
        sending_application=msh.get(3), sending_facility=msh.get(4),
        receiving_application=msh.get(5), receiving_facility=msh.get(6),
        control_id=msg.control_id or None, message_type=msg.message_type[:20],
        version=msg.version[:20], message_datetime=msh.get(7, 1)[:32],
        patient_key=key[:200] or None, ordering_key=key[:200],
        accession_number=_accession(msg))
    return row
