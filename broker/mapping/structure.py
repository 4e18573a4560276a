"""Message structure: order groups, the scopes their rules read, station rules and the
procedure catalogue (HL7 v2.3.1 ORM^O01, v2.5.1 OMI^O23, IHE RAD-2/RAD-4).

* ORM^O01: PID, PV1, then one ORC/OBR pair per Scheduled Procedure Step; the ZDS
  segment (Study Instance UID) belongs to the message.
* OMI^O23: PID, PV1, then order groups ORC, TQ1, OBR, NTE, OBX, and one IPC segment per
  Scheduled Procedure Step (an OMI group without IPC: one step from the OBR, with a
  warning).

Each step's scope is its own segments (IPC), then its order group, then the message.
A creating or changing order gets its scheduled start (:mod:`broker.mapping.start`)
and, when the message names no Scheduled Station AE Title, the first matching station
rule (else the profile's default station); the procedure catalogue fills modality,
description and protocol the message left empty.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Any

from broker.domain.types import (
    Attributes,
    OrderMessage,
    ProcedureRecord,
    StepRecord,
)
from broker.hl7.errors import ErrorCode, ErrorLocation, HL7Error, field_error
from broker.hl7.message import Message, Segment
from broker.hl7.warnings import REQUIRED_FIELD, warn
from broker.mapping.converters import CompiledRule, map_level
from broker.mapping.fields import (
    MessageContext,
    Scope,
    first_value,
    layer_of,
)
from broker.mapping.plan import Plan
from broker.mapping.profile import Profile, Station
from broker.mapping.start import ensure_start

STRUCTURES = {"ORM": "ORM", "OMG": "ORM", "OMI": "OMI", "ADT": "ADT"}


CREATING = {"NW", "SN"}


@dataclass
class GroupSplit:
    message_layer: dict[str, list[Segment]]
    groups: list[list[Segment]] = field(default_factory=list)


def split_groups(msg: Message) -> GroupSplit:
    head: list[Segment] = []
    groups: list[list[Segment]] = []
    for seg in msg.segments:
        if seg.name == "ORC":
            groups.append([seg])
        elif seg.name.startswith("Z") or not groups:
            head.append(seg)
        else:
            groups[-1].append(seg)
    return GroupSplit(layer_of(head), groups)


def _station_for(plan: Plan, msg: Message, attrs: Attributes, proc: Attributes,
                 scope: Scope) -> tuple[Station | None, str]:
    modality = str(attrs.get("Modality", ""))
    codes = [_first_code(proc.get("RequestedProcedureCodeSequence")),
             _first_code(attrs.get("ScheduledProtocolCodeSequence"))]
    obr = scope.first("OBR")
    if obr is not None:
        codes.append(first_value(obr, 4))
    location = first_value(scope.first("PV1"), 3)
    facts = {"modality": [modality], "procedure_code": [c for c in codes if c],
             "location": [location], "sending_application": [msg.msh.get(3)],
             "sending_facility": [msg.msh.get(4)]}
    for rule, conditions in plan.stations:
        if all(any(fnmatch.fnmatchcase(v, pattern) for v in facts[key])
               for key, pattern in conditions):
            return rule, rule.name
    if plan.profile.default_station is not None:
        return plan.profile.default_station, "default"
    return None, ""


def _first_code(value: Any) -> str:
    if isinstance(value, list) and value and isinstance(value[0], dict):
        return str(value[0].get("CodeValue", ""))
    return ""


def _apply_catalog(profile: Profile, proc: Attributes, step: Attributes) -> None:
    for code in (_first_code(step.get("ScheduledProtocolCodeSequence")),
                 _first_code(proc.get("RequestedProcedureCodeSequence"))):
        entry = profile.procedures.get(code) if code else None
        if entry is None:
            continue
        if entry.modality and not step.get("Modality"):
            step["Modality"] = entry.modality
        if entry.description and not proc.get("RequestedProcedureDescription"):
            proc["RequestedProcedureDescription"] = entry.description
        if entry.protocol and not step.get("ScheduledProtocolCodeSequence"):
            step["ScheduledProtocolCodeSequence"] = [
                {"CodeValue": c.code, "CodingSchemeDesignator": c.scheme,
                 "CodeMeaning": c.meaning} for c in entry.protocol]


def map_group(msg: Message, plan: Plan, structure: str, base: MessageContext,
               split: GroupSplit, group: list[Segment], g: int, order: OrderMessage) -> None:
    profile = plan.profile
    group_layer = layer_of(group)
    orc = group[0]
    control, status = orc.get(1).upper(), orc.get(5).upper()
    ipcs = group_layer.pop("IPC", []) if structure == "OMI" else []
    steps = [({"IPC": [ipc]}, f"{g}.{j}") for j, ipc in enumerate(ipcs, start=1)]
    obr = group_layer.get("OBR", [None])[0]
    if not steps and structure == "OMI":
        if obr is None:
            raise HL7Error(ErrorCode.SEGMENT_SEQUENCE_ERROR,
                           "each OMI order group needs an IPC segment", ErrorLocation("IPC"))
        # An OMI without IPC carries the order like an ORM: one step from the OBR, the
        # ids IPC would have given generated as for an ORM that lacks them.
        warn(REQUIRED_FIELD, "OMI order group without IPC: one step from the OBR, "
             "accession and step ids generated where missing", ErrorLocation("IPC", sequence=g))
    if not steps:
        if obr is None:
            raise HL7Error(ErrorCode.SEGMENT_SEQUENCE_ERROR, "each ORC needs an OBR segment",
                           ErrorLocation("OBR", sequence=g))
        steps = [({}, obr.get(1) or str(g))]
    shared: dict[CompiledRule, Any] | None = {} if len(steps) > 1 else None
    for step_layer, step_key in steps:
        scope = Scope([step_layer, group_layer, split.message_layer], msg)
        proc = map_level(plan.rules(structure, "procedure"), scope, base, shared)
        attrs = map_level(plan.rules(structure, "step"), scope, base, shared)
        _apply_catalog(profile, proc, attrs)
        record = StepRecord(control, status, step_key, attrs)
        if control in CREATING or control == "XO":
            ensure_start(attrs, profile, base, g, required=control in CREATING)
            if not attrs.get("ScheduledStationAETitle"):
                station, rule_name = _station_for(plan, msg, attrs, proc, scope)
                if station is None:
                    if control in CREATING:
                        raise field_error(ErrorCode.TABLE_VALUE_NOT_FOUND,
                                          "IPC" if structure == "OMI" else "OBR",
                                          5 if structure == "OMI" else 24,
                                          "no station rule or default station for this step",
                                          sequence=g)
                else:
                    attrs["ScheduledStationAETitle"] = station.ae_titles
                    if station.station_name and not attrs.get("ScheduledStationName"):
                        attrs["ScheduledStationName"] = station.station_name
                    if station.location and not attrs.get("ScheduledProcedureStepLocation"):
                        attrs["ScheduledProcedureStepLocation"] = station.location
                    record.station_rule = rule_name
            else:
                record.station_rule = "message"
        date, time = attrs.get("ScheduledProcedureStepStartDate"), attrs.get(
            "ScheduledProcedureStepStartTime")
        if date and time:
            record.start_datetime = f"{date}{time}"
        obr = scope.first("OBR")
        placer = first_value(orc, 2) or first_value(obr, 2)
        filler = first_value(orc, 3) or first_value(obr, 3)
        _check_entity_identifiers(orc, g)
        key = (placer, filler, proc.get("RequestedProcedureID", ""),
               proc.get("AccessionNumber", ""))
        last = order.procedures[-1] if order.procedures else None
        if last is not None and (last.placer_order_number, last.filler_order_number,
                                 last.attributes.get("RequestedProcedureID", ""),
                                 last.attributes.get("AccessionNumber", "")) == key:
            last.steps.append(record)
        else:
            order.procedures.append(ProcedureRecord(
                placer, first_value(orc, 2, 2), filler, first_value(orc, 3, 2), proc, [record]))


def _check_entity_identifiers(orc: Segment, g: int) -> None:
    """Placer/filler order numbers and their namespace ids are LO (64) in DICOM: a
    longer one is refused (AE 102), never cut."""
    for number in (2, 3):
        for component in (1, 2):
            if len(first_value(orc, number, component)) > 64:
                raise field_error(ErrorCode.DATA_TYPE_ERROR, "ORC", number,
                                  f"ORC-{number}.{component} is longer than 64 characters",
                                  component=component, sequence=g)
