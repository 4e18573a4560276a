"""The scheduled start of a step (SPS Start Date/Time, Return Key Type 1, PS3.4 Table
K.6-1): read from a chain of TS sources, completed when only a date is given, or, for
a creating order without any, taken from the receipt time or refused as the profile's
``missing_start`` says.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from broker.domain.types import Attributes
from broker.hl7 import warnings
from broker.hl7.errors import ErrorCode, ErrorLocation, HL7Error, field_error
from broker.hl7.message import NULL, Path
from broker.hl7.warnings import DATA_TYPE, REQUIRED_FIELD, warn
from broker.mapping import conversions as conv
from broker.mapping.fields import (
    MessageContext,
    Scope,
    locating,
    location_of,
    read_value,
)
from broker.mapping.profile import Profile

START_DATE, START_TIME = "ScheduledProcedureStepStartDate", "ScheduledProcedureStepStartTime"


# -- scheduled start --------------------------------------------------------------------

def _receipt(ctx: MessageContext) -> datetime:
    """The receipt time in the zone in force (a naive stored time is UTC)."""
    at = ctx.received_at if ctx.received_at.tzinfo else ctx.received_at.replace(tzinfo=UTC)
    return at.astimezone(ZoneInfo(ctx.zone)).replace(tzinfo=None)


def scheduled_start(scope: Scope, paths: Sequence[Path],
                    ctx: MessageContext) -> tuple[str, str] | None:
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
        value, _ = read_value(scope.first(path.segment), path)
        if not value or value == NULL:
            continue
        where = location_of(scope, path)
        if chosen is None:
            try:
                with locating(where):
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
                            f"taken from {path}", location_of(scope, chosen[1]))
            return chosen[0], conv.dicom_time(moment, digits)
    if chosen is None:
        return None
    return chosen[0], _time_for_date(chosen[0], str(chosen[1]), location_of(scope, chosen[1]), ctx)


def _time_for_date(day: str, source: str, where: ErrorLocation, ctx: MessageContext) -> str:
    receipt = _receipt(ctx)
    if conv.dicom_date(receipt) == day:
        warn(DATA_TYPE, f"scheduled start in {source} has no time of day; time of receipt "
                        "used", where)
        return receipt.strftime("%H%M%S")
    warn(DATA_TYPE, f"scheduled start in {source} has no time of day; start of the day "
                    "used", where)
    return "000000"


def ensure_start(attrs: Attributes, profile: Profile, base: MessageContext, g: int, *,
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
