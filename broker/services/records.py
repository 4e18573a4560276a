"""Keep each row's indexed matching columns in step with its ``attributes`` dict.

The attributes (DICOM keyword -> value) are what a C-FIND returns; the columns are
what it matches on (PS3.4 Table K.6-1). Every write goes through these functions so
the two can never disagree.
"""

from __future__ import annotations

from typing import Any

from broker.domain.matching import normalise_time, person_name_key, person_name_keys
from broker.domain.types import Attributes, station_ae_titles
from broker.models import (
    Patient,
    RequestedProcedure,
    ScheduledProcedureStep,
    SPSStatus,
    StationAETitle,
    StepStatusChange,
)


def merge_attributes(current: Attributes | None, update: Attributes) -> Attributes:
    """HL7 null semantics: keys absent from ``update`` are kept, keys
    whose value is ``""`` are cleared to zero length, others replaced. Returns a new
    dict (so SQLAlchemy sees the JSON column change)."""
    merged = dict(current or {})
    merged.update(update)
    return merged


def _text(attributes: Attributes, keyword: str) -> str:
    value: Any = attributes.get(keyword, "")
    if isinstance(value, list):
        return str(value[0]) if value else ""
    return str(value)


def sync_patient(patient: Patient) -> None:
    """Patient matching columns from ``patient.attributes``."""
    a = patient.attributes or {}
    patient.patient_name = _text(a, "PatientName")
    alphabetic, ideographic, phonetic = person_name_keys(patient.patient_name)
    patient.name_key_alphabetic = alphabetic
    patient.name_key_ideographic = ideographic
    patient.name_key_phonetic = phonetic
    patient.birth_date = _text(a, "PatientBirthDate")[:8]
    patient.sex = _text(a, "PatientSex")
    patient.admission_id = _text(a, "AdmissionID")


def sync_procedure(rp: RequestedProcedure) -> None:
    """Requested procedure matching columns from ``rp.attributes``."""
    a = rp.attributes or {}
    rp.requested_procedure_id = _text(a, "RequestedProcedureID")
    rp.accession_number = _text(a, "AccessionNumber")
    rp.study_instance_uid = _text(a, "StudyInstanceUID")
    rp.priority = _text(a, "RequestedProcedurePriority")
    rp.referring_physician_key = person_name_key(_text(a, "ReferringPhysicianName"))
    rp.requesting_physician_key = person_name_key(_text(a, "RequestingPhysician"))


def sync_step(sps: ScheduledProcedureStep) -> None:
    """Step matching columns and AE title rows from ``sps.attributes``; the status
    column is the truth and is written back into the attributes."""
    a = dict(sps.attributes or {})
    a["ScheduledProcedureStepStatus"] = sps.status
    sps.attributes = a
    sps.sps_id = _text(a, "ScheduledProcedureStepID")
    sps.start_date = _text(a, "ScheduledProcedureStepStartDate")
    sps.start_time = normalise_time(_text(a, "ScheduledProcedureStepStartTime"))
    sps.start_datetime = sps.start_date + sps.start_time if sps.start_date else ""
    sps.modality = _text(a, "Modality")
    sps.performing_physician_key = person_name_key(
        _text(a, "ScheduledPerformingPhysicianName")
    )
    sps.station_name = _text(a, "ScheduledStationName")
    sps.location = _text(a, "ScheduledProcedureStepLocation")
    wanted = station_ae_titles(a)
    rows = sps.station_ae_titles
    # Update rows in place (same primary key), then add or drop the tail: a delete and
    # re-insert of one key in a single flush would collide.
    for row, title in zip(rows, wanted, strict=False):
        row.ae_title = title
    for position in range(len(rows), len(wanted)):
        rows.append(StationAETitle(position=position, ae_title=wanted[position]))
    del rows[len(wanted):]


def set_step_status(sps: ScheduledProcedureStep, status: SPSStatus, *, cause: str) -> bool:
    """Set the step status (column and attribute) and record the change in its history
    with ``cause`` (ids only); True when it changed."""
    if sps.status == status.value:
        return False
    sps.history.append(StepStatusChange(old_status=sps.status or "", new_status=status.value,
                                        cause=cause[:200]))
    sps.status = status.value
    sps.attributes = {**(sps.attributes or {}), "ScheduledProcedureStepStatus": status.value}
    return True
