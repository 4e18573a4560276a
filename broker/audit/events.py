"""Audit events (DICOM PS3.15 A.5.3, IHE ITI ATNA): what happened, who did
it from where, and on which objects, as DICOM audit message XML (PS3.15 A.5.1).

:func:`record` writes the event in the caller's transaction, so it commits (or not)
with the action it records. Participant objects carry ids (patient id, accession,
study UID, SOP class) as the standard asks; audit records are access-controlled data,
not logs.
"""

from __future__ import annotations

import base64
import socket
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from xml.etree import ElementTree as ET

from sqlalchemy import Connection, insert
from sqlalchemy.orm import Session

from broker.driver_rows import insert_rows
from broker.models import AuditEvent, Base

SOURCE_ID = "MWL_BROKER"
AUDIT_EVENTS = Base.metadata.tables[AuditEvent.__tablename__]
_RECORDING = insert(AUDIT_EVENTS)


@dataclass(frozen=True)
class Code:
    code: str
    scheme: str
    meaning: str


# PS3.16 CID 400 (Audit Event ID) and CID 401 (Audit Event Type Code), DCM.
APPLICATION_ACTIVITY = Code("110100", "DCM", "Application Activity")
INSTANCES_TRANSFERRED = Code("110104", "DCM", "DICOM Instances Transferred")
ORDER_RECORD = Code("110109", "DCM", "Order Record")
PATIENT_RECORD = Code("110110", "DCM", "Patient Record")
PROCEDURE_RECORD = Code("110111", "DCM", "Procedure Record")
QUERY = Code("110112", "DCM", "Query")
SECURITY_ALERT = Code("110113", "DCM", "Security Alert")
USER_AUTHENTICATION = Code("110114", "DCM", "User Authentication")
APPLICATION_START = Code("110120", "DCM", "Application Start")
APPLICATION_STOP = Code("110121", "DCM", "Application Stop")
LOGIN = Code("110122", "DCM", "Login")
LOGOUT = Code("110123", "DCM", "Logout")
NODE_AUTHENTICATION = Code("110126", "DCM", "Node Authentication")
SOFTWARE_CONFIGURATION = Code("110131", "DCM", "Software Configuration")
SECURITY_ROLES_CHANGED = Code("110136", "DCM", "Security Roles Changed")
USER_SECURITY_ATTRIBUTES_CHANGED = Code("110137", "DCM", "User Security Attributes Changed")

SUCCESS, MINOR_FAILURE, SERIOUS_FAILURE = 0, 4, 8

# Participant object ID type codes (RFC 3881 / PS3.15 A.5.2.6).
PATIENT_NUMBER = Code("2", "RFC-3881", "Patient Number")
STUDY_UID = Code("110180", "DCM", "Study Instance UID")
SOP_CLASS_UID = Code("110181", "DCM", "SOP Class UID")
NODE_ID = Code("110182", "DCM", "Node ID")
USER_IDENTIFIER = Code("11", "RFC-3881", "User Identifier")


@dataclass
class Participant:
    """A ParticipantObjectIdentification: type 1 person, 2 system object."""

    object_id: str
    id_type: Code
    type_code: int = 2
    role: int = 3  # 1 patient, 3 report, 4 resource, 13 security resource, 24 query
    name: str = ""
    query: bytes = b""
    details: dict[str, str] = field(default_factory=dict)


def patient(patient_id: str) -> Participant:
    return Participant(patient_id, PATIENT_NUMBER, type_code=1, role=1)


def study(study_uid: str, accession: str = "") -> Participant:
    return Participant(study_uid, STUDY_UID, type_code=2, role=3,
                       details={"Accession": accession} if accession else {})


@dataclass
class Actor:
    """An ActiveParticipant: a user, an AE title, the broker itself."""

    user_id: str
    requestor: bool
    address: str = ""
    role: Code | None = None


def _code(parent: ET.Element, tag: str, code: Code) -> None:
    ET.SubElement(parent, tag, {"csd-code": code.code, "codeSystemName": code.scheme,
                                "originalText": code.meaning})


def build_message(event: Code, action: str, outcome: int, actors: list[Actor],
                  participants: list[Participant], *, event_type: Code | None = None,
                  at: datetime | None = None) -> str:
    """The DICOM audit message XML (PS3.15 A.5.1)."""
    moment = (at or datetime.now(UTC)).astimezone(UTC)
    root = ET.Element("AuditMessage")
    ident = ET.SubElement(root, "EventIdentification", {
        "EventActionCode": action,
        "EventDateTime": moment.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "EventOutcomeIndicator": str(outcome)})
    _code(ident, "EventID", event)
    if event_type is not None:
        _code(ident, "EventTypeCode", event_type)
    for actor in actors:
        attrs = {"UserID": actor.user_id, "UserIsRequestor": str(actor.requestor).lower()}
        if actor.address:
            attrs["NetworkAccessPointID"] = actor.address
            attrs["NetworkAccessPointTypeCode"] = "2"  # IP address
        element = ET.SubElement(root, "ActiveParticipant", attrs)
        if actor.role is not None:
            _code(element, "RoleIDCode", actor.role)
    source = ET.SubElement(root, "AuditSourceIdentification",
                           {"AuditSourceID": f"{SOURCE_ID}@{socket.gethostname()}"})
    ET.SubElement(source, "AuditSourceTypeCode", {"csd-code": "4"})  # application server
    for part in participants:
        element = ET.SubElement(root, "ParticipantObjectIdentification", {
            "ParticipantObjectID": part.object_id,
            "ParticipantObjectTypeCode": str(part.type_code),
            "ParticipantObjectTypeCodeRole": str(part.role)})
        _code(element, "ParticipantObjectIDTypeCode", part.id_type)
        if part.name:
            ET.SubElement(element, "ParticipantObjectName").text = part.name
        if part.query:
            ET.SubElement(element, "ParticipantObjectQuery").text = base64.b64encode(
                part.query).decode()
        for key, value in part.details.items():
            ET.SubElement(element, "ParticipantObjectDetail",
                          {"type": key, "value": base64.b64encode(value.encode()).decode()})
    return ET.tostring(root, encoding="unicode")


BROKER = Actor(SOURCE_ID, requestor=False)


def event_values(event: Code, *, action: str = "E", outcome: int = SUCCESS,
                 actors: list[Actor] | None = None,
                 participants: list[Participant] | None = None,
                 event_type: Code | None = None, detail: str = "") -> dict[str, Any]:
    """The audit table row of an event (PS3.15 A.5.1 message included), to write with
    :func:`record_all`."""
    actors = actors or [BROKER]
    now = datetime.now(UTC)
    return {
        "at": now, "event_id": event.code, "event_name": (event_type or event).meaning,
        "action": action, "outcome": outcome, "user": actors[0].user_id[:128],
        "address": actors[0].address[:100], "detail": detail[:400],
        "message": build_message(event, action, outcome, actors, participants or [],
                                 event_type=event_type, at=now)}


def record_all(session: Session | Connection, rows: list[dict[str, Any]]) -> None:
    """Write audit rows (:func:`event_values`) in the transaction of ``session``, one
    statement for all."""
    if isinstance(session, Connection):
        insert_rows(session, AUDIT_EVENTS, rows)
    elif rows:
        session.execute(_RECORDING, rows)


def record(session: Session | Connection, event: Code, *, action: str = "E",
           outcome: int = SUCCESS, actors: list[Actor] | None = None,
           participants: list[Participant] | None = None, event_type: Code | None = None,
           detail: str = "") -> None:
    """Write an audit event in the transaction of ``session`` (a session or its
    connection): it commits, or not, with the caller's."""
    session.execute(_RECORDING, event_values(
        event, action=action, outcome=outcome, actors=actors, participants=participants,
        event_type=event_type, detail=detail))
