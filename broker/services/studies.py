"""Stored instances and Instance Availability Notifications tied to orders.

The indexing functions run in the DIMSE handler's transaction (the row is committed
before the response); :func:`reconcile_study` is the body of the reconciliation task:
it takes every not yet reconciled instance and IAN of a study, finds the requested
procedure (accession, Study Instance UID, then patient id + modality + time window),
marks it "images available" and reports that, or opens an "unmatched study" item.
A matched study whose patient id or name differs from the order opens a
"demographic mismatch" item as well.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from pydicom.dataset import Dataset
from sqlalchemy import select
from sqlalchemy.orm import Session

from broker.config import Settings
from broker.models import (
    AvailabilityNotification,
    AvailableInstance,
    MppsStepLink,
    PerformedProcedureStep,
    ReconciliationItem,
    ReconciliationKind,
    RequestedProcedure,
    ScheduledProcedureStep,
    StoredInstance,
)
from broker.services.dimse_status import DUPLICATE_INSTANCE, MppsError
from broker.services.outbox import lock_procedures, report_images
from broker.services.reconciliation import (
    Observation,
    check_demographics,
    find_procedure,
    open_item,
)

log = logging.getLogger(__name__)


def _text(ds: Dataset, keyword: str, size: int) -> str:
    value = ds.get(keyword)
    return "" if value is None else str(value).strip()[:size]


def index_instance(session: Session, ds: Dataset, *, sop_class_uid: str,
                   sop_instance_uid: str, calling_ae_title: str, transfer_syntax_uid: str,
                   file_path: str = "", forward: bool = False) -> StoredInstance:
    """Insert or refresh the index row of one stored instance (PS3.4 B.2.2: storing an
    instance again replaces it)."""
    row = session.scalars(select(StoredInstance).where(
        StoredInstance.sop_instance_uid == sop_instance_uid)).first()
    if row is None:
        row = StoredInstance(sop_instance_uid=sop_instance_uid)
        session.add(row)
    row.sop_class_uid = sop_class_uid
    row.study_instance_uid = _text(ds, "StudyInstanceUID", 64)
    row.series_instance_uid = _text(ds, "SeriesInstanceUID", 64)
    row.accession_number = _text(ds, "AccessionNumber", 16)
    row.patient_id = _text(ds, "PatientID", 64)
    row.patient_name = _text(ds, "PatientName", 400)
    row.patient_birth_date = _text(ds, "PatientBirthDate", 8)
    row.modality = _text(ds, "Modality", 16)
    row.study_datetime = (_text(ds, "StudyDate", 8) + _text(ds, "StudyTime", 13))[:21]
    row.calling_ae_title = calling_ae_title[:16]
    row.transfer_syntax_uid = transfer_syntax_uid
    row.file_path = file_path
    row.forward_state = "pending" if forward else "none"
    row.forward_attempts, row.forward_due_at = 0, datetime.now(UTC)
    if row.procedure_pk is None:
        row.reconciled = False
    session.flush()
    return row


def record_availability(session: Session, ds: Dataset, *, sop_instance_uid: str,
                        calling_ae_title: str) -> AvailabilityNotification:
    """Store an IAN N-CREATE (PS3.4 R.3); a repeated SOP Instance UID is refused 0x0111."""
    if session.scalar(select(AvailabilityNotification.id).where(
            AvailabilityNotification.sop_instance_uid == sop_instance_uid)) is not None:
        raise MppsError(DUPLICATE_INSTANCE, "an IAN with this SOP Instance UID exists")
    row = AvailabilityNotification(
        sop_instance_uid=sop_instance_uid, study_instance_uid=_text(ds, "StudyInstanceUID", 64),
        accession_number=_text(ds, "AccessionNumber", 16),
        patient_id=_text(ds, "PatientID", 64), calling_ae_title=calling_ae_title[:16],
        mpps_uids=[str(i.get("ReferencedSOPInstanceUID", ""))
                   for i in ds.get("ReferencedPerformedProcedureStepSequence") or []])
    for series in ds.get("ReferencedSeriesSequence") or []:
        for sop in series.get("ReferencedSOPSequence") or []:
            row.instances.append(AvailableInstance(
                series_instance_uid=_text(series, "SeriesInstanceUID", 64),
                sop_class_uid=_text(sop, "ReferencedSOPClassUID", 64),
                sop_instance_uid=_text(sop, "ReferencedSOPInstanceUID", 64),
                availability=_text(sop, "InstanceAvailability", 16),
                retrieve_ae_title=_text(sop, "RetrieveAETitle", 64)))
    session.add(row)
    session.flush()
    return row


def _observation(instances: list[StoredInstance],
                 notices: list[AvailabilityNotification]) -> Observation:
    if instances:
        first = instances[0]
        return Observation(first.patient_id, first.patient_name, first.patient_birth_date,
                           first.modality, first.calling_ae_title, first.study_datetime,
                           first.accession_number, first.study_instance_uid)
    notice = notices[0]
    return Observation(patient_id=notice.patient_id, accession=notice.accession_number,
                       station_ae_title=notice.calling_ae_title,
                       study_instance_uid=notice.study_instance_uid)


def reconcile_study(session: Session, settings: Settings, study_instance_uid: str) -> str:
    """Tie the study's new instances and IANs to their order (the task's body)."""
    instances = list(session.scalars(select(StoredInstance).where(
        StoredInstance.study_instance_uid == study_instance_uid,
        StoredInstance.reconciled.is_(False)).with_for_update()))
    notices = list(session.scalars(select(AvailabilityNotification).where(
        AvailabilityNotification.study_instance_uid == study_instance_uid,
        AvailabilityNotification.reconciled.is_(False)).with_for_update()))
    if not instances and not notices:
        return "nothing to do"
    obs = _observation(instances, notices)
    decided = _linked_by_a_person(session, study_instance_uid)
    if decided is not None:
        return link_study(session, settings, decided, instances, notices)
    rp = _procedure_of_mpps(session, notices) or find_procedure(session, settings, obs)
    if rp is None:
        item = open_item(session, settings, ReconciliationKind.UNMATCHED_STUDY, obs,
                         detail=f"{len(instances)} instance(s), {len(notices)} IAN(s) "
                                "match no order")
        rows: list[StoredInstance | AvailabilityNotification] = [*instances, *notices]
        for row in rows:
            row.reconciled = True
        log.info("study reconciliation: unmatched, item %s", item.id)
        return f"unmatched: reconciliation item {item.id}"
    check_demographics(session, settings, rp, obs, what="study")
    return link_study(session, settings, rp, instances, notices)


def _linked_by_a_person(session: Session, study_uid: str) -> RequestedProcedure | None:
    """Later instances of a study someone linked by hand follow that decision."""
    item = session.scalars(select(ReconciliationItem).where(
        ReconciliationItem.study_instance_uid == study_uid,
        ReconciliationItem.mpps_pk.is_(None), ReconciliationItem.state == "linked",
        ReconciliationItem.procedure_pk.is_not(None)).order_by(
        ReconciliationItem.id.desc()).limit(1)).first()
    return session.get(RequestedProcedure, item.procedure_pk) if item is not None else None


def _procedure_of_mpps(session: Session,
                       notices: list[AvailabilityNotification]) -> RequestedProcedure | None:
    """An IAN's Referenced Performed Procedure Step Sequence names the MPPS that made
    the images (RAD-49): its linked step's procedure is the one."""
    uids = [uid for notice in notices for uid in notice.mpps_uids if uid]
    if not uids:
        return None
    return session.scalars(
        select(RequestedProcedure)
        .join(ScheduledProcedureStep, ScheduledProcedureStep.procedure_pk == RequestedProcedure.id)
        .join(MppsStepLink, MppsStepLink.sps_pk == ScheduledProcedureStep.id)
        .join(PerformedProcedureStep, PerformedProcedureStep.id == MppsStepLink.mpps_pk)
        .where(PerformedProcedureStep.sop_instance_uid.in_(uids)).limit(1)).first()


def link_study(session: Session, settings: Settings, rp: RequestedProcedure,
               instances: list[StoredInstance], notices: list[AvailabilityNotification]) -> str:
    lock_procedures(session, {rp.id})
    rows: list[StoredInstance | AvailabilityNotification] = [*instances, *notices]
    for row in rows:
        row.procedure_pk = rp.id
        row.reconciled = True
    reported = report_images(session, settings, rp)
    log.info("study reconciliation: %d instance(s), %d IAN(s) -> procedure %s",
             len(instances), len(notices), rp.id)
    return (f"accession {rp.accession_number}: {len(instances)} instance(s), "
            f"{len(notices)} IAN(s)" + ("; reported A" if reported else ""))
