"""How the console shows stored values to people: person names, moments, DICOM dates.

Person names (PS3.5 6.2, VR PN: up to three component groups, alphabetic =
ideographic = phonetic, each ``family^given^middle^prefix^suffix``) read as a list of
names does: ``family, prefix given middle, suffix``, so ``DOE^JANE^MARIE`` is shown
``DOE, JANE MARIE`` and ``Doe^Jane^Marie`` ``Doe, Jane Marie``. The letter case is kept
as stored, never changed: the sender's spelling is the registered one (``McDONALD``,
``van der Berg``, capitals from a system that has only capitals), and whoever compares
it with a wristband or another system must see exactly that. An ideographic group
follows in parentheses in its own order, family name first and no comma
(``Yamada^Tarou=山田^太郎`` reads ``Yamada, Tarou (山田 太郎)``); the phonetic group is
only shown when it is the only one.

Moments are stored in UTC and shown in the configured zone (MWLB_TIMEZONE, else the
host's), ``YYYY-MM-DD HH:MM:SS``; an HTML ``<time>`` element carries the UTC instant.
DICOM DA and DT values (PS3.5 6.2; the site's local time already, as the worklist
gives them) are shown ``YYYY-MM-DD HH:MM``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from markupsafe import Markup

PN_COMPONENTS = 5  # family, given, middle, prefix, suffix (PS3.5 6.2)


def _components(group: str) -> list[str]:
    return [c.strip() for c in [*group.split("^"), *[""] * PN_COMPONENTS][:PN_COMPONENTS]]


def _alphabetic(group: str) -> str:
    """One group as "family, prefix given middle, suffix" (empty parts left out)."""
    family, given, middle, prefix, suffix = _components(group)
    first = " ".join(p for p in (prefix, given, middle) if p)
    name = ", ".join(p for p in (family, first) if p)
    return f"{name}, {suffix}" if name and suffix else name or suffix


def _ideographic(group: str) -> str:
    """One group in the order of scripts that write the family name first, no comma."""
    return " ".join(p for p in _components(group) if p)


def person_name(value: object) -> str:
    """A PN value as people read it (see the module docstring); "" for no name."""
    groups = [*str(value or "").split("="), "", ""][:3]
    alphabetic, ideographic = _alphabetic(groups[0]), _ideographic(groups[1])
    if alphabetic and ideographic:
        return f"{alphabetic} ({ideographic})"
    return alphabetic or ideographic or _ideographic(groups[2])


def instant(value: datetime | str | None) -> datetime | None:
    """A stored moment (a datetime, or ISO 8601 text as the API gives it) as an aware
    UTC datetime; a naive value is UTC (the database keeps UTC)."""
    if value is None or value == "":
        return None
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).astimezone(UTC)


def local(value: datetime | str | None, zone: ZoneInfo, *, seconds: bool = True) -> str:
    """``value`` in ``zone`` as ``YYYY-MM-DD HH:MM:SS`` ("" for none)."""
    moment = instant(value)
    if moment is None:
        return ""
    return moment.astimezone(zone).strftime("%Y-%m-%d %H:%M:%S" if seconds
                                            else "%Y-%m-%d %H:%M")


def time_element(value: datetime | str | None, zone: ZoneInfo) -> Markup:
    """An HTML ``<time>`` showing ``value`` in ``zone``, its UTC instant as ``datetime``."""
    moment = instant(value)
    if moment is None:
        return Markup("")
    return Markup('<time datetime="{}">{}</time>').format(
        moment.isoformat(timespec="seconds"), local(moment, zone))


def between(first: datetime | str, last: datetime | str, zone: ZoneInfo) -> str:
    """"between 09:01 and 09:40" in ``zone``: clock times on one day, dates and times
    across days, seconds when both fall in the same minute ("at 09:01:05" when both
    fall in the same second)."""
    start, end = instant(first), instant(last)
    assert start is not None and end is not None
    start, end = start.astimezone(zone), end.astimezone(zone)
    if start.date() != end.date():
        pattern = "%Y-%m-%d %H:%M"
    elif start.replace(second=0, microsecond=0) == end.replace(second=0, microsecond=0):
        pattern = "%H:%M:%S"
    else:
        pattern = "%H:%M"
    first_text, last_text = start.strftime(pattern), end.strftime(pattern)
    return f"at {first_text}" if first_text == last_text else \
        f"between {first_text} and {last_text}"


def dicom_datetime(value: object) -> str:
    """A DICOM DA or DT value (``YYYYMMDD[HHMM[SS[.F]]][&ZZXX]``) as ``YYYY-MM-DD
    HH:MM[:SS]``; text that is not one is returned as it is."""
    text = str(value or "").strip()
    digits = text.split(".")[0].split("+")[0].split("-")[0]
    if not digits.isdigit() or len(digits) < 8:
        return text
    shown = f"{digits[:4]}-{digits[4:6]}-{digits[6:8]}"
    if len(digits) >= 12:
        shown += f" {digits[8:10]}:{digits[10:12]}"
        if len(digits) >= 14 and digits[12:14] != "00":
            shown += f":{digits[12:14]}"
    return shown

