"""Workitems read and changed by performers and requesters: Retrieve / N-GET, Create /
N-CREATE (UPS Push), Update / N-SET, Change State / N-ACTION 1, Request Cancellation /
N-ACTION 2 (PS3.4 CC.2.1, CC.2.5-CC.2.7; PS3.18 11.4-11.8).

Every function runs in the caller's transaction, reads the workitem under its row lock
(PostgreSQL; SQLite serialises writers), refuses with
:class:`~broker.domain.ups.UPSError` leaving nothing changed, and appends the UPS
events of what it changed. A state change of an order-born workitem moves its
scheduled step too (:mod:`broker.services.ups.steps`): one state machine.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from sqlalchemy import select
from sqlalchemy.orm import Session

from broker.domain import ups as rules
from broker.domain.ups import UPSEventType, UPSState, refusal
from broker.models import (
    ImagingOrder,
    Patient,
    RequestedProcedure,
    ScheduledProcedureStep,
    StoredInstance,
    UPSWorkitem,
)
from broker.services.ups import events, steps
from broker.services.ups.datasets import (
    TRANSACTION_UID,
    UPS_SOP_CLASS,
    keywords,
    overlay,
    pushed_columns,
    scheduled_columns,
    stored,
    workitem_dataset,
)

# What Update may not change (PS3.4 Table CC.2.5-3, N-SET usage "Not allowed"): the
# identity, the state (Change State does that) and the Transaction UID.
NOT_UPDATABLE = frozenset({"SOPClassUID", "SOPInstanceUID", "ProcedureStepState",
                           TRANSACTION_UID})
# Attributes whose change is a Progress Report event (PS3.4 CC.2.4.2).
PROGRESS = "ProcedureStepProgressInformationSequence"


def _row(session: Session, uid: str, *, lock: bool = True) -> UPSWorkitem:
    query = select(UPSWorkitem).where(UPSWorkitem.uid == uid)
    row = session.scalars(query.with_for_update() if lock else query).first()
    if row is None:
        raise refusal(rules.NO_SUCH_WORKITEM, uid)
    return row


def _context(session: Session, row: UPSWorkitem) -> tuple[
        ScheduledProcedureStep | None, RequestedProcedure | None, ImagingOrder | None,
        Patient | None]:
    if row.sps_pk is None:
        return None, None, None, None
    step = session.get(ScheduledProcedureStep, row.sps_pk)
    if step is None:
        return None, None, None, None
    procedure = step.procedure
    order = procedure.order
    return step, procedure, order, order.patient


def input_information(session: Session, study_uids: list[str]) -> dict[str, list[dict[str, Any]]]:
    """Input Information Sequence items (PS3.3 C.30.2) per study: the instances the
    broker holds for it, one item per series."""
    if not study_uids:
        return {}
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for study, series, sop_class, sop_instance in session.execute(
            select(StoredInstance.study_instance_uid, StoredInstance.series_instance_uid,
                   StoredInstance.sop_class_uid, StoredInstance.sop_instance_uid)
            .where(StoredInstance.study_instance_uid.in_(study_uids))
            .order_by(StoredInstance.id)):
        item = out.setdefault(study, {}).setdefault(series, {
            "TypeOfInstances": "DICOM", "StudyInstanceUID": study,
            "SeriesInstanceUID": series, "ReferencedSOPSequence": []})
        item["ReferencedSOPSequence"].append(
            {"ReferencedSOPClassUID": sop_class, "ReferencedSOPInstanceUID": sop_instance})
    return {study: list(series.values()) for study, series in out.items()}


def dataset_of(session: Session, row: UPSWorkitem) -> Dataset:
    step, procedure, order, patient = _context(session, row)
    inputs = (input_information(session, [procedure.study_instance_uid]).get(
        procedure.study_instance_uid, []) if procedure is not None else [])
    return workitem_dataset(row, step, procedure, order, patient, inputs)


def audit_subjects(session: Session, uid: str) -> tuple[str, str]:
    """The Patient ID and Study Instance UID of a workitem (the participants of its
    audit records, PS3.15 A.5.3.11): the order's for an order-born workitem, its own
    copies for a pushed one; empty when unknown."""
    row = session.scalars(select(UPSWorkitem).where(UPSWorkitem.uid == uid)).first()
    if row is None:
        return "", ""
    if row.sps_pk is None:
        return row.patient_id or "", row.study_instance_uid or ""
    found = session.execute(
        select(Patient.patient_id, RequestedProcedure.study_instance_uid)
        .join(ImagingOrder, ImagingOrder.patient_pk == Patient.id)
        .join(RequestedProcedure, RequestedProcedure.order_pk == ImagingOrder.id)
        .join(ScheduledProcedureStep, ScheduledProcedureStep.procedure_pk
              == RequestedProcedure.id)
        .where(ScheduledProcedureStep.id == row.sps_pk)).first()
    return (found[0] or "", found[1] or "") if found else ("", "")


def retrieve(session: Session, uid: str) -> Dataset:
    """The workitem (N-GET, PS3.4 CC.2.7; Retrieve Workitem, PS3.18 11.5); 0xC307 (HTTP
    404) when there is none."""
    return dataset_of(session, _row(session, uid, lock=False))


# -- create (UPS Push) ------------------------------------------------------------------

def create(session: Session, dataset: Dataset, *, uid: str | None, by: str) -> str:
    """Store a pushed workitem (N-CREATE, PS3.4 CC.2.5; Create Workitem, PS3.18 11.4);
    returns its SOP Instance UID (``uid``, else the dataset's, else a new one).

    The Procedure Step State must be SCHEDULED or absent (0xC309); the Transaction UID
    absent or zero length (0x0106); a UID in use is 0x0111. The priority defaults to
    MEDIUM, the Input Readiness State to READY. A State Report event records it.
    """
    ds = Dataset()
    ds.update(dataset)
    given_uid = (uid or str(ds.get("SOPInstanceUID", "") or "")).strip()
    if uid and ds.get("SOPInstanceUID") and str(ds.SOPInstanceUID) != uid:
        raise refusal(rules.INVALID_ATTRIBUTE_VALUE,
                      "SOP Instance UID in the dataset differs from the one requested")
    new_uid = given_uid or generate_uid()
    state = str(ds.get("ProcedureStepState", "") or "SCHEDULED").strip().upper()
    if state != UPSState.SCHEDULED.value:
        raise refusal(rules.NOT_SCHEDULED_ON_CREATE, f"it is {state}")
    if str(ds.get(TRANSACTION_UID, "") or ""):
        raise refusal(rules.INVALID_ATTRIBUTE_VALUE,
                      "a new workitem carries a zero-length Transaction UID "
                      "(PS3.4 Table CC.2.5-3)")
    if TRANSACTION_UID in ds:
        del ds[TRANSACTION_UID]
    priority = rules.parse_priority(str(ds.get("ScheduledProcedureStepPriority", "")
                                        or "MEDIUM"))
    if session.scalar(select(UPSWorkitem.id).where(UPSWorkitem.uid == new_uid)) is not None:
        raise refusal(rules.DUPLICATE_INSTANCE, new_uid)
    ds.SOPClassUID = UPS_SOP_CLASS
    ds.SOPInstanceUID = new_uid
    ds.ProcedureStepState = UPSState.SCHEDULED.value
    ds.ScheduledProcedureStepPriority = priority.value
    if not ds.get("InputReadinessState"):
        ds.InputReadinessState = "READY"
    row = UPSWorkitem(uid=new_uid, state=UPSState.SCHEDULED.value, priority=priority.value,
                      attributes=ds.to_json_dict(), created_by=by[:64],
                      **pushed_columns(keywords(ds)))
    session.add(row)
    session.flush()
    events.append(session, [events.row(new_uid, UPSEventType.STATE_REPORT, events.state_report(
        UPSState.SCHEDULED, row.input_readiness), cause=f"created by {by}")])
    return new_uid


# -- update (N-SET) ---------------------------------------------------------------------

def update(session: Session, uid: str, transaction_uid: str, changes: Dataset, *,
           by: str) -> list[str]:
    """Change a workitem's attributes (N-SET, PS3.4 CC.2.6; Update Workitem, PS3.18
    11.6). SCHEDULED: no Transaction UID needed; IN PROGRESS: the one it was claimed
    with (else 0xC301); COMPLETED / CANCELED: 0xC300. Attributes that may not be set
    (identity, state, Transaction UID) are left out with a warning. A change of the
    Progress Information Sequence is a Progress Report event, one of the scheduled
    station or performers an Assigned event (PS3.4 CC.2.4.2). Returns the warnings."""
    row = _row(session, uid)
    rules.check_update(UPSState(row.state), transaction_uid, row.transaction_uid)
    warnings = []
    kept = Dataset()
    for elem in changes:
        if elem.keyword == "SpecificCharacterSet":
            continue  # values arrive decoded; what is kept is Unicode
        if elem.keyword in NOT_UPDATABLE:
            warnings.append(f"{elem.keyword} may not be updated: left as it is")
            continue
        if elem.tag.group == 0x0000:
            continue
        kept[elem.tag] = elem
    if "ScheduledProcedureStepPriority" in kept:
        row.priority = rules.parse_priority(str(kept.ScheduledProcedureStepPriority)).value
    merged = overlay(stored(row), kept)
    row.attributes = merged.to_json_dict()
    if row.sps_pk is None:
        for name, value in pushed_columns(keywords(merged)).items():
            setattr(row, name, value)
    elif any(elem.keyword in _SCHEDULED_KEYWORDS for elem in kept):
        # An order-born workitem matches on its own scheduled columns; its patient and
        # request stay those of the order.
        current = pushed_columns(keywords(dataset_of(session, row)))
        for name in (*scheduled_columns({}), *_SCHEDULED_COLUMNS):
            setattr(row, name, current[name])
    row.updated_at = datetime.now(UTC)
    if PROGRESS in kept:
        events.append(session, [events.row(uid, UPSEventType.PROGRESS_REPORT,
                                           events.progress_report(kept), cause=f"update by {by}")])
    if any(k in kept for k in events.ASSIGNED_KEYWORDS):
        events.append(session, [events.row(uid, UPSEventType.ASSIGNED, events.assigned(merged),
                                           cause=f"update by {by}")])
    return warnings


_SCHEDULED_KEYWORDS = frozenset({
    "ProcedureStepLabel", "WorklistLabel", "ScheduledStationNameCodeSequence",
    "ScheduledStationClassCodeSequence", "ScheduledStationGeographicLocationCodeSequence",
    "ScheduledWorkitemCodeSequence", "ScheduledProcedureStepStartDateTime",
    "ExpectedCompletionDateTime", "InputReadinessState"})
_SCHEDULED_COLUMNS = ("start_datetime", "expected_completion", "input_readiness")


# -- change state (N-ACTION 1) ----------------------------------------------------------

def change_state(session: Session, uid: str, state: str, transaction_uid: str, *,
                 by: str, claimed_as: str = "") -> int:
    """A performer's Change State (N-ACTION Action Type ID 1, PS3.4 CC.2.1; Change
    Workitem State, PS3.18 11.7) by :func:`broker.domain.ups.change_state`.

    Claiming (IN PROGRESS) keeps the Transaction UID given; COMPLETED needs the
    final-state attributes (0xC304; the performed station and workitem codes are taken
    from the scheduled ones when left out); CANCELED records the cancellation time.
    Returns the status it succeeds with: 0, or the warning 0xB304 / 0xB306 when the
    workitem is already in that state. A claim records ``claimed_as``, the AE title the
    performer claimed it as (:func:`claimed_as`).
    """
    row = _row(session, uid)
    requested = rules.parse_state(state)
    outcome = rules.change_state(UPSState(row.state), requested, transaction_uid,
                                 row.transaction_uid)
    if outcome.state is None:
        return outcome.warning
    if outcome.claims:
        row.transaction_uid = transaction_uid.strip()[:64]
        row.claimed_as = claimed_as.strip()[:16]
    if outcome.state is UPSState.COMPLETED:
        current = dataset_of(session, row)
        _fill_performed(row, current)
        rules.require_final_state(UPSState.COMPLETED, keywords(dataset_of(session, row)))
    if outcome.state is UPSState.CANCELED:
        _record_cancellation(row, row.cancel_reason)
    move(session, row, outcome.state, cause=f"{outcome.state.value} by {by}")
    return rules.SUCCESS


def claimed_as(session: Session, uid: str) -> str:
    """The AE title workitem ``uid`` was claimed as over UPS-RS ("" when claimed over
    DIMSE, by an MPPS, or not at all); 0xC307 when there is no such workitem."""
    return _row(session, uid, lock=False).claimed_as


def _fill_performed(row: UPSWorkitem, current: Dataset) -> None:
    """Complete the Performed Procedure item with the scheduled station and workitem
    codes when the performer left them out (:data:`broker.domain.ups.FILLED_FROM_SCHEDULED`)."""
    own = stored(row)
    items = own.get(rules.PERFORMED_SEQUENCE)
    if not items:
        return
    item = items[0]
    changed = False
    for performed, scheduled in rules.FILLED_FROM_SCHEDULED.items():
        if not item.get(performed) and current.get(scheduled):
            setattr(item, performed, current[scheduled].value)
            changed = True
    if changed:
        row.attributes = own.to_json_dict()


def _record_cancellation(row: UPSWorkitem, reason: str) -> None:
    """Procedure Step Progress Information: the cancellation date-time and reason
    (PS3.3 C.30.1), kept with what the performer reported."""
    own = stored(row)
    progress = own.get(PROGRESS)
    if not progress:
        own.ProcedureStepProgressInformationSequence = [Dataset()]
        progress = own.ProcedureStepProgressInformationSequence
    item = progress[0]
    if not item.get("ProcedureStepCancellationDateTime"):
        item.ProcedureStepCancellationDateTime = datetime.now(UTC).strftime(
            "%Y%m%d%H%M%S.%f") + "+0000"
    if reason and not item.get("ReasonForCancellation"):
        item.ReasonForCancellation = reason[:400]
    row.attributes = own.to_json_dict()


def move(session: Session, row: UPSWorkitem, state: UPSState, *, cause: str,
         follow_step: bool = True) -> None:
    """Set ``row``'s state with its State Report event; SCHEDULED -> CANCELED / COMPLETED
    passes through IN PROGRESS (PS3.4 CC.1.1: two reports). With ``follow_step`` the
    order-born workitem's scheduled step moves too (:func:`steps.follow_workitem`)."""
    rows = []
    if row.state == UPSState.SCHEDULED.value and state.final:
        rows.append(events.row(row.uid, UPSEventType.STATE_REPORT, events.state_report(
            UPSState.IN_PROGRESS, row.input_readiness), cause=cause))
    reason = row.cancel_reason if state is UPSState.CANCELED else ""
    rows.append(events.row(row.uid, UPSEventType.STATE_REPORT, events.state_report(
        state, row.input_readiness, reason), cause=cause))
    row.state = state.value
    row.updated_at = datetime.now(UTC)
    if state.final:
        row.transaction_uid = ""
    session.flush()
    events.append(session, rows)
    if follow_step and row.sps_pk is not None:
        steps.follow_workitem(session, row.sps_pk, state, cause=f"UPS {cause}")


# -- request cancellation (N-ACTION 2) --------------------------------------------------

def request_cancellation(session: Session, uid: str, *, by: str, reason: str = "",
                         contact: str = "") -> int:
    """Request Cancellation (N-ACTION Action Type ID 2, PS3.4 CC.2.1.3; PS3.18 11.8) by
    :func:`broker.domain.ups.check_cancel_request`: a SCHEDULED workitem is cancelled
    (its step DISCONTINUED), an IN PROGRESS one gets a Cancel Requested event for its
    performer and keeps its state. Returns 0 or the warning 0xB304 (already CANCELED);
    0xC311 when COMPLETED."""
    row = _row(session, uid)
    outcome = rules.check_cancel_request(UPSState(row.state))
    if outcome.warning:
        return outcome.warning
    row.cancel_requested_by = by[:64]
    row.cancel_requested_at = datetime.now(UTC)
    row.cancel_reason = reason[:400]
    events.append(session, [events.row(uid, UPSEventType.CANCEL_REQUESTED,
                                       events.cancel_requested(by, reason, contact),
                                       cause=f"cancellation requested by {by}")])
    if outcome.state is UPSState.CANCELED:
        _record_cancellation(row, reason)
        move(session, row, UPSState.CANCELED, cause=f"CANCELED on request of {by}")
    return rules.SUCCESS


# -- scheduled step -> workitem (MPPS, console) -----------------------------------------

def performed_from_mpps(mpps: Dataset) -> Dataset:
    """The Performed Procedure item (PS3.3 C.30.3) of what an MPPS reports (PS3.3
    C.4.13-C.4.16): start and end, the station (its AE title as the code), the
    performed protocol as the workitem code, and the series it produced as Output
    Information (one item per series, with its instances)."""
    item = Dataset()

    def text(keyword: str) -> str:
        return str(mpps.get(keyword, "") or "")

    item.PerformedProcedureStepStartDateTime = (text("PerformedProcedureStepStartDate")
                                                + text("PerformedProcedureStepStartTime"))
    item.PerformedProcedureStepEndDateTime = (text("PerformedProcedureStepEndDate")
                                              + text("PerformedProcedureStepEndTime"))
    station = text("PerformedStationAETitle")
    if station:
        code = Dataset()
        code.CodeValue, code.CodingSchemeDesignator = station[:16], "99MWLB"
        code.CodeMeaning = text("PerformedStationName") or station
        item.PerformedStationNameCodeSequence = [code]
    protocol = mpps.get("PerformedProtocolCodeSequence") or mpps.get(
        "ProcedureCodeSequence") or []
    if protocol:
        item.PerformedWorkitemCodeSequence = [protocol[0]]
    outputs = []
    study = next((str(i.get("StudyInstanceUID", "")) for i in
                  mpps.get("ScheduledStepAttributesSequence") or []), "")
    for series in mpps.get("PerformedSeriesSequence") or []:
        out = Dataset()
        out.TypeOfInstances = "DICOM"
        out.StudyInstanceUID = study
        out.SeriesInstanceUID = series.get("SeriesInstanceUID", "")
        refs = []
        for image in series.get("ReferencedImageSequence") or []:
            ref = Dataset()
            ref.ReferencedSOPClassUID = image.get("ReferencedSOPClassUID", "")
            ref.ReferencedSOPInstanceUID = image.get("ReferencedSOPInstanceUID", "")
            refs.append(ref)
        out.ReferencedSOPSequence = refs
        outputs.append(out)
    item.OutputInformationSequence = outputs
    return item


def follow_steps(session: Session, changes: dict[int, str], *, cause: str,
                 performed: Dataset | None = None) -> list[str]:
    """Move the workitems of steps whose status changed (step id -> new status) to the
    state it leads to (:func:`broker.domain.ups.follows_step`): an MPPS IN PROGRESS
    puts the workitem IN PROGRESS (with a Transaction UID given to nobody), COMPLETED
    completes it, DISCONTINUED cancels it. A workitem completed this way keeps
    ``performed`` as its Performed Procedure item (:func:`performed_from_mpps`) unless
    a performer stored one. Returns what changed, for the log."""
    if not changes:
        return []
    rows = session.scalars(select(UPSWorkitem).where(UPSWorkitem.sps_pk.in_(list(changes)))
                           .order_by(UPSWorkitem.id).with_for_update()).all()
    done = []
    for row in rows:
        assert row.sps_pk is not None
        target = rules.follows_step(UPSState(row.state), changes[row.sps_pk])
        if target is None:
            continue
        if target is UPSState.IN_PROGRESS:
            row.transaction_uid = generate_uid()
        if target is UPSState.COMPLETED and performed is not None:
            own = stored(row)
            if rules.PERFORMED_SEQUENCE not in own:
                own[rules.PERFORMED_SEQUENCE] = _sequence_of(rules.PERFORMED_SEQUENCE,
                                                             performed)
                row.attributes = own.to_json_dict()
                _fill_performed(row, dataset_of(session, row))
        move(session, row, target, cause=cause, follow_step=False)
        done.append(f"UPS {row.uid} {target.value}")
    return done


def _sequence_of(keyword: str, item: Dataset) -> Any:
    holder = Dataset()
    setattr(holder, keyword, [item])
    return holder[keyword]
