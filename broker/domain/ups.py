"""Unified Procedure Step rules (PS3.4 Annex CC) as pure logic: states, the state
transition table, the final-state requirements, the statuses a refusal carries, the
event types, and the priority a workitem gets from its order.

One place for the statuses: :class:`UPSError` carries the DIMSE status of PS3.4
CC.2 (Tables CC.2.1-2 Change State, CC.2.6-2 N-SET, CC.2.5-2 N-CREATE, CC.2.2-2
Subscribe, CC.2.3-2 Request Cancel), the HTTP status PS3.18 11 answers the same
refusal with, and words for people (DICOM Error Comment, HTTP ``Warning`` text).

State transitions (PS3.4 Table CC.1.1-2), for a performer's Change State request:

=================  ===========  ===================  ===========  ===========
requested \\ now    SCHEDULED    IN PROGRESS          CANCELED     COMPLETED
=================  ===========  ===================  ===========  ===========
IN PROGRESS        claim (new   0xC302               0xC300       0xC300
                   Transaction  already IN PROGRESS
                   UID kept)
CANCELED           0xC310       with the Transaction 0xB304       0xC300
                   not yet IN   UID: CANCELED, else  (warning)
                   PROGRESS     0xC301
COMPLETED          0xC310       with the Transaction 0xC300       0xB306
                                UID and the final-                (warning)
                                state attributes:
                                COMPLETED, else
                                0xC301 / 0xC304
SCHEDULED          0xC303       0xC303               0xC303       0xC303
=================  ===========  ===================  ===========  ===========

A SCHEDULED workitem is cancelled by the SCP (here: its order is cancelled, or a
Request Cancellation reaches it while nobody performs it); the SCP takes it through
IN PROGRESS to CANCELED (PS3.4 CC.1.1), so both state reports are sent.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from typing import Any


class UPSState(StrEnum):
    """Procedure Step State (0074,1000), PS3.3 C.30.1 enumerated values."""

    SCHEDULED = "SCHEDULED"
    IN_PROGRESS = "IN PROGRESS"
    CANCELED = "CANCELED"
    COMPLETED = "COMPLETED"

    @property
    def final(self) -> bool:
        return self in (UPSState.CANCELED, UPSState.COMPLETED)


class UPSEventType(IntEnum):
    """Event Type ID of a UPS Event Report (PS3.4 CC.2.4.2, Table CC.2.4-1)."""

    STATE_REPORT = 1
    CANCEL_REQUESTED = 2
    PROGRESS_REPORT = 3
    SCP_STATUS_CHANGE = 4
    ASSIGNED = 5


# -- statuses (PS3.4 CC.2; PS3.7 C) -----------------------------------------------------

SUCCESS = 0x0000
ALREADY_CANCELED = 0xB304  # warning: already in the requested state of CANCELED
ALREADY_COMPLETED = 0xB306  # warning: already in the requested state of COMPLETED
DELETION_LOCK_NOT_GRANTED = 0xB301  # warning
CREATED_WITH_MODIFICATIONS = 0xB300  # warning
COERCED = 0xB305  # warning: coerced invalid values to valid values

MAY_NO_LONGER_BE_UPDATED = 0xC300
WRONG_TRANSACTION_UID = 0xC301
ALREADY_IN_PROGRESS = 0xC302
ONLY_CREATE_SCHEDULES = 0xC303
FINAL_STATE_NOT_MET = 0xC304
NO_SUCH_WORKITEM = 0xC307
UNKNOWN_RECEIVING_AE = 0xC308
NOT_SCHEDULED_ON_CREATE = 0xC309
NOT_IN_PROGRESS = 0xC310
ALREADY_COMPLETED_REFUSED = 0xC311
PERFORMER_UNREACHABLE = 0xC312
PERFORMER_REFUSES_CANCEL = 0xC313
NOT_APPROPRIATE = 0xC314
NO_EVENT_REPORTS = 0xC315
INVALID_ATTRIBUTE_VALUE = 0x0106
DUPLICATE_INSTANCE = 0x0111
MISSING_ATTRIBUTE = 0x0120

# DIMSE status -> (PS3.18 11 HTTP status, words). 409 Conflict: "the request is
# inconsistent with the current state of the Target Workitem" (PS3.18 11.6.3, 11.7.3,
# 11.8.3); 400 for a request that is wrong whatever the state; 404 for no workitem.
_STATUSES: dict[int, tuple[int, str]] = {
    MAY_NO_LONGER_BE_UPDATED: (409, "The UPS may no longer be updated"),
    WRONG_TRANSACTION_UID: (400, "The correct Transaction UID was not provided"),
    ALREADY_IN_PROGRESS: (409, "The UPS is already IN PROGRESS"),
    ONLY_CREATE_SCHEDULES: (400, "The UPS may only become SCHEDULED via N-CREATE"),
    FINAL_STATE_NOT_MET: (409, "The UPS has not met final state requirements for the "
                               "requested state change"),
    NO_SUCH_WORKITEM: (404, "Specified SOP Instance UID does not exist or is not a UPS "
                            "Instance managed by this SCP"),
    UNKNOWN_RECEIVING_AE: (404, "Receiving AE-TITLE is unknown to this SCP"),
    NOT_SCHEDULED_ON_CREATE: (400, "The provided value of UPS State was not SCHEDULED"),
    NOT_IN_PROGRESS: (409, "The UPS is not yet in the IN PROGRESS state"),
    ALREADY_COMPLETED_REFUSED: (409, "The UPS is already COMPLETED"),
    PERFORMER_UNREACHABLE: (409, "The performer cannot be contacted"),
    PERFORMER_REFUSES_CANCEL: (409, "Performer chooses not to cancel"),
    NOT_APPROPRIATE: (400, "Specified action not appropriate for specified instance"),
    NO_EVENT_REPORTS: (400, "SCP does not support Event Reports"),
    INVALID_ATTRIBUTE_VALUE: (400, "Invalid attribute value"),
    DUPLICATE_INSTANCE: (409, "A workitem with this SOP Instance UID exists"),
    MISSING_ATTRIBUTE: (400, "Missing attribute"),
}
WARNINGS: dict[int, str] = {
    ALREADY_CANCELED: "The UPS is already in the requested state of CANCELED",
    ALREADY_COMPLETED: "The UPS is already in the requested state of COMPLETED",
    DELETION_LOCK_NOT_GRANTED: "Deletion lock not granted",
    CREATED_WITH_MODIFICATIONS: "The UPS was created with modifications",
    COERCED: "Coerced invalid values to valid values",
}


class UPSError(Exception):
    """A UPS request refused: the DIMSE status (``code``), the PS3.18 HTTP status and
    the reason in words (what the DIMSE Error Comment and the HTTP Warning say)."""

    def __init__(self, code: int, reason: str = "", http_status: int | None = None) -> None:
        known_http, words = _STATUSES.get(code, (400, "Refused"))
        self.code = code
        self.reason = reason or words
        self.http_status = http_status if http_status is not None else known_http
        super().__init__(self.reason)

    def __repr__(self) -> str:
        return f"UPSError(0x{self.code:04X}, {self.reason!r}, {self.http_status})"


def refusal(code: int, detail: str = "") -> UPSError:
    """The UPSError of ``code``, its standard words followed by ``detail``."""
    words = _STATUSES.get(code, (400, "Refused"))[1]
    return UPSError(code, f"{words}: {detail}" if detail else words)


# -- state transitions (PS3.4 Table CC.1.1-2) -------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """What a Change State request does: the new state (None: nothing changes), the
    warning status it succeeds with (0 when none), and whether it is a claim (the
    Transaction UID given becomes the workitem's)."""

    state: UPSState | None
    warning: int = SUCCESS
    claims: bool = False


def parse_state(value: str) -> UPSState:
    """A Procedure Step State value; 0x0106 for anything else."""
    try:
        return UPSState(value.strip().upper())
    except ValueError:
        raise refusal(INVALID_ATTRIBUTE_VALUE,
                      f"Procedure Step State {value!r} is not one of "
                      "SCHEDULED, IN PROGRESS, CANCELED, COMPLETED") from None


def change_state(current: UPSState, requested: UPSState, transaction_uid_given: str,
                 transaction_uid_held: str) -> Outcome:
    """A performer's Change State request (N-ACTION Action Type ID 1, PS3.4 CC.2.1;
    UPS-RS Change Workitem State, PS3.18 11.7) by the table of the module docstring.
    Raises UPSError to refuse. The final-state requirements of COMPLETED are checked
    apart (:func:`missing_for_final_state`), on the dataset the change would leave."""
    given = transaction_uid_given.strip()
    if requested is UPSState.SCHEDULED:
        raise refusal(ONLY_CREATE_SCHEDULES)
    if requested is UPSState.IN_PROGRESS:
        if current is UPSState.SCHEDULED:
            if not given:
                raise refusal(WRONG_TRANSACTION_UID, "claiming needs a new Transaction UID")
            return Outcome(UPSState.IN_PROGRESS, claims=True)
        if current is UPSState.IN_PROGRESS:
            raise refusal(ALREADY_IN_PROGRESS)
        raise refusal(MAY_NO_LONGER_BE_UPDATED, f"it is {current.value}")
    # CANCELED or COMPLETED
    if current is requested:
        return Outcome(None, ALREADY_CANCELED if requested is UPSState.CANCELED
                       else ALREADY_COMPLETED)
    if current.final:
        raise refusal(MAY_NO_LONGER_BE_UPDATED, f"it is {current.value}")
    if current is UPSState.SCHEDULED:
        raise refusal(NOT_IN_PROGRESS)
    if given != transaction_uid_held:
        raise refusal(WRONG_TRANSACTION_UID)
    return Outcome(requested)


def check_update(current: UPSState, transaction_uid_given: str,
                 transaction_uid_held: str) -> None:
    """An update of a workitem's attributes (N-SET, PS3.4 CC.2.6; UPS-RS Update
    Workitem, PS3.18 11.6): a SCHEDULED workitem may be updated without a Transaction
    UID, an IN PROGRESS one only with the one it was claimed with, a final one never."""
    if current.final:
        raise refusal(MAY_NO_LONGER_BE_UPDATED, f"it is {current.value}")
    if current is UPSState.IN_PROGRESS and transaction_uid_given.strip() != transaction_uid_held:
        raise refusal(WRONG_TRANSACTION_UID)


def check_cancel_request(current: UPSState) -> Outcome:
    """Request Cancellation (N-ACTION Action Type ID 2, PS3.4 CC.2.1.3; UPS-RS Request
    Cancellation, PS3.18 11.8): a SCHEDULED workitem is cancelled by the SCP; for an
    IN PROGRESS one the performer is told (a Cancel Requested event) and the state
    stays; CANCELED already: warning 0xB304; COMPLETED: 0xC311."""
    if current is UPSState.SCHEDULED:
        return Outcome(UPSState.CANCELED)
    if current is UPSState.IN_PROGRESS:
        return Outcome(None)
    if current is UPSState.CANCELED:
        return Outcome(None, ALREADY_CANCELED)
    raise refusal(ALREADY_COMPLETED_REFUSED)


# -- final state requirements (PS3.4 Table CC.2.5-3, column "Final State") -------------

PERFORMED_SEQUENCE = "UnifiedProcedureStepPerformedProcedureSequence"
# Attributes of the Performed Procedure item a COMPLETED workitem must hold with a value
# ("P"); the Output Information Sequence must be present, possibly empty (a workitem
# may produce nothing).
COMPLETED_REQUIRES: tuple[str, ...] = (
    "PerformedProcedureStepStartDateTime",
    "PerformedProcedureStepEndDateTime",
    "PerformedStationNameCodeSequence",
    "PerformedWorkitemCodeSequence",
)
COMPLETED_REQUIRES_PRESENT: tuple[str, ...] = ("OutputInformationSequence",)
# Filled in by the SCP when the performer leaves them out: the scheduled values say
# where and what was performed (liberal in what we accept, complete in what we keep).
FILLED_FROM_SCHEDULED: dict[str, str] = {
    "PerformedStationNameCodeSequence": "ScheduledStationNameCodeSequence",
    "PerformedWorkitemCodeSequence": "ScheduledWorkitemCodeSequence",
}


def _has_value(value: Any) -> bool:
    if value is None or value == "":
        return False
    return not (isinstance(value, list | tuple) and len(value) == 0)


def missing_for_final_state(state: UPSState, attributes: Mapping[str, Any]) -> list[str]:
    """Keywords a workitem lacks to become ``state`` (Table CC.2.5-3 final state
    codes), over a plain dict of its keywords (a sequence is a list of such dicts);
    [] when it may. CANCELED asks for nothing the performer must send (the SCP fills
    the cancellation date-time, Procedure Step Progress Information Sequence)."""
    if state is not UPSState.COMPLETED:
        return []
    items = attributes.get(PERFORMED_SEQUENCE)
    if not isinstance(items, list | tuple) or not items or not isinstance(items[0], Mapping):
        return [PERFORMED_SEQUENCE]
    item = items[0]
    missing = [f"{PERFORMED_SEQUENCE}>{k}" for k in COMPLETED_REQUIRES
               if not _has_value(item.get(k))]
    missing += [f"{PERFORMED_SEQUENCE}>{k}" for k in COMPLETED_REQUIRES_PRESENT if k not in item]
    return missing


def require_final_state(state: UPSState, attributes: Mapping[str, Any]) -> None:
    """:func:`missing_for_final_state`, refused with 0xC304 naming what is missing."""
    missing = missing_for_final_state(state, attributes)
    if missing:
        raise refusal(FINAL_STATE_NOT_MET, "missing " + ", ".join(missing))


# -- what a workitem gets from its order ------------------------------------------------

class UPSPriority(StrEnum):
    """Scheduled Procedure Step Priority (0074,1200), PS3.3 C.30.2."""

    HIGH = "HIGH"
    MEDIUM = "MEDIUM"
    LOW = "LOW"


# Requested Procedure Priority (0040,1003) defined terms (PS3.3 C.4.11) and HL7 TQ1-9 /
# ORC-7.6 priorities as the mapping stores them -> UPS priority.
_PRIORITY = {
    "STAT": UPSPriority.HIGH, "HIGH": UPSPriority.HIGH, "S": UPSPriority.HIGH,
    "A": UPSPriority.HIGH, "P": UPSPriority.HIGH, "C": UPSPriority.HIGH,
    "ROUTINE": UPSPriority.MEDIUM, "MEDIUM": UPSPriority.MEDIUM, "R": UPSPriority.MEDIUM,
    "LOW": UPSPriority.LOW, "T": UPSPriority.LOW,
}


def priority_for(order_priority: str) -> UPSPriority:
    """The UPS priority of an order's priority: STAT/HIGH -> HIGH, ROUTINE/MEDIUM ->
    MEDIUM, LOW -> LOW; anything else (or none) -> MEDIUM."""
    return _PRIORITY.get(order_priority.strip().upper(), UPSPriority.MEDIUM)


def parse_priority(value: str) -> UPSPriority:
    """A Scheduled Procedure Step Priority value as sent; 0x0106 for anything else."""
    try:
        return UPSPriority(value.strip().upper())
    except ValueError:
        raise refusal(INVALID_ATTRIBUTE_VALUE,
                      f"Scheduled Procedure Step Priority {value!r} is not HIGH, MEDIUM "
                      "or LOW") from None


@dataclass(frozen=True)
class WorkitemSelection:
    """Which scheduled steps of an order are also UPS workitems (a mapping profile's
    ``workitems`` key): ``enabled`` false selects none; otherwise a step is selected
    when its modality is one of ``modalities`` and one of its procedure/protocol codes
    is one of ``codes`` (an empty list does not restrict)."""

    enabled: bool = True
    modalities: tuple[str, ...] = ()
    codes: tuple[str, ...] = ()

    def selects(self, modality: str, codes: Iterable[str]) -> bool:
        if not self.enabled:
            return False
        if self.modalities and modality.upper() not in {m.upper() for m in self.modalities}:
            return False
        return not self.codes or bool(set(self.codes) & set(codes))


EVERY_STEP = WorkitemSelection()


# -- one state machine with the scheduled step (PS3.4 CC.1.1; IHE RAD TF-2 4.6/4.7) ------

_PENDING_STEP = frozenset({"SCHEDULED", "ARRIVED", "READY"})
_STARTED_STEP = frozenset({"STARTED", "DEPARTED"})
_FINAL_STEP = frozenset({"COMPLETED", "DISCONTINUED", "CANCELLED"})


def state_for_step(step_status: str) -> UPSState:
    """The state of a workitem whose scheduled step has ``step_status`` (Scheduled
    Procedure Step Status, PS3.3 C.4.10): waiting -> SCHEDULED, started -> IN PROGRESS,
    COMPLETED -> COMPLETED, DISCONTINUED / CANCELLED -> CANCELED."""
    if step_status in _STARTED_STEP:
        return UPSState.IN_PROGRESS
    if step_status == "COMPLETED":
        return UPSState.COMPLETED
    if step_status in ("DISCONTINUED", "CANCELLED"):
        return UPSState.CANCELED
    return UPSState.SCHEDULED


def follows_step(current: UPSState, step_status: str) -> UPSState | None:
    """Where a workitem goes when its step moves to ``step_status`` by an MPPS or an
    order message (the SCP changes it: no Transaction UID is involved); None: it stays.
    A workitem never leaves a final state, nor goes back to SCHEDULED."""
    target = state_for_step(step_status)
    if current.final or target is current or target is UPSState.SCHEDULED:
        return None
    if target is UPSState.IN_PROGRESS and current is not UPSState.SCHEDULED:
        return None
    return target


def step_status_for(state: UPSState, step_status: str) -> str | None:
    """The step status a workitem's new state leads to; None: the step stays. Claiming
    starts a waiting step (it leaves the Modality Worklist); COMPLETED completes an open
    step; CANCELED discontinues an open step (reported to the order placer as DC, as an
    MPPS DISCONTINUED is)."""
    if step_status in _FINAL_STEP:
        return None
    if state is UPSState.IN_PROGRESS:
        return "STARTED" if step_status in _PENDING_STEP else None
    if state is UPSState.COMPLETED:
        return "COMPLETED"
    if state is UPSState.CANCELED:
        return "DISCONTINUED"
    return None
