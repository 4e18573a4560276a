"""The outbox: order status messages written in the same transaction as the change that
causes them (outbound_message rows -> MLLP client -> EHR).

:func:`report_procedure` compares a requested procedure's order status, derived from
its steps, with the status last reported and queues the messages that take the EHR
there; :func:`report_images` queues "A" (images available) once per procedure, unless
the procedure is already reported completed or discontinued (the EHR would read it as
a step backwards). Each queued message gets its destination's next sequence number
under that destination's row lock, so sequence order is commit order.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from broker.config import Destination, Settings
from broker.domain.reconcile import order_status, report_transitions
from broker.hl7.outbound import StatusFacts, build_status_message
from broker.models import (
    OutboundDestinationState,
    OutboundMessage,
    RequestedProcedure,
    ScheduledProcedureStep,
    SPSStatus,
)


def _facts(rp: RequestedProcedure) -> StatusFacts:
    order, patient = rp.order, rp.order.patient
    attrs = rp.attributes or {}
    codes = attrs.get("RequestedProcedureCodeSequence") or [{}]
    code = codes[0] if isinstance(codes, list) and codes else {}
    step = next((s for s in rp.steps if s.status != SPSStatus.CANCELLED.value),
                rp.steps[0] if rp.steps else None)
    return StatusFacts(
        patient_id=patient.patient_id, issuer=patient.issuer,
        patient_name=str((patient.attributes or {}).get("PatientName", "")),
        birth_date=patient.birth_date, sex=patient.sex,
        placer_order_number=order.placer_order_number or "", placer_issuer=order.placer_issuer,
        filler_order_number=order.filler_order_number or "", filler_issuer=order.filler_issuer,
        accession_number=rp.accession_number, requested_procedure_id=rp.requested_procedure_id,
        study_instance_uid=rp.study_instance_uid,
        sps_id=step.sps_id if step is not None else "",
        modality=step.modality if step is not None else "",
        procedure_code=(str(code.get("CodeValue", "")), str(code.get("CodeMeaning", "")),
                        str(code.get("CodingSchemeDesignator", ""))),
        start_datetime=step.start_datetime.split(".")[0] if step is not None else "",
    )


def _next_sequence(session: Session, name: str) -> int:
    state = session.scalars(select(OutboundDestinationState)
                            .where(OutboundDestinationState.name == name)
                            .with_for_update()).first()
    if state is None:
        state = OutboundDestinationState(name=name, next_sequence=1)
        session.add(state)
        session.flush()
    sequence = state.next_sequence
    state.next_sequence = sequence + 1
    return sequence


def enqueue(session: Session, settings: Settings, rp: RequestedProcedure,
            status: str) -> list[OutboundMessage]:
    """Queue one status message for every destination that wants ``status``."""
    queued = []
    for dest in settings.outbound_destinations:
        if status not in dest.triggers:
            continue
        queued.append(_queue(session, settings, dest, rp, status))
    return queued


def _queue(session: Session, settings: Settings, dest: Destination, rp: RequestedProcedure,
           status: str) -> OutboundMessage:
    control_id = uuid.uuid4().hex[:20]
    payload = build_status_message(
        _facts(rp), status=status, message_type=dest.message_type, control_id=control_id,
        sending=(settings.hl7_sending_application, settings.hl7_sending_facility),
        receiving=(dest.receiving_application, dest.receiving_facility))
    row = OutboundMessage(destination=dest.name, sequence=_next_sequence(session, dest.name),
                          control_id=control_id, trigger=status, procedure_pk=rp.id,
                          accession_number=rp.accession_number,
                          message_type=dest.message_type, payload=payload)
    session.add(row)
    return row


def lock_procedures(session: Session, procedure_pks: set[int]) -> None:
    """Take the row locks of these requested procedures and re-read them and their
    steps: two tasks reporting on one procedure at once (two MPPS of a grouped exam, an
    MPPS and a study) then report each change once, in order (PostgreSQL; SQLite
    serialises every writer anyway)."""
    if not procedure_pks:
        return
    fresh = {"populate_existing": True}
    session.scalars(select(RequestedProcedure).where(RequestedProcedure.id.in_(procedure_pks))
                    .with_for_update().execution_options(**fresh)).all()
    session.scalars(select(ScheduledProcedureStep).where(
        ScheduledProcedureStep.procedure_pk.in_(procedure_pks))
        .execution_options(**fresh)).all()


def report_procedure(session: Session, settings: Settings, rp: RequestedProcedure) -> list[str]:
    """Queue what moves the EHR's view of ``rp`` to its current order status."""
    current = order_status([s.status for s in rp.steps])
    sent = []
    for status in report_transitions(rp.reported_status, current):
        enqueue(session, settings, rp, status)
        sent.append(status)
    rp.reported_status = current
    return sent


def report_images(session: Session, settings: Settings, rp: RequestedProcedure) -> bool:
    """Record that images exist for ``rp``; queue "A" the first time."""
    if rp.images_available_at is not None:
        return False
    rp.images_available_at = datetime.now(UTC)
    if rp.reported_status in ("CM", "DC"):
        return False
    enqueue(session, settings, rp, "A")
    return True
