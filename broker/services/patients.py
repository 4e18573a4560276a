"""Apply mapped ADT messages to patients (IHE RAD-1 Patient Registration, RAD-12
Patient Update).

* A01/A04/A05 create or update; A08 and the other RAD-12 events (A02 A03 A06 A07 A11
  A12 A13 A38) update, creating the patient when unknown so that no update is lost.
  Because worklist items read patient attributes at query time, every pending step of
  the patient shows the change at once. A03 does not cancel pending steps.
* An ADT whose EVN-2 (else MSH-7) is older than the last one applied to the patient is
  acknowledged and not applied, so a late delivery never overwrites newer data.
* A40 merges MRG-1 (prior) into PID-3 (surviving): the prior record's orders move to
  the survivor and the prior record is marked merged. MRG-1 equal to PID-3 is
  AE 205; an unknown MRG-1 is acknowledged as a no-op. A47 (change of identifier,
  HL7 v2.5.1 3.3.47) has the same effect on the worklist and is applied the same way;
  A31 (update person) updates like A08.
"""

from __future__ import annotations

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from broker.domain.types import AdtMessage, PatientRecord
from broker.hl7.errors import ErrorCode, field_error
from broker.models import ImagingOrder, Patient
from broker.services.records import merge_attributes, sync_patient

# Maximum merge chain followed (guards against a cycle written by hand).
_MAX_MERGE_DEPTH = 32


def find_patient(session: Session, patient_id: str, issuer: str) -> Patient | None:
    return session.scalars(
        select(Patient).where(Patient.patient_id == patient_id, Patient.issuer == issuer)
    ).first()


def survivor(session: Session, patient: Patient) -> Patient:
    """Follow merge links to the record that now holds the patient's orders."""
    current = patient
    for _ in range(_MAX_MERGE_DEPTH):
        if current.merged_into_id is None:
            return current
        nxt = session.get(Patient, current.merged_into_id)
        if nxt is None:
            return current
        current = nxt
    return current


def _charset(record: PatientRecord) -> str:
    return "\\".join(record.specific_character_set)


def create_patient(session: Session, record: PatientRecord) -> Patient:
    patient = Patient(
        patient_id=record.patient_id,
        issuer=record.issuer,
        attributes=dict(record.attributes),
        specific_character_set=_charset(record),
    )
    sync_patient(patient)
    session.add(patient)
    session.flush()
    return patient


def update_patient(patient: Patient, record: PatientRecord) -> None:
    patient.attributes = merge_attributes(patient.attributes, record.attributes)
    if record.specific_character_set:
        patient.specific_character_set = _charset(record)
    sync_patient(patient)


def apply_adt(session: Session, message: AdtMessage) -> list[str]:
    """Apply one ADT message; returns outcome lines (internal ids only)."""
    if message.prior_patient is not None or message.event in ("A40", "A47"):
        return _merge(session, message)
    record = message.patient
    patient = find_patient(session, record.patient_id, record.issuer)
    if patient is None:
        patient = create_patient(session, record)
        patient.last_adt_datetime = message.event_datetime
        return [f"patient {patient.id} created ({message.event})"]
    target = survivor(session, patient)
    if target is not patient:
        return [f"patient {patient.id} is merged into {target.id}: {message.event} not applied"]
    if _older(message.event_datetime, patient.last_adt_datetime):
        return [f"patient {patient.id}: {message.event} older than the last update, not applied"]
    update_patient(patient, record)
    patient.last_adt_datetime = message.event_datetime or patient.last_adt_datetime
    return [f"patient {patient.id} updated ({message.event})"]


def _older(event: str, last: str) -> bool:
    """Compare HL7 TS values by their digits (offsets ignored: one sender, one zone)."""
    if not event or not last:
        return False
    a, b = event.split("-")[0].split("+")[0], last.split("-")[0].split("+")[0]
    width = max(len(a), len(b))
    return a.ljust(width, "0") < b.ljust(width, "0")


def _merge(session: Session, message: AdtMessage) -> list[str]:
    if message.prior_patient is None:
        raise field_error(ErrorCode.REQUIRED_FIELD_MISSING, "MRG", 1,
                          "MRG-1 prior patient identifier is required")
    prior_id, prior_issuer = message.prior_patient
    record = message.patient
    if (prior_id, prior_issuer) == (record.patient_id, record.issuer):
        raise field_error(ErrorCode.DUPLICATE_KEY_IDENTIFIER, "MRG", 1,
                          "MRG-1 is the same identifier as PID-3")
    prior = find_patient(session, prior_id, prior_issuer)
    if prior is None:
        return [f"{message.event}: prior patient unknown, nothing to merge"]
    surviving = find_patient(session, record.patient_id, record.issuer)
    if surviving is None:
        surviving = create_patient(session, record)
    else:
        update_patient(surviving, record)
    surviving.last_adt_datetime = message.event_datetime or surviving.last_adt_datetime
    moved = session.execute(
        update(ImagingOrder).where(ImagingOrder.patient_pk == prior.id)
        .values(patient_pk=surviving.id)
        .execution_options(synchronize_session="fetch")
    ).rowcount  # type: ignore[attr-defined]
    prior.merged_into_id = surviving.id
    return [f"patient {prior.id} merged into {surviving.id}; {moved} order(s) moved"]
