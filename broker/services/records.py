"""Keep each row's indexed matching columns in step with its ``attributes`` dict.

The attributes (DICOM keyword -> value) are what a C-FIND returns; the columns are
what it matches on (PS3.4 Table K.6-1). Every write takes its columns from these
functions so the two can never disagree; the Scheduled Station AE Title rows of a step
are :func:`broker.domain.types.station_ae_titles` of its attributes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from broker.domain.matching import normalise_time, person_name_key, person_name_keys
from broker.domain.types import Attributes
from broker.models import ScheduledProcedureStep, SPSStatus, StepStatusChange

# The longest step history cause the column keeps.
CAUSE_LENGTH = 200


def merge_attributes(current: Attributes | None, update: Attributes) -> Attributes:
    """HL7 null semantics: keys absent from ``update`` are kept, keys
    whose value is ``""`` are cleared to zero length, others replaced. Returns a new
    dict (so a change is a new value, never an edit in place)."""
    merged = dict(current or {})
    merged.update(update)
    return merged


def _text(attributes: Attributes, keyword: str) -> str:
    value: Any = attributes.get(keyword, "")
    if isinstance(value, list):
        return str(value[0]) if value else ""
    return str(value)


def patient_columns(attributes: Attributes) -> dict[str, str]:
    """Patient matching columns from its attributes."""
    name = _text(attributes, "PatientName")
    alphabetic, ideographic, phonetic = person_name_keys(name)
    return {
        "patient_name": name,
        "name_key_alphabetic": alphabetic,
        "name_key_ideographic": ideographic,
        "name_key_phonetic": phonetic,
        "birth_date": _text(attributes, "PatientBirthDate")[:8],
        "sex": _text(attributes, "PatientSex"),
        "admission_id": _text(attributes, "AdmissionID"),
    }


def procedure_columns(attributes: Attributes) -> dict[str, str]:
    """Requested procedure matching columns from its attributes."""
    return {
        "requested_procedure_id": _text(attributes, "RequestedProcedureID"),
        "accession_number": _text(attributes, "AccessionNumber"),
        "study_instance_uid": _text(attributes, "StudyInstanceUID"),
        "priority": _text(attributes, "RequestedProcedurePriority"),
        "referring_physician_key": person_name_key(_text(attributes, "ReferringPhysicianName")),
        "requesting_physician_key": person_name_key(_text(attributes, "RequestingPhysician")),
    }


def step_columns(attributes: Attributes) -> dict[str, str]:
    """Step matching columns from its attributes (the status column is the truth and
    is written into the attributes by :func:`with_status`)."""
    start_date = _text(attributes, "ScheduledProcedureStepStartDate")
    start_time = normalise_time(_text(attributes, "ScheduledProcedureStepStartTime"))
    return {
        "sps_id": _text(attributes, "ScheduledProcedureStepID"),
        "start_date": start_date,
        "start_time": start_time,
        "start_datetime": start_date + start_time if start_date else "",
        "modality": _text(attributes, "Modality"),
        "performing_physician_key": person_name_key(
            _text(attributes, "ScheduledPerformingPhysicianName")),
        "station_name": _text(attributes, "ScheduledStationName"),
        "location": _text(attributes, "ScheduledProcedureStepLocation"),
    }


def with_status(attributes: Attributes | None, status: str) -> Attributes:
    """The step attributes carrying ``status`` (Scheduled Procedure Step Status)."""
    return {**(attributes or {}), "ScheduledProcedureStepStatus": status}


class HasStatus(Protocol):
    """A scheduled procedure step, as a mapped row or as a plain one."""

    status: str
    attributes: Attributes


def change_status(step: HasStatus, status: SPSStatus, *, cause: str,
                  history: Callable[[dict[str, str]], None]) -> bool:
    """Set the step status (column and attribute) and hand the step history row of the
    change to ``history``, ``cause`` naming what changed it (ids only); True when it
    changed."""
    if step.status == status.value:
        return False
    history({"old_status": step.status or "", "new_status": status.value,
             "cause": cause[:CAUSE_LENGTH]})
    step.status = status.value
    step.attributes = with_status(step.attributes, status.value)
    return True


def set_step_status(sps: ScheduledProcedureStep, status: SPSStatus, *, cause: str) -> bool:
    """:func:`change_status` of a mapped step, its history kept in the session."""
    return change_status(sps, status, cause=cause,
                         history=lambda change: sps.history.append(StepStatusChange(**change)))
