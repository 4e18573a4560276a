"""The converter registry: one reader per profile ``convert`` name (text, identifier,
uid, person_name, code, quantity, ...), each turning the field a rule points at into
the DICOM value (:mod:`broker.mapping.conversions` for the value rules, IHE RAD TF-2x
Appendix B), and the evaluation of a profile's rules at one level (patient, procedure,
step).

A converter returns None when the field was not sent, ``""`` for the HL7 explicit
null, else the value. Conversions of values not needed to schedule the exam
(:data:`DROPPABLE`) that fail are dropped with a warning; any other failure refuses
the message naming the field.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from broker.domain.types import Attributes
from broker.hl7.errors import HL7Error
from broker.hl7.message import NULL, Path, Segment
from broker.hl7.warnings import DATA_TYPE, warn
from broker.mapping import conversions as conv
from broker.mapping.fields import (
    Context,
    MessageContext,
    Scope,
    field_parts,
    first_value,
    is_blank,
    locating,
    location_of,
    raw_text,
    read_value,
    text_of,
)
from broker.mapping.profile import Profile, Rule
from broker.mapping.start import START_DATE, START_TIME, scheduled_start

# Conversions of values not needed to schedule the exam: a malformed one (a birth
# date ``1990505``, a bad timestamp, a weight that is not a number or has an unknown
# unit) is dropped with a warning and the order is accepted. ``priority`` and ``sex``
# drop a code outside their HL7 table themselves. Everything else (identifiers, UIDs,
# the scheduled start) is refused naming the field.
DROPPABLE = frozenset({"birth_date", "date", "time", "quantity"})


# -- converters -----------------------------------------------------------------------

def _limit(ctx: Context, default: int) -> int:
    return ctx.rule.max_length or default


def _text_scalar(fn: Callable[[str, Context], Any]) -> Callable[[Scope, Path, Context], Any]:
    """A converter of free text: blank -> None, ``""`` -> ""."""

    def convert(scope: Scope, path: Path, ctx: Context) -> Any:
        raw = raw_text(scope, path)
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
        value, dropped = read_value(scope, path)
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
    return None if is_blank(seg, raw) else seg


def _person_name(scope: Scope, path: Path, ctx: Context) -> Any:
    seg = _name_field(scope, path)
    if not isinstance(seg, Segment):
        return seg
    structured = [field_parts(seg, path.field, i) for i, r in enumerate(seg.repetitions(path.field))
                  if not is_blank(seg, r)]
    return conv.person_name(structured, v25=ctx.v25, keyword=ctx.rule.attribute) or None


def _xcn_name(scope: Scope, path: Path, ctx: Context) -> Any:
    seg = _name_field(scope, path)
    if not isinstance(seg, Segment):
        return seg
    return conv.xcn_name(field_parts(seg, path.field), keyword=ctx.rule.attribute) or None


def _cn_name(scope: Scope, path: Path, ctx: Context) -> Any:
    seg = _name_field(scope, path)
    if not isinstance(seg, Segment):
        return seg
    parts = field_parts(seg, path.field)
    index = (path.component or 1) - 1
    if index >= len(parts):
        return None
    return conv.cn_subcomponents(parts[index], keyword=ctx.rule.attribute) or None


def _code(scope: Scope, path: Path, ctx: Context) -> Any:
    seg = scope.first(path.segment)
    if seg is None or is_blank(seg, seg.raw_field(path.field)):
        return None
    comps = field_parts(seg, path.field)
    # Which components hold value, scheme and meaning: CE 1/3/2, or the alternate
    # identifier 4/6/5 (OBR-4 protocol in ORM); may differ per message structure.
    order = ctx.rule.params.get("components", [1, 3, 2])
    if isinstance(order, dict):
        order = order.get(ctx.structure, [1, 3, 2])
    padded: list[list[str]] = [*comps, *[[""]] * 9]
    value_parts, scheme_parts, meaning_parts = (padded[i - 1] for i in order)
    item = conv.code_item(conv.first_part(value_parts), text_of(meaning_parts),
                          conv.first_part(scheme_parts), keyword=ctx.rule.attribute)
    return [item] if item else None


def _coded_text_value(parts: list[list[str]]) -> str:
    """CE/CWE as text: its text component (CE.2), else its identifier (CE.1)."""
    text = text_of(parts[1]) if len(parts) > 1 else ""
    return text or (conv.first_part(parts[0]) if parts else "")


def _coded_text(scope: Scope, path: Path, ctx: Context) -> Any:
    seg = scope.first(path.segment)
    if seg is None or is_blank(seg, seg.raw_field(path.field)):
        return None
    if seg.raw_field(path.field) == NULL:
        return ""
    chosen = _coded_text_value(field_parts(seg, path.field))
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
        value = first_value(obx, path.field, path.component or 1)
        if first_value(obx, 3) in codes and value and value != NULL:
            return conv.quantity(value, first_value(obx, 6), table, keyword=ctx.rule.attribute)
    return None


def _allergies(scope: Scope, path: Path, ctx: Context) -> Any:
    values = []
    for seg in scope.everywhere(path.segment):
        chosen = _coded_text_value(field_parts(seg, path.field))
        if chosen and chosen != NULL:
            values.append(conv.text(chosen, max_length=64, keyword=ctx.rule.attribute))
    return values or None


def _pregnancy(scope: Scope, path: Path, ctx: Context) -> Any:
    seg = scope.first(path.segment)
    if seg is None:
        return None
    codes = {first_value(seg, path.field, 1, i).upper()
             for i in range(len(seg.repetitions(path.field)))}
    return 3 if "B6" in codes else None


def _location(scope: Scope, path: Path, ctx: Context) -> Any:
    """PL: point of care ^ room ^ bed, each its first sub-component (PL.1 may be HD
    from v2.7)."""
    seg = scope.first(path.segment)
    if seg is None or is_blank(seg, seg.raw_field(path.field)):
        return None
    if seg.raw_field(path.field) == NULL:
        return ""
    comps = field_parts(seg, path.field)
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
    parts = field_parts(seg, path.field)
    index = (path.component or 1) - 1
    subs = [*(parts[index] if index < len(parts) else []), "", "", ""]
    subs = [s.strip() for s in subs]
    if not any(subs) or subs[0] == NULL:
        return None
    return [hd_item(subs[0], subs[1], subs[2])]


def _hd_issuer_sequence(scope: Scope, path: Path, ctx: Context) -> Any:
    """EI.2-4 (namespace ^ universal id ^ type) as an issuer sequence item."""
    seg = scope.first(path.segment)
    if seg is None:
        return None
    padded = [*field_parts(seg, path.field), [""], [""], [""], [""]]
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


# -- rules ----------------------------------------------------------------------------

def _evaluate(rule: Rule, scope: Scope, ctx: Context) -> Any:
    sources = rule.sources_for(ctx.structure)
    if rule.convert in ("start_date", "start_time"):
        start = scheduled_start(scope, [Path.parse(p) for p in sources], ctx)
        return None if start is None else start[0 if rule.convert == "start_date" else 1]
    for text_path in sources:
        path = Path.parse(text_path)
        where = location_of(scope, path)
        try:
            with locating(where):
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


def map_level(profile: Profile, level: str, scope: Scope, base: MessageContext) -> Attributes:
    out: Attributes = {}
    for rule in profile.rules:
        if rule.level != level:
            continue
        ctx = Context(base.zone, base.v25, base.structure, base.received_at, rule)
        value = _evaluate(rule, scope, ctx)
        if value is not None:
            out[rule.attribute] = value
    return out
