"""Database tables (SQLAlchemy 2, identical on SQLite and PostgreSQL).

The database is the truth (DESIGN.md): every inbound HL7 message is a row before it is
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


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    """Declarative base of every broker table."""


class MessageStatus(StrEnum):
    """Life of an inbound message row."""

    RECEIVED = "received"  # committed, waiting to be applied
    PROCESSED = "processed"  # applied to patients / orders
    FAILED = "failed"  # could not be applied; error_* says why; reprocessable
    REJECTED = "rejected"  # refused at the door (AR: unparseable, unsupported type)


class SPSStatus(StrEnum):
    """Scheduled Procedure Step Status (0040,0020), PS3.3 C.4.10 defined terms."""

    SCHEDULED = "SCHEDULED"
    ARRIVED = "ARRIVED"
    READY = "READY"
    STARTED = "STARTED"
    DEPARTED = "DEPARTED"
    COMPLETED = "COMPLETED"
    DISCONTINUED = "DISCONTINUED"
    CANCELLED = "CANCELLED"


class InboundMessage(Base):
    """The message store: every HL7 message received, raw, with the ACK we sent.

    (sending_application, sending_facility, control_id) = (MSH-3, MSH-4, MSH-10) is the
    duplicate-detection key (checklist H1); it is unique so that two connections racing
    with the same message cannot both store it.
    """

    __tablename__ = "inbound_message"
    __table_args__ = (
        UniqueConstraint(
            "sending_application", "sending_facility", "control_id", name="uq_inbound_dedup"
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
    # MSH-7/EVN-2 of the last ADT applied: older updates are not applied (checklist H2).
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
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    procedure_pk: Mapped[int] = mapped_column(ForeignKey("requested_procedure.id"), index=True)
    sps_id: Mapped[str] = mapped_column(String(16), index=True)
    # Position of the step in the placer's message (OBR-1 / IPC order) when the placer
    # sends no SPS ID, so that a later XO finds the generated one again (checklist D3).
    placer_step_key: Mapped[str] = mapped_column(String(32), default="")
    status: Mapped[str] = mapped_column(String(16), default=SPSStatus.SCHEDULED.value)
    start_date: Mapped[str] = mapped_column(String(8), default="")
    start_time: Mapped[str] = mapped_column(String(13), default="")
    start_datetime: Mapped[str] = mapped_column(String(21), default="")
    modality: Mapped[str] = mapped_column(String(16), default="")
    performing_physician_key: Mapped[str] = mapped_column(String(200), default="")
    station_name: Mapped[str] = mapped_column(String(16), default="")
    location: Mapped[str] = mapped_column(String(16), default="")
    # Which station rule gave the AE title (mapping transparency, issue 2 §6).
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
