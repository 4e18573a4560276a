"""Apply a mapping profile to a parsed HL7 message (conformance checklist section 10).

Message structure (HL7 v2.3.1 ORM^O01, v2.5.1 OMI^O23, IHE RAD-2/RAD-4):

* ORM^O01: PID, PV1, then one ORC/OBR pair per Scheduled Procedure Step; the ZDS
  segment (Study Instance UID) belongs to the message.
* OMI^O23: PID, PV1, then order groups ORC, TQ1, OBR, NTE, OBX, and one IPC segment per
  Scheduled Procedure Step.

A rule's source path is looked up in the step's own segments first (IPC), then its
order group (ORC, TQ1, OBR, NTE, OBX), then the message (MSH, PID, PV1, AL1, Z...).
Converter errors are raised with the location of the field they came from.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path as FilePath
from typing import Any

from broker.domain.types import (
    AdtMessage,
    Attributes,
    OrderMessage,
    PatientRecord,
    ProcedureRecord,
    StepRecord,
)
from broker.hl7.client import read_hl7_file
from broker.hl7.errors import ErrorCode, ErrorLocation, HL7Error, field_error
from broker.hl7.message import NULL, Message, Path, Segment, parse
from broker.mapping import conversions as conv
from broker.mapping.profile import Profile, ProfileSet, Rule, Station

STRUCTURES = {"ORM": "ORM", "OMI": "OMI", "ADT": "ADT"}
CREATING = {"NW", "SN"}


@dataclass
class Scope:
    """The segments a rule may read, nearest layer first."""

    layers: list[dict[str, list[Segment]]]
    message: Message

    def all(self, name: str) -> list[Segment]:
        for layer in self.layers:
            if name in layer:
                return layer[name]
        return []

    def first(self, name: str) -> Segment | None:
        found = self.all(name)
        return found[0] if found else None

    def everywhere(self, name: str) -> list[Segment]:
        return [s for layer in self.layers for s in layer.get(name, [])]


@dataclass(frozen=True)
class MessageContext:
    """What every rule of one message is evaluated with."""

    zone: str
    v25: bool
    structure: str


@dataclass(frozen=True)
class Context(MessageContext):
    """A message context plus the rule being evaluated."""

    rule: Rule


def _layer(segments: list[Segment]) -> dict[str, list[Segment]]:
    out: dict[str, list[Segment]] = {}
    for seg in segments:
        out.setdefault(seg.name, []).append(seg)
    return out


def _raw(scope: Scope, path: Path) -> str | None:
    seg = scope.first(path.segment)
    if seg is None:
        return None
    return seg.get(path.field, path.component, path.subcomponent)


def _scalar(fn: Callable[[str, Context], Any]) -> Callable[[Scope, Path, Context], Any]:
    """A converter of one string value: empty -> None, ``""`` -> ""."""

    def convert(scope: Scope, path: Path, ctx: Context) -> Any:
        raw = _raw(scope, path)
        if not raw:
            return None
        if raw == NULL:
            return ""
        return fn(raw, ctx)

    return convert


def _limit(ctx: Context, default: int) -> int:
    return ctx.rule.max_length or default


def _components(scope: Scope, path: Path, rep: int = 0) -> list[str] | None:
    seg = scope.first(path.segment)
    if seg is None:
        return None
    comps = seg.components(path.field, rep)
    return comps or None


def _person_name(scope: Scope, path: Path, ctx: Context) -> Any:
    seg = scope.first(path.segment)
    if seg is None:
        return None
    reps = seg.repetitions(path.field)
    if not reps or not any(reps):
        return None
    if reps == [NULL]:
        return ""
    return conv.person_name([seg.components(path.field, i) for i in range(len(reps))],
                            v25=ctx.v25)


def _xcn_name(scope: Scope, path: Path, ctx: Context) -> Any:
    comps = _components(scope, path)
    if not comps or not any(comps):
        return None
    return "" if comps == [NULL] else conv.xcn_name(comps)


def _code(scope: Scope, path: Path, ctx: Context) -> Any:
    comps = _components(scope, path)
    if not comps or not any(comps):
        return None
    # Which components hold value, scheme and meaning: CE 1/3/2, or the alternate
    # identifier 4/6/5 (OBR-4 protocol in ORM); may differ per message structure.
    order = ctx.rule.params.get("components", [1, 3, 2])
    if isinstance(order, dict):
        order = order.get(ctx.structure, [1, 3, 2])
    padded = [*comps, *[""] * 9]
    value, scheme, meaning = (padded[i - 1] for i in order)
    item = conv.code_item(value, meaning, scheme, keyword=ctx.rule.attribute)
    return [item] if item else None


def _coded_text(scope: Scope, path: Path, ctx: Context) -> Any:
    comps = _components(scope, path)
    if not comps or not any(comps):
        return None
    chosen = comps[1] if len(comps) > 1 and comps[1] else comps[0]
    return conv.text(chosen, max_length=_limit(ctx, 64), keyword=ctx.rule.attribute)


def _formatted_text(scope: Scope, path: Path, ctx: Context) -> Any:
    parts = [s.get(path.field) for s in scope.all(path.segment)]
    parts = [p for p in parts if p and p != NULL]
    if not parts:
        return None
    return conv.long_text("\r\n".join(parts), max_length=_limit(ctx, 10240),
                          keyword=ctx.rule.attribute)


def _quantity(scope: Scope, path: Path, ctx: Context) -> Any:
    codes = set(ctx.rule.params.get("codes", []))
    table = conv.HEIGHT_TO_M if ctx.rule.params.get("kind") == "height" else conv.WEIGHT_TO_KG
    for obx in scope.everywhere("OBX"):
        if obx.get(3, 1) in codes and obx.get(5):
            return conv.quantity(obx.get(5), obx.get(6, 1), table, keyword=ctx.rule.attribute)
    return None


def _allergies(scope: Scope, path: Path, ctx: Context) -> Any:
    values = []
    for seg in scope.everywhere(path.segment):
        comps = seg.components(path.field)
        chosen = (comps[1] if len(comps) > 1 and comps[1] else comps[0]) if comps else ""
        if chosen and chosen != NULL:
            values.append(conv.text(chosen, max_length=64, keyword=ctx.rule.attribute))
    return values or None


def _pregnancy(scope: Scope, path: Path, ctx: Context) -> Any:
    seg = scope.first(path.segment)
    if seg is None:
        return None
    codes = {r.upper() for r in seg.repetitions(path.field)}
    return 3 if "B6" in codes else None


def _location(scope: Scope, path: Path, ctx: Context) -> Any:
    comps = _components(scope, path)
    if not comps or not any(comps):
        return None
    if comps == [NULL]:
        return ""
    joined = "^".join(c.split("&")[0] for c in comps[:3]).rstrip("^")
    return conv.text(joined, max_length=_limit(ctx, 64), keyword=ctx.rule.attribute)


def _issuer_sequence(scope: Scope, path: Path, ctx: Context) -> Any:
    raw = _raw(scope, path)
    if not raw or raw == NULL:
        return None
    subs = [*raw.split("&"), "", ""]
    return [_hd_item(subs[0], subs[1], subs[2])]


def _hd_issuer_sequence(scope: Scope, path: Path, ctx: Context) -> Any:
    comps = _components(scope, path)
    if not comps or len(comps) < 2 or not any(comps[1:4]):
        return None
    padded = [*comps, "", "", ""]
    return [_hd_item(padded[1], padded[2], padded[3])]


def _hd_item(namespace: str, universal: str, universal_type: str) -> Attributes:
    item: Attributes = {}
    if namespace:
        item["LocalNamespaceEntityID"] = conv.text(namespace, max_length=64)
    if universal:
        item["UniversalEntityID"] = conv.text(universal, max_length=64)
        item["UniversalEntityIDType"] = universal_type or "ISO"
    return item


CONVERTERS: dict[str, Callable[[Scope, Path, Context], Any]] = {
    "text": _scalar(lambda v, c: conv.text(v, max_length=_limit(c, 64),
                                           keyword=c.rule.attribute)),
    "long_text": _scalar(lambda v, c: conv.long_text(v, max_length=_limit(c, 10240),
                                                     keyword=c.rule.attribute)),
    "formatted_text": _formatted_text,
    "identifier": _scalar(lambda v, c: conv.identifier(v, max_length=_limit(c, 16),
                                                       keyword=c.rule.attribute)),
    "ae_title": _scalar(lambda v, c: conv.identifier(v, max_length=16,
                                                     keyword=c.rule.attribute)),
    "uid": _scalar(lambda v, c: conv.uid(v, keyword=c.rule.attribute)),
    "person_name": _person_name,
    "xcn_name": _xcn_name,
    "cn_name": _scalar(lambda v, c: conv.cn_subcomponents(v)),
    "date": _scalar(lambda v, c: conv.date(v, c.zone, keyword=c.rule.attribute)),
    "time": _scalar(lambda v, c: conv.time(v, c.zone, keyword=c.rule.attribute)),
    "birth_date": _scalar(lambda v, c: conv.birth_date(v)),
    "priority": _scalar(lambda v, c: conv.priority(v)),
    "sex": _scalar(lambda v, c: conv.sex(v)),
    "code": _code,
    "coded_text": _coded_text,
    "quantity": _quantity,
    "allergies": _allergies,
    "pregnancy": _pregnancy,
    "location": _location,
    "issuer_sequence": _issuer_sequence,
    "hd_issuer_sequence": _hd_issuer_sequence,
}


def _sequence_of(scope: Scope, seg_name: str) -> int:
    seg = scope.first(seg_name)
    if seg is None:
        return 1
    same = scope.message.all(seg_name)
    return next((i + 1 for i, s in enumerate(same) if s is seg), 1)


def _evaluate(rule: Rule, scope: Scope, ctx: Context) -> Any:
    for text_path in rule.sources_for(ctx.structure):
        path = Path.parse(text_path)
        try:
            value = CONVERTERS[rule.convert](scope, path, ctx)
        except HL7Error as exc:
            if exc.location is None:
                exc.location = ErrorLocation(path.segment, path.field, path.component,
                                             _sequence_of(scope, path.segment))
            raise
        if value is not None:
            return value
    return None


def _attributes(profile: Profile, level: str, scope: Scope, base: MessageContext) -> Attributes:
    out: Attributes = {}
    for rule in profile.rules:
        if rule.level != level:
            continue
        ctx = Context(base.zone, base.v25, base.structure, rule)
        value = _evaluate(rule, scope, ctx)
        if value is not None:
            out[rule.attribute] = value
    return out


@dataclass
class _Split:
    message_layer: dict[str, list[Segment]]
    groups: list[list[Segment]] = field(default_factory=list)


def _split(msg: Message) -> _Split:
    head: list[Segment] = []
    groups: list[list[Segment]] = []
    for seg in msg.segments:
        if seg.name == "ORC":
            groups.append([seg])
        elif seg.name.startswith("Z") or not groups:
            head.append(seg)
        else:
            groups[-1].append(seg)
    return _Split(_layer(head), groups)


def _patient(msg: Message, profile: Profile, scope: Scope,
             base: MessageContext) -> PatientRecord:
    pid = msg.segment("PID")
    if pid is None:
        raise HL7Error(ErrorCode.SEGMENT_SEQUENCE_ERROR, "PID segment is required",
                       ErrorLocation("PID"))
    reps = pid.repetitions(3)
    chosen = 0
    if profile.preferred_patient_authority:
        for i in range(len(reps)):
            if pid.get(3, 4, 1, repetition=i) == profile.preferred_patient_authority:
                chosen = i
                break
    patient_id = pid.get(3, 1, repetition=chosen) if reps else ""
    if not patient_id or patient_id == NULL:
        raise field_error(ErrorCode.REQUIRED_FIELD_MISSING, "PID", 3,
                          "PID-3 patient identifier is required")
    try:
        conv.identifier(patient_id, max_length=64, keyword="PatientID")
    except HL7Error as exc:
        exc.location = ErrorLocation("PID", 3)
        raise
    issuer = pid.get(3, 4, 1, repetition=chosen)
    attributes = _attributes(profile, "patient", scope, base)
    attributes["PatientID"] = patient_id
    if issuer:
        attributes["IssuerOfPatientID"] = conv.text(issuer, max_length=64)
        qualifiers = _hd_item("", pid.get(3, 4, 2, repetition=chosen),
                              pid.get(3, 4, 3, repetition=chosen))
        if pid.get(3, 5, repetition=chosen):
            qualifiers["IdentifierTypeCode"] = conv.text(pid.get(3, 5, repetition=chosen),
                                                         max_length=16)
        if qualifiers:
            attributes["IssuerOfPatientIDQualifiersSequence"] = [qualifiers]
    others = [
        {"PatientID": pid.get(3, 1, repetition=i),
         "IssuerOfPatientID": pid.get(3, 4, 1, repetition=i), "TypeOfPatientID": "TEXT"}
        for i in range(len(reps)) if i != chosen and pid.get(3, 1, repetition=i)
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


def _station_for(profile: Profile, msg: Message, attrs: Attributes, proc: Attributes,
                 scope: Scope) -> tuple[Station | None, str]:
    modality = str(attrs.get("Modality", ""))
    codes = [_first_code(proc.get("RequestedProcedureCodeSequence")),
             _first_code(attrs.get("ScheduledProtocolCodeSequence"))]
    obr = scope.first("OBR")
    if obr is not None:
        codes.append(obr.get(4, 1))
    pv1 = scope.first("PV1")
    location = pv1.get(3, 1) if pv1 is not None else ""
    facts = {"modality": [modality], "procedure_code": [c for c in codes if c],
             "location": [location], "sending_application": [msg.msh.get(3)],
             "sending_facility": [msg.msh.get(4)]}
    for rule in profile.stations:
        conditions = rule.when.model_dump(exclude_none=True)
        if all(any(fnmatch.fnmatchcase(v, pattern) for v in facts[key])
               for key, pattern in conditions.items()):
            return rule, rule.name
    if profile.default_station is not None:
        return profile.default_station, "default"
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


def map_message(msg: Message, profiles: ProfileSet, *, timezone: str) -> OrderMessage | AdtMessage:
    """Map one parsed message with the profile that serves its sender."""
    structure = STRUCTURES.get(msg.message_code.upper())
    if structure is None:
        raise field_error(ErrorCode.UNSUPPORTED_MESSAGE_TYPE, "MSH", 9,
                          f"message type {msg.message_code} is not mapped")
    profile = profiles.select(msg.msh.get(3), msg.msh.get(4))
    zone = profile.timezone or timezone
    v25 = msg.version_at_least("2.5")
    split = _split(msg)
    base = MessageContext(zone, v25, structure)
    first_group = _layer(split.groups[0]) if split.groups else {}
    patient_scope = Scope([first_group, split.message_layer], msg)
    patient = _patient(msg, profile, patient_scope, base)
    if structure == "ADT":
        return _adt(msg, profile, patient)
    if not split.groups:
        raise HL7Error(ErrorCode.SEGMENT_SEQUENCE_ERROR, "an order needs an ORC segment",
                       ErrorLocation("ORC"))
    order = OrderMessage(profile=profile.name, patient=patient)
    for g, group in enumerate(split.groups, start=1):
        _map_group(msg, profile, structure, base, split, group, g, order)
    return order


def _map_group(msg: Message, profile: Profile, structure: str, base: MessageContext,
               split: _Split, group: list[Segment], g: int, order: OrderMessage) -> None:
    group_layer = _layer(group)
    orc = group[0]
    control, status = orc.get(1).upper(), orc.get(5).upper()
    if structure == "OMI":
        ipcs = group_layer.pop("IPC", [])
        if not ipcs:
            raise HL7Error(ErrorCode.SEGMENT_SEQUENCE_ERROR,
                           "each OMI order group needs an IPC segment", ErrorLocation("IPC"))
        steps = [({"IPC": [ipc]}, f"{g}.{j}") for j, ipc in enumerate(ipcs, start=1)]
    else:
        obr = group_layer.get("OBR", [None])[0]
        if obr is None:
            raise HL7Error(ErrorCode.SEGMENT_SEQUENCE_ERROR, "each ORC needs an OBR segment",
                           ErrorLocation("OBR", sequence=g))
        steps = [({}, obr.get(1) or str(g))]
    for step_layer, step_key in steps:
        scope = Scope([step_layer, group_layer, split.message_layer], msg)
        proc = _attributes(profile, "procedure", scope, base)
        attrs = _attributes(profile, "step", scope, base)
        _apply_catalog(profile, proc, attrs)
        record = StepRecord(control, status, step_key, attrs)
        if control in CREATING or control == "XO":
            _check_start(attrs, structure, g, required=control in CREATING)
            if not attrs.get("ScheduledStationAETitle"):
                station, rule_name = _station_for(profile, msg, attrs, proc, scope)
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
        placer = orc.get(2, 1) or (obr.get(2, 1) if obr is not None else "")
        filler = orc.get(3, 1) or (obr.get(3, 1) if obr is not None else "")
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
                placer, orc.get(2, 2), filler, orc.get(3, 2), proc, [record]))


def _check_entity_identifiers(orc: Segment, g: int) -> None:
    """D4: placer/filler order numbers and their namespace ids are LO (64) in DICOM."""
    for number in (2, 3):
        for component in (1, 2):
            if len(orc.get(number, component)) > 64:
                raise field_error(ErrorCode.DATA_TYPE_ERROR, "ORC", number,
                                  f"ORC-{number}.{component} is longer than 64 characters",
                                  component=component, sequence=g)


def _check_start(attrs: Attributes, structure: str, g: int, *, required: bool) -> None:
    if required and not (attrs.get("ScheduledProcedureStepStartDate")
                         and attrs.get("ScheduledProcedureStepStartTime")):
        segment, number = ("TQ1", 7) if structure == "OMI" else ("ORC", 7)
        raise field_error(ErrorCode.REQUIRED_FIELD_MISSING, segment, number,
                          "scheduled start date and time are required", sequence=g)


def _adt(msg: Message, profile: Profile, patient: PatientRecord) -> AdtMessage:
    event = msg.trigger_event.upper()
    when = msg.get("EVN-2.1") or msg.msh.get(7, 1)
    prior = None
    mrg = msg.segment("MRG")
    if event == "A40":
        if mrg is None or not mrg.get(1, 1):
            raise field_error(ErrorCode.REQUIRED_FIELD_MISSING, "MRG", 1,
                              "MRG-1 prior patient identifier is required")
        prior = (mrg.get(1, 1), mrg.get(1, 4, 1))
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


def _show(value: Any, indent: str) -> list[str]:
    if isinstance(value, list) and value and isinstance(value[0], dict):
        lines = []
        for n, item in enumerate(value, start=1):
            lines.append(f"{indent}item {n}:")
            for key, sub in item.items():
                shown = _show(sub, indent + "    ")
                if len(shown) == 1 and not shown[0].startswith(indent + "    item"):
                    lines.append(f"{indent}  {key}: {shown[0].strip()}")
                else:
                    lines.append(f"{indent}  {key}:")
                    lines += shown
        return lines
    if isinstance(value, list):
        return [indent + "\\".join(str(v) for v in value)]
    return [indent + repr(value) if isinstance(value, str) and not value else indent + str(value)]


def mapping_test(path: FilePath, profiles: ProfileSet, timezone: str) -> str:
    """Readable listing of what each message in ``path`` maps to (no database)."""
    out: list[str] = []
    for raw in read_hl7_file(path):
        msg = parse(raw)
        mapped = map_message(msg, profiles, timezone=timezone)
        out.append(f"== {path.name}: {msg.message_type} MSH-10 {msg.control_id} "
                   f"(profile {mapped.profile})")
        if isinstance(mapped, AdtMessage):
            out.append(f"ADT {mapped.event}: patient {mapped.patient.patient_id}"
                       + (f", merges {mapped.prior_patient[0]}" if mapped.prior_patient else ""))
            for key, value in mapped.patient.attributes.items():
                out.append(f"  {key}: " + "\n".join(_show(value, "    ")).strip())
            continue
        items = render_items(mapped)
        for n, (item, step) in enumerate(
                zip(items, [s for p in mapped.procedures for s in p.steps], strict=True),
                start=1):
            out.append(f"-- worklist item {n} (ORC-1 {step.order_control}, station rule "
                       f"{step.station_rule or '-'})")
            for key, value in item.items():
                shown = _show(value, "    ")
                out.append(f"  {key}: {shown[0].strip()}" if len(shown) == 1 else f"  {key}:")
                if len(shown) > 1:
                    out += shown
    return "\n".join(out)
