"""Receiving an HL7 message into the message store (the MLLP hot path).

Contract (DESIGN.md "Non-negotiable behaviour", checklist B1-B3, H1):

1. The raw bytes are stored whatever they hold: unreadable or unsupported messages are
   stored with status ``rejected`` and answered AR with an ERR naming the field.
2. A message whose (MSH-3, MSH-4, MSH-10) is already stored is a duplicate: the ACK
   stored for it is replayed and no new work is done.
3. AA is only ever sent after the row (raw bytes + dedup key) is committed. In
   ``store`` ACK mode the AA is written into that same row, so one commit suffices; in
   ``application`` mode the processor writes the ACK with the outcome.
4. When the database cannot commit, the answer is AR with ERR 207 and nothing is kept,
   so the sender's resend is processed as new.

Only the header is read here (a few fields of MSH and the first PID-3 / accession for
search and ordering); mapping happens in the processor.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from broker.audit import hooks as audit
from broker.config import AckMode, AllowedSender
from broker.db import unit_of_work
from broker.hl7.ack import build_ack
from broker.hl7.errors import ErrorCode, ErrorLocation, HL7Error, field_error
from broker.hl7.message import Message, parse
from broker.models import InboundMessage, MessageStatus
from broker.security.access import peer_ip, sender_allowed

log = logging.getLogger(__name__)

SUPPORTED_EVENTS: dict[str, frozenset[str]] = {
    "ADT": frozenset({"A01", "A02", "A03", "A04", "A05", "A06", "A07", "A08", "A11",
                      "A12", "A13", "A38", "A40"}),
    "ORM": frozenset({"O01"}),
    "OMI": frozenset({"O23"}),
}
SUPPORTED_VERSIONS = frozenset({"2.3", "2.3.1", "2.4", "2.5", "2.5.1", "2.6"})
SUPPORTED_PROCESSING_IDS = frozenset({"P", "T", "D"})


@dataclass(frozen=True)
class Received:
    """What the listener does next: send ``ack`` now, or (``ack`` None) wait for the
    processor to finish message ``message_pk`` and send the ACK it stored. ``new`` is
    True when this call stored the message (it must be dispatched for processing)."""

    message_pk: int | None
    ack: bytes | None
    new: bool = False


def check_header(msg: Message, *, accept_any_version: bool = False) -> None:
    """Refuse what we do not handle (B3: AR 200-203) or what lacks MSH keys (B4: 101)."""
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
    if not accept_any_version and msg.version not in SUPPORTED_VERSIONS:
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
    """Stores inbound messages; one instance per process, thread-safe (a session per
    call)."""

    def __init__(self, session_factory: sessionmaker[Session], ack_mode: AckMode,
                 *, accept_any_version: bool = False,
                 allowed_senders: Sequence[AllowedSender] = ()) -> None:
        self.session_factory = session_factory
        self.ack_mode = ack_mode
        self.accept_any_version = accept_any_version
        self.allowed_senders = list(allowed_senders)

    def receive(self, raw: bytes, peer: str) -> Received:
        msg: Message | None = None
        error: HL7Error | None = None
        try:
            msg = parse(raw)
            check_header(msg, accept_any_version=self.accept_any_version)
            self._check_sender(msg, peer)
        except HL7Error as exc:
            error = exc
            msg = msg or exc.partial
        try:
            return self._store(raw, peer, msg, error)
        except SQLAlchemyError as exc:
            log.error("message store unavailable (%s): answering AR 207", type(exc).__name__)
            return Received(None, build_ack(msg, "AR", HL7Error(
                ErrorCode.APPLICATION_INTERNAL_ERROR,
                "message store unavailable; nothing was kept, please resend")))

    def _check_sender(self, msg: Message, peer: str) -> None:
        """Issue 5 §6: MSH-3/MSH-4 must be allowed from the peer's address: else AR 207
        (the message is kept, as rejected, for whoever investigates)."""
        application, facility = msg.msh.get(3), msg.msh.get(4)
        if not sender_allowed(self.allowed_senders, application, facility, peer_ip(peer)):
            log.warning("HL7 sender %s/%s from %s not allowed: AR", application, facility,
                        peer_ip(peer))
            try:
                with unit_of_work(self.session_factory) as session:
                    audit.security_alert(session, f"{application}|{facility}", peer_ip(peer),
                                         "HL7 sender not allowed from this address")
            except SQLAlchemyError as exc:
                log.error("security alert not recorded: %s", type(exc).__name__)
            raise HL7Error(ErrorCode.APPLICATION_INTERNAL_ERROR,  # 207 answers AR
                           "sender (MSH-3/MSH-4) not allowed from this address",
                           ErrorLocation("MSH", 3))

    def _store(self, raw: bytes, peer: str, msg: Message | None,
               error: HL7Error | None) -> Received:
        key = _dedup_key(msg)
        for attempt in range(2):
            with self.session_factory() as session:
                if key is not None:
                    existing = _find_duplicate(session, key)
                    if existing is not None:
                        log.info("duplicate of message %s (MSH-10 %s): replaying its ACK",
                                 existing.id, key[2])
                        return Received(existing.id, existing.ack)
                row = _new_row(raw, peer, msg)
                if error is not None:
                    row.status = MessageStatus.REJECTED.value
                    row.error_code, row.error_text = error.code, error.text
                    row.error_location = str(error.location or "")
                    row.ack = build_ack(msg, error.ack_code, error)
                    row.ack_code = error.ack_code
                elif self.ack_mode is AckMode.STORE:
                    row.ack = build_ack(msg, "AA")
                    row.ack_code = "AA"
                session.add(row)
                try:
                    session.commit()
                except IntegrityError:
                    # A racing connection stored the same message first: look again and
                    # replay its ACK. A second conflict is not a race: report it.
                    session.rollback()
                    if attempt or key is None:
                        raise
                    continue
                log.info("stored message %s type %s MSH-10 %s status %s",
                         row.id, row.message_type, row.control_id, row.status)
                return Received(row.id, row.ack, new=row.status == MessageStatus.RECEIVED.value)
        raise AssertionError("unreachable")  # pragma: no cover


def _dedup_key(msg: Message | None) -> tuple[str, str, str] | None:
    if msg is None or not msg.control_id:
        return None
    return (msg.msh.get(3), msg.msh.get(4), msg.control_id)


def _find_duplicate(session: Session, key: tuple[str, str, str]) -> InboundMessage | None:
    app, facility, control_id = key
    return session.scalars(
        select(InboundMessage).where(
            InboundMessage.sending_application == app,
            InboundMessage.sending_facility == facility,
            InboundMessage.control_id == control_id,
        )
    ).first()


def _new_row(raw: bytes, peer: str, msg: Message | None) -> InboundMessage:
    row = InboundMessage(raw=raw, peer=peer, status=MessageStatus.RECEIVED.value, attempts=0)
    if msg is None:
        return row
    msh = msg.msh
    row.sending_application = msh.get(3)
    row.sending_facility = msh.get(4)
    row.receiving_application = msh.get(5)
    row.receiving_facility = msh.get(6)
    row.control_id = msg.control_id or None
    row.message_type = msg.message_type[:20]
    row.version = msg.version[:20]
    row.message_datetime = msh.get(7, 1)[:32]
    key = patient_key(msg)
    row.patient_key = key[:200] or None
    row.ordering_key = key[:200]
    row.accession_number = _accession(msg)
    return row
