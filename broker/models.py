"""Database tables (SQLAlchemy 2, identical on SQLite and PostgreSQL).

The database is the truth: every inbound HL7 message is a row before it is
ACKed AA, and the worklist is served straight from the patient / order / requested
procedure / scheduled procedure step rows below.

Worklist attributes live at the level they belong to (IHE RAD TF-2x Appendix B):
each of Patient, RequestedProcedure and ScheduledProcedureStep keeps a JSON
``attributes`` dict in the DICOM JSON model (PS3.18 F.2) holding every mapped
attribute of that level, and typed, indexed columns for every matching key that a
Modality Worklist C-FIND may use (PS3.4 Table K.6-1 plus IHE's R+ keys). A C-FIND
response item is the merge Patient ∪ RequestedProcedure ∪ {SPS Sequence: [SPS]}.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# The status enums belong to the domain; re-exported here under their old names.
from broker.domain.status import MessageStatus as MessageStatus
from broker.domain.status import OutboundStatus as OutboundStatus
from broker.domain.status import PPSStatus as PPSStatus
from broker.domain.status import ReconciliationKind as ReconciliationKind
from broker.domain.status import SPSStatus as SPSStatus


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    """Declarative base of every broker table."""


class InboundMessage(Base):
    """The message store: every HL7 message received, raw, with the ACK we sent.

    A message is a duplicate of a stored one when (sending_application,
    sending_facility, control_id) = (MSH-3, MSH-4, MSH-10) match AND its content does
    (``content_hash``: the message without MSH-7, see
    :func:`broker.services.inbound.content_hash`). The four are unique together, so two
    connections racing with the same message cannot both store it, while a sender that
    reuses a control id for new content has each message stored (and flagged).
    """

    __tablename__ = "inbound_message"
    __table_args__ = (
        UniqueConstraint(
            "sending_application", "sending_facility", "control_id", "content_hash",
            name="uq_inbound_dedup"
        ),
        Index("ix_inbound_ordering", "ordering_key", "status", "id"),
        Index("ix_inbound_status_received", "status", "received_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )
    processed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    peer: Mapped[str] = mapped_column(String(100), default="")
    sending_application: Mapped[str | None] = mapped_column(String(180))
    sending_facility: Mapped[str | None] = mapped_column(String(180))
    receiving_application: Mapped[str | None] = mapped_column(String(180))
    receiving_facility: Mapped[str | None] = mapped_column(String(180))
    control_id: Mapped[str | None] = mapped_column(String(199))
    message_type: Mapped[str] = mapped_column(String(20), default="", index=True)
    version: Mapped[str] = mapped_column(String(20), default="")
    message_datetime: Mapped[str] = mapped_column(String(32), default="")
    # Messages with the same ordering key are applied strictly in id order.
    ordering_key: Mapped[str] = mapped_column(String(200), default="")
    accession_number: Mapped[str | None] = mapped_column(String(64), index=True)
    patient_key: Mapped[str | None] = mapped_column(String(200), index=True)
    raw: Mapped[bytes] = mapped_column(LargeBinary)
    status: Mapped[str] = mapped_column(String(16), default=MessageStatus.RECEIVED.value)
    ack: Mapped[bytes | None] = mapped_column(LargeBinary)
    ack_code: Mapped[str | None] = mapped_column(String(2))
    error_code: Mapped[int | None] = mapped_column(Integer)
    error_location: Mapped[str | None] = mapped_column(String(40))
    error_text: Mapped[str | None] = mapped_column(Text)
    outcome: Mapped[str | None] = mapped_column(Text)  # what processing did, for people
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    content_hash: Mapped[str | None] = mapped_column(String(64))
    # The sender used this MSH-10 before for other content (stored as a new message).
    control_id_reused: Mapped[bool] = mapped_column(Boolean, default=False)
    # Adjustments made to accept the message (broker.hl7.warnings), as a JSON list of
    # {code, location, text}; NULL when there were none.
    warnings: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)
    warning_count: Mapped[int] = mapped_column(Integer, default=0)
    # The mapping profile that mapped it and the deployed version it was part of
    # (``mapping_version``); empty and NULL until it is mapped.
    profile: Mapped[str] = mapped_column(String(64), default="")
    profile_version: Mapped[int | None] = mapped_column(Integer)


class Patient(Base):
    """A patient known to the broker, keyed by (PID-3.1, PID-3.4 assigning authority)."""

    __tablename__ = "patient"
    __table_args__ = (UniqueConstraint("patient_id", "issuer", name="uq_patient_identity"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    patient_id: Mapped[str] = mapped_column(String(64), index=True)
    issuer: Mapped[str] = mapped_column(String(64), default="")
    # PN as stored in the item (component groups joined by '='); *_key columns hold the
    # per-group upper-cased forms PN matching runs on (case-insensitive, README).
    patient_name: Mapped[str] = mapped_column(String(400), default="")
    name_key_alphabetic: Mapped[str] = mapped_column(String(200), default="", index=True)
    name_key_ideographic: Mapped[str] = mapped_column(String(200), default="")
    name_key_phonetic: Mapped[str] = mapped_column(String(200), default="")
    birth_date: Mapped[str] = mapped_column(String(8), default="")
    sex: Mapped[str] = mapped_column(String(16), default="")
    admission_id: Mapped[str] = mapped_column(String(64), default="", index=True)
    specific_character_set: Mapped[str] = mapped_column(String(64), default="")
    attributes: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    merged_into_id: Mapped[int | None] = mapped_column(ForeignKey("patient.id"))
    # MSH-7/EVN-2 of the last ADT applied: older updates are not applied.
    last_adt_datetime: Mapped[str] = mapped_column(String(32), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )

    orders: Mapped[list[ImagingOrder]] = relationship(back_populates="patient")


class ImagingOrder(Base):
    """An order (ORC group) from the placer, keyed by placer / filler order number."""

    __tablename__ = "imaging_order"
    __table_args__ = (
        UniqueConstraint("placer_issuer", "placer_order_number", name="uq_order_placer"),
        Index("ix_order_filler", "filler_issuer", "filler_order_number"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    patient_pk: Mapped[int] = mapped_column(ForeignKey("patient.id"), index=True)
    placer_order_number: Mapped[str | None] = mapped_column(String(64))
    placer_issuer: Mapped[str] = mapped_column(String(64), default="")
    filler_order_number: Mapped[str | None] = mapped_column(String(64))
    filler_issuer: Mapped[str] = mapped_column(String(64), default="")
    sending_application: Mapped[str] = mapped_column(String(180), default="")
    sending_facility: Mapped[str] = mapped_column(String(180), default="")
    profile: Mapped[str] = mapped_column(String(64), default="")
    last_message_pk: Mapped[int | None] = mapped_column(ForeignKey("inbound_message.id"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )

    patient: Mapped[Patient] = relationship(back_populates="orders")
    procedures: Mapped[list[RequestedProcedure]] = relationship(
        back_populates="order", order_by="RequestedProcedure.id"
    )


class RequestedProcedure(Base):
    """A Requested Procedure (PS3.3 C.4.11): accession, RP ID, Study Instance UID."""

    __tablename__ = "requested_procedure"
    __table_args__ = (
        UniqueConstraint("order_pk", "requested_procedure_id", name="uq_rp_in_order"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    order_pk: Mapped[int] = mapped_column(ForeignKey("imaging_order.id"), index=True)
    requested_procedure_id: Mapped[str] = mapped_column(String(16), index=True)
    accession_number: Mapped[str] = mapped_column(String(16), default="", index=True)
    study_instance_uid: Mapped[str] = mapped_column(String(64), index=True)
    priority: Mapped[str] = mapped_column(String(16), default="")
    referring_physician_key: Mapped[str] = mapped_column(String(200), default="")
    requesting_physician_key: Mapped[str] = mapped_column(String(200), default="")
    attributes: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )

    # Performed work: the order status last reported to the EHR (HL7 Table
    # 0038: SC, IP, CM, DC) and when images were first seen for this procedure.
    reported_status: Mapped[str] = mapped_column(String(2), default="SC")
    images_available_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    order: Mapped[ImagingOrder] = relationship(back_populates="procedures")
    steps: Mapped[list[ScheduledProcedureStep]] = relationship(
        back_populates="procedure", order_by="ScheduledProcedureStep.id"
    )


class ScheduledProcedureStep(Base):
    """One Scheduled Procedure Step = one MWL item (PS3.4 K.6.1.2.1).

    Start date/time are stored in the broker's local zone as strings that compare in
    time order: ``start_date`` YYYYMMDD, ``start_time`` HHMMSS[.ffffff], and
    ``start_datetime`` YYYYMMDDHHMMSS[.ffffff] for combined date-time range matching.
    """

    __tablename__ = "scheduled_procedure_step"
    __table_args__ = (
        UniqueConstraint("procedure_pk", "sps_id", name="uq_sps_in_procedure"),
        Index("ix_sps_status_start", "status", "start_datetime"),
        Index("ix_sps_modality_start", "modality", "start_datetime"),
        Index("ix_sps_date", "start_date"),
        # A broad query reads steps in start order and stops at the result cap.
        Index("ix_sps_start", "start_datetime", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    procedure_pk: Mapped[int] = mapped_column(ForeignKey("requested_procedure.id"), index=True)
    sps_id: Mapped[str] = mapped_column(String(16), index=True)
    # Position of the step in the placer's message (OBR-1 / IPC order) when the placer
    # sends no SPS ID, so that a later XO finds the generated one again.
    placer_step_key: Mapped[str] = mapped_column(String(32), default="")
    status: Mapped[str] = mapped_column(String(16), default=SPSStatus.SCHEDULED.value)
    start_date: Mapped[str] = mapped_column(String(8), default="")
    start_time: Mapped[str] = mapped_column(String(13), default="")
    start_datetime: Mapped[str] = mapped_column(String(21), default="")
    modality: Mapped[str] = mapped_column(String(16), default="")
    performing_physician_key: Mapped[str] = mapped_column(String(200), default="")
    station_name: Mapped[str] = mapped_column(String(16), default="")
    location: Mapped[str] = mapped_column(String(16), default="")
    # Which station rule gave the AE title (so the console can say why).
    station_rule: Mapped[str] = mapped_column(String(100), default="")
    attributes: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )

    procedure: Mapped[RequestedProcedure] = relationship(back_populates="steps")
    station_ae_titles: Mapped[list[StationAETitle]] = relationship(
        back_populates="step", cascade="all, delete-orphan", order_by="StationAETitle.position"
    )
    history: Mapped[list[StepStatusChange]] = relationship(
        cascade="all, delete-orphan", order_by="StepStatusChange.id")


class StationAETitle(Base):
    """Scheduled Station AE Title (0040,0001) values of a step; the attribute may be
    multi-valued and a query matches when any value matches (PS3.4 K.2.2.3)."""

    __tablename__ = "sps_station_ae"
    __table_args__ = (Index("ix_station_ae_title", "ae_title", "sps_pk"),)

    sps_pk: Mapped[int] = mapped_column(
        ForeignKey("scheduled_procedure_step.id", ondelete="CASCADE"), primary_key=True
    )
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    ae_title: Mapped[str] = mapped_column(String(16))

    step: Mapped[ScheduledProcedureStep] = relationship(back_populates="station_ae_titles")


class DicomRequest(Base):
    """The DICOM side of the message store: every MPPS N-CREATE/N-SET and IAN N-CREATE
    received, with its dataset as sent (raw bytes in the presentation context's
    transfer syntax) and the status we answered, accepted or not."""

    __tablename__ = "dicom_request"
    __table_args__ = (Index("ix_dicom_request_instance", "sop_instance_uid", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    calling_ae_title: Mapped[str] = mapped_column(String(16), default="")
    peer: Mapped[str] = mapped_column(String(100), default="")
    command: Mapped[str] = mapped_column(String(16))  # N-CREATE | N-SET
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    sop_instance_uid: Mapped[str] = mapped_column(String(64), default="")
    transfer_syntax_uid: Mapped[str] = mapped_column(String(64), default="")
    dataset: Mapped[bytes] = mapped_column(LargeBinary, default=b"")
    status: Mapped[int] = mapped_column(Integer)
    error_comment: Mapped[str] = mapped_column(String(1024), default="")


class DicomRefusal(Base):
    """Refused DICOM associations and connections: how many, per calling AE title, called
    AE title, peer address and reason, counted over a short interval (``at`` is the
    last refusal counted). A-ASSOCIATE-RJ reasons are named as in PS3.8 Table 9-21;
    the others (``tls-handshake-failed``, ``not-dicom``, ...) as in
    :mod:`broker.dicom.refusals`. Addresses and AE titles only, never patient data."""

    __tablename__ = "dicom_refusal"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    calling_ae_title: Mapped[str] = mapped_column(String(16), default="")
    called_ae_title: Mapped[str] = mapped_column(String(16), default="")
    address: Mapped[str] = mapped_column(String(100), default="")
    reason: Mapped[str] = mapped_column(String(40))
    count: Mapped[int] = mapped_column(Integer, default=1)


class PerformedProcedureStep(Base):
    """A Modality Performed Procedure Step SOP Instance (PS3.4 F.7).

    ``attributes`` is the instance in the DICOM JSON model (PS3.18 F.2) as created and
    updated; ``version`` counts accepted N-CREATE/N-SET requests and ``linked_version``
    the last one the linking task applied, which makes that task idempotent.
    """

    __tablename__ = "performed_procedure_step"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    status: Mapped[str] = mapped_column(String(16))
    pps_id: Mapped[str] = mapped_column(String(16), default="")
    performed_station_ae_title: Mapped[str] = mapped_column(String(16), default="")
    modality: Mapped[str] = mapped_column(String(16), default="")
    patient_id: Mapped[str] = mapped_column(String(64), default="", index=True)
    study_instance_uid: Mapped[str] = mapped_column(String(64), default="", index=True)
    start_datetime: Mapped[str] = mapped_column(String(21), default="")
    end_datetime: Mapped[str] = mapped_column(String(21), default="")
    calling_ae_title: Mapped[str] = mapped_column(String(16), default="")
    attributes: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    version: Mapped[int] = mapped_column(Integer, default=1)
    linked_version: Mapped[int] = mapped_column(Integer, default=0)
    # linked: every Scheduled Step Attributes item found its step(s); unscheduled: went
    # to the reconciliation inbox.
    link_state: Mapped[str] = mapped_column(String(16), default="pending")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )

    steps: Mapped[list[ScheduledProcedureStep]] = relationship(secondary="mpps_sps_link")


class MppsStepLink(Base):
    """Which scheduled steps an MPPS performs (grouped procedures: several)."""

    __tablename__ = "mpps_sps_link"

    mpps_pk: Mapped[int] = mapped_column(ForeignKey("performed_procedure_step.id"),
                                         primary_key=True)
    sps_pk: Mapped[int] = mapped_column(ForeignKey("scheduled_procedure_step.id"),
                                        primary_key=True, index=True)


class StoredInstance(Base):
    """One composite instance received by C-STORE (PS3.4 Annex B), indexed."""

    __tablename__ = "stored_instance"
    __table_args__ = (Index("ix_instance_study_pending", "study_instance_uid", "reconciled"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    study_instance_uid: Mapped[str] = mapped_column(String(64), default="")
    series_instance_uid: Mapped[str] = mapped_column(String(64), default="")
    accession_number: Mapped[str] = mapped_column(String(16), default="", index=True)
    patient_id: Mapped[str] = mapped_column(String(64), default="")
    patient_name: Mapped[str] = mapped_column(String(400), default="")
    patient_birth_date: Mapped[str] = mapped_column(String(8), default="")
    modality: Mapped[str] = mapped_column(String(16), default="")
    study_datetime: Mapped[str] = mapped_column(String(21), default="")
    calling_ae_title: Mapped[str] = mapped_column(String(16), default="")
    transfer_syntax_uid: Mapped[str] = mapped_column(String(64), default="")
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # Where the file is (keep / forward spool); empty once discarded or forwarded.
    file_path: Mapped[str] = mapped_column(String(400), default="")
    # none | pending | forwarded | failed (storage_mode = forward)
    forward_state: Mapped[str] = mapped_column(String(16), default="none")
    forward_attempts: Mapped[int] = mapped_column(Integer, default=0)
    forward_due_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    forward_error: Mapped[str] = mapped_column(String(400), default="")
    reconciled: Mapped[bool] = mapped_column(default=False)
    procedure_pk: Mapped[int | None] = mapped_column(ForeignKey("requested_procedure.id"),
                                                     index=True)


class AvailabilityNotification(Base):
    """An Instance Availability Notification SOP Instance (PS3.4 Annex R, RAD-49)."""

    __tablename__ = "instance_availability"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    study_instance_uid: Mapped[str] = mapped_column(String(64), index=True)
    accession_number: Mapped[str] = mapped_column(String(16), default="")
    patient_id: Mapped[str] = mapped_column(String(64), default="")
    mpps_uids: Mapped[list[str]] = mapped_column(JSON, default=list)
    calling_ae_title: Mapped[str] = mapped_column(String(16), default="")
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    reconciled: Mapped[bool] = mapped_column(default=False)
    procedure_pk: Mapped[int | None] = mapped_column(ForeignKey("requested_procedure.id"))

    instances: Mapped[list[AvailableInstance]] = relationship(
        back_populates="notification", cascade="all, delete-orphan")


class AvailableInstance(Base):
    """One Referenced SOP item of an IAN: series, instance, availability, where from."""

    __tablename__ = "available_instance"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    notification_pk: Mapped[int] = mapped_column(ForeignKey("instance_availability.id"),
                                                 index=True)
    series_instance_uid: Mapped[str] = mapped_column(String(64))
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    sop_instance_uid: Mapped[str] = mapped_column(String(64))
    availability: Mapped[str] = mapped_column(String(16), default="")
    retrieve_ae_title: Mapped[str] = mapped_column(String(64), default="")

    notification: Mapped[AvailabilityNotification] = relationship(back_populates="instances")


class ReconciliationItem(Base):
    """Work for a person: performed work the broker could not tie to an order on its
    own, or tied with a discrepancy. ``candidates`` is a ranked list of
    {"procedure_pk", "accession", "score", "reasons"}."""

    __tablename__ = "reconciliation_item"
    __table_args__ = (Index("ix_reconciliation_state", "state", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    state: Mapped[str] = mapped_column(String(16), default="open")  # open|linked|dismissed
    # What it is about: an MPPS, or a study (instances and IANs).
    mpps_pk: Mapped[int | None] = mapped_column(ForeignKey("performed_procedure_step.id"))
    study_instance_uid: Mapped[str] = mapped_column(String(64), default="", index=True)
    # What was observed (for scoring and for the person looking at it).
    patient_id: Mapped[str] = mapped_column(String(64), default="")
    patient_name: Mapped[str] = mapped_column(String(400), default="")
    birth_date: Mapped[str] = mapped_column(String(8), default="")
    modality: Mapped[str] = mapped_column(String(16), default="")
    station_ae_title: Mapped[str] = mapped_column(String(16), default="")
    performed_datetime: Mapped[str] = mapped_column(String(21), default="")
    accession_number: Mapped[str] = mapped_column(String(16), default="")
    detail: Mapped[str] = mapped_column(Text, default="")
    candidates: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    procedure_pk: Mapped[int | None] = mapped_column(ForeignKey("requested_procedure.id"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    resolved_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    resolved_by: Mapped[str] = mapped_column(String(64), default="")


class OutboundDestinationState(Base):
    """Per destination sequence counter: taking its row lock while adding to the outbox
    makes sequence order equal commit order, so the sender keeps order per destination."""

    __tablename__ = "outbound_destination"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    next_sequence: Mapped[int] = mapped_column(Integer, default=1)


class OutboundMessage(Base):
    """The outbox: order status messages for the EHR, written in the same transaction
    as the state change that causes them, sent in ``sequence`` order per destination.
    MSH-10 (``control_id``) is fixed at creation, so a resend is the same message."""

    __tablename__ = "outbound_message"
    __table_args__ = (
        UniqueConstraint("destination", "sequence", name="uq_outbound_sequence"),
        Index("ix_outbound_queue", "destination", "status", "sequence"),
        Index("ix_outbound_sent", "sent_at"),  # the console's traffic per minute
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    destination: Mapped[str] = mapped_column(String(64))
    sequence: Mapped[int] = mapped_column(Integer)
    control_id: Mapped[str] = mapped_column(String(20), unique=True)
    trigger: Mapped[str] = mapped_column(String(8))  # IP | CM | DC | A (Table 0038)
    procedure_pk: Mapped[int | None] = mapped_column(ForeignKey("requested_procedure.id"),
                                                     index=True)
    accession_number: Mapped[str] = mapped_column(String(16), default="", index=True)
    message_type: Mapped[str] = mapped_column(String(16))
    payload: Mapped[bytes] = mapped_column(LargeBinary)
    status: Mapped[str] = mapped_column(String(16), default=OutboundStatus.PENDING.value)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_error: Mapped[str] = mapped_column(String(400), default="")
    ack: Mapped[bytes | None] = mapped_column(LargeBinary)
    ack_code: Mapped[str | None] = mapped_column(String(2))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class StepStatusChange(Base):
    """The history of a scheduled step's status, for the order timeline: what changed
    it (an HL7 message, an MPPS, a person) and when."""

    __tablename__ = "sps_status_change"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sps_pk: Mapped[int] = mapped_column(ForeignKey("scheduled_procedure_step.id"), index=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    old_status: Mapped[str] = mapped_column(String(16), default="")
    new_status: Mapped[str] = mapped_column(String(16))
    cause: Mapped[str] = mapped_column(String(200), default="")


class WorklistQuery(Base):
    """One Modality Worklist C-FIND as the modality asked it: the identifier (DICOM
    JSON), who asked, how many items it got. Kept for "why is it not on the worklist?"
    and the order timeline, in the database and never in logs."""

    __tablename__ = "worklist_query"
    __table_args__ = (Index("ix_worklist_query_calling", "calling_ae_title", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    calling_ae_title: Mapped[str] = mapped_column(String(16), default="")
    peer: Mapped[str] = mapped_column(String(100), default="")
    identifier: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    status: Mapped[int] = mapped_column(Integer, default=0)
    result_count: Mapped[int] = mapped_column(Integer, default=0)
    duration_ms: Mapped[float] = mapped_column(default=0.0)
    # The modality profile that shaped the answer ("" for none) and the deployed
    # version of the profiles in force.
    modality_profile: Mapped[str] = mapped_column(String(64), default="")
    profile_version: Mapped[int | None] = mapped_column(Integer)


class WorklistQueryResult(Base):
    """Which steps a C-FIND returned."""

    __tablename__ = "worklist_query_result"

    query_pk: Mapped[int] = mapped_column(ForeignKey("worklist_query.id", ondelete="CASCADE"),
                                          primary_key=True)
    sps_pk: Mapped[int] = mapped_column(ForeignKey("scheduled_procedure_step.id"),
                                        primary_key=True, index=True)


class Role(StrEnum):
    """What a console user may do: viewers look, operators repair, admins manage.
    Performers (applications and people performing UPS workitems) use the DICOMweb
    Worklist Service (/dicomweb, PS3.18 11) and their own API tokens, nothing else."""

    VIEWER = "viewer"
    OPERATOR = "operator"
    ADMIN = "admin"
    PERFORMER = "performer"


class User(Base):
    """A console user; the password is stored as a scrypt hash (RFC 7914).

    ``ae_titles``: the AE titles a performer acts as on the Worklist Service (UPS-RS,
    PS3.18 11): the only subscriber AE titles whose event channel it may open and whose
    subscriptions it may change, and what it claims workitems as (PS3.4 CC.2.1, where
    the calling AE title is the performer's identity). Set by an admin."""

    __tablename__ = "console_user"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(300))
    role: Mapped[str] = mapped_column(String(16))
    disabled: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_login_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    ae_titles: Mapped[list[str]] = mapped_column(JSON, default=list)


class WebSession(Base):
    """A logged-in browser: the cookie holds a random token, the table its SHA-256."""

    __tablename__ = "web_session"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_pk: Mapped[int] = mapped_column(ForeignKey("console_user.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ApiToken(Base):
    """A token for scripts (``Authorization: Bearer``); stored as its SHA-256."""

    __tablename__ = "api_token"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(64), default="")
    user_pk: Mapped[int] = mapped_column(ForeignKey("console_user.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class LoginThrottle(Base):
    """Failed console logins for one key, ``user:<name>`` or ``addr:<address>``: the
    count since the last success (or quiet period), when the last one happened, and
    until when the key is locked out (OWASP Authentication Cheat Sheet, "Protect
    against automated attacks"; NIST SP 800-63B 5.2.2 rate limiting)."""

    __tablename__ = "login_throttle"

    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    last_failure_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    locked_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class AuditEvent(Base):
    """One audit record (DICOM PS3.15 A.5, IHE ATNA): written in the transaction of the
    action it records; ``message`` is the DICOM audit message XML. ``exported`` is set
    once the syslog receiver has it, so the table is also the buffer while it is down."""

    __tablename__ = "audit_event"
    __table_args__ = (Index("ix_audit_export", "exported", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    event_id: Mapped[str] = mapped_column(String(16))  # DCM code, e.g. 110112 Query
    event_name: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(1))  # C R U D E
    outcome: Mapped[int] = mapped_column(Integer, default=0)  # 0 4 8 12
    user: Mapped[str] = mapped_column(String(128), default="")
    address: Mapped[str] = mapped_column(String(100), default="")
    detail: Mapped[str] = mapped_column(String(400), default="")
    message: Mapped[str] = mapped_column(Text)
    exported: Mapped[bool] = mapped_column(default=False)


class UPSWorkitem(Base):
    """A Unified Procedure Step workitem (PS3.4 Annex CC; attributes of PS3.4 Table
    CC.2.5-3). A workitem born from an order names its scheduled step (``sps_pk``): its
    patient and request are read from the step's rows, so an ADT or order update shows;
    a pushed one (N-CREATE / UPS-RS Create) holds everything in ``attributes`` and its
    patient / request keys in the ``patient_*`` / ``accession_number`` columns.

    ``attributes`` is the stored dataset as a keyword dict (what a performer sent: the
    whole workitem for a pushed one, progress and performed-procedure updates for an
    order-born one); the typed columns are the matching keys of a search. The
    Transaction UID is kept here and never returned (PS3.4 CC.1.1)."""

    __tablename__ = "ups_workitem"
    __table_args__ = (
        Index("ix_ups_state_start", "state", "start_datetime"),
        Index("ix_ups_start", "start_datetime", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    uid: Mapped[str] = mapped_column(String(64), unique=True)
    sps_pk: Mapped[int | None] = mapped_column(
        ForeignKey("scheduled_procedure_step.id"), index=True)
    state: Mapped[str] = mapped_column(String(16), default="SCHEDULED")
    transaction_uid: Mapped[str] = mapped_column(String(64), default="")
    # The AE title a UPS-RS performer claimed it as ("" when claimed otherwise): only a
    # performer acting as it may change it with the Transaction UID afterwards.
    claimed_as: Mapped[str] = mapped_column(String(16), default="")
    cancel_requested_by: Mapped[str] = mapped_column(String(64), default="")
    cancel_requested_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    cancel_reason: Mapped[str] = mapped_column(String(400), default="")
    priority: Mapped[str] = mapped_column(String(8), default="MEDIUM")
    label: Mapped[str] = mapped_column(String(64), default="")
    worklist_label: Mapped[str] = mapped_column(String(64), default="")
    # YYYYMMDDHHMMSS[.ffffff] in the broker's zone, like the step's start_datetime.
    start_datetime: Mapped[str] = mapped_column(String(26), default="")
    expected_completion: Mapped[str] = mapped_column(String(26), default="")
    input_readiness: Mapped[str] = mapped_column(String(16), default="READY")
    station_name_code: Mapped[str] = mapped_column(String(16), default="", index=True)
    station_class_code: Mapped[str] = mapped_column(String(16), default="")
    station_location_code: Mapped[str] = mapped_column(String(16), default="")
    workitem_code_value: Mapped[str] = mapped_column(String(16), default="")
    workitem_code_scheme: Mapped[str] = mapped_column(String(16), default="")
    # Pushed workitems only (order-born ones read the patient and request rows).
    patient_id: Mapped[str] = mapped_column(String(64), default="")
    issuer: Mapped[str] = mapped_column(String(64), default="")
    name_key_alphabetic: Mapped[str] = mapped_column(String(200), default="")
    name_key_ideographic: Mapped[str] = mapped_column(String(200), default="")
    name_key_phonetic: Mapped[str] = mapped_column(String(200), default="")
    birth_date: Mapped[str] = mapped_column(String(8), default="")
    sex: Mapped[str] = mapped_column(String(16), default="")
    accession_number: Mapped[str] = mapped_column(String(16), default="")
    study_instance_uid: Mapped[str] = mapped_column(String(64), default="")
    attributes: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_by: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )


class UPSSubscription(Base):
    """A subscription of an AE to the events of one workitem, or to all of them (the
    UPS Global Subscription SOP Instance, or its filtered form with ``filter`` a
    keyword dict of matching keys), PS3.4 CC.2.2. ``suspended``: a global subscription
    whose AE no longer gets new workitems (Suspend Global Subscription)."""

    __tablename__ = "ups_subscription"
    __table_args__ = (UniqueConstraint("ae_title", "workitem_uid", name="uq_ups_subscription"),
                      Index("ix_ups_subscription_uid", "workitem_uid"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ae_title: Mapped[str] = mapped_column(String(16))
    workitem_uid: Mapped[str] = mapped_column(String(64))
    deletion_lock: Mapped[bool] = mapped_column(Boolean, default=False)
    filter: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    suspended: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class UPSEvent(Base):
    """One UPS event (PS3.4 CC.2.4): what changed on a workitem, in order. The table is
    the order timeline's source and the delivery queue (WebSocket, N-EVENT-REPORT):
    deliverers read the rows after the last id they sent. ``recipient`` set: for that
    AE only (the initial State Report of a new subscription)."""

    __tablename__ = "ups_event"
    __table_args__ = (Index("ix_ups_event_workitem", "workitem_uid", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    workitem_uid: Mapped[str] = mapped_column(String(64))
    event_type_id: Mapped[int] = mapped_column(Integer)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    recipient: Mapped[str | None] = mapped_column(String(16))
    cause: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class UPSDelivery(Base):
    """How far the events due to one subscriber AE have been delivered (N-EVENT-REPORT,
    PS3.4 CC.2.4): the id of the last ``ups_event`` sent, so a restart resumes after it."""

    __tablename__ = "ups_delivery"

    ae_title: Mapped[str] = mapped_column(String(16), primary_key=True)
    last_event_id: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )


class MappingVersion(Base):
    """One set of mapping and modality profiles as deployed: the text of each of its
    files (``sources``: file key -> YAML text, packaged files keyed ``packaged/NAME``),
    its SHA-256 ``digest`` over them, who made it and when. Numbered from 1; never
    changed once written."""

    __tablename__ = "mapping_version"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    digest: Mapped[str] = mapped_column(String(64), index=True)
    sources: Mapped[dict[str, str]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    created_by: Mapped[str] = mapped_column(String(64), default="")
    comment: Mapped[str] = mapped_column(String(500), default="")


class MappingDeployment(Base):
    """Each time a version was put in force: ``action`` is ``initial`` (the first start's
    directory), ``deploy`` or ``rollback``. The latest row (highest id) is the version
    in force; every process reads it before mapping a transaction's messages and
    before answering a worklist query."""

    __tablename__ = "mapping_deployment"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version: Mapped[int] = mapped_column(ForeignKey("mapping_version.id"))
    action: Mapped[str] = mapped_column(String(16), default="deploy")
    deployed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    deployed_by: Mapped[str] = mapped_column(String(64), default="")
    comment: Mapped[str] = mapped_column(String(500), default="")


class ReplayRun(Base):
    """A bulk reprocessing of stored messages (e.g. the failed ones since a deploy): the
    filter it was asked with, the ids of the messages it queued, by whom and when, and
    the version in force when it started. Its progress is read from those messages'
    statuses."""

    __tablename__ = "replay_run"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    created_by: Mapped[str] = mapped_column(String(64), default="")
    criteria: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    message_ids: Mapped[list[int]] = mapped_column(JSON, default=list)
    version: Mapped[int | None] = mapped_column(Integer)
