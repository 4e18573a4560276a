"""Apply a mapping profile to a parsed HL7 message (IHE RAD TF-2x Appendix B, HL7 order
mapping to DICOM MWL).

Message structure (HL7 v2.3.1 ORM^O01, v2.5.1 OMI^O23, IHE RAD-2/RAD-4):

* ORM^O01: PID, PV1, then one ORC/OBR pair per Scheduled Procedure Step; the ZDS
  segment (Study Instance UID) belongs to the message.
* OMI^O23: PID, PV1, then order groups ORC, TQ1, OBR, NTE, OBX, and one IPC segment per
  Scheduled Procedure Step.

A rule's source path is looked up in the step's own segments first (IPC), then its
order group (ORC, TQ1, OBR, NTE, OBX), then the message (MSH, PID, PV1, AL1, Z...).
Converter errors are raised, and converter warnings recorded, with the location of the
field they came from.

Reading a field (HL7 v2.5.1 2.5.3, 2.7; chapter 2A data types):

* Coded values, identifiers and timestamps (ID, IS, CWE/CE code, EI, HD, TS) whose
  rule names no component are read from their first component, and from a component
  its first non-empty sub-component, trimmed of spaces: PID-8 ``F^`` is F, OBR-24
  `` MR`` is MR. An identifier that loses other non-empty parts this way is kept with
  a warning.
* A field of nothing but spaces and delimiters (``^^^``, `` ``) is not sent: the
  stored value is left alone. Only the HL7 explicit null ``""`` clears it.
* Structured values (names XPN/XCN/CN, locations PL, codes CE/CWE, HD) are split at
  the sub-component delimiter before unescaping, so a raw ``&`` never reaches DICOM
  while an escaped ``\\T\\`` is still a literal ``&``. Free text (ST, TX, FT and the
  text component of a code) has no sub-components: an unescaped ``&`` there is the
  sender's own ampersand and is kept as one.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from broker.domain.types import (
    AdtMessage,
    Attributes,
    OrderMessage,
    PatientRecord,
    ProcedureRecord,
    StepRecord,
)
from broker.hl7 import warnings
from broker.hl7.errors import ErrorCode, ErrorLocation, HL7Error, field_error
from broker.hl7.message import NULL, Message, Path, Segment
from broker.hl7.warnings import DATA_TYPE, REQUIRED_FIELD, located, warn
from broker.mapping import conversions as conv
from broker.mapping.profile import Profile, ProfileSet, Rule, Station

STRUCTURES = {"ORM": "ORM", "OMG": "ORM", "OMI": "OMI", "ADT": "ADT"}
# ADT events that move a patient's orders from MRG-1 to PID-3: A40 merge, A47 change
# of identifier (HL7 v2.5.1 3.3.40, 3.3.47).
MOVING_EVENTS = frozenset({"A40", "A47"})
CREATING = {"NW", "SN"}
START_DATE, START_TIME = "ScheduledProcedureStepStartDate", "ScheduledProcedureStepStartTime"

# Conversions of values not needed to schedule the exam: a malformed one (a birth
# date ``1990505``, a bad timestamp, a weight that is not a number or has an unknown
# unit) is dropped with a warning and the order is accepted. ``priority`` and ``sex``
# drop a code outside their HL7 table themselves. Everything else (identifiers, UIDs,
# the scheduled start) is refused naming the field.
DROPPABLE = frozenset({"birth_date", "date", "time", "quantity"})


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
    """What every rule of one message is evaluated with (``received_at``: when the
    broker received the message, the scheduled start of an order without one)."""

    zone: str
    v25: bool
    structure: str
    received_at: datetime


@dataclass(frozen=True)
class Context(MessageContext):
    """A message context plus the rule being evaluated."""

    rule: Rule


def _layer(segments: list[Segment]) -> dict[str, list[Segment]]:
    out: dict[str, list[Segment]] = {}
    for seg in segments:
        out.setdefault(seg.name, []).append(seg)
    return out


# -- reading fields -------------------------------------------------------------------

def _parts(seg: Segment, number: int, repetition: int = 0) -> list[list[str]]:
    """One repetition of a field as components of unescaped sub-components: split at
    the delimiters first, then unescape each part (HL7 v2.5.1 2.7), so an escaped
    delimiter stays inside its part."""
    reps = seg.repetitions(number)
    if repetition >= len(reps):
        return []
    d = seg.delimiters
    if seg.name == "MSH" and number <= 2:
        return [[reps[repetition]]]
    return [[seg.message.unescape(s) for s in c.split(d.subcomponent)]
            for c in reps[repetition].split(d.component)]


def _blank(seg: Segment, text: str) -> bool:
    """Nothing but spaces and delimiters: "not sent" (never a clear)."""
    d = seg.delimiters
    return not text.strip(" " + d.component + d.subcomponent + d.repetition)


def _text_of(parts: list[str]) -> str:
    """A free-text component: an unescaped ``&`` in it is the sender's own character."""
    return "&".join(p for p in parts if p.strip()).strip()


def _sub(seg: Segment | None, number: int, component: int, sub: int = 1,
         repetition: int = 0) -> str:
    """One sub-component (1-based), trimmed; '' when absent."""
    if seg is None:
        return ""
    parts = _parts(seg, number, repetition)
    if component > len(parts) or sub > len(parts[component - 1]):
        return ""
    return parts[component - 1][sub - 1].strip()


def _first(seg: Segment | None, number: int, component: int = 1, repetition: int = 0) -> str:
    """A component's value: its first non-empty sub-component, trimmed."""
    if seg is None:
        return ""
    parts = _parts(seg, number, repetition)
    return conv.first_part(parts[component - 1]) if component <= len(parts) else ""


def _read_value(scope: Scope, path: Path) -> tuple[str | None, bool]:
    """A coded value, identifier or timestamp at ``path``: ``(value, dropped)``.

    The value is None when not sent, ``""`` (the explicit null) to clear, else the
    first component (when the path names none) and its first non-empty sub-component
    (when the path names none), trimmed. ``dropped`` says other non-empty parts were
    left out."""
    seg = scope.first(path.segment)
    if seg is None:
        return None, False
    raw = seg.raw_field(path.field)
    if raw == NULL:
        return NULL, False
    if _blank(seg, raw):
        return None, False
    parts = _parts(seg, path.field)
    index = (path.component or 1) - 1
    if index >= len(parts):
        return None, False
    subs = parts[index]
    if path.subcomponent:
        chosen = subs[path.subcomponent - 1].strip() if path.subcomponent <= len(subs) else ""
        others: list[str] = []
    else:
        chosen = conv.first_part(subs)
        others = [s for s in subs if s.strip()][1:]
    if not path.component:
        others += [s for comp in parts[1:] for s in comp if s.strip()]
    if not chosen:
        return None, False
    return chosen, bool(others)


def _raw_text(scope: Scope, path: Path) -> str | None:
    """Free text at ``path`` (whole field, component or sub-component), delimiters
    inside it kept as the characters they are; None when blank."""
    seg = scope.first(path.segment)
    if seg is None:
        return None
    raw = seg.raw_field(path.field)
    if raw == NULL and not path.component:
        return NULL
    value = seg.get(path.field, path.component, path.subcomponent)
    if not value or _blank(seg, value):
        return None
    return value


# -- converters -----------------------------------------------------------------------

def _limit(ctx: Context, default: int) -> int:
    return ctx.rule.max_length or default


def _text_scalar(fn: Callable[[str, Context], Any]) -> Callable[[Scope, Path, Context], Any]:
    """A converter of free text: blank -> None, ``""`` -> ""."""

    def convert(scope: Scope, path: Path, ctx: Context) -> Any:
        raw = _raw_text(scope, path)
        if raw is None:
            return None
        if raw == NULL:
            return ""
        return fn(raw, ctx)

    return convert


def _scalar(fn: Callable[[str, Context], Any], *,
            identifier: bool = False) -> Callable[[Scope, Path, Context], Any]:
    """A converter of one coded value, identifier or timestamp: not sent -> None,
    ``""`` -> ""; an identifier whose other parts were dropped is kept with a warning."""

    def convert(scope: Scope, path: Path, ctx: Context) -> Any:
        value, dropped = _read_value(scope, path)
        if value is None:
            return None
        if value == NULL:
            return ""
        if dropped and identifier:
            warn(DATA_TYPE, f"{ctx.rule.attribute}: only the first component or "
                            "sub-component of the field was used")
        return fn(value, ctx)

    return convert


def _name_field(scope: Scope, path: Path) -> Segment | str | None:
    """The segment holding a name field; ``""`` for the explicit null, None when blank."""
    seg = scope.first(path.segment)
    if seg is None:
        return None
    raw = seg.raw_field(path.field)
    if raw == NULL:
        return ""
    return None if _blank(seg, raw) else seg


def _person_name(scope: Scope, path: Path, ctx: Context) -> Any:
    seg = _name_field(scope, path)
    if not isinstance(seg, Segment):
        return seg
    structured = [_parts(seg, path.field, i) for i, r in enumerate(seg.repetitions(path.field))
                  if not _blank(seg, r)]
    return conv.person_name(structured, v25=ctx.v25, keyword=ctx.rule.attribute) or None


def _xcn_name(scope: Scope, path: Path, ctx: Context) -> Any:
    seg = _name_field(scope, path)
    if not isinstance(seg, Segment):
        return seg
    return conv.xcn_name(_parts(seg, path.field), keyword=ctx.rule.attribute) or None


def _cn_name(scope: Scope, path: Path, ctx: Context) -> Any:
    seg = _name_field(scope, path)
    if not isinstance(seg, Segment):
        return seg
    parts = _parts(seg, path.field)
    index = (path.component or 1) - 1
    if index >= len(parts):
        return None
    return conv.cn_subcomponents(parts[index], keyword=ctx.rule.attribute) or None


def _code(scope: Scope, path: Path, ctx: Context) -> Any:
    seg = scope.first(path.segment)
    if seg is None or _blank(seg, seg.raw_field(path.field)):
        return None
    comps = _parts(seg, path.field)
    # Which components hold value, scheme and meaning: CE 1/3/2, or the alternate
    # identifier 4/6/5 (OBR-4 protocol in ORM); may differ per message structure.
    order = ctx.rule.params.get("components", [1, 3, 2])
    if isinstance(order, dict):
        order = order.get(ctx.structure, [1, 3, 2])
    padded: list[list[str]] = [*comps, *[[""]] * 9]
    value_parts, scheme_parts, meaning_parts = (padded[i - 1] for i in order)
    item = conv.code_item(conv.first_part(value_parts), _text_of(meaning_parts),
                          conv.first_part(scheme_parts), keyword=ctx.rule.attribute)
    return [item] if item else None


def _coded_text_value(parts: list[list[str]]) -> str:
    """CE/CWE as text: its text component (CE.2), else its identifier (CE.1)."""
    text = _text_of(parts[1]) if len(parts) > 1 else ""
    return text or (conv.first_part(parts[0]) if parts else "")


def _coded_text(scope: Scope, path: Path, ctx: Context) -> Any:
    seg = scope.first(path.segment)
    if seg is None or _blank(seg, seg.raw_field(path.field)):
        return None
    if seg.raw_field(path.field) == NULL:
        return ""
    chosen = _coded_text_value(_parts(seg, path.field))
    if not chosen:
        return None
    return conv.text(chosen, max_length=_limit(ctx, 64), keyword=ctx.rule.attribute,
                     on_overflow=ctx.rule.overflow)


def _formatted_text(scope: Scope, path: Path, ctx: Context) -> Any:
    parts = [s.get(path.field) for s in scope.all(path.segment)]
    parts = [p for p in parts if p and p != NULL and p.strip()]
    if not parts:
        return None
    return conv.long_text("\r\n".join(parts), max_length=_limit(ctx, 10240),
                          keyword=ctx.rule.attribute, on_overflow=ctx.rule.overflow)


def _quantity(scope: Scope, path: Path, ctx: Context) -> Any:
    codes = set(ctx.rule.params.get("codes", []))
    table = conv.HEIGHT_TO_M if ctx.rule.params.get("kind") == "height" else conv.WEIGHT_TO_KG
    for obx in scope.everywhere("OBX"):
        value = _first(obx, path.field, path.component or 1)
        if _first(obx, 3) in codes and value and value != NULL:
            return conv.quantity(value, _first(obx, 6), table, keyword=ctx.rule.attribute)
    return None


def _allergies(scope: Scope, path: Path, ctx: Context) -> Any:
    values = []
    for seg in scope.everywhere(path.segment):
        chosen = _coded_text_value(_parts(seg, path.field))
        if chosen and chosen != NULL:
            values.append(conv.text(chosen, max_length=64, keyword=ctx.rule.attribute))
    return values or None


def _pregnancy(scope: Scope, path: Path, ctx: Context) -> Any:
    seg = scope.first(path.segment)
    if seg is None:
        return None
    codes = {_first(seg, path.field, 1, i).upper()
             for i in range(len(seg.repetitions(path.field)))}
    return 3 if "B6" in codes else None


def _location(scope: Scope, path: Path, ctx: Context) -> Any:
    """PL: point of care ^ room ^ bed, each its first sub-component (PL.1 may be HD
    from v2.7)."""
    seg = scope.first(path.segment)
    if seg is None or _blank(seg, seg.raw_field(path.field)):
        return None
    if seg.raw_field(path.field) == NULL:
        return ""
    comps = _parts(seg, path.field)
    joined = "^".join(conv.first_part(c) for c in comps[:3]).rstrip("^")
    if not joined.strip("^"):
        return None
    return conv.text(joined, max_length=_limit(ctx, 64), keyword=ctx.rule.attribute,
                     on_overflow=ctx.rule.overflow)


def _issuer_sequence(scope: Scope, path: Path, ctx: Context) -> Any:
    """An HD in sub-components (CX.4): namespace & universal id & universal id type."""
    seg = scope.first(path.segment)
    if seg is None:
        return None
    parts = _parts(seg, path.field)
    index = (path.component or 1) - 1
    subs = [*(parts[index] if index < len(parts) else []), "", "", ""]
    subs = [s.strip() for s in subs]
    if not any(subs) or subs[0] == NULL:
        return None
    return [_hd_item(subs[0], subs[1], subs[2])]


def _hd_issuer_sequence(scope: Scope, path: Path, ctx: Context) -> Any:
    """EI.2-4 (namespace ^ universal id ^ type) as an issuer sequence item."""
    seg = scope.first(path.segment)
    if seg is None:
        return None
    padded = [*_parts(seg, path.field), [""], [""], [""], [""]]
    hd = [conv.first_part(c) for c in padded[1:4]]
    if not any(hd):
        return None
    return [_hd_item(hd[0], hd[1], hd[2])]


def _hd_item(namespace: str, universal: str, universal_type: str) -> Attributes:
    item: Attributes = {}
    if namespace:
        item["LocalNamespaceEntityID"] = conv.text(namespace, max_length=64)
    if universal:
        item["UniversalEntityID"] = conv.text(universal, max_length=64)
        item["UniversalEntityIDType"] = universal_type or "ISO"
    return item


CONVERTERS: dict[str, Callable[[Scope, Path, Context], Any]] = {
    "text": _text_scalar(lambda v, c: conv.text(
        v, max_length=_limit(c, 64), keyword=c.rule.attribute, on_overflow=c.rule.overflow)),
    "long_text": _text_scalar(lambda v, c: conv.long_text(
        v, max_length=_limit(c, 10240), keyword=c.rule.attribute,
        on_overflow=c.rule.overflow)),
    "formatted_text": _formatted_text,
    "identifier": _scalar(lambda v, c: conv.identifier(
        v, max_length=_limit(c, 16), keyword=c.rule.attribute, on_overflow=c.rule.overflow),
        identifier=True),
    "ae_title": _scalar(lambda v, c: conv.identifier(
        v, max_length=16, keyword=c.rule.attribute, on_overflow=c.rule.overflow),
        identifier=True),
    "uid": _scalar(lambda v, c: conv.uid(v, keyword=c.rule.attribute), identifier=True),
    "person_name": _person_name,
    "xcn_name": _xcn_name,
    "cn_name": _cn_name,
    "date": _scalar(lambda v, c: conv.date(v, c.zone, keyword=c.rule.attribute)),
    "time": _scalar(lambda v, c: conv.time(v, c.zone, keyword=c.rule.attribute)),
    "birth_date": _scalar(lambda v, c: conv.birth_date(v, keyword=c.rule.attribute)),
    "priority": _scalar(lambda v, c: conv.priority(v, keyword=c.rule.attribute)),
    "sex": _scalar(lambda v, c: conv.sex(v, keyword=c.rule.attribute)),
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


def _where(scope: Scope, path: Path) -> ErrorLocation:
    return ErrorLocation(path.segment, path.field, path.component,
                         _sequence_of(scope, path.segment))


@contextmanager
def _located(location: ErrorLocation) -> Iterator[None]:
    """Warnings raised inside get ``location`` unless they carry their own."""
    with warnings.collecting() as inner:
        try:
            yield
        finally:
            located(inner, 0, location)
    for found in inner:
        warn(found.code, found.text, found.location)


# -- scheduled start --------------------------------------------------------------------

def _receipt(ctx: MessageContext) -> datetime:
    """The receipt time in the zone in force (a naive stored time is UTC)."""
    at = ctx.received_at if ctx.received_at.tzinfo else ctx.received_at.replace(tzinfo=UTC)
    return at.astimezone(ZoneInfo(ctx.zone)).replace(tzinfo=None)


def _start(scope: Scope, paths: list[Path], ctx: Context) -> tuple[str, str] | None:
    """The scheduled start (DA, TM) from a chain of TS sources, or None when none has
    a value.

    The first source with a value is the chosen one: a malformed value there (not a
    TS, or less than a day) is refused with AE 102 naming it. With a time of day it is
    the start (a warning names it when earlier sources were empty). A date-only value
    keeps its date; the time of day comes from the first later source with a time on
    that same date, else from the receipt time when the message arrived that day, else
    it is the start of the day; each with a warning.
    """
    chosen: tuple[str, Path] | None = None
    for i, path in enumerate(paths):
        value, _ = _read_value(scope, path)
        if not value or value == NULL:
            continue
        where = _where(scope, path)
        if chosen is None:
            try:
                with _located(where):
                    moment, digits = conv.local_datetime(value, ctx.zone,
                                                         keyword="scheduled start")
            except HL7Error as exc:
                exc.location = where
                raise
            if digits < 8:
                raise HL7Error(ErrorCode.DATA_TYPE_ERROR,
                               "scheduled start needs at least a date (YYYYMMDD)", where)
            if digits >= 12:
                if i:
                    warn(REQUIRED_FIELD, f"scheduled start: {', '.join(map(str, paths[:i]))} "
                                         f"empty; taken from {path}", where)
                return conv.dicom_date(moment), conv.dicom_time(moment, digits)
            chosen = (conv.dicom_date(moment), path)
            continue
        try:
            with warnings.collecting():  # not the chosen source: its quirks don't matter
                moment, digits = conv.local_datetime(value, ctx.zone)
        except HL7Error:
            continue
        if digits >= 12 and conv.dicom_date(moment) == chosen[0]:
            warn(DATA_TYPE, f"scheduled start in {chosen[1]} has no time of day; time "
                            f"taken from {path}", _where(scope, chosen[1]))
            return chosen[0], conv.dicom_time(moment, digits)
    if chosen is None:
        return None
    return chosen[0], _time_for_date(chosen[0], str(chosen[1]), _where(scope, chosen[1]), ctx)


def _time_for_date(day: str, source: str, where: ErrorLocation, ctx: MessageContext) -> str:
    receipt = _receipt(ctx)
    if conv.dicom_date(receipt) == day:
        warn(DATA_TYPE, f"scheduled start in {source} has no time of day; time of receipt "
                        "used", where)
        return receipt.strftime("%H%M%S")
    warn(DATA_TYPE, f"scheduled start in {source} has no time of day; start of the day "
                    "used", where)
    return "000000"


# -- rules ----------------------------------------------------------------------------

def _evaluate(rule: Rule, scope: Scope, ctx: Context) -> Any:
    sources = rule.sources_for(ctx.structure)
    if rule.convert in ("start_date", "start_time"):
        start = _start(scope, [Path.parse(p) for p in sources], ctx)
        return None if start is None else start[0 if rule.convert == "start_date" else 1]
    for text_path in sources:
        path = Path.parse(text_path)
        where = _where(scope, path)
        try:
            with _located(where):
                value = CONVERTERS[rule.convert](scope, path, ctx)
        except HL7Error as exc:
            if exc.location is None:
                exc.location = where
            if rule.convert in DROPPABLE and rule.attribute not in (START_DATE, START_TIME):
                warn(exc.code, f"{exc.text}; value not used", exc.location)
                continue
            raise
        if value is not None:
            return value
    return None


def _attributes(profile: Profile, level: str, scope: Scope, base: MessageContext) -> Attributes:
    out: Attributes = {}
    for rule in profile.rules:
        if rule.level != level:
            continue
        ctx = Context(base.zone, base.v25, base.structure, base.received_at, rule)
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
            if _sub(pid, 3, 4, 1, i) == profile.preferred_patient_authority:
                chosen = i
                break
    patient_id = _first(pid, 3, 1, chosen) if reps else ""
    if not patient_id or patient_id == NULL:
        raise field_error(ErrorCode.REQUIRED_FIELD_MISSING, "PID", 3,
                          "PID-3 patient identifier is required")
    id_parts = _parts(pid, 3, chosen)[0]
    if sum(1 for p in id_parts if p.strip()) > 1:
        warn(DATA_TYPE, "PatientID: only the first sub-component of CX.1 was used",
             ErrorLocation("PID", 3, 1))
    try:
        conv.identifier(patient_id, max_length=64, keyword="PatientID")
    except HL7Error as exc:
        exc.location = ErrorLocation("PID", 3)
        raise
    issuer = _sub(pid, 3, 4, 1, chosen)
    attributes = _attributes(profile, "patient", scope, base)
    attributes["PatientID"] = patient_id
    if issuer:
        with _located(ErrorLocation("PID", 3, 4)):
            attributes["IssuerOfPatientID"] = conv.text(issuer, max_length=64,
                                                        keyword="IssuerOfPatientID")
            qualifiers = _hd_item("", _sub(pid, 3, 4, 2, chosen), _sub(pid, 3, 4, 3, chosen))
            if _first(pid, 3, 5, chosen):
                qualifiers["IdentifierTypeCode"] = conv.text(
                    _first(pid, 3, 5, chosen), max_length=16, keyword="IdentifierTypeCode")
        if qualifiers:
            attributes["IssuerOfPatientIDQualifiersSequence"] = [qualifiers]
    others = [
        {"PatientID": _first(pid, 3, 1, i),
         "IssuerOfPatientID": _sub(pid, 3, 4, 1, i), "TypeOfPatientID": "TEXT"}
        for i in range(len(reps)) if i != chosen and _first(pid, 3, 1, i)
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
        codes.append(_first(obr, 4))
    location = _first(scope.first("PV1"), 3)
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
    split = _split(msg)
    base = MessageContext(zone, v25, structure, received_at or datetime.now(UTC))
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
    for step_layer, step_key in steps:
        scope = Scope([step_layer, group_layer, split.message_layer], msg)
        proc = _attributes(profile, "procedure", scope, base)
        attrs = _attributes(profile, "step", scope, base)
        _apply_catalog(profile, proc, attrs)
        record = StepRecord(control, status, step_key, attrs)
        if control in CREATING or control == "XO":
            _ensure_start(attrs, profile, base, g, required=control in CREATING)
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
        placer = _first(orc, 2) or _first(obr, 2)
        filler = _first(orc, 3) or _first(obr, 3)
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
                placer, _first(orc, 2, 2), filler, _first(orc, 3, 2), proc, [record]))


def _check_entity_identifiers(orc: Segment, g: int) -> None:
    """Placer/filler order numbers and their namespace ids are LO (64) in DICOM: a
    longer one is refused (AE 102), never cut."""
    for number in (2, 3):
        for component in (1, 2):
            if len(_first(orc, number, component)) > 64:
                raise field_error(ErrorCode.DATA_TYPE_ERROR, "ORC", number,
                                  f"ORC-{number}.{component} is longer than 64 characters",
                                  component=component, sequence=g)


def _ensure_start(attrs: Attributes, profile: Profile, base: MessageContext, g: int, *,
                  required: bool) -> None:
    """A creating order (NW/SN) needs a scheduled start (SPS Start Date/Time are Return
    Key Type 1, PS3.4 Table K.6-1). With none in any source, ``missing_start:
    receipt`` schedules it at the receipt time in the zone in force, with a warning;
    ``reject`` refuses it with AE 101 at ORC-7 (ORM) / TQ1-7 (OMI). A change (XO)
    without a start keeps the stored one."""
    if not required or (attrs.get(START_DATE) and attrs.get(START_TIME)):
        return
    segment, number = ("TQ1", 7) if base.structure == "OMI" else ("ORC", 7)
    where = ErrorLocation(segment, number, sequence=g)
    if profile.start_policy == "reject":
        raise field_error(ErrorCode.REQUIRED_FIELD_MISSING, segment, number,
                          "scheduled start date and time are required", sequence=g)
    if attrs.get(START_DATE):  # a profile with a date rule but no time rule
        attrs[START_TIME] = _time_for_date(str(attrs[START_DATE]), START_DATE, where, base)
        return
    receipt = _receipt(base)
    attrs[START_DATE] = conv.dicom_date(receipt)
    attrs[START_TIME] = receipt.strftime("%H%M%S")
    rule = profile.rule_for(START_DATE)
    tried = ", ".join(rule.sources_for(base.structure)) if rule else f"{segment}-{number}"
    warn(REQUIRED_FIELD, f"no scheduled start in {tried}: scheduled at the time the "
                         "message was received", where)


def _adt(msg: Message, profile: Profile, patient: PatientRecord) -> AdtMessage:
    event = msg.trigger_event.upper()
    when = _first(msg.segment("EVN"), 2) or _first(msg.msh, 7)
    prior = None
    mrg = msg.segment("MRG")
    if event in MOVING_EVENTS:
        if mrg is None or not _first(mrg, 1):
            raise field_error(ErrorCode.REQUIRED_FIELD_MISSING, "MRG", 1,
                              "MRG-1 prior patient identifier is required")
        prior = (_first(mrg, 1), _sub(mrg, 1, 4, 1))
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
