"""HL7 v2 -> DICOM value conversions (IHE RAD TF-2x Appendix B; HL7 v2.5.1 Chapter 2A
data types -> DICOM PS3.5 6.2 VRs). Pure functions of text; no I/O.

Each returns the DICOM value, ``""`` for the HL7 explicit null (clear the stored
value), or ``None`` when the source is empty (leave the stored value unchanged).
Problems a sender must fix raise :class:`HL7Error` naming the field (the caller adds
the location); adjustments (a description cut to its VR length, a code outside its
HL7 table dropped, a local time skipped by DST) are recorded with
:func:`broker.hl7.warnings.warn`, naming the attribute and what was done, never the
value. The caller gives those warnings the location of the field they came from.

Composite values arrive already split: a *component* is a ``str`` (already decoded),
or a sequence of its sub-components (HL7 v2.5.1 2.5.3: ``&`` separates them; each
part already unescaped, so an escaped ``\\T\\`` is a literal ``&`` inside a part).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Literal
from zoneinfo import ZoneInfo

from broker.hl7.errors import ErrorCode, HL7Error
from broker.hl7.message import NULL
from broker.hl7.warnings import DATA_TYPE, TABLE_VALUE, warn

Overflow = Literal["reject", "truncate"]
Component = str | Sequence[str]


def first_part(component: Component) -> str:
    """The value of a component: itself when already a string, else its first
    non-empty sub-component (FN: the surname, or the first part the sender filled,
    HL7 v2.5.1 2A.2.26), trimmed of spaces."""
    if isinstance(component, str):
        return component.strip()
    for part in component:
        value = part.strip()
        if value:
            return value
    return ""

UID_SYNTAX = re.compile(r"^(0|[1-9]\d*)(\.(0|[1-9]\d*))+$")
TS_SYNTAX = re.compile(r"^(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\.\d{1,6})?([+-]\d{4})?$")


def _overflow(value: str, max_length: int, keyword: str, on_overflow: Overflow) -> str:
    """A value longer than its VR allows (PS3.5 6.2): refused (AE 102) or cut with a
    warning, as the rule's ``on_overflow`` says."""
    if len(value) <= max_length:
        return value
    name = keyword or "value"
    if on_overflow == "reject":
        raise HL7Error(ErrorCode.DATA_TYPE_ERROR,
                       f"{name} is longer than {max_length} characters")
    warn(DATA_TYPE, f"{name} longer than {max_length} characters: truncated")
    return value[:max_length]


def text(value: str, *, max_length: int = 64, keyword: str = "",
         on_overflow: Overflow = "truncate") -> str:
    """A description (LO/SH/ST/LT): ``\\`` (the DICOM value delimiter) becomes ``/``,
    control characters become spaces, and overflow is truncated with a warning
    unless the rule says ``on_overflow: reject``."""
    cleaned = value.replace("\\", "/").replace("\r\n", " ").replace("\r", " ").replace("\n", " ")
    return _overflow(cleaned, max_length, keyword, on_overflow).rstrip()


def long_text(value: str, *, max_length: int = 10240, keyword: str = "",
              on_overflow: Overflow = "truncate") -> str:
    """Formatted text (FT -> LT): line breaks kept as CR LF (``\\.br\\``), no other
    change; LT may contain ``\\``."""
    return _overflow(value, max_length, keyword, on_overflow)


def identifier(value: str, *, max_length: int = 16, keyword: str = "",
               on_overflow: Overflow = "reject") -> str:
    """An identifier (SH/LO/CS/AE): overflow is refused, never truncated (cutting an
    id can merge two orders), unless the rule says ``on_overflow: truncate``."""
    value = _overflow(value, max_length, keyword or "identifier", on_overflow)
    if "\\" in value:
        raise HL7Error(ErrorCode.DATA_TYPE_ERROR,
                       f"{keyword or 'identifier'} contains a backslash")
    return value


def uid(value: str, *, keyword: str = "UID") -> str:
    """A UID (UI): at most 64 characters of digits and dots (PS3.5 9.1)."""
    if len(value) > 64 or not UID_SYNTAX.match(value):
        raise HL7Error(ErrorCode.DATA_TYPE_ERROR, f"{keyword} is not a valid DICOM UID")
    return value


def _pn_component(value: str) -> str:
    # '^' and '=' are PN structure; '\\' the value delimiter: none may leak (PS3.5 6.2).
    return value.replace("\\", "/").replace("^", " ").replace("=", " ").strip()


def _join_pn(components: list[str]) -> str:
    return "^".join(components).rstrip("^")


PN_GROUP_LENGTH = 64  # PS3.5 6.2: 64 characters per PN component group


def _pn_group(value: str, keyword: str) -> str:
    if len(value) <= PN_GROUP_LENGTH:
        return value
    warn(DATA_TYPE, f"{keyword or 'name'} longer than {PN_GROUP_LENGTH} characters per "
                    "component group: truncated")
    return value[:PN_GROUP_LENGTH].rstrip("^ ")


def xpn_group(components: Sequence[Component], *, v25: bool = False) -> str:
    """One XPN repetition -> one PN component group (PS3.5 6.2.1).

    XPN: family^given^middle^suffix^prefix^degree^type^representation. PN:
    family^given^middle^prefix^suffix; the degree is appended to the suffix
    (``Jr`` + ``PhD`` -> ``Jr PhD``). XPN.1 is FN from v2.4 (surname & own surname
    prefix & own surname & ...; HL7 v2.5.1 2A.2.26) and ``family & last name prefix``
    in v2.3: in every version the family name is its first non-empty sub-component
    (``&&SMITH`` -> ``SMITH``); the other components keep their first sub-component.
    ``v25`` is accepted for compatibility and changes nothing.
    """
    comps = [first_part(c) for c in [*components, *[""] * 8][:8]]
    suffix = " ".join(p for p in (comps[3], comps[5]) if p)
    parts = [comps[0], comps[1], comps[2], comps[4], suffix]
    return _join_pn([_pn_component(p) for p in parts])


def person_name(repetitions: Sequence[Sequence[Component]], *, v25: bool = False,
                keyword: str = "PatientName") -> str:
    """PID-5 (all repetitions) -> PN with component groups (PS3.5 6.2.1).

    Repetitions whose XPN.8 name representation is A (alphabetic), I (ideographic) or
    P (phonetic) fill the three PN groups; without XPN.8 the legal name (type L, else
    the first repetition) is the alphabetic group. A group over 64 characters is cut
    with a warning.
    """
    if not repetitions:
        return ""
    groups = {"A": "", "I": "", "P": ""}
    with_repr = [r for r in repetitions if len(r) > 7 and first_part(r[7]) in groups]
    if with_repr:
        for rep in with_repr:
            if not groups[first_part(rep[7])]:
                groups[first_part(rep[7])] = _pn_group(xpn_group(rep), keyword)
        value = f"{groups['A']}={groups['I']}={groups['P']}"
        return value.rstrip("=")
    legal = next((r for r in repetitions if len(r) > 6 and first_part(r[6]) == "L"),
                 repetitions[0])
    return _pn_group(xpn_group(legal), keyword)


def xcn_name(components: Sequence[Component], *, keyword: str = "") -> str:
    """XCN (id^family^given^middle^suffix^prefix^degree) -> PN: the ID is
    dropped and the name handled like XPN (XCN.2 is FN, HL7 v2.5.1 2A.2.89)."""
    comps = [*components, *[""] * 7][:7]
    return _pn_group(xpn_group([comps[1], comps[2], comps[3], comps[4], comps[5], comps[6]]),
                     keyword)


def cn_subcomponents(value: Component, *, keyword: str = "") -> str:
    """OBR-34's first component as CN sub-components (``T001&Nguyen&Anna``) -> PN
    ``Nguyen^Anna``. A string is split at ``&``; a sequence is taken as the parts."""
    subs = [*(value.split("&") if isinstance(value, str) else value), *[""] * 7][:7]
    return _pn_group(xpn_group([subs[1], subs[2], subs[3], subs[4], subs[5], subs[6]]),
                     keyword)


def _parse_ts(value: str, keyword: str) -> tuple[datetime, bool, int]:
    """(naive datetime, has offset, digits of precision) for an HL7 TS/DTM."""
    match = TS_SYNTAX.match(value.strip())
    if not match:
        raise HL7Error(ErrorCode.DATA_TYPE_ERROR, f"{keyword or 'value'}: not an HL7 timestamp")
    year, month, day, hour, minute, second, fraction, offset = match.groups()
    digits = len(value.strip().split("+")[0].split("-")[0].split(".")[0])
    try:
        parsed = datetime(int(year), int(month or 1), int(day or 1), int(hour or 0),
                          int(minute or 0), int(second or 0),
                          int(float(fraction) * 1_000_000) if fraction else 0)
    except ValueError:
        raise HL7Error(ErrorCode.DATA_TYPE_ERROR,
                       f"{keyword or 'value'}: not a valid date/time") from None
    if offset:
        sign = 1 if offset[0] == "+" else -1
        delta = timedelta(hours=int(offset[1:3]), minutes=int(offset[3:5]))
        parsed = parsed - sign * delta  # now UTC
    return parsed, bool(offset), digits


def local_datetime(value: str, zone: str, *, keyword: str = "") -> tuple[datetime, int]:
    """An HL7 TS in the broker's zone: a TS with an offset is converted; one
    without is taken as local already. A local time that does not exist (skipped by
    a DST change) is moved forward, with a warning. A date-only TS (fewer than 12
    digits) is a calendar date and is never shifted by its offset."""
    parsed, has_offset, digits = _parse_ts(value, keyword)
    tz = ZoneInfo(zone)
    if digits < 12:
        naive, _, _ = _parse_ts(value.strip()[:digits], keyword)
        return naive, digits
    if has_offset:
        aware = parsed.replace(tzinfo=ZoneInfo("UTC")).astimezone(tz)
        return aware.replace(tzinfo=None), digits
    round_trip = parsed.replace(tzinfo=tz).astimezone(ZoneInfo("UTC")).astimezone(tz)
    if round_trip.replace(tzinfo=None) != parsed:
        warn(DATA_TYPE, f"{keyword or 'time'}: local time does not exist (DST change); "
                        "moved forward by the DST gap")
        return round_trip.replace(tzinfo=None), digits
    return parsed, digits


def dicom_date(moment: datetime) -> str:
    """DA ``YYYYMMDD``."""
    return moment.strftime("%Y%m%d")


def dicom_time(moment: datetime, digits: int = 14) -> str:
    """TM ``HHMM[SS[.ffffff]]`` at the precision the HL7 value had."""
    if digits < 14:
        return moment.strftime("%H%M")
    out = moment.strftime("%H%M%S")
    if moment.microsecond:
        out += "." + f"{moment.microsecond:06d}".rstrip("0")
    return out


def date(value: str, zone: str, *, keyword: str = "") -> str:
    """TS -> DA ``YYYYMMDD``; fewer than 8 digits is a data type error."""
    moment, digits = local_datetime(value, zone, keyword=keyword)
    if digits < 8:
        raise HL7Error(ErrorCode.DATA_TYPE_ERROR, f"{keyword or 'value'}: date needs YYYYMMDD")
    return dicom_date(moment)


def birth_date(value: str, *, keyword: str = "PatientBirthDate") -> str:
    """PID-7 -> DA: the first 8 digits, no time zone shift (a date of birth is a date);
    anything else (``1990505``, ``19900231``) is a data type error."""
    digits = value.strip()[:8]
    if not re.fullmatch(r"\d{8}", digits):
        raise HL7Error(ErrorCode.DATA_TYPE_ERROR, f"{keyword}: needs YYYYMMDD")
    try:
        if digits.isascii():  # what strptime("%Y%m%d") reads, without its cost
            datetime(int(digits[:4]), int(digits[4:6]), int(digits[6:]))
        else:
            datetime.strptime(digits, "%Y%m%d")
    except ValueError:
        raise HL7Error(ErrorCode.DATA_TYPE_ERROR, f"{keyword}: not a valid date") from None
    return digits


def time(value: str, zone: str, *, keyword: str = "", require_time: bool = True) -> str:
    """TS -> TM ``HHMM[SS[.ffffff]]`` in the broker's zone (a DICOM TM carries no
    offset). A date-only value where a time is required is refused (SPS Start Time is
    Return Key Type 1)."""
    moment, digits = local_datetime(value, zone, keyword=keyword)
    if digits < 12:
        if require_time:
            raise HL7Error(ErrorCode.DATA_TYPE_ERROR,
                           f"{keyword or 'value'}: time of day is missing")
        return ""
    return dicom_time(moment, digits)


PRIORITIES = {"S": "STAT", "A": "HIGH", "P": "HIGH", "C": "HIGH", "R": "ROUTINE", "T": "MEDIUM"}


def priority(value: str, *, keyword: str = "RequestedProcedurePriority") -> str | None:
    """ORC-7.6 / TQ1-9 (HL7 Table 0027) -> Requested Procedure Priority (IHE RAD TF-2x
    Appendix B: S STAT; A, P, C HIGH; R ROUTINE; T MEDIUM). A code outside the table is
    dropped (None: the stored priority is kept) with a warning."""
    found = PRIORITIES.get(value.strip().upper())
    if found is None:
        warn(TABLE_VALUE, f"{keyword}: code not in HL7 Table 0027: not used")
    return found


SEXES = {"M": "M", "F": "F", "O": "O", "A": "O", "N": "O", "U": ""}


def sex(value: str, *, keyword: str = "PatientSex") -> str | None:
    """PID-8 (HL7 Table 0001) -> Patient's Sex: M, F, O kept; A, N -> O; U
    (unknown) -> empty. A code outside the table is dropped (None: the stored sex is
    kept) with a warning."""
    found = SEXES.get(value.strip().upper())
    if found is None:
        warn(TABLE_VALUE, f"{keyword}: code not in HL7 Table 0001: not used")
    return found


def code_item(value: str, meaning: str, scheme: str, *, keyword: str = "") -> dict[str, str] | None:
    """A CE/CWE triplet -> a code sequence item: Code Value up to 16 characters,
    longer goes to Long Code Value; Code Meaning up to 64; all three or nothing."""
    if not (value and scheme and meaning):
        return None
    item = {"CodingSchemeDesignator": text(scheme, max_length=16, keyword=keyword),
            "CodeMeaning": text(meaning, max_length=64, keyword=keyword)}
    if len(value) > 16:
        item["LongCodeValue"] = text(value, max_length=64, keyword=keyword)
    else:
        item["CodeValue"] = value
    return item


WEIGHT_TO_KG = {"KG": 1.0, "G": 0.001, "LB": 0.45359237, "[LB_AV]": 0.45359237}
HEIGHT_TO_M = {"M": 1.0, "CM": 0.01, "MM": 0.001, "IN": 0.0254, "[IN_I]": 0.0254}


def decimal_string(number: float) -> str:
    """A DS value (at most 16 characters)."""
    return f"{round(number, 6):.6f}".rstrip("0").rstrip(".")[:16]


def quantity(value: str, unit: str, table: dict[str, float], *, keyword: str) -> str:
    """OBX-5 with its OBX-6 unit -> kg or m as DS (weight g/lb -> kg, height cm -> m).
    Not a number is a data type error (102), an unknown unit a table error (103)."""
    try:
        number = float(value)
    except ValueError:
        raise HL7Error(ErrorCode.DATA_TYPE_ERROR, f"{keyword}: not a number") from None
    factor = table.get(unit.strip().upper() or next(iter(table)))
    if factor is None:
        raise HL7Error(ErrorCode.TABLE_VALUE_NOT_FOUND, f"{keyword}: unknown unit")
    return decimal_string(number * factor)


def is_null(value: str) -> bool:
    """The HL7 explicit null ``""``."""
    return value == NULL
