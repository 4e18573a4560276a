"""What a mapped HL7 message says, in DICOM terms: the contract between mapping/ and
the services that apply it. Pure data, no I/O.

Attribute dicts (``Attributes``) map DICOM keywords (PS3.6) to values:

* ``str`` for single values of any string VR (PN with ``=`` between component groups,
  DA ``YYYYMMDD``, TM ``HHMMSS``, DS/IS as their decimal text);
* ``list[str]`` for multi-valued attributes (VM > 1);
* ``list[Attributes]`` for sequences (SQ), one dict per item.

Update semantics follow HL7 null rules: a keyword that is absent means
"not sent, leave unchanged"; a keyword whose value is ``""`` means the sender sent the
explicit null ``""`` and the stored value is cleared.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from broker.domain.ups import EVERY_STEP, WorkitemSelection

Attributes = dict[str, Any]


def station_ae_titles(step: Attributes) -> list[str]:
    """The Scheduled Station AE Titles of SPS attributes as a list: the stored value is
    one title or a list of them; empty values are dropped."""
    titles = step.get("ScheduledStationAETitle") or []
    if isinstance(titles, str):
        titles = [titles]
    return [str(title) for title in titles if title]


@dataclass
class PatientRecord:
    """Patient-level attributes (Patient Identification/Demographic/Medical modules,
    plus the current visit: Admission ID, Current Patient Location)."""

    patient_id: str
    issuer: str
    attributes: Attributes = field(default_factory=dict)
    # (0008,0005) values the source text needs, e.g. ("ISO_IR 192",) or
    # ("", "ISO 2022 IR 87"); () for the default repertoire.
    specific_character_set: tuple[str, ...] = ()


@dataclass
class StepRecord:
    """One Scheduled Procedure Step (= one MWL item) from an ORC/OBR pair (ORM^O01)
    or an IPC segment (OMI^O23).

    ``attributes`` are the SPS Sequence item keywords (ScheduledProcedureStepID,
    ScheduledStationAETitle, ScheduledProcedureStepStartDate/Time, Modality, ...).
    ``placer_step_key`` identifies the step within its order when the placer sends no
    SPS ID (OBR-1 set id or IPC position), so that a generated ID is found again.
    """

    order_control: str  # ORC-1 of the group this step came from
    order_status: str  # ORC-5 of that group
    placer_step_key: str
    attributes: Attributes = field(default_factory=dict)
    station_rule: str = ""  # name of the station rule that set the AE title
    # Start as an aware-free local timestamp "YYYYMMDDHHMMSS[.ffffff]" ("" if none).
    start_datetime: str = ""


@dataclass
class ProcedureRecord:
    """One Requested Procedure with its order identity and its steps.

    ``attributes`` hold the Requested Procedure / Imaging Service Request level
    keywords (AccessionNumber, RequestedProcedureID, StudyInstanceUID,
    RequestedProcedurePriority, RequestedProcedureDescription, Medical Alerts, ...).
    AccessionNumber, RequestedProcedureID and StudyInstanceUID are absent when the
    placer sent none; the broker then generates them.
    """

    placer_order_number: str
    placer_issuer: str
    filler_order_number: str
    filler_issuer: str
    attributes: Attributes = field(default_factory=dict)
    steps: list[StepRecord] = field(default_factory=list)


@dataclass
class OrderMessage:
    """A mapped ORM^O01 / OMI^O23: the patient as the order states it, and the
    procedures it adds or changes, in message order."""

    profile: str
    patient: PatientRecord
    procedures: list[ProcedureRecord] = field(default_factory=list)
    # Which of its new steps are also UPS workitems (the profile's ``workitems`` key).
    workitems: WorkitemSelection = EVERY_STEP
    # The deployed version of the profiles that mapped it (None: not a deployed set).
    profile_version: int | None = None


@dataclass
class AdtMessage:
    """A mapped ADT message (RAD-1 / RAD-12).

    ``prior_patient`` is MRG-1 (id, issuer) for A40 merges. ``event_datetime`` is
    EVN-2, else MSH-7, used to refuse updates older than the last one applied.
    """

    profile: str
    event: str
    event_datetime: str
    patient: PatientRecord
    prior_patient: tuple[str, str] | None = None
    # The deployed version of the profiles that mapped it (None: not a deployed set).
    profile_version: int | None = None
