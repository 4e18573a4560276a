"""The Modality Worklist query: a C-FIND identifier -> SQL (PS3.4 K.6, Table K.6-1).

Used by the Modality Worklist SCP (:mod:`broker.dicom.worklist`, which streams the
rows into responses) and by the console (which shows the SQL a query runs and why a
step is not listed), so both always agree on what matches.

Matching runs in SQL on the indexed columns (never by loading the worklist).
Supported matching keys are those of Table K.6-1 plus IHE's R+ keys (IHE RAD TF-2 4.5
(RAD-5)) and these extras: Patient's Name / ID / Issuer / Birth Date / Sex, Admission
ID, Accession Number, Requested Procedure ID / Priority, Study Instance UID, Referring
and Requesting Physician; in the SPS item: Scheduled Station AE Title, SPS Start Date /
Time, Modality, Scheduled Performing Physician's Name, SPS ID, SPS Status, Scheduled
Station Name, SPS Location. Any other key with a value is ignored for matching and
reported as unsupported (the SCP then answers 0xFF01, K.2.2.1.1.2, Table K.4-1). An
SPS Sequence key with more than one item is refused: :class:`QueryError` with 0xA900
(identifier does not match SOP class, Table K.4-1).

A calling modality whose profile restricts it to its stations
(:mod:`broker.mapping.modality`) and whose query leaves Scheduled Station AE Title
universal (absent, empty or ``*``, PS3.4 C.2.2.2.3) gets only the steps of those
stations (:class:`StationRestriction`); a query naming a station gets that station.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataset import Dataset
from sqlalchemy import ColumnElement, Text, and_, cast, false, or_, select
from sqlalchemy.orm import InstrumentedAttribute, Session

from broker.config import Settings
from broker.domain.matching import (
    LIKE_ESCAPE,
    Key,
    Kind,
    like_pattern,
    normalise_time,
    parse_key,
    pn_group_key,
    upper_time_bound,
)
from broker.models import (
    ImagingOrder,
    Patient,
    RequestedProcedure,
    ScheduledProcedureStep,
    StationAETitle,
)

IDENTIFIER_MISMATCH = 0xA900  # C-FIND failure status, PS3.4 Table K.4-1

SPS_SEQUENCE = "ScheduledProcedureStepSequence"
NEVER_MATCHED = frozenset({"SpecificCharacterSet", "TimezoneOffsetFromUTC"})


def requested_keywords(ds: Dataset) -> list[str]:
    """Keywords of the public attributes present in a query dataset."""
    out = []
    for elem in ds:
        keyword = elem.keyword or keyword_for_tag(elem.tag)
        if keyword and not elem.tag.is_private and elem.tag.group != 0x0000:
            out.append(keyword)
    return out


Column = InstrumentedAttribute[str]

TOP_LEVEL_COLUMNS: dict[str, Column] = {
    "PatientID": Patient.patient_id,
    "IssuerOfPatientID": Patient.issuer,
    "PatientBirthDate": Patient.birth_date,
    "PatientSex": Patient.sex,
    "AdmissionID": Patient.admission_id,
    "AccessionNumber": RequestedProcedure.accession_number,
    "RequestedProcedureID": RequestedProcedure.requested_procedure_id,
    "StudyInstanceUID": RequestedProcedure.study_instance_uid,
    "RequestedProcedurePriority": RequestedProcedure.priority,
}
TOP_LEVEL_PN: dict[str, tuple[Column, ...]] = {
    "PatientName": (Patient.name_key_alphabetic, Patient.name_key_ideographic,
                    Patient.name_key_phonetic),
    "ReferringPhysicianName": (RequestedProcedure.referring_physician_key,),
    "RequestingPhysician": (RequestedProcedure.requesting_physician_key,),
}
SPS_COLUMNS: dict[str, Column] = {
    "Modality": ScheduledProcedureStep.modality,
    "ScheduledProcedureStepID": ScheduledProcedureStep.sps_id,
    "ScheduledProcedureStepStatus": ScheduledProcedureStep.status,
    "ScheduledStationName": ScheduledProcedureStep.station_name,
    "ScheduledProcedureStepLocation": ScheduledProcedureStep.location,
}
SPS_PN: dict[str, tuple[Column, ...]] = {
    "ScheduledPerformingPhysicianName": (ScheduledProcedureStep.performing_physician_key,),
}
SPS_HANDLED = {*SPS_COLUMNS, *SPS_PN, "ScheduledStationAETitle",
               "ScheduledProcedureStepStartDate", "ScheduledProcedureStepStartTime"}


class QueryError(Exception):
    """An identifier we refuse; ``status`` is the C-FIND failure status."""

    def __init__(self, status: int, comment: str) -> None:
        super().__init__(comment)
        self.status = status


def _value_condition(column: Any, key: Key, vr: str) -> ColumnElement[bool]:
    not_empty = column != ""
    if key.kind is Kind.SINGLE:
        return column == (normalise_time(key.value) if vr == "TM" else key.value)
    if key.kind is Kind.WILDCARD:
        return and_(not_empty, column.like(like_pattern(key.value), escape=LIKE_ESCAPE))
    if key.kind is Kind.UID_LIST:
        return column.in_(key.values)
    if key.kind is Kind.RANGE:
        low = normalise_time(key.low) if vr == "TM" else key.low
        high = upper_time_bound(key.high) if vr == "TM" and key.high else key.high
        if vr == "DT":
            low, high = datetime_bound(low, upper=False), datetime_bound(high, upper=True)
        parts = [not_empty]
        if low:
            parts.append(column >= low)
        if high:
            parts.append(column <= high)
        return and_(*parts)
    raise AssertionError(key.kind)


def datetime_bound(value: str, *, upper: bool) -> str:
    """A DT range bound against stored ``YYYYMMDDHHMMSS[.ffffff]`` local values (PS3.4
    C.2.2.2.5): the UTC offset of the key is dropped (values are kept in the broker's
    zone) and an upper bound covers every value within its stated precision
    (``20261202`` -> up to ``20261202235959.999999``)."""
    text = value.strip()
    for sign in "+-":
        if sign in text[4:]:
            text = text[:4] + text[4:].split(sign)[0]
    if not text or not upper:
        return text
    return text + DT_UPPER_TEMPLATE[len(text):] if len(text) < len(DT_UPPER_TEMPLATE) else text


# Fills a DT upper bound to full precision; months and days past the real ones compare
# as later than any stored value of that period, which is all a bound needs.
DT_UPPER_TEMPLATE = "99991231235959.999999"


def key_condition(column: Any, value: Any, vr: str) -> ColumnElement[bool] | None:
    """The SQL condition of one matching key value on ``column`` (any SQL expression),
    None when the key is universal (PS3.4 C.2.2.2)."""
    key = parse_key(value, vr)
    return None if key.universal else _value_condition(column, key, vr)


def pn_condition(columns: tuple[Any, ...], value: Any) -> ColumnElement[bool] | None:
    """The SQL condition of a PN key on a name's (alphabetic, ideographic, phonetic)
    key columns, or on one column; None when universal (the module's PN policy)."""
    return _pn_condition(columns, value)


def _pn_condition(columns: tuple[Column, ...], value: Any) -> ColumnElement[bool] | None:
    key = parse_key(value, "PN")
    if key.universal:
        return None
    groups = key.value.split("=")
    if len(groups) > 1 and len(columns) == 3:
        parts = []
        for column, group in zip(columns, groups, strict=False):
            group_key = parse_key(pn_group_key(group) if "*" not in group and "?" not in group
                                  else group.upper(), "PN")
            if not group_key.universal:
                parts.append(_value_condition(column, group_key, "PN"))
        return and_(*parts) if parts else None
    text = key.value.upper() if key.kind is Kind.WILDCARD else pn_group_key(key.value)
    upper = Key(key.kind, value=text)
    return or_(*(_value_condition(column, upper, "PN") for column in columns))


def _start_conditions(date_value: Any, time_value: Any) -> list[ColumnElement[bool]]:
    """SPS Start Date/Time (Table K.6-1): when both are given and either is a range,
    they form one continuous date-time range; otherwise each matches on its own."""
    sps = ScheduledProcedureStep
    date_key, time_key = parse_key(date_value, "DA"), parse_key(time_value, "TM")
    if not date_key.universal and not time_key.universal and Kind.RANGE in (
            date_key.kind, time_key.kind):
        d_low, d_high = ((date_key.low, date_key.high) if date_key.kind is Kind.RANGE
                         else (date_key.value, date_key.value))
        t_low, t_high = ((time_key.low, time_key.high) if time_key.kind is Kind.RANGE
                         else (time_key.value, time_key.value))
        parts = [sps.start_datetime != ""]
        if d_low:
            parts.append(sps.start_datetime >= d_low + (normalise_time(t_low) or "000000"))
        if d_high:
            parts.append(sps.start_datetime
                         <= d_high + (upper_time_bound(t_high) if t_high else "235959.999999"))
        if not d_low and t_low and not d_high:
            parts.append(sps.start_time >= normalise_time(t_low))
        return parts
    out = []
    if not date_key.universal:
        out.append(_value_condition(sps.start_date, date_key, "DA"))
    if not time_key.universal:
        out.append(_value_condition(sps.start_time, time_key, "TM"))
    return out


def element_value(ds: Dataset, keyword: str) -> Any:
    """A key's value as matching reads it: None (absent), a string, or a list of
    strings (multi-valued)."""
    return _elem_value(ds, keyword)


def _elem_value(ds: Dataset, keyword: str) -> Any:
    elem = ds.get(keyword)
    if elem is None:
        return None
    value = ds[keyword].value
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        return [str(v) for v in value]
    return None if value is None else str(value)


def _level_condition(ds: Dataset, keyword: str, columns: dict[str, Column],
                     pn_columns: dict[str, tuple[Column, ...]]) -> tuple[bool, Any]:
    """(is a matching key at this level, its SQL condition or None when universal)."""
    value = _elem_value(ds, keyword)
    if keyword in columns:
        vr = dictionary_VR(keyword)
        key = parse_key(value, vr)
        return True, None if key.universal else _value_condition(columns[keyword], key, vr)
    if keyword in pn_columns:
        return True, _pn_condition(pn_columns[keyword], value)
    return False, None


def has_value(ds: Dataset, keyword: str) -> bool:
    """Whether a key carries a value (a key we do not match on then makes the answer
    0xFF01, K.2.2.1.1.2)."""
    return _has_value(ds, keyword)


def _has_value(ds: Dataset, keyword: str) -> bool:
    """Whether a key we do not match on carries a value (then 0xFF01, K.2.2.1.1.2)."""
    if dictionary_VR(keyword) == "SQ":
        return any(requested_keywords(item) and any(e.value not in (None, "", []) for e in item)
                   for item in ds[keyword].value or [])
    return _elem_value(ds, keyword) not in (None, "", [])


Condition = tuple[str, ColumnElement[bool]]


@dataclass(frozen=True)
class StationRestriction:
    """A universal station query of a modality profile's AE titles answered with these
    stations' steps only (module doc)."""

    profile: str
    stations: tuple[str, ...]

    @property
    def reason(self) -> str:
        """The condition's name, as the console's explainer shows it."""
        return (f"modality profile {self.profile}: a query without a station gets only "
                f"{', '.join(self.stations)}")

    def condition(self) -> ColumnElement[bool]:
        return ScheduledProcedureStep.id.in_(select(StationAETitle.sps_pk).where(
            StationAETitle.ae_title.in_(self.stations)))


def names_no_station(identifier: Dataset) -> bool:
    """Whether the query leaves Scheduled Station AE Title universal (C.2.2.2.3)."""
    seq = identifier.get(SPS_SEQUENCE)
    if seq is None or len(seq) != 1:
        return True
    return parse_key(_elem_value(seq[0], "ScheduledStationAETitle"), "AE").universal


def query_conditions(identifier: Dataset, settings: Settings, *,
                     restriction: StationRestriction | None = None,
                     ) -> tuple[list[Condition], bool]:
    """The SQL conditions of an identifier, each named after the key (or rule) it comes
    from, and whether an unsupported key was given; ``restriction``: the calling
    modality's, if any (module doc). Raises QueryError."""
    conditions: list[Condition] = [("patient merged away", Patient.merged_into_id.is_(None))]
    unsupported = False
    for keyword in requested_keywords(identifier):
        if keyword in NEVER_MATCHED or keyword == SPS_SEQUENCE:
            continue
        known, condition = _level_condition(identifier, keyword, TOP_LEVEL_COLUMNS, TOP_LEVEL_PN)
        if condition is not None:
            conditions.append((keyword, condition))
        unsupported |= not known and _has_value(identifier, keyword)
    status_given = False
    seq = identifier.get(SPS_SEQUENCE)
    if seq is not None and len(seq) > 1:
        raise QueryError(IDENTIFIER_MISMATCH, "the SPS Sequence key must hold one item")
    if seq is not None and len(seq) == 1:
        item = seq[0]
        for keyword in requested_keywords(item):
            known, condition = _level_condition(item, keyword, SPS_COLUMNS, SPS_PN)
            if keyword == "ScheduledStationAETitle":
                key = parse_key(_elem_value(item, keyword), "AE")
                if not key.universal:
                    # IN (subquery), not a correlated EXISTS: the planner can then start
                    # from the station's steps instead of testing every step of the day.
                    condition = ScheduledProcedureStep.id.in_(
                        select(StationAETitle.sps_pk).where(
                            _value_condition(StationAETitle.ae_title, key, "AE")))
            if condition is not None:
                conditions.append((keyword, condition))
                status_given |= keyword == "ScheduledProcedureStepStatus"
            unsupported |= (keyword not in SPS_HANDLED and dictionary_VR(keyword) != "SQ"
                            and _has_value(item, keyword))
        start = _start_conditions(_elem_value(item, "ScheduledProcedureStepStartDate"),
                                  _elem_value(item, "ScheduledProcedureStepStartTime"))
        conditions += [("ScheduledProcedureStepStartDate/Time", c) for c in start]
    if restriction is not None and names_no_station(identifier):
        conditions.append((restriction.reason, restriction.condition()))
    if not status_given:
        statuses = settings.worklist_statuses
        conditions.append(("SPS status not asked: only MWLB_WORKLIST_STATUSES listed",
                           ScheduledProcedureStep.status.in_(statuses) if statuses else false()))
    return conditions, unsupported


# The attribute columns are read as JSON text and decoded by decode_attributes().
ITEM_COLUMNS = (
    ScheduledProcedureStep.id, ScheduledProcedureStep.status,
    ScheduledProcedureStep.start_datetime,
    cast(ScheduledProcedureStep.attributes, Text).label("step_attributes"),
    cast(RequestedProcedure.attributes, Text).label("procedure_attributes"),
    cast(Patient.attributes, Text).label("patient_attributes"),
    Patient.specific_character_set.label("charset"),
)
def item_query(columns: tuple[Any, ...] | None = None) -> Any:
    """Steps with their procedure and patient (the shape of a worklist item)."""
    return (
        select(*(columns or (ScheduledProcedureStep, RequestedProcedure, Patient)))
        .join(RequestedProcedure, ScheduledProcedureStep.procedure_pk == RequestedProcedure.id)
        .join(ImagingOrder, RequestedProcedure.order_pk == ImagingOrder.id)
        .join(Patient, ImagingOrder.patient_pk == Patient.id)
    )


def build_query(identifier: Dataset, settings: Settings, *,
                columns: tuple[Any, ...] | None = ITEM_COLUMNS,
                restriction: StationRestriction | None = None) -> tuple[Any, bool]:
    """The SELECT for an identifier, and whether an unsupported key was given. The
    C-FIND SCP selects plain columns (ITEM_COLUMNS: this is the hot path of every
    query); ``columns=None`` selects the (step, procedure, patient) entities;
    ``restriction``: the calling modality's station restriction, if any."""
    conditions, unsupported = query_conditions(identifier, settings,
                                               restriction=restriction)
    query = item_query(columns).where(*(c for _, c in conditions)).order_by(
        ScheduledProcedureStep.start_datetime, ScheduledProcedureStep.id)
    return query, unsupported


def excluding_keys(session: Session, identifier: Dataset, settings: Settings,
                   sps_pk: int, *, restriction: StationRestriction | None = None
                   ) -> list[str]:
    """Which conditions of ``identifier`` step ``sps_pk`` fails ([] = it matches)."""
    conditions, _ = query_conditions(identifier, settings, restriction=restriction)
    out = []
    for name, condition in conditions:
        hit = session.execute(item_query().where(ScheduledProcedureStep.id == sps_pk,
                                                 condition).limit(1)).first()
        if hit is None:
            out.append(name)
    return out
