"""MPPS N-CREATE / N-SET (PS3.4 F.7.2) stored, and MPPS linked to scheduled steps.

:func:`create` and :func:`update` run inside the DIMSE handler's transaction: the
instance is committed before the response is sent; a refused request raises
:class:`~broker.services.dimse_status.MppsError` (the DIMSE status, from the domain
rule broken) and changes nothing. :func:`link` is the body of the linking task:
it resolves every Scheduled Step Attributes Sequence item to steps (SPS ID +
Requested Procedure ID + Accession Number, else the Study Instance UID), applies
the status the MPPS leads to, queues the order status messages, and sends what it
cannot tie to an order to the reconciliation inbox. It is idempotent: it applies
``version`` once (``linked_version``).

When an N-CREATE names its steps unambiguously (:func:`named_steps`), :func:`create`
does the linking part in the N-CREATE's own transaction (PS3.4 F.7.2.1): the link rows
and the move of the steps to STARTED are committed before the response, so the step
is off the worklist when the modality hears back and a second modality cannot pick up
the same exam (IHE RAD TF-2 4.6, Modality Procedure Step In Progress: the Order Filler
/ Department System Scheduler records the step as started). The task then finds the
MPPS ``linked`` and does only what remains: reconciliation items, the demographics
check and the order status report, each once.
"""

from __future__ import annotations

import logging

from pydicom.dataset import Dataset
from sqlalchemy import select
from sqlalchemy.orm import Session

from broker.config import Settings
from broker.domain.errors import MppsRuleError
from broker.domain.mpps import (
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
from broker.services.dimse_status import (
    DUPLICATE_INSTANCE,
    NO_SUCH_INSTANCE,
    MppsError,
    mpps_refusal,
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
    """Store a new MPPS instance (PS3.4 F.7.2.1, Table F.7.2-1); raises MppsError to refuse.

    When :func:`named_steps` finds the referenced steps, they are linked and moved to
    the status the MPPS leads to (:func:`move_steps`) here, in the caller's
    transaction, before the N-CREATE response (PS3.4 F.7.2.1); ``link_state`` is then
    ``linked`` and ``linked_version`` stays 0, so the linking task still runs and does
    the rest (:func:`apply_state`). Otherwise ``link_state`` stays ``pending`` and the
    task links as for any MPPS.
    """
    try:
        check_create(ds)
    except MppsRuleError as err:
        raise mpps_refusal(err) from err
    exists = session.scalar(select(PerformedProcedureStep.id).where(
        PerformedProcedureStep.sop_instance_uid == sop_instance_uid))
    if exists is not None:
        raise MppsError(DUPLICATE_INSTANCE, "an MPPS with this SOP Instance UID exists")
    row = PerformedProcedureStep(sop_instance_uid=sop_instance_uid,
                                 calling_ae_title=calling_ae_title, version=1)
    _columns(row, ds)
    session.add(row)
    session.flush()
    steps = named_steps(session, ds)
    if steps:
        _add_links(session, row, steps)
        changed, _cancelled = move_steps(session, row, ds)
        log.info("MPPS %s linked on N-CREATE: %s", row.id, "; ".join(changed) or "no change")
    return row


def update(session: Session, sop_instance_uid: str,
           modification: Dataset) -> PerformedProcedureStep:
    """Apply an N-SET (PS3.4 F.7.2.2); raises MppsError to refuse, leaving the row unchanged."""
    row = session.scalars(select(PerformedProcedureStep).where(
        PerformedProcedureStep.sop_instance_uid == sop_instance_uid).with_for_update()).first()
    if row is None:
        raise MppsError(NO_SUCH_INSTANCE, "no MPPS with this SOP Instance UID")
    try:
        check_set(row.status, modification)
        ds = apply_set(stored_dataset(row), modification)
        check_final(ds)
    except MppsRuleError as err:
        raise mpps_refusal(err) from err
    _columns(row, ds)
    row.version += 1
    return row


_STEPS = select(ScheduledProcedureStep).join(
    RequestedProcedure, ScheduledProcedureStep.procedure_pk == RequestedProcedure.id)


def _by_identifiers(session: Session, item: Dataset) -> list[ScheduledProcedureStep]:
    """The steps matching every one of the item's SPS ID, Requested Procedure ID and
    Accession Number that is given (none given: no step)."""
    sps_id, rp_id = _text(item, "ScheduledProcedureStepID"), _text(item, "RequestedProcedureID")
    accession = _text(item, "AccessionNumber")
    conditions = []
    if sps_id:
        conditions.append(ScheduledProcedureStep.sps_id == sps_id)
    if rp_id:
        conditions.append(RequestedProcedure.requested_procedure_id == rp_id)
    if accession:
        conditions.append(RequestedProcedure.accession_number == accession)
    if not conditions:
        return []
    return list(session.scalars(_STEPS.where(*conditions).order_by(ScheduledProcedureStep.id)))


def _by_study(session: Session, item: Dataset) -> list[ScheduledProcedureStep]:
    study_uid = _text(item, "StudyInstanceUID")
    if not study_uid:
        return []
    return list(session.scalars(_STEPS.where(
        RequestedProcedure.study_instance_uid == study_uid).order_by(ScheduledProcedureStep.id)))


def _steps_for_item(session: Session, item: Dataset, modality: str
                    ) -> list[ScheduledProcedureStep]:
    steps = _by_identifiers(session, item)
    if not steps:
        steps = _by_study(session, item)
    if not _text(item, "ScheduledProcedureStepID") and len(steps) > 1 and modality:
        same = [s for s in steps if s.modality == modality]
        steps = same or steps
    return steps


def named_steps(session: Session, ds: Dataset) -> list[ScheduledProcedureStep]:
    """The steps an N-CREATE references unambiguously, or ``[]`` to leave it to the task.

    Unambiguous means every Scheduled Step Attributes Sequence item (PS3.4 Table
    F.7.2-1) picks exactly one step by its own keys, with none of the task's guesses:

    * an item giving an Accession Number or a Requested Procedure ID: the steps matching
      all of its SPS ID, Requested Procedure ID and Accession Number that are given must
      be exactly one (an SPS ID alone is not enough: a step is identified within its
      Requested Procedure, which the other two name);
    * an item giving none of the three (an unscheduled-looking reference): its Study
      Instance UID must belong to exactly one step.

    No fallback from identifiers that match nothing to the Study Instance UID and no
    narrowing by modality: those cases, an item finding no step or several, and an SPS
    ID without its procedure, are ambiguous and the whole MPPS is left to the task. The
    steps found are those the task would link for the same references.
    """
    found: dict[int, ScheduledProcedureStep] = {}
    for item in ds.get("ScheduledStepAttributesSequence") or []:
        if _text(item, "AccessionNumber") or _text(item, "RequestedProcedureID"):
            steps = _by_identifiers(session, item)
        elif _text(item, "ScheduledProcedureStepID"):
            return []
        else:
            steps = _by_study(session, item)
        if len(steps) != 1:
            return []
        found.setdefault(steps[0].id, steps[0])
    return list(found.values())


def _add_links(session: Session, row: PerformedProcedureStep,
               steps: list[ScheduledProcedureStep]) -> None:
    """Link ``row`` to ``steps`` (MppsStepLink rows) and mark it ``linked``."""
    for step in steps:
        session.add(MppsStepLink(mpps_pk=row.id, sps_pk=step.id))
    row.link_state = "linked"
    session.flush()
    session.refresh(row, ["steps"])


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
            _add_links(session, row, list(found.values()))
        else:
            row.link_state = "unscheduled"
            open_item(session, settings, ReconciliationKind.UNSCHEDULED_MPPS,
                      observation(row, ds), mpps_pk=row.id,
                      detail=f"MPPS {row.pps_id or row.sop_instance_uid}: no scheduled "
                             "step referenced or found")
            session.flush()
    outcome = apply_state(session, settings, row, ds)
    row.linked_version = row.version
    return outcome


def move_steps(session: Session, row: PerformedProcedureStep, ds: Dataset
               ) -> tuple[list[str], list[ScheduledProcedureStep]]:
    """Move ``row``'s linked steps to the status its state leads to
    (:func:`broker.domain.mpps.step_status_for`).

    Takes the row locks of their requested procedures first and re-reads the steps, so
    a concurrent order change is seen, not overwritten. Each change is recorded in the
    step's history with the MPPS as cause; a step already there is not touched, which
    makes a second call a no-op. Cancelled steps are left as they are and returned for
    the caller to report. Returns the changes made (for the log) and those steps.
    """
    lock_procedures(session, {step.procedure_pk for step in row.steps})
    wrong_entry = row.status == PPSStatus.DISCONTINUED.value and is_incorrect_worklist_entry(ds)
    changed, cancelled = [], []
    for step in row.steps:
        if step.status == SPSStatus.CANCELLED.value:
            cancelled.append(step)
            continue
        old = step.status
        new = step_status_for(row.status, old, wrong_entry=wrong_entry)
        if set_step_status(step, SPSStatus(new), cause=f"MPPS {row.id} ({row.status})"):
            changed.append(f"SPS {step.sps_id} {old}->{new}")
    session.flush()
    return changed, cancelled


def apply_state(session: Session, settings: Settings, row: PerformedProcedureStep,
                ds: Dataset | None = None) -> str:
    """Move the linked steps to the status the MPPS leads to and report the change."""
    ds = ds if ds is not None else stored_dataset(row)
    changed, cancelled = move_steps(session, row, ds)
    for step in cancelled:
        open_item(session, settings, ReconciliationKind.CANCELLED_ORDER,
                  observation(row, ds), mpps_pk=row.id,
                  detail=f"MPPS {row.pps_id} performs step {step.sps_id} of a "
                         "cancelled order")
    procedures = {step.procedure.id: step.procedure for step in row.steps
                  if step not in cancelled}
    for rp in procedures.values():
        check_demographics(session, settings, rp, observation(row, ds),
                           what=f"MPPS {row.pps_id}", mpps_pk=row.id)
        sent = report_procedure(session, settings, rp)
        if sent:
            changed.append(f"accession {rp.accession_number}: reported {'+'.join(sent)}")
    log.info("MPPS %s (%s) applied: %s", row.id, row.status, "; ".join(changed) or "no change")
    return "; ".join(changed)
