"""Modality Performed Procedure Step rules (PS3.4 F.7.2, Table F.7.2-1).

Pure functions over attribute lists (anything read like a DICOM data set by keyword:
:class:`AttributeList`); the service layer stores and links. A refusal raises
:class:`~broker.domain.errors.MppsRuleError` naming the rule and the attributes; the
service answers it with the DIMSE status (PS3.4 F.7.2), given here in brackets.

* N-CREATE is accepted only with PPS Status IN PROGRESS (``NOT_IN_PROGRESS``, 0x0106,
  F.7.2.1.3); Type 1 attributes must be present with a value (``MISSING_ATTRIBUTE``,
  0x0120, when absent, ``MISSING_VALUE``, 0x0121, when empty). Type 2 attributes
  missing are tolerated (policy, README) and not an error.
* N-SET is accepted only while the step is IN PROGRESS (``NO_LONGER_UPDATABLE``,
  0x0110 with Error ID A710 "may no longer be updated", F.7.2.2.3); attributes Table
  F.7.2-1 marks "Not allowed" in N-SET refuse the whole request (``NOT_SETTABLE``,
  0x0106 with the offending tags); a sequence in an N-SET replaces the stored sequence
  as a whole (F.7.2.2.2).
* Going to COMPLETED or DISCONTINUED needs PPS End Date and Time and a Performed
  Series Sequence with at least one item (``FINAL_INCOMPLETE``, 0x0121; Table F.7.2-1
  final-state requirements).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol, TypeVar

from broker.domain.errors import MppsRule, MppsRuleError
from broker.domain.status import PPSStatus, SPSStatus


class AttributeList(Protocol):
    """What the rules need of a DICOM attribute list (a DICOM toolkit's data set is
    one): values read by keyword, membership by keyword, its elements (with ``keyword``
    and ``tag``) and replacing an element by tag."""

    def get(self, key: str, default: Any = None, /) -> Any: ...

    def __contains__(self, key: str, /) -> bool: ...

    def __iter__(self) -> Iterator[Any]: ...

    def __setitem__(self, key: Any, value: Any, /) -> None: ...


_D = TypeVar("_D", bound=AttributeList)


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


def _has_value(ds: AttributeList, keyword: str) -> bool:
    value = ds.get(keyword)
    if value is None:
        return False
    value = value.value if hasattr(value, "value") else value
    return value not in (None, "", [], b"") and (not hasattr(value, "__len__") or len(value) > 0)


def check_create(ds: AttributeList) -> None:
    """Refuse an N-CREATE attribute list that F.7.2.1 does not allow."""
    missing = [k for k in CREATE_TYPE1 if k not in ds]
    if missing:
        raise MppsRuleError(MppsRule.MISSING_ATTRIBUTE, missing)
    empty = [k for k in CREATE_TYPE1 if not _has_value(ds, k)]
    for n, item in enumerate(ds.get("ScheduledStepAttributesSequence") or [], start=1):
        if not _has_value(item, "StudyInstanceUID"):
            empty.append(f"ScheduledStepAttributesSequence[{n}]>StudyInstanceUID")
    if empty:
        raise MppsRuleError(MppsRule.MISSING_VALUE, empty)
    status = str(ds.get("PerformedProcedureStepStatus")).strip()
    if status != PPSStatus.IN_PROGRESS.value:
        raise MppsRuleError(MppsRule.NOT_IN_PROGRESS, ["PerformedProcedureStepStatus"],
                            status)


def check_set(current_status: str, modification: AttributeList) -> None:
    """Refuse an N-SET on a finished step or touching a "Not allowed" attribute."""
    if current_status != PPSStatus.IN_PROGRESS.value:
        raise MppsRuleError(MppsRule.NO_LONGER_UPDATABLE, value=current_status)
    refused = [elem.keyword for elem in modification if elem.keyword in NOT_SETTABLE]
    if refused:
        raise MppsRuleError(MppsRule.NOT_SETTABLE, refused)
    if "PerformedProcedureStepStatus" in modification:
        status = str(modification.get("PerformedProcedureStepStatus")).strip()
        if status not in {s.value for s in PPSStatus}:
            raise MppsRuleError(MppsRule.UNKNOWN_STATUS, ["PerformedProcedureStepStatus"],
                                status)


def apply_set(stored: _D, modification: AttributeList) -> _D:
    """The instance after an N-SET: each element given replaces the stored one (a
    sequence as a whole, F.7.2.2.2). Specific Character Set is not replaced: values are
    held decoded (Unicode), which transcodes the N-SET's text."""
    for elem in modification:
        if elem.keyword == "SpecificCharacterSet":
            continue
        stored[elem.tag] = elem
    return stored


def check_final(ds: AttributeList) -> None:
    """COMPLETED / DISCONTINUED need end date/time and performed series (PS3.4
    Table F.7.2-1, final state)."""
    if str(ds.get("PerformedProcedureStepStatus", "")).strip() not in FINAL_STATES:
        return
    missing = [k for k in FINAL_REQUIRED if not _has_value(ds, k)]
    if missing:
        raise MppsRuleError(MppsRule.FINAL_INCOMPLETE, missing)


def is_incorrect_worklist_entry(ds: AttributeList) -> bool:
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
