"""HL7 v2 -> DICOM value conversions (conformance checklist section 10, rules M1-M6,
and A5, D4, H6, H7). Pure functions of text; no I/O.

Each returns the DICOM value, ``""`` for the HL7 explicit null (clear the stored
value), or ``None`` when the source is empty (leave the stored value unchanged).
Problems a sender must fix raise :class:`HL7Error` naming the field (the caller adds
the location); values merely too long for a description are truncated with a warning
that names the attribute, never the value.
"""

from __future__ import annotations

import logging
import re
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from broker.hl7.errors import ErrorCode, HL7Error
from broker.hl7.message import NULL

log = logging.getLogger(__name__)

UID_SYNTAX = re.compile(r"^(0|[1-9]\d*)(\.(0|[1-9]\d*))+$")
TS_SYNTAX = re.compile(r"^(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\.\d{1,6})?([+-]\d{4})?$")


def text(value: str, *, max_length: int = 64, keyword: str = "") -> str:
    """A description (LO/SH/ST/LT): ``\\`` (the DICOM value delimiter) becomes ``/``,
    control characters become spaces, and overflow is truncated with a warning (D4)."""
    cleaned = value.replace("\\", "/").replace("\r\n", " ").replace("\r", " ").replace("\n", " ")
    if len(cleaned) > max_length:
        log.warning("%s longer than %d characters: truncated", keyword or "value", max_length)
        cleaned = cleaned[:max_length].rstrip()
    return cleaned


def long_text(value: str, *, max_length: int = 10240, keyword: str = "") -> str:
    """Formatted text (FT -> LT): line breaks kept as CR LF (``\\.br\\``), no other
    change; LT may contain ``\\``."""
    if len(value) > max_length:
        log.warning("%s longer than %d characters: truncated", keyword or "value", max_length)
        value = value[:max_length]
    return value


def identifier(value: str, *, max_length: int = 16, keyword: str = "") -> str:
    """An identifier (SH/LO/CS/AE): overflow is refused, never truncated (D4)."""
    if len(value) > max_length:
        raise HL7Error(ErrorCode.DATA_TYPE_ERROR,
                       f"{keyword or 'identifier'} is longer than {max_length} characters")
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
    # '^' and '=' are PN structure; '\\' the value delimiter: none may leak (H7).
    return value.replace("\\", "/").replace("^", " ").replace("=", " ").strip()


def _join_pn(components: list[str]) -> str:
    return "^".join(components).rstrip("^")


def xpn_group(components: list[str], *, v25: bool = False) -> str:
    """One XPN repetition -> one PN component group (M1).

    XPN: family^given^middle^suffix^prefix^degree^type^representation. PN:
    family^given^middle^prefix^suffix; the degree is appended to the suffix
    (``Jr`` + ``PhD`` -> ``Jr PhD``). In v2.5 XPN.1 is FN and its first
    sub-component is the surname.
    """
    comps = [*components, *[""] * 8][:8]
    family = comps[0].split("&")[0] if v25 else comps[0]
    suffix = " ".join(p for p in (comps[3], comps[5]) if p)
    parts = [family, comps[1], comps[2], comps[4], suffix]
    return _join_pn([_pn_component(p) for p in parts])


def person_name(repetitions: list[list[str]], *, v25: bool = False) -> str:
    """PID-5 (all repetitions) -> PN with component groups (M1, A7).

    Repetitions whose XPN.8 name representation is A (alphabetic), I (ideographic) or
    P (phonetic) fill the three PN groups; without XPN.8 the legal name (type L, else
    the first repetition) is the alphabetic group.
    """
    if not repetitions:
        return ""
    groups = {"A": "", "I": "", "P": ""}
    with_repr = [r for r in repetitions if len(r) > 7 and r[7] in groups]
    if with_repr:
        for rep in with_repr:
            if not groups[rep[7]]:
                groups[rep[7]] = xpn_group(rep, v25=v25)
        value = f"{groups['A']}={groups['I']}={groups['P']}"
        return value.rstrip("=")
    legal = next((r for r in repetitions if len(r) > 6 and r[6] == "L"), repetitions[0])
    return xpn_group(legal, v25=v25)


def xcn_name(components: list[str]) -> str:
    """XCN (id^family^given^middle^suffix^prefix^degree) -> PN (M1): the ID is
    dropped and the name handled like XPN."""
    comps = [*components, *[""] * 7][:7]
    return xpn_group([comps[1], comps[2], comps[3], comps[4], comps[5], comps[6]])


def cn_subcomponents(value: str) -> str:
    """OBR-34's first component as CN sub-components (``T001&Nguyen&Anna``) -> PN
    ``Nguyen^Anna``."""
    subs = [*value.split("&"), *[""] * 7][:7]
    return xpn_group([subs[1], subs[2], subs[3], subs[4], subs[5], subs[6]])


def _parse_ts(value: str, keyword: str) -> tuple[datetime, bool, int]:
    """(naive datetime, has offset, digits of precision) for an HL7 TS/DTM."""
    match = TS_SYNTAX.match(value.strip())
    if not match:
        raise HL7Error(ErrorCode.DATA_TYPE_ERROR, f"{keyword}: not an HL7 timestamp")
    year, month, day, hour, minute, second, fraction, offset = match.groups()
    digits = len(value.split("+")[0].split("-")[0].split(".")[0])
    try:
        parsed = datetime(int(year), int(month or 1), int(day or 1), int(hour or 0),
                          int(minute or 0), int(second or 0),
                          int(float(fraction) * 1_000_000) if fraction else 0)
    except ValueError:
        raise HL7Error(ErrorCode.DATA_TYPE_ERROR, f"{keyword}: not a valid date/time") from None
    if offset:
        sign = 1 if offset[0] == "+" else -1
        delta = timedelta(hours=int(offset[1:3]), minutes=int(offset[3:5]))
        parsed = parsed - sign * delta  # now UTC
    return parsed, bool(offset), digits


def local_datetime(value: str, zone: str, *, keyword: str = "") -> tuple[datetime, int]:
    """An HL7 TS in the broker's zone (H6): a TS with an offset is converted; one
    without is taken as local already. A local time that does not exist (skipped by
    a DST change) is moved forward, with a warning."""
    parsed, has_offset, digits = _parse_ts(value, keyword)
    tz = ZoneInfo(zone)
    if has_offset:
        aware = parsed.replace(tzinfo=ZoneInfo("UTC")).astimezone(tz)
        return aware.replace(tzinfo=None), digits
    round_trip = parsed.replace(tzinfo=tz).astimezone(ZoneInfo("UTC")).astimezone(tz)
    if round_trip.replace(tzinfo=None) != parsed:
        log.warning("%s: local time does not exist (DST change); moved to %s",
                    keyword or "time", round_trip.strftime("%H:%M"))
        return round_trip.replace(tzinfo=None), digits
    return parsed, digits


def date(value: str, zone: str, *, keyword: str = "") -> str:
    """TS -> DA ``YYYYMMDD`` (M2); fewer than 8 digits is a data type error."""
    moment, digits = local_datetime(value, zone, keyword=keyword)
    if digits < 8:
        raise HL7Error(ErrorCode.DATA_TYPE_ERROR, f"{keyword}: date needs YYYYMMDD")
    return moment.strftime("%Y%m%d")


def birth_date(value: str) -> str:
    """PID-7 -> DA: the first 8 digits, no time zone shift (a date of birth is a date)."""
    digits = value.strip()[:8]
    if not re.fullmatch(r"\d{8}", digits):
        raise HL7Error(ErrorCode.DATA_TYPE_ERROR, "PatientBirthDate: needs YYYYMMDD")
    return digits


def time(value: str, zone: str, *, keyword: str = "", require_time: bool = True) -> str:
    """TS -> TM ``HHMM[SS[.ffffff]]`` in the broker's zone (M2, H6). A date-only value
    where a start time is required is refused (SPS Start Time is Return Key Type 1)."""
    moment, digits = local_datetime(value, zone, keyword=keyword)
    if digits < 12:
        if require_time:
            raise HL7Error(ErrorCode.DATA_TYPE_ERROR, f"{keyword}: time of day is missing")
        return ""
    if digits < 14:
        return moment.strftime("%H%M")
    out = moment.strftime("%H%M%S")
    if moment.microsecond:
        out += "." + f"{moment.microsecond:06d}".rstrip("0")
    return out


PRIORITIES = {"S": "STAT", "A": "HIGH", "P": "HIGH", "C": "HIGH", "R": "ROUTINE", "T": "MEDIUM"}


def priority(value: str) -> str:
    """ORC-7.6 / TQ1-9 -> Requested Procedure Priority (M4); unknown -> empty."""
    return PRIORITIES.get(value.strip().upper(), "")


def sex(value: str) -> str:
    """PID-8 -> Patient's Sex (M5): M, F, O kept; A, N -> O; anything else empty."""
    v = value.strip().upper()
    return v if v in ("M", "F", "O") else "O" if v in ("A", "N") else ""


def code_item(value: str, meaning: str, scheme: str, *, keyword: str = "") -> dict[str, str] | None:
    """A CE/CWE triplet -> a code sequence item (M6): Code Value up to 16 characters,
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
    """OBX-5 with its OBX-6 unit -> kg or m as DS (weight g/lb -> kg, height cm -> m)."""
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
