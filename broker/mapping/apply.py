"""Apply a mapping profile to a parsed HL7 message (IHE RAD TF-2x Appendix B, HL7 order
mapping to DICOM MWL): :func:`map_message` and :func:`render_items`.

The work is split by job: :mod:`broker.mapping.fields` reads fields,
:mod:`broker.mapping.converters` holds the converter registry and evaluates the rules,
:mod:`broker.mapping.start` resolves the scheduled start, :mod:`broker.mapping.structure`
walks the order groups (scopes, station rules, catalogue). This module maps the
patient (PID, HL7 v2.5.1 3.4.2) and ADT events, and puts the order together.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from broker.domain.types import (
    AdtMessage,
    Attributes,
    OrderMessage,
    PatientRecord,
)
from broker.hl7.errors import ErrorCode, ErrorLocation, HL7Error, field_error
from broker.hl7.message import NULL, Message
from broker.hl7.warnings import DATA_TYPE, warn
from broker.mapping import conversions as conv
from broker.mapping.converters import hd_item, map_level
from broker.mapping.fields import (
    MessageContext,
    Scope,
    first_value,
    layer_of,
    locating,
    sub_value,
)
from broker.mapping.plan import Plan, plan_for
from broker.mapping.profile import Profile, ProfileSet
from broker.mapping.structure import STRUCTURES, map_group, split_groups

# ADT events that move a patient's orders from MRG-1 to PID-3: A40 merge, A47 change
# of identifier (HL7 v2.5.1 3.3.40, 3.3.47).
MOVING_EVENTS = frozenset({"A40", "A47"})


def _patient(msg: Message, plan: Plan, scope: Scope,
             base: MessageContext) -> PatientRecord:
    profile = plan.profile
    pid = msg.segment("PID")
    if pid is None:
        raise HL7Error(ErrorCode.SEGMENT_SEQUENCE_ERROR, "PID segment is required",
                       ErrorLocation("PID"))
    reps = pid.repetitions(3)
    chosen = 0
    if profile.preferred_patient_authority:
        for i in range(len(reps)):
            if sub_value(pid, 3, 4, 1, i) == profile.preferred_patient_authority:
                chosen = i
                break
    patient_id = first_value(pid, 3, 1, chosen) if reps else ""
    if not patient_id or patient_id == NULL:
        raise field_error(ErrorCode.REQUIRED_FIELD_MISSING, "PID", 3,
                          "PID-3 patient identifier is required")
    id_parts = pid.parts(3, chosen)[0]
    if sum(1 for p in id_parts if p.strip()) > 1:
        warn(DATA_TYPE, "PatientID: only the first sub-component of CX.1 was used",
             ErrorLocation("PID", 3, 1))
    try:
        conv.identifier(patient_id, max_length=64, keyword="PatientID")
    except HL7Error as exc:
        exc.location = ErrorLocation("PID", 3)
        raise
    issuer = sub_value(pid, 3, 4, 1, chosen)
    attributes = map_level(plan.rules(base.structure, "patient"), scope, base)
    attributes["PatientID"] = patient_id
    if issuer:
        with locating(ErrorLocation("PID", 3, 4)):
            attributes["IssuerOfPatientID"] = conv.text(issuer, max_length=64,
                                                        keyword="IssuerOfPatientID")
            qualifiers = hd_item("", sub_value(pid, 3, 4, 2, chosen),
                                 sub_value(pid, 3, 4, 3, chosen))
            if first_value(pid, 3, 5, chosen):
                qualifiers["IdentifierTypeCode"] = conv.text(
                    first_value(pid, 3, 5, chosen), max_length=16, keyword="IdentifierTypeCode")
        if qualifiers:
            attributes["IssuerOfPatientIDQualifiersSequence"] = [qualifiers]
    others = [
        {"PatientID": first_value(pid, 3, 1, i),
         "IssuerOfPatientID": sub_value(pid, 3, 4, 1, i), "TypeOfPatientID": "TEXT"}
        for i in range(len(reps)) if i != chosen and first_value(pid, 3, 1, i)
    ]
    if others:
        attributes["OtherPatientIDsSequence"] = others
    charset = msg.charset.dicom
    if not charset and _has_non_ascii(attributes):
        charset = ("ISO_IR 100",)  # undeclared 8-bit text was read as Latin-1
    return PatientRecord(patient_id, issuer, attributes, charset)


def _has_non_ascii(value: Any) -> bool:
    if isinstance(value, str):
        return not value.isascii()
    if isinstance(value, dict):
        return any(_has_non_ascii(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_non_ascii(v) for v in value)
    return False


def map_message(msg: Message, profiles: ProfileSet, *, timezone: str,
                received_at: datetime | None = None) -> OrderMessage | AdtMessage:
    """Map one parsed message with the profile that serves its sender.

    ``received_at`` is when the broker received the message (the stored row's time):
    an order without a scheduled start is scheduled then under the profile's
    ``missing_start: receipt``. None (a dry run) means now.
    """
    structure = STRUCTURES.get(msg.message_code.upper())
    if structure is None:
        raise field_error(ErrorCode.UNSUPPORTED_MESSAGE_TYPE, "MSH", 9,
                          f"message type {msg.message_code} is not mapped")
    profile = profiles.select(msg.msh.get(3), msg.msh.get(4))
    zone = profile.timezone or timezone
    v25 = msg.version_at_least("2.5")
    split = split_groups(msg)
    base = MessageContext(zone, v25, structure, received_at or datetime.now(UTC))
    first_group = layer_of(split.groups[0]) if split.groups else {}
    patient_scope = Scope([first_group, split.message_layer], msg)
    plan = plan_for(profiles, profile)
    patient = _patient(msg, plan, patient_scope, base)
    if structure == "ADT":
        return _adt(msg, profile, patient)
    if not split.groups:
        raise HL7Error(ErrorCode.SEGMENT_SEQUENCE_ERROR, "an order needs an ORC segment",
                       ErrorLocation("ORC"))
    order = OrderMessage(profile=profile.name, patient=patient,
                         workitems=profile.workitem_selection)
    for g, group in enumerate(split.groups, start=1):
        map_group(msg, plan, structure, base, split, group, g, order)
    return order


def _adt(msg: Message, profile: Profile, patient: PatientRecord) -> AdtMessage:
    event = msg.trigger_event.upper()
    when = first_value(msg.segment("EVN"), 2) or first_value(msg.msh, 7)
    prior = None
    mrg = msg.segment("MRG")
    if event in MOVING_EVENTS:
        if mrg is None or not first_value(mrg, 1):
            raise field_error(ErrorCode.REQUIRED_FIELD_MISSING, "MRG", 1,
                              "MRG-1 prior patient identifier is required")
        prior = (first_value(mrg, 1), sub_value(mrg, 1, 4, 1))
    return AdtMessage(profile.name, event, when, patient, prior)


def render_items(order: OrderMessage) -> list[Attributes]:
    """One flat keyword dict per step: patient ∪ procedure ∪ {SPS Sequence: [step]}."""
    items = []
    for procedure in order.procedures:
        for step in procedure.steps:
            item = {**order.patient.attributes, **procedure.attributes}
            item["ScheduledProcedureStepSequence"] = [step.attributes]
            items.append(item)
    return items
