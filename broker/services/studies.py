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

import functools
import logging
from datetime import UTC, datetime

from pydicom.dataset import Dataset
from sqlalchemy import Connection, Insert, case, false, select
from sqlalchemy.dialects import postgresql, sqlite
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


# Refreshed when an instance is stored again; its receipt time and order stay.
_REFRESHED = ("sop_class_uid", "study_instance_uid", "series_instance_uid",
              "accession_number", "patient_id", "patient_name", "patient_birth_date",
              "modality", "study_datetime", "calling_ae_title", "transfer_syntax_uid",
              "file_path", "forward_state", "forward_attempts", "forward_due_at")


@functools.cache
def _index_statement(dialect_name: str) -> Insert:
    """INSERT ... ON CONFLICT (sop_instance_uid) DO UPDATE, built once per dialect (its
    construction costs more than its execution)."""
    dialect = postgresql if dialect_name == "postgresql" else sqlite
    statement = dialect.insert(StoredInstance)
    return statement.on_conflict_do_update(
        index_elements=[StoredInstance.sop_instance_uid],
        set_={**{name: statement.excluded[name] for name in _REFRESHED},
              "reconciled": case((StoredInstance.procedure_pk.is_(None), false()),
                                 else_=StoredInstance.reconciled)})


def index_instance(conn: Connection, ds: Dataset, *, sop_class_uid: str,
                   sop_instance_uid: str, calling_ae_title: str, transfer_syntax_uid: str,
                   file_path: str = "", forward: bool = False) -> None:
    """Insert or refresh the index row of one stored instance (PS3.4 B.2.2: storing an
    instance again replaces it), in one statement. A refreshed row keeps its receipt
    time and its order; it is reconciled again unless it already has an order."""
    conn.execute(_index_statement(conn.dialect.name), {
        "sop_instance_uid": sop_instance_uid,
        "sop_class_uid": sop_class_uid,
        "study_instance_uid": _text(ds, "StudyInstanceUID", 64),
        "series_instance_uid": _text(ds, "SeriesInstanceUID", 64),
        "accession_number": _text(ds, "AccessionNumber", 16),
        "patient_id": _text(ds, "PatientID", 64),
        "patient_name": _text(ds, "PatientName", 400),
        "patient_birth_date": _text(ds, "PatientBirthDate", 8),
        "modality": _text(ds, "Modality", 16),
        "study_datetime": (_text(ds, "StudyDate", 8) + _text(ds, "StudyTime", 13))[:21],
        "calling_ae_title": calling_ae_title[:16],
        "transfer_syntax_uid": transfer_syntax_uid,
        "file_path": file_path,
        "forward_state": "pending" if forward else "none",
        "forward_attempts": 0,
        "forward_due_at": datetime.now(UTC),
        "reconciled": False,
    })


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
