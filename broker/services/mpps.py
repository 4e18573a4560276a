"""MPPS N-CREATE / N-SET (PS3.4 F.7.2) stored, and MPPS linked to scheduled steps.

:func:`create` and :func:`update` run inside the DIMSE handler's transaction: the
instance is committed before the response is sent; a refused request raises
:class:`MppsError` and changes nothing. :func:`link` is the body of the linking task
(issue 3 §2): it resolves every Scheduled Step Attributes Sequence item to steps (SPS
ID + Requested Procedure ID + Accession Number, else the Study Instance UID), applies
the status the MPPS leads to, queues the order status messages, and sends what it
cannot tie to an order to the reconciliation inbox. It is idempotent: it applies
``version`` once (``linked_version``).
"""

from __future__ import annotations

import logging

from pydicom.dataset import Dataset
from sqlalchemy import select
from sqlalchemy.orm import Session

from broker.config import Settings
from broker.domain.mpps import (
    DUPLICATE_INSTANCE,
    NO_SUCH_INSTANCE,
    MppsError,
    apply_set,
    check_create,
    check_final,
    check_set,
    is_incorrect_worklist_entry,
    step_status_for,
)
from broker.models import (
    MppsStepLink,
    PerformedProcedureStep,
    PPSStatus,
    ReconciliationKind,
    RequestedProcedure,
    ScheduledProcedureStep,
    SPSStatus,
)
from broker.services.outbox import lock_procedures, report_procedure
from broker.services.reconciliation import Observation, check_demographics, open_item
from broker.services.records import set_step_status

log = logging.getLogger(__name__)


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    return "" if value is None else str(value).strip()


def _columns(row: PerformedProcedureStep, ds: Dataset) -> None:
    row.status = _text(ds, "PerformedProcedureStepStatus")
    row.pps_id = _text(ds, "PerformedProcedureStepID")[:16]
    row.performed_station_ae_title = _text(ds, "PerformedStationAETitle")[:16]
    row.modality = _text(ds, "Modality")[:16]
    row.patient_id = _text(ds, "PatientID")[:64]
    items = ds.get("ScheduledStepAttributesSequence") or []
    row.study_instance_uid = _text(items[0], "StudyInstanceUID")[:64] if items else ""
    row.start_datetime = (_text(ds, "PerformedProcedureStepStartDate")
                          + _text(ds, "PerformedProcedureStepStartTime"))[:21]
    row.end_datetime = (_text(ds, "PerformedProcedureStepEndDate")
                        + _text(ds, "PerformedProcedureStepEndTime"))[:21]
    row.attributes = ds.to_json_dict()


def stored_dataset(row: PerformedProcedureStep) -> Dataset:
    return Dataset.from_json(row.attributes)


def create(session: Session, sop_instance_uid: str, ds: Dataset,
           calling_ae_title: str) -> PerformedProcedureStep:
    """Store a new MPPS instance (F1, F2); raises MppsError to refuse."""
    check_create(ds)
    exists = session.scalar(select(PerformedProcedureStep.id).where(
        PerformedProcedureStep.sop_instance_uid == sop_instance_uid))
    if exists is not None:
        raise MppsError(DUPLICATE_INSTANCE, "an MPPS with this SOP Instance UID exists")
    row = PerformedProcedureStep(sop_instance_uid=sop_instance_uid,
                                 calling_ae_title=calling_ae_title, version=1)
    _columns(row, ds)
    session.add(row)
    session.flush()
    return row


def update(session: Session, sop_instance_uid: str,
           modification: Dataset) -> PerformedProcedureStep:
    """Apply an N-SET (F5, F6); raises MppsError to refuse, leaving the row unchanged."""
    row = session.scalars(select(PerformedProcedureStep).where(
        PerformedProcedureStep.sop_instance_uid == sop_instance_uid).with_for_update()).first()
    if row is None:
        raise MppsError(NO_SUCH_INSTANCE, "no MPPS with this SOP Instance UID")
    check_set(row.status, modification)
    ds = apply_set(stored_dataset(row), modification)
    check_final(ds)
    _columns(row, ds)
    row.version += 1
    return row


def _steps_for_item(session: Session, item: Dataset, modality: str
                    ) -> list[ScheduledProcedureStep]:
    sps_id, rp_id = _text(item, "ScheduledProcedureStepID"), _text(item, "RequestedProcedureID")
    accession, study_uid = _text(item, "AccessionNumber"), _text(item, "StudyInstanceUID")
    query = select(ScheduledProcedureStep).join(
        RequestedProcedure, ScheduledProcedureStep.procedure_pk == RequestedProcedure.id)
    steps: list[ScheduledProcedureStep] = []
    if sps_id or rp_id or accession:
        conditions = []
        if sps_id:
            conditions.append(ScheduledProcedureStep.sps_id == sps_id)
        if rp_id:
            conditions.append(RequestedProcedure.requested_procedure_id == rp_id)
        if accession:
            conditions.append(RequestedProcedure.accession_number == accession)
        steps = list(session.scalars(query.where(*conditions).order_by(
            ScheduledProcedureStep.id)))
    if not steps and study_uid:
        steps = list(session.scalars(query.where(
            RequestedProcedure.study_instance_uid == study_uid).order_by(
            ScheduledProcedureStep.id)))
    if not sps_id and len(steps) > 1 and modality:
        same = [s for s in steps if s.modality == modality]
        steps = same or steps
    return steps


def observation(row: PerformedProcedureStep, ds: Dataset) -> Observation:
    return Observation(
        patient_id=row.patient_id, patient_name=_text(ds, "PatientName"),
        birth_date=_text(ds, "PatientBirthDate"), modality=row.modality,
        station_ae_title=row.performed_station_ae_title, performed=row.start_datetime,
        accession=next((_text(i, "AccessionNumber") for i in
                        ds.get("ScheduledStepAttributesSequence") or []), ""),
        study_instance_uid=row.study_instance_uid)


def link(session: Session, settings: Settings, mpps_pk: int) -> str:
    """Apply MPPS ``mpps_pk``'s current state to its steps (the linking task's body)."""
    row = session.scalars(select(PerformedProcedureStep).where(
        PerformedProcedureStep.id == mpps_pk).with_for_update()).first()
    if row is None or row.linked_version >= row.version:
        return "nothing to do"
    ds = stored_dataset(row)
    if row.link_state == "pending":
        found: dict[int, ScheduledProcedureStep] = {}
        for item in ds.get("ScheduledStepAttributesSequence") or []:
            for step in _steps_for_item(session, item, row.modality):
                found.setdefault(step.id, step)
        if found:
            for step in found.values():
                session.add(MppsStepLink(mpps_pk=row.id, sps_pk=step.id))
            row.link_state = "linked"
        else:
            row.link_state = "unscheduled"
            open_item(session, settings, ReconciliationKind.UNSCHEDULED_MPPS,
                      observation(row, ds), mpps_pk=row.id,
                      detail=f"MPPS {row.pps_id or row.sop_instance_uid}: no scheduled "
                             "step referenced or found")
        session.flush()
        session.refresh(row, ["steps"])
    outcome = apply_state(session, settings, row, ds)
    row.linked_version = row.version
    return outcome


def apply_state(session: Session, settings: Settings, row: PerformedProcedureStep,
                ds: Dataset | None = None) -> str:
    """Move the linked steps to the status the MPPS leads to and report the change."""
    ds = ds if ds is not None else stored_dataset(row)
    lock_procedures(session, {step.procedure_pk for step in row.steps})
    wrong_entry = row.status == PPSStatus.DISCONTINUED.value and is_incorrect_worklist_entry(ds)
    changed, procedures = [], {}
    for step in row.steps:
        if step.status == SPSStatus.CANCELLED.value:
            open_item(session, settings, ReconciliationKind.CANCELLED_ORDER,
                      observation(row, ds), mpps_pk=row.id,
                      detail=f"MPPS {row.pps_id} performs step {step.sps_id} of a "
                             "cancelled order")
            continue
        old = step.status
        new = step_status_for(row.status, old, wrong_entry=wrong_entry)
        if set_step_status(step, SPSStatus(new), cause=f"MPPS {row.id} ({row.status})"):
            changed.append(f"SPS {step.sps_id} {old}->{new}")
        procedures[step.procedure.id] = step.procedure
    session.flush()
    for rp in procedures.values():
        check_demographics(session, settings, rp, observation(row, ds),
                           what=f"MPPS {row.pps_id}", mpps_pk=row.id)
        sent = report_procedure(session, settings, rp)
        if sent:
            changed.append(f"accession {rp.accession_number}: reported {'+'.join(sent)}")
    log.info("MPPS %s (%s) applied: %s", row.id, row.status, "; ".join(changed) or "no change")
    return "; ".join(changed)
