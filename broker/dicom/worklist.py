"""Modality Worklist C-FIND (PS3.4 Annex K): query keys -> SQL -> responses.

Matching runs in SQL on the indexed columns (never by loading the worklist); rows are
streamed. Supported matching keys are those of Table K.6-1 plus IHE's R+ keys (IHE RAD
TF-2 4.5 (RAD-5)) and these extras: Patient's Name / ID / Issuer / Birth Date / Sex,
Admission ID, Accession Number, Requested Procedure ID / Priority, Study Instance UID,
Referring and Requesting Physician; in the SPS item: Scheduled Station AE Title,
SPS Start Date / Time, Modality, Scheduled Performing Physician's Name, SPS ID,
SPS Status, Scheduled Station Name, SPS Location. Any other key with a value is
ignored for matching and returned as a return key; pending responses then carry
0xFF01 (K.2.2.1.1.2, Table K.4-1).

Status policy: an SPS Sequence key with more than one item is refused with 0xA900
(identifier does not match SOP class, Table K.4-1); an identifier we cannot read gets
0xC000. When more steps match than MWLB_WORKLIST_MAX_RESULTS, the first that many (by
start time) are returned and the query ends with 0xA700 "out of resources", the
status Table K.4-1 gives for a query the SCP will not complete, so the modality knows
the list is cut and can narrow its query.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import Any

import orjson
from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset
from sqlalchemy import ColumnElement, Text, and_, cast, false, or_, select
from sqlalchemy.orm import InstrumentedAttribute, Session

from broker.config import Settings
from broker.dicom.items import NEVER_MATCHED, SPS_SEQUENCE, build_response, requested_keywords
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
from broker.domain.types import station_ae_titles
from broker.models import (
    ImagingOrder,
    Patient,
    RequestedProcedure,
    ScheduledProcedureStep,
    StationAETitle,
)

log = logging.getLogger(__name__)

PENDING, PENDING_WARNING, SUCCESS, CANCELLED = 0xFF00, 0xFF01, 0x0000, 0xFE00
OUT_OF_RESOURCES, IDENTIFIER_MISMATCH, UNABLE_TO_PROCESS = 0xA700, 0xA900, 0xC000

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
        parts = [not_empty]
        if low:
            parts.append(column >= low)
        if high:
            parts.append(column <= high)
        return and_(*parts)
    raise AssertionError(key.kind)


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


def _has_value(ds: Dataset, keyword: str) -> bool:
    """Whether a key we do not match on carries a value (then 0xFF01, K.2.2.1.1.2)."""
    if dictionary_VR(keyword) == "SQ":
        return any(requested_keywords(item) and any(e.value not in (None, "", []) for e in item)
                   for item in ds[keyword].value or [])
    return _elem_value(ds, keyword) not in (None, "", [])


Condition = tuple[str, ColumnElement[bool]]


def query_conditions(identifier: Dataset, settings: Settings) -> tuple[list[Condition], bool]:
    """The SQL conditions of an identifier, each named after the key (or rule) it comes
    from, and whether an unsupported key was given. Raises QueryError."""
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
BATCH = 500


@lru_cache(maxsize=32768)
def decode_attributes(text: str | None) -> dict[str, Any]:
    """Stored attributes JSON -> dict, memoised on the text itself (so an update,
    which changes the text, is never served stale). Modalities ask for the same
    items again and again; decoding them was the largest cost of a C-FIND. The dict
    is shared: callers must copy it before changing anything."""
    return orjson.loads(text) if text else {}


def item_query(columns: tuple[Any, ...] | None = None) -> Any:
    """Steps with their procedure and patient (the shape of a worklist item)."""
    return (
        select(*(columns or (ScheduledProcedureStep, RequestedProcedure, Patient)))
        .join(RequestedProcedure, ScheduledProcedureStep.procedure_pk == RequestedProcedure.id)
        .join(ImagingOrder, RequestedProcedure.order_pk == ImagingOrder.id)
        .join(Patient, ImagingOrder.patient_pk == Patient.id)
    )


def build_query(identifier: Dataset, settings: Settings, *,
                columns: tuple[Any, ...] | None = ITEM_COLUMNS) -> tuple[Any, bool]:
    """The SELECT for an identifier, and whether an unsupported key was given. The
    C-FIND SCP selects plain columns (ITEM_COLUMNS: this is the hot path of every
    query); ``columns=None`` selects the (step, procedure, patient) entities."""
    conditions, unsupported = query_conditions(identifier, settings)
    query = item_query(columns).where(*(c for _, c in conditions)).order_by(
        ScheduledProcedureStep.start_datetime, ScheduledProcedureStep.id)
    return query, unsupported


def excluding_keys(session: Session, identifier: Dataset, settings: Settings,
                   sps_pk: int) -> list[str]:
    """Which conditions of ``identifier`` step ``sps_pk`` fails ([] = it matches)."""
    conditions, _ = query_conditions(identifier, settings)
    out = []
    for name, condition in conditions:
        hit = session.execute(item_query().where(ScheduledProcedureStep.id == sps_pk,
                                                 condition).limit(1)).first()
        if hit is None:
            out.append(name)
    return out


@dataclass(frozen=True)
class WorklistItem:
    """One matching step as stored: its status, start and the JSON text of its step,
    requested procedure and patient attributes. ``step`` (the SPS item attributes with
    the authoritative status and station AE titles) and ``merged`` (patient and
    procedure attributes) are decoded when first asked for."""

    sps_pk: int
    status: str
    start_datetime: str
    patient_charset: str
    step_text: str
    procedure_text: str
    patient_text: str

    @cached_property
    def step(self) -> dict[str, Any]:
        step = dict(decode_attributes(self.step_text))
        step["ScheduledProcedureStepStatus"] = self.status
        step["ScheduledStationAETitle"] = station_ae_titles(step)
        return step

    @cached_property
    def merged(self) -> dict[str, Any]:
        return {**decode_attributes(self.patient_text),
                **decode_attributes(self.procedure_text)}

    def dataset(self, query: Dataset, zone: str) -> Dataset:
        return build_response(query, self.merged, self.step,
                              patient_charset=self.patient_charset, zone=zone,
                              start_datetime=self.start_datetime)


def find_worklist(session: Session, identifier: Dataset, settings: Settings, *,
                  is_cancelled: Any = None,
                  returned: list[int] | None = None) -> Iterator[tuple[int, WorklistItem | None]]:
    """Yield (status, item) pairs: pending statuses with their item, then at most one
    final status without (cancel, out of resources, or a refusal); the ids of the
    steps yielded are appended to ``returned`` when given."""
    try:
        query, unsupported = build_query(identifier, settings)
    except QueryError as exc:
        log.info("C-FIND refused: 0x%04X %s", exc.status, exc)
        yield exc.status, None
        return
    except Exception as exc:  # an identifier we cannot read
        log.info("C-FIND identifier not processed: %s", type(exc).__name__)
        yield UNABLE_TO_PROCESS, None
        return
    cap = settings.worklist_max_results
    if cap:
        query = query.limit(cap + 1)
    rows = _stream(session, query, unsupported, is_cancelled,
                   returned if returned is not None else [])
    for sent, (status, item) in enumerate(rows):
        if status == CANCELLED:
            yield status, None
            return
        if cap and sent >= cap:
            log.info("C-FIND result cap %d reached: 0xA700", cap)
            yield OUT_OF_RESOURCES, None
            return
        yield status, item


def _stream(session: Session, query: Any, unsupported: bool, is_cancelled: Any,
            returned: list[int]) -> Iterator[tuple[int, WorklistItem | None]]:
    pending = PENDING_WARNING if unsupported else PENDING
    rows = session.connection().execute(query.execution_options(yield_per=BATCH))
    for row in rows:
        if is_cancelled is not None and is_cancelled():
            yield CANCELLED, None
            return
        returned.append(row.id)
        yield pending, WorklistItem(row.id, row.status, row.start_datetime, row.charset,
                                    row.step_attributes or "", row.procedure_attributes or "",
                                    row.patient_attributes or "")

