"""Where the broker records audit events (IHE ATNA), one function per kind of action,
each taking the caller's session so that the record commits with the action."""

from __future__ import annotations

import hashlib
from typing import Any

from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from sqlalchemy import Connection, select
from sqlalchemy.orm import Session

from broker.audit import events as ev
from broker.audit.events import BROKER, Actor, Participant, patient, record, study
from broker.config import Settings
from broker.domain.types import AdtMessage, OrderMessage
from broker.models import AuditEvent, InboundMessage

APPLICATION = ev.Code("110150", "DCM", "Application")
MWL_FIND = "1.2.840.10008.5.1.4.31"
ACTIONS = {"NW": "C", "SN": "C", "XO": "U", "SC": "U", "CA": "D", "OC": "D", "DC": "D"}


def _sender(row: InboundMessage) -> Actor:
    who = "|".join(filter(None, [row.sending_application, row.sending_facility])) or "unknown"
    return Actor(who, requestor=True, address=row.peer.rsplit(":", 1)[0])


def application(session: Session, settings: Settings, *, start: bool) -> None:
    """Application Activity start/stop (A.5.3.1); a configuration different from the
    previous start is also a Security Alert "Software Configuration"."""
    fingerprint = hashlib.sha256(settings.model_dump_json().encode()).hexdigest()[:16]
    me = Actor(ev.SOURCE_ID, requestor=False, role=APPLICATION)
    if start:
        previous = session.scalars(select(AuditEvent.detail).where(
            AuditEvent.event_name == ev.APPLICATION_START.meaning)
            .order_by(AuditEvent.id.desc()).limit(1)).first()
        if previous is not None and not previous.endswith(fingerprint):
            record(session, ev.SECURITY_ALERT, event_type=ev.SOFTWARE_CONFIGURATION,
                   outcome=ev.MINOR_FAILURE, actors=[me],
                   detail=f"configuration changed since the last start: {fingerprint}")
    record(session, ev.APPLICATION_ACTIVITY, actors=[me],
           event_type=ev.APPLICATION_START if start else ev.APPLICATION_STOP,
           detail=f"configuration {fingerprint}")


def hl7_applied(connection: Connection, row: InboundMessage,
                mapped: OrderMessage | AdtMessage) -> None:
    """Order Record (A.5.3.9) or Patient Record (A.5.3.10) for an applied message."""
    ev.record_all(connection, [hl7_applied_values(row, mapped)])


def hl7_applied_values(row: InboundMessage, mapped: OrderMessage | AdtMessage
                       ) -> dict[str, Any]:
    """The audit row of :func:`hl7_applied`, for the caller to write with others
    (:func:`broker.audit.events.record_all`) in the message's transaction."""
    if isinstance(mapped, AdtMessage):
        action = "C" if mapped.event in ("A01", "A04", "A05") else "U"
        return ev.event_values(ev.PATIENT_RECORD, action=action,
                               actors=[_sender(row), BROKER],
                               participants=[patient(mapped.patient.patient_id)],
                               detail=f"ADT^{mapped.event} message {row.id}")
    controls = [s.order_control for p in mapped.procedures for s in p.steps]
    parts = [patient(mapped.patient.patient_id)] + [
        study(str(p.attributes.get("StudyInstanceUID", "")),
              str(p.attributes.get("AccessionNumber", ""))) for p in mapped.procedures]
    return ev.event_values(
        ev.ORDER_RECORD, action=ACTIONS.get(controls[0] if controls else "", "U"),
        actors=[_sender(row), BROKER], participants=parts,
        detail=f"{row.message_type} message {row.id}")


def _encoded(identifier: Dataset) -> bytes:
    """The identifier in Implicit VR Little Endian (PS3.15 A.5.3.12)."""
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, True
    try:
        write_dataset(buffer, identifier)
    except Exception:  # an identifier pydicom cannot write back: keep the JSON form
        return identifier.to_json().encode()
    return buffer.getvalue()


def worklist_query(session: Session, calling: str, address: str, identifier: Dataset,
                   status: int) -> None:
    """Query (A.5.3.12): the C-FIND identifier goes in ParticipantObjectQuery."""
    record(session, ev.QUERY, action="E", outcome=ev.SUCCESS if status == 0 else
           ev.MINOR_FAILURE, actors=[Actor(calling, True, address), BROKER],
           participants=[Participant(MWL_FIND, ev.SOP_CLASS_UID, role=24,
                                     query=_encoded(identifier))],
           detail=f"MWL C-FIND status 0x{status:04X}")


def procedure_record(session: Session, calling: str, address: str, command: str,
                     patient_id: str, study_uid: str) -> None:
    """Procedure Record (A.5.3.11) for an MPPS N-CREATE / N-SET."""
    parts = [patient(patient_id)] if patient_id else []
    record(session, ev.PROCEDURE_RECORD, action="C" if command == "N-CREATE" else "U",
           actors=[Actor(calling, True, address), BROKER],
           participants=[*parts, study(study_uid)], detail=f"MPPS {command}")


def workitem_record(session: Session, by: str, address: str, action: str, what: str,
                    patient_id: str, study_uid: str) -> None:
    """Procedure Record (PS3.15 A.5.3.11: a procedure record created, modified or
    deleted) for a change to a Unified Procedure Step workitem (PS3.4 Annex CC): its
    creation (action C), a state change - claimed, completed, canceled - or a
    cancellation request (action U); ``by`` is the console user or calling AE title,
    ``what`` names the workitem and the change. Participants: the patient and the
    study of the workitem, when it has them."""
    parts = [patient(patient_id)] if patient_id else []
    if study_uid:
        parts.append(study(study_uid))
    record(session, ev.PROCEDURE_RECORD, action=action,
           actors=[Actor(by or "unknown", True, address), BROKER], participants=parts,
           detail=what)


def instances_received(session: Session, calling: str, address: str, study_uid: str,
                       patient_id: str, count: int) -> None:
    """DICOM Instances Transferred (A.5.3.7), one per study and association."""
    parts = [patient(patient_id)] if patient_id else []
    record(session, ev.INSTANCES_TRANSFERRED, action="C",
           actors=[Actor(calling, True, address), BROKER],
           participants=[*parts, study(study_uid)], detail=f"{count} instance(s) stored")


def security_alert(session: Session, who: str, address: str, what: str) -> None:
    """Security Alert (A.5.3.13) for a refused peer (node authentication)."""
    record(session, ev.SECURITY_ALERT, action="E", outcome=ev.MINOR_FAILURE,
           event_type=ev.NODE_AUTHENTICATION, actors=[Actor(who, True, address), BROKER],
           participants=[Participant(address or who, ev.NODE_ID, role=13)], detail=what)


def mapping_configuration(session: Session, user: str, address: str, what: str) -> None:
    """Security Alert (PS3.15 A.5.3.13) with event type "Software Configuration"
    (110131) for a change to the deployed mapping profiles: a deploy or a rollback,
    ``what`` naming the action and the version now in force. The profiles decide what
    every order becomes on the worklist, so a change is a configuration change of the
    application (actor: the user who made it)."""
    record(session, ev.SECURITY_ALERT, action="E", event_type=ev.SOFTWARE_CONFIGURATION,
           actors=[Actor(user or "unknown", True, address), BROKER], detail=what)


def user_authentication(session: Session, user: str, address: str, *, login: bool,
                        ok: bool, why: str = "") -> None:
    """User Authentication (A.5.3.14): console login (either outcome, ``why`` a refusal
    says why: wrong password, throttled, locked) and logout."""
    record(session, ev.USER_AUTHENTICATION, action="E",
           outcome=ev.SUCCESS if ok else ev.MINOR_FAILURE,
           event_type=ev.LOGIN if login else ev.LOGOUT,
           actors=[Actor(user, True, address), BROKER],
           detail=f"console {'login' if login else 'logout'}{'' if ok else ' refused'}"
           + (f": {why}" if why else ""))


def _console_user(name: str) -> Participant:
    """A console account as a participant: a person (1) in the Security User Entity
    role (11), identified by its user name (RFC 3881 ID type 11)."""
    return Participant(name, ev.USER_IDENTIFIER, type_code=1, role=11)


def user_security(session: Session, actor: str, address: str, user: str, what: str, *,
                  action: str = "U", roles: bool = False) -> None:
    """Security Alert (A.5.3.13) for an administrator's change to a console account:
    created, disabled, enabled, deleted, an API token created or revoked (event type
    "User Security Attributes Changed"), or its role changed ("Security Roles Changed").
    """
    record(session, ev.SECURITY_ALERT, action=action,
           event_type=ev.SECURITY_ROLES_CHANGED if roles
           else ev.USER_SECURITY_ATTRIBUTES_CHANGED,
           actors=[Actor(actor, True, address), BROKER], participants=[_console_user(user)],
           detail=what)


def login_lockout(session: Session, user: str, address: str, what: str, *,
                  by_address: bool = False) -> None:
    """Security Alert (A.5.3.13, outcome minor failure) when repeated failed logins lock
    an account (participant: the account) or a client address (participant: the node)
    out of the console."""
    part = (Participant(address, ev.NODE_ID, role=13) if by_address
            else _console_user(user))
    record(session, ev.SECURITY_ALERT, action="E", outcome=ev.MINOR_FAILURE,
           event_type=ev.USER_SECURITY_ATTRIBUTES_CHANGED,
           actors=[Actor(user, True, address), BROKER], participants=[part], detail=what)
