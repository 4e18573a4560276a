"""UPS events (PS3.4 CC.2.4): appended in the transaction of the change that causes
them; the ``ups_event`` table is the order timeline's source and the delivery queue
of the WebSocket channel and N-EVENT-REPORT.

Event information per PS3.4 Table CC.2.4-1: a State Report carries the Procedure Step
State and Input Readiness State (and, for CANCELED, the Reason For Cancellation); a
Cancel Requested the Requesting AE, reason and contact; a Progress Report the
Procedure Step Progress Information Sequence; an Assigned the scheduled station and performers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset
from sqlalchemy import Connection
from sqlalchemy.orm import Session

from broker.domain.ups import UPSEventType, UPSState
from broker.driver_rows import insert_rows
from broker.models import UPSEvent
from broker.services.rows import inserting, table

EVENTS = table(UPSEvent)
CAUSE_LENGTH = 200


@dataclass(frozen=True)
class UPSEventRow:
    """One event to deliver: its id (the delivery position), the workitem, the Event
    Type ID (1..5) and the Event Information."""

    id: int
    workitem_uid: str
    event_type_id: int
    payload: Dataset


def _cs(value: str) -> dict[str, Any]:
    return {"vr": "CS", "Value": [value]}


def state_report(state: UPSState | str, input_readiness: str = "READY",
                 reason: str = "") -> dict[str, Any]:
    """Event Information of a UPS State Report (Event Type ID 1), in the DICOM JSON
    model (PS3.18 F.2) directly: the order apply path writes one per new workitem."""
    payload = {"00404041": _cs(input_readiness or "READY"), "00741000": _cs(str(state))}
    if reason:
        payload["00741238"] = {"vr": "LT", "Value": [reason[:400]]}
    return payload


def cancel_requested(requesting_ae: str, reason: str, contact: str,
                     contact_name: str = "") -> dict[str, Any]:
    """Event Information of a UPS Cancel Requested (Event Type ID 2)."""
    ds = Dataset()
    ds.RequestingAE = requesting_ae[:16]
    if reason:
        ds.ReasonForCancellation = reason[:400]
    if contact:
        ds.ContactURI = contact
    if contact_name:
        ds.ContactDisplayName = contact_name[:64]
    return ds.to_json_dict()


def progress_report(progress: Dataset) -> dict[str, Any]:
    """Event Information of a UPS Progress Report (Event Type ID 3)."""
    ds = Dataset()
    ds.ProcedureStepProgressInformationSequence = progress.get(
        "ProcedureStepProgressInformationSequence") or []
    return ds.to_json_dict()


ASSIGNED_KEYWORDS = ("ScheduledStationNameCodeSequence", "ScheduledStationClassCodeSequence",
                     "ScheduledStationGeographicLocationCodeSequence",
                     "ScheduledHumanPerformersSequence")


def assigned(scheduled: Dataset) -> dict[str, Any]:
    """Event Information of a UPS Assigned (Event Type ID 5): where (and by whom) the
    workitem is now to be performed."""
    ds = Dataset()
    for keyword in ASSIGNED_KEYWORDS:
        if keyword in scheduled:
            ds[keyword] = scheduled[keyword]
    return ds.to_json_dict()


def row(workitem_uid: str, event: UPSEventType, payload: dict[str, Any], *, cause: str,
        recipient: str | None = None) -> dict[str, Any]:
    """An ``ups_event`` row to insert."""
    return {"workitem_uid": workitem_uid, "event_type_id": int(event), "payload": payload,
            "recipient": recipient, "cause": cause[:CAUSE_LENGTH]}


def append(target: Session | Connection, rows: list[dict[str, Any]]) -> None:
    """Insert event rows, in order, in the caller's transaction (one statement)."""
    if isinstance(target, Connection):
        insert_rows(target, EVENTS, rows)
    elif rows:
        target.execute(inserting(EVENTS), rows)
