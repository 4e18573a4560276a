"""The converter registry: one reader per profile ``convert`` name (text, identifier,
uid, person_name, code, quantity, ...), each turning the field a rule points at into
the DICOM value (:mod:`broker.mapping.conversions` for the value rules, IHE RAD TF-2x
Appendix B), and profile rules compiled for one message structure
(:class:`CompiledRule`) and evaluated at one level (patient, procedure, step).

A converter returns None when the field was not sent, ``""`` for the HL7 explicit
null, else the value. Conversions of values not needed to schedule the exam
(:data:`DROPPABLE`) that fail are dropped with a warning; any other failure refuses
the message naming the field.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from broker.domain.types import Attributes
from broker.hl7 import warnings
from broker.hl7.errors import HL7Error
from broker.hl7.message import NULL, Path, Segment
from broker.hl7.warnings import DATA_TYPE, warn
from broker.mapping import conversions as conv
from broker.mapping.fields import (
    MessageContext,
    Scope,
    first_value,
    forward,
    is_blank,
    location_of,
    raw_text,
    read_value,
    text_of,
)
from broker.mapping.profile import Rule
from broker.mapping.start import START_DATE, START_TIME, scheduled_start

# Conversions of values not needed to schedule the exam: a malformed one (a birth
# date ``1990505``, a bad timestamp, a weight that is not a number or has an unknown
# unit) is dropped with a warning and the order is accepted. ``priority`` and ``sex``
# drop a code outside their HL7 table themselves. Everything else (identifiers, UIDs,
# the scheduled start) is refused naming the field.
DROPPABLE = frozenset({"birth_date", "date", "time", "quantity"})

# A field converter reads the field at a path of the segment that holds it: the
# nearest such segment in scope, and only when the field is not empty (an empty field,
# or a segment the scope lacks, is not sent: None, no warning). A scope converter
# reads beyond that one field (every segment of the path's name, every OBX).
FieldConverter = Callable[[Segment, Path, Rule, MessageContext], Any]
ScopeConverter = Callable[[Scope, Path, Rule, MessageContext], Any]


# -- converters -----------------------------------------------------------------------

def _limit(rule: Rule, default: int) -> int:
    return rule.max_length or default


def _text_scalar(fn: Callable[[str, Rule, MessageContext], Any]) -> FieldConverter:
    """A converter of free text: blank -> None, ``""`` -> ""."""

    def convert(seg: Segment, path: Path, rule: Rule, base: MessageContext) -> Any:
        raw = raw_text(seg, path)
        if raw is None:
            return None
        if raw == NULL:
            return ""
        return fn(raw, rule, base)

    return convert


def _scalar(fn: Callable[[str, Rule, MessageContext], Any], *,
            identifier: bool = False) -> FieldConverter:
    """A converter of one coded value, identifier or timestamp: not sent -> None,
    ``""`` -> ""; an identifier whose other parts were dropped is kept with a warning."""

    def convert(seg: Segment, path: Path, rule: Rule, base: MessageContext) -> Any:
        value, dropped = read_value(seg, path)
        if value is None:
            return None
        if value == NULL:
            return ""
        if dropped and identifier:
            warn(DATA_TYPE, f"{rule.attribute}: only the first component or "
                            "sub-component of the field was used")
        return fn(value, rule, base)

    return convert


def _name_field(seg: Segment, path: Path) -> Segment | str | None:
    """The segment when its name field has a name; ``""`` for the explicit null, None
    when blank."""
    raw = seg.raw_field(path.field)
    if raw == NULL:
        return ""
    return None if is_blank(seg, raw) else seg


def _person_name(seg: Segment, path: Path, rule: Rule, base: MessageContext) -> Any:
    named = _name_field(seg, path)
    if not isinstance(named, Segment):
        return named
    structured = [seg.parts(path.field, i) for i, r in enumerate(seg.repetitions(path.field))
                  if not is_blank(seg, r)]
    return conv.person_name(structured, v25=base.v25, keyword=rule.attribute) or None


def _xcn_name(seg: Segment, path: Path, rule: Rule, base: MessageContext) -> Any:
    named = _name_field(seg, path)
    if not isinstance(named, Segment):
        return named
    return conv.xcn_name(seg.parts(path.field), keyword=rule.attribute) or None


def _cn_name(seg: Segment, path: Path, rule: Rule, base: MessageContext) -> Any:
    named = _name_field(seg, path)
    if not isinstance(named, Segment):
        return named
    parts = seg.parts(path.field)
    index = (path.component or 1) - 1
    if index >= len(parts):
        return None
    return conv.cn_subcomponents(parts[index], keyword=rule.attribute) or None


def _code(seg: Segment, path: Path, rule: Rule, base: MessageContext) -> Any:
    if is_blank(seg, seg.raw_field(path.field)):
        return None
    comps = seg.parts(path.field)
    # Which components hold value, scheme and meaning: CE 1/3/2, or the alternate
    # identifier 4/6/5 (OBR-4 protocol in ORM); may differ per message structure.
    order = rule.params.get("components", [1, 3, 2])
    if isinstance(order, dict):
        order = order.get(base.structure, [1, 3, 2])
    padded: list[list[str]] = [*comps, *[[""]] * 9]
    value_parts, scheme_parts, meaning_parts = (padded[i - 1] for i in order)
    item = conv.code_item(conv.first_part(value_parts), text_of(meaning_parts),
                          conv.first_part(scheme_parts), keyword=rule.attribute)
    return [item] if item else None


def _coded_text_value(parts: list[list[str]]) -> str:
    """CE/CWE as text: its text component (CE.2), else its identifier (CE.1)."""
    text = text_of(parts[1]) if len(parts) > 1 else ""
    return text or (conv.first_part(parts[0]) if parts else "")


def _coded_text(seg: Segment, path: Path, rule: Rule, base: MessageContext) -> Any:
    if is_blank(seg, seg.raw_field(path.field)):
        return None
    if seg.raw_field(path.field) == NULL:
        return ""
    chosen = _coded_text_value(seg.parts(path.field))
    if not chosen:
        return None
    return conv.text(chosen, max_length=_limit(rule, 64), keyword=rule.attribute,
                     on_overflow=rule.overflow)


def _formatted_text(scope: Scope, path: Path, rule: Rule, base: MessageContext) -> Any:
    parts = [s.get(path.field) for s in scope.all(path.segment)]
    parts = [p for p in parts if p and p != NULL and p.strip()]
    if not parts:
        return None
    return conv.long_text("\r\n".join(parts), max_length=_limit(rule, 10240),
                          keyword=rule.attribute, on_overflow=rule.overflow)


def _quantity(scope: Scope, path: Path, rule: Rule, base: MessageContext) -> Any:
    codes = set(rule.params.get("codes", []))
    table = conv.HEIGHT_TO_M if rule.params.get("kind") == "height" else conv.WEIGHT_TO_KG
    for obx in scope.everywhere("OBX"):
        value = first_value(obx, path.field, path.component or 1)
        if first_value(obx, 3) in codes and value and value != NULL:
            return conv.quantity(value, first_value(obx, 6), table, keyword=rule.attribute)
    return None


def _allergies(scope: Scope, path: Path, rule: Rule, base: MessageContext) -> Any:
    values = []
    for seg in scope.everywhere(path.segment):
        chosen = _coded_text_value(seg.parts(path.field))
        if chosen and chosen != NULL:
            values.append(conv.text(chosen, max_length=64, keyword=rule.attribute))
    return values or None


def _pregnancy(seg: Segment, path: Path, rule: Rule, base: MessageContext) -> Any:
    codes = {first_value(seg, path.field, 1, i).upper()
             for i in range(len(seg.repetitions(path.field)))}
    return 3 if "B6" in codes else None


def _location(seg: Segment, path: Path, rule: Rule, base: MessageContext) -> Any:
    """PL: point of care ^ room ^ bed, each its first sub-component (PL.1 may be HD
    from v2.7)."""
    if is_blank(seg, seg.raw_field(path.field)):
        return None
    if seg.raw_field(path.field) == NULL:
        return ""
    comps = seg.parts(path.field)
    joined = "^".join(conv.first_part(c) for c in comps[:3]).rstrip("^")
    if not joined.strip("^"):
        return None
    return conv.text(joined, max_length=_limit(rule, 64), keyword=rule.attribute,
                     on_overflow=rule.overflow)


def _issuer_sequence(seg: Segment, path: Path, rule: Rule, base: MessageContext) -> Any:
    """An HD in sub-components (CX.4): namespace & universal id & universal id type."""
    parts = seg.parts(path.field)
    index = (path.component or 1) - 1
    subs = [*(parts[index] if index < len(parts) else []), "", "", ""]
    subs = [s.strip() for s in subs]
    if not any(subs) or subs[0] == NULL:
        return None
    return [hd_item(subs[0], subs[1], subs[2])]


def _hd_issuer_sequence(seg: Segment, path: Path, rule: Rule, base: MessageContext) -> Any:
    """EI.2-4 (namespace ^ universal id ^ type) as an issuer sequence item."""
    padded = [*seg.parts(path.field), [""], [""], [""], [""]]
    hd = [conv.first_part(c) for c in padded[1:4]]
    if not any(hd):
        return None
    return [hd_item(hd[0], hd[1], hd[2])]


def hd_item(namespace: str, universal: str, universal_type: str) -> Attributes:
    item: Attributes = {}
    if namespace:
        item["LocalNamespaceEntityID"] = conv.text(namespace, max_length=64)
    if universal:
        item["UniversalEntityID"] = conv.text(universal, max_length=64)
        item["UniversalEntityIDType"] = universal_type or "ISO"
    return item


FIELD_CONVERTERS: dict[str, FieldConverter] = {
    "text": _text_scalar(lambda v, r, m: conv.text(
        v, max_length=_limit(r, 64), keyword=r.attribute, on_overflow=r.overflow)),
    "long_text": _text_scalar(lambda v, r, m: conv.long_text(
        v, max_length=_limit(r, 10240), keyword=r.attribute,
        on_overflow=r.overflow)),
    "identifier": _scalar(lambda v, r, m: conv.identifier(
        v, max_length=_limit(r, 16), keyword=r.attribute, on_overflow=r.overflow),
        identifier=True),
    "ae_title": _scalar(lambda v, r, m: conv.identifier(
        v, max_length=16, keyword=r.attribute, on_overflow=r.overflow),
        identifier=True),
    "uid": _scalar(lambda v, r, m: conv.uid(v, keyword=r.attribute), identifier=True),
    "person_name": _person_name,
    "xcn_name": _xcn_name,
    "cn_name": _cn_name,
    "date": _scalar(lambda v, r, m: conv.date(v, m.zone, keyword=r.attribute)),
    "time": _scalar(lambda v, r, m: conv.time(v, m.zone, keyword=r.attribute)),
    "birth_date": _scalar(lambda v, r, m: conv.birth_date(v, keyword=r.attribute)),
    "priority": _scalar(lambda v, r, m: conv.priority(v, keyword=r.attribute)),
    "sex": _scalar(lambda v, r, m: conv.sex(v, keyword=r.attribute)),
    "code": _code,
    "coded_text": _coded_text,
    "pregnancy": _pregnancy,
    "location": _location,
    "issuer_sequence": _issuer_sequence,
    "hd_issuer_sequence": _hd_issuer_sequence,
}

SCOPE_CONVERTERS: dict[str, ScopeConverter] = {
    "formatted_text": _formatted_text,
    "quantity": _quantity,
    "allergies": _allergies,
}


# -- rules ----------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class CompiledRule:
    """A profile rule for one message structure, ready to evaluate: its sources parsed
    into HL7 paths and its converter looked up once (``None`` for the scheduled start,
    :func:`broker.mapping.start.scheduled_start`; ``scoped`` for a scope converter).

    ``unparsable`` is the first source that is not an HL7 path (``paths`` are those
    before it): it raises ValueError where it is reached, as when the sources were
    parsed for each message. ``reads`` names the segments the rule reads (None: a
    scope converter, which may read others).
    """

    rule: Rule
    sources: tuple[str, ...]
    paths: tuple[Path, ...]
    unparsable: str | None
    converter: FieldConverter | ScopeConverter | None
    scoped: bool
    droppable: bool
    reads: frozenset[str] | None

    @classmethod
    def of(cls, rule: Rule, structure: str) -> CompiledRule:
        sources = tuple(rule.sources_for(structure))
        paths: list[Path] = []
        unparsable = None
        for source in sources:
            try:
                paths.append(Path.parse(source))
            except ValueError:
                unparsable = source
                break
        scoped = rule.convert in SCOPE_CONVERTERS
        converter = (SCOPE_CONVERTERS[rule.convert] if scoped
                     else FIELD_CONVERTERS.get(rule.convert))  # None: start_date/time
        return cls(rule, sources, tuple(paths), unparsable, converter, scoped,
                   rule.convert in DROPPABLE and rule.attribute not in (START_DATE, START_TIME),
                   None if scoped else frozenset(p.segment for p in paths))

    def evaluate(self, scope: Scope, base: MessageContext) -> Any:
        """The value of the first source that has one (None: none has).

        Warnings of a source get its location; a failing droppable conversion is a
        warning and the next source is tried, any other failure is raised located."""
        rule, converter = self.rule, self.converter
        if converter is None:
            if self.unparsable is not None:
                Path.parse(self.unparsable)  # raises: not an HL7 path
            read = scope.starts.get(self.sources)
            if read is None:
                read = scope.starts[self.sources] = warnings.collect(
                    scheduled_start, scope, self.paths, base)
            start, found = read
            for warning in found:
                warn(warning.code, warning.text, warning.location)
            return None if start is None else start[0 if rule.convert == "start_date" else 1]
        for path in self.paths:
            if self.scoped:
                target: Scope | Segment = scope
            else:
                seg = scope.first(path.segment)
                if seg is None or not seg.raw_field(path.field):
                    continue  # not sent
                target = seg
            try:
                value, found = warnings.collect(converter, target, path, rule, base)
            except HL7Error as exc:
                if exc.location is None:
                    exc.location = location_of(scope, path)
                if self.droppable:
                    warn(exc.code, f"{exc.text}; value not used", exc.location)
                    continue
                raise
            if found:
                forward(found, location_of(scope, path))
            if value is not None:
                return value
        if self.unparsable is not None:
            Path.parse(self.unparsable)  # raises: not an HL7 path
        return None


def map_level(rules: Sequence[CompiledRule], scope: Scope, base: MessageContext,
              shared: dict[CompiledRule, Any] | None = None) -> Attributes:
    """The attributes of one level (patient, procedure or step) from its compiled
    rules, in profile order.

    ``shared`` keeps, across the steps of one order group, the values of the rules
    that read none of a step's own segments (the scope's nearest layer, IPC): such a
    rule reads the same fields for every step, so it gives the same value, warnings
    and errors, and is evaluated for the first step only (its warnings are then in
    the message's collection; each step gets its own copy of a sequence)."""
    out: Attributes = {}
    own = scope.layers[0]
    for compiled in rules:
        if shared is None or compiled.reads is None or not compiled.reads.isdisjoint(own):
            value = compiled.evaluate(scope, base)
        elif compiled in shared:
            value = _copy(shared[compiled])
        else:
            value = shared[compiled] = compiled.evaluate(scope, base)
        if value is not None:
            out[compiled.rule.attribute] = value
    return out


def _copy(value: Any) -> Any:
    """A value for another step: a sequence (of items) is copied, text is shared."""
    if isinstance(value, list):
        return [dict(item) if isinstance(item, dict) else item for item in value]
    return value
