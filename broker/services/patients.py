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

from typing import Any

from sqlalchemy import Connection, bindparam, select, update

from broker.domain.types import AdtMessage, PatientRecord
from broker.hl7.errors import ErrorCode, field_error
from broker.models import ImagingOrder, Patient
from broker.services.records import merge_attributes, patient_columns
from broker.services.rows import changed, inserting, table, update_rows

PATIENTS = table(Patient)
ORDERS = table(ImagingOrder)

# Maximum merge chain followed (guards against a cycle written by hand).
_MAX_MERGE_DEPTH = 32

# What an ADT message reads of a patient row, and may change of it.
_COLUMNS = ("id", "merged_into_id", "last_adt_datetime", "specific_character_set",
            "attributes", *patient_columns({}))
_FINDING = select(*[PATIENTS.c[name] for name in _COLUMNS]).where(
    PATIENTS.c.patient_id == bindparam("patient_id"), PATIENTS.c.issuer == bindparam("issuer"))
_FOLLOWING = select(PATIENTS.c.merged_into_id).where(PATIENTS.c.id == bindparam("pk"))
_CREATING = inserting(PATIENTS).returning(PATIENTS.c.id)
_MOVING_ORDERS = update(ORDERS).where(ORDERS.c.patient_pk == bindparam("prior")).values(
    patient_pk=bindparam("surviving"))


def find_patient(connection: Connection, patient_id: str, issuer: str
                 ) -> dict[str, Any] | None:
    """The patient row (the columns an ADT message works with), None when unknown."""
    row = connection.execute(_FINDING, {"patient_id": patient_id, "issuer": issuer}
                             ).mappings().first()
    return None if row is None else dict(row)


def survivor(connection: Connection, patient_pk: int, merged_into: int | None) -> int:
    """Follow merge links to the record that now holds the patient's orders."""
    current, following = patient_pk, merged_into
    for _ in range(_MAX_MERGE_DEPTH):
        if following is None:
            return current
        link = connection.execute(_FOLLOWING, {"pk": following}).first()
        if link is None:
            return current
        current, following = following, link[0]
    return current


def _charset(record: PatientRecord) -> str:
    return "\\".join(record.specific_character_set)


def patient_values(record: PatientRecord, *, last_adt_datetime: str = "") -> dict[str, Any]:
    """The columns of a new patient row for ``record`` (its key aside)."""
    attributes = dict(record.attributes)
    return {
        "patient_id": record.patient_id, "issuer": record.issuer, "attributes": attributes,
        "specific_character_set": _charset(record), "last_adt_datetime": last_adt_datetime,
        **patient_columns(attributes)}


def create_patient(connection: Connection, record: PatientRecord, *,
                   last_adt_datetime: str = "") -> int:
    """Insert the patient the record describes; returns its primary key."""
    return connection.execute(_CREATING, patient_values(
        record, last_adt_datetime=last_adt_datetime)).scalar_one()


def _update_patient(connection: Connection, patient: dict[str, Any], record: PatientRecord,
                    event_datetime: str) -> None:
    attributes = merge_attributes(patient["attributes"], record.attributes)
    values = {"attributes": attributes, **patient_columns(attributes),
              "last_adt_datetime": event_datetime or patient["last_adt_datetime"]}
    if record.specific_character_set:
        values["specific_character_set"] = _charset(record)
    update_rows(connection, PATIENTS, [(patient["id"], changed(patient, values))])


def apply_adt(connection: Connection, message: AdtMessage) -> list[str]:
    """Apply one ADT message; returns outcome lines (internal ids only)."""
    if message.prior_patient is not None or message.event in ("A40", "A47"):
        return _merge(connection, message)
    record = message.patient
    patient = find_patient(connection, record.patient_id, record.issuer)
    if patient is None:
        created = create_patient(connection, record, last_adt_datetime=message.event_datetime)
        return [f"patient {created} created ({message.event})"]
    pk = patient["id"]
    target = survivor(connection, pk, patient["merged_into_id"])
    if target != pk:
        return [f"patient {pk} is merged into {target}: {message.event} not applied"]
    if _older(message.event_datetime, patient["last_adt_datetime"]):
        return [f"patient {pk}: {message.event} older than the last update, not applied"]
    _update_patient(connection, patient, record, message.event_datetime)
    return [f"patient {pk} updated ({message.event})"]


def _older(event: str, last: str) -> bool:
    """Compare HL7 TS values by their digits (offsets ignored: one sender, one zone)."""
    if not event or not last:
        return False
    a, b = event.split("-")[0].split("+")[0], last.split("-")[0].split("+")[0]
    width = max(len(a), len(b))
    return a.ljust(width, "0") < b.ljust(width, "0")


def _merge(connection: Connection, message: AdtMessage) -> list[str]:
    if message.prior_patient is None:
        raise field_error(ErrorCode.REQUIRED_FIELD_MISSING, "MRG", 1,
                          "MRG-1 prior patient identifier is required")
    prior_id, prior_issuer = message.prior_patient
    record = message.patient
    if (prior_id, prior_issuer) == (record.patient_id, record.issuer):
        raise field_error(ErrorCode.DUPLICATE_KEY_IDENTIFIER, "MRG", 1,
                          "MRG-1 is the same identifier as PID-3")
    prior = find_patient(connection, prior_id, prior_issuer)
    if prior is None:
        return [f"{message.event}: prior patient unknown, nothing to merge"]
    surviving = find_patient(connection, record.patient_id, record.issuer)
    if surviving is None:
        surviving_pk = create_patient(connection, record,
                                      last_adt_datetime=message.event_datetime)
    else:
        surviving_pk = surviving["id"]
        _update_patient(connection, surviving, record, message.event_datetime)
    moved = connection.execute(_MOVING_ORDERS, {"prior": prior["id"],
                                                "surviving": surviving_pk}).rowcount
    link = changed(prior, {"merged_into_id": surviving_pk})
    update_rows(connection, PATIENTS, [(prior["id"], link)])
    return [f"patient {prior['id']} merged into {surviving_pk}; {moved} order(s) moved"]
