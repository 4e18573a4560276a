"""Modality Performed Procedure Step rules (PS3.4 F.7.2, Table F.7.2-1).

Pure functions over pydicom datasets; the service layer stores and links.

* N-CREATE is accepted only with PPS Status IN PROGRESS (0x0106 otherwise, F.7.2.1.3);
  Type 1 attributes must be present with a value (0x0120 when absent, 0x0121 when
  empty). Type 2 attributes missing are tolerated (policy, README) and not an error.
* N-SET is accepted only while the step is IN PROGRESS (0x0110, Error ID A710 "may no
  longer be updated", F.7.2.2.3); attributes Table F.7.2-1 marks "Not allowed" in N-SET
  refuse the whole request with 0x0106 and the offending tags; a sequence in an N-SET
  replaces the stored sequence as a whole (F.7.2.2.2).
* Going to COMPLETED or DISCONTINUED needs PPS End Date and Time and a Performed
  Series Sequence with at least one item (Table F.7.2-1 final-state requirements).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pydicom.dataset import Dataset
from pydicom.tag import Tag

from broker.domain.status import PPSStatus, SPSStatus

NO_SUCH_ATTRIBUTE, INVALID_ATTRIBUTE_VALUE = 0x0105, 0x0106
PROCESSING_FAILURE, DUPLICATE_INSTANCE, NO_SUCH_INSTANCE = 0x0110, 0x0111, 0x0112
MISSING_ATTRIBUTE, MISSING_ATTRIBUTE_VALUE = 0x0120, 0x0121
MAY_NO_LONGER_BE_UPDATED = 0xA710  # Error ID (0000,0903), US, Table F.7.2-2

CREATE_TYPE1 = (
    "ScheduledStepAttributesSequence", "PerformedProcedureStepID",
    "PerformedStationAETitle", "PerformedProcedureStepStartDate",
    "PerformedProcedureStepStartTime", "PerformedProcedureStepStatus", "Modality",
)
# Table F.7.2-1: attributes whose N-SET requirement is "Not allowed".
NOT_SETTABLE = frozenset({
    "ScheduledStepAttributesSequence", "PatientName", "PatientID", "IssuerOfPatientID",
    "PatientBirthDate", "PatientSex", "ReferencedPatientSequence",
    "PerformedProcedureStepID", "PerformedStationAETitle", "PerformedStationName",
    "PerformedLocation", "PerformedProcedureStepStartDate", "PerformedProcedureStepStartTime",
    "Modality", "StudyID", "SOPClassUID", "SOPInstanceUID",
})
FINAL_REQUIRED = ("PerformedProcedureStepEndDate", "PerformedProcedureStepEndTime",
                  "PerformedSeriesSequence")
FINAL_STATES = frozenset({PPSStatus.COMPLETED.value, PPSStatus.DISCONTINUED.value})
# CID 9300 "Procedure Discontinuation Reasons": the modality picked the wrong entry,
# so the scheduled step goes back on the worklist (IHE RAD-7).
INCORRECT_WORKLIST_ENTRY = ("110514", "DCM")
OPEN_SPS = frozenset({SPSStatus.SCHEDULED.value, SPSStatus.ARRIVED.value,
                      SPSStatus.READY.value, SPSStatus.STARTED.value})


@dataclass
class MppsError(Exception):
    """A request we refuse: the DIMSE status and what to tell the modality."""

    status: int
    comment: str
    error_id: int | None = None
    tags: list[int] = field(default_factory=list)

    def __str__(self) -> str:
        return f"0x{self.status:04X} {self.comment}"


def _tag_text(keyword: str) -> str:
    tag = Tag(keyword)
    return f"({tag.group:04X},{tag.element:04X}) {keyword}"


def _has_value(ds: Dataset, keyword: str) -> bool:
    value = ds.get(keyword)
    if value is None:
        return False
    value = value.value if hasattr(value, "value") else value
    return value not in (None, "", [], b"") and (not hasattr(value, "__len__") or len(value) > 0)


def check_create(ds: Dataset) -> None:
    """Refuse an N-CREATE attribute list that F.7.2.1 does not allow."""
    missing = [k for k in CREATE_TYPE1 if k not in ds]
    if missing:
        raise MppsError(MISSING_ATTRIBUTE, "missing "
                        + ", ".join(_tag_text(k) for k in missing),
                        tags=[int(Tag(k)) for k in missing])
    empty = [k for k in CREATE_TYPE1 if not _has_value(ds, k)]
    for n, item in enumerate(ds.ScheduledStepAttributesSequence, start=1):
        if not _has_value(item, "StudyInstanceUID"):
            empty.append(f"ScheduledStepAttributesSequence[{n}]>StudyInstanceUID")
    if empty:
        raise MppsError(MISSING_ATTRIBUTE_VALUE, "empty "
                        + ", ".join(empty))
    status = str(ds.PerformedProcedureStepStatus).strip()
    if status != PPSStatus.IN_PROGRESS.value:
        raise MppsError(INVALID_ATTRIBUTE_VALUE,
                        f"PPS Status (0040,0252) must be IN PROGRESS, not {status[:16]}",
                        tags=[int(Tag(0x0040, 0x0252))])


def check_set(current_status: str, modification: Dataset) -> None:
    """Refuse an N-SET on a finished step or touching a "Not allowed" attribute."""
    if current_status != PPSStatus.IN_PROGRESS.value:
        raise MppsError(PROCESSING_FAILURE,
                        "Performed Procedure Step Object may no longer be updated",
                        error_id=MAY_NO_LONGER_BE_UPDATED)
    refused = [elem.keyword for elem in modification if elem.keyword in NOT_SETTABLE]
    if refused:
        raise MppsError(INVALID_ATTRIBUTE_VALUE, "not allowed in N-SET: "
                        + ", ".join(_tag_text(k) for k in refused),
                        tags=[int(Tag(k)) for k in refused])
    if "PerformedProcedureStepStatus" in modification:
        status = str(modification.PerformedProcedureStepStatus).strip()
        if status not in {s.value for s in PPSStatus}:
            raise MppsError(INVALID_ATTRIBUTE_VALUE, f"unknown PPS status {status!r}",
                            tags=[int(Tag(0x0040, 0x0252))])


def apply_set(stored: Dataset, modification: Dataset) -> Dataset:
    """The instance after an N-SET: each element given replaces the stored one (a
    sequence as a whole, F.7.2.2.2). Specific Character Set is not replaced: values are
    held decoded (Unicode), which transcodes the N-SET's text."""
    for elem in modification:
        if elem.keyword == "SpecificCharacterSet":
            continue
        stored[elem.tag] = elem
    return stored


def check_final(ds: Dataset) -> None:
    """COMPLETED / DISCONTINUED need end date/time and performed series (PS3.4
    Table F.7.2-1, final state)."""
    if str(ds.get("PerformedProcedureStepStatus", "")).strip() not in FINAL_STATES:
        return
    missing = [k for k in FINAL_REQUIRED if not _has_value(ds, k)]
    if missing:
        raise MppsError(MISSING_ATTRIBUTE_VALUE,
                        "final state needs "
                        + ", ".join(_tag_text(k) for k in missing),
                        tags=[int(Tag(k)) for k in missing])


def is_incorrect_worklist_entry(ds: Dataset) -> bool:
    """Whether the Discontinuation Reason is 110514 "Incorrect worklist entry selected"."""
    for item in ds.get("PerformedProcedureStepDiscontinuationReasonCodeSequence") or []:
        code = (str(item.get("CodeValue", "")), str(item.get("CodingSchemeDesignator", "")))
        if code == INCORRECT_WORKLIST_ENTRY:
            return True
    return False


def step_status_for(pps_status: str, current: str, *, wrong_entry: bool) -> str:
    """The Scheduled Procedure Step status an MPPS state leads to (PS3.4 F.7.2).

    IN PROGRESS starts an open step; COMPLETED completes it; DISCONTINUED discontinues
    it, or with reason 110514 (CID 9300) puts it back to SCHEDULED. Cancelled and finished
    steps are never changed by an MPPS.
    """
    if current not in OPEN_SPS:
        return current
    if pps_status == PPSStatus.IN_PROGRESS.value:
        return SPSStatus.STARTED.value if current != SPSStatus.STARTED.value else current
    if pps_status == PPSStatus.COMPLETED.value:
        return SPSStatus.COMPLETED.value
    if pps_status == PPSStatus.DISCONTINUED.value:
        return SPSStatus.SCHEDULED.value if wrong_entry else SPSStatus.DISCONTINUED.value
    return current
