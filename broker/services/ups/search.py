"""Search for workitems (UPS C-FIND, PS3.4 CC.2.8; UPS-RS Search, PS3.18 11.9) in SQL,
with the matching of the Modality Worklist (:mod:`broker.services.worklist_query`,
PS3.4 C.2.2.2): the same key parsing, wild cards, ranges, UID lists and PN policy,
run on the workitem's columns.

An order-born workitem matches on its patient's and requested procedure's rows (the
truth for them), a pushed one on its own copies: the two are queried apart, each with
its own columns for these keys, and merged in start order. Matching keys (Table CC.2.5-3,
"Matching Key Type" R): SOP Instance UID, Procedure Step State, Scheduled Procedure
Step Priority, Procedure Step Label, Worklist Label, Input Readiness State, Scheduled
Procedure Step Start DateTime, Expected Completion DateTime, Patient's Name / ID /
Issuer / Birth Date / Sex, Admission ID, Study Instance UID, and in their single item:
Scheduled Station Name / Class / Geographic Location Code Sequence > Code Value,
Scheduled Workitem Code Sequence > Code Value / Coding Scheme Designator, Referenced
Request Sequence > Accession Number / Requested Procedure ID / Study Instance UID.
Other keys given a value are not matched on and are reported in ``warnings``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset
from sqlalchemy import ColumnElement, Select, false, select
from sqlalchemy.orm import Session

from broker.models import (
    ImagingOrder,
    Patient,
    RequestedProcedure,
    ScheduledProcedureStep,
    UPSWorkitem,
)
from broker.services.ups.datasets import (
    TRANSACTION_UID,
    json_element,
    json_key,
    put,
    workitem_dataset,
    workitem_json,
)
from broker.services.ups.workitems import input_information
from broker.services.worklist_query import (
    NEVER_MATCHED,
    element_value,
    has_value,
    key_condition,
    pn_condition,
    requested_keywords,
)

W, P, RP = UPSWorkitem, Patient, RequestedProcedure
NO_COLUMN = None  # a key the pushed workitems keep no column for: they never match it

# Keys matched on the workitem row, whichever its origin.
OWN: dict[str, Any] = {
    "SOPInstanceUID": W.uid,
    "ProcedureStepState": W.state,
    "ScheduledProcedureStepPriority": W.priority,
    "ProcedureStepLabel": W.label,
    "WorklistLabel": W.worklist_label,
    "InputReadinessState": W.input_readiness,
    "ScheduledProcedureStepStartDateTime": W.start_datetime,
    "ExpectedCompletionDateTime": W.expected_completion,
}
# Patient and request keys: on the order's rows for an order-born workitem ...
ORDER_BORN: dict[str, Any] = {
    **OWN,
    "PatientID": P.patient_id,
    "IssuerOfPatientID": P.issuer,
    "PatientBirthDate": P.birth_date,
    "PatientSex": P.sex,
    "AdmissionID": P.admission_id,
    "StudyInstanceUID": RP.study_instance_uid,
}
# ... on the workitem's own copies for a pushed one.
PUSHED: dict[str, Any] = {
    **OWN,
    "PatientID": W.patient_id,
    "IssuerOfPatientID": W.issuer,
    "PatientBirthDate": W.birth_date,
    "PatientSex": W.sex,
    "AdmissionID": NO_COLUMN,
    "StudyInstanceUID": W.study_instance_uid,
}
NAMES: dict[str, tuple[Any, ...]] = {
    "order": (P.name_key_alphabetic, P.name_key_ideographic, P.name_key_phonetic),
    "pushed": (W.name_key_alphabetic, W.name_key_ideographic, W.name_key_phonetic),
}
_CODES = {
    "ScheduledStationNameCodeSequence": {"CodeValue": W.station_name_code},
    "ScheduledStationClassCodeSequence": {"CodeValue": W.station_class_code},
    "ScheduledStationGeographicLocationCodeSequence": {"CodeValue": W.station_location_code},
    "ScheduledWorkitemCodeSequence": {"CodeValue": W.workitem_code_value,
                                      "CodingSchemeDesignator": W.workitem_code_scheme},
}
IN_ITEM: dict[str, dict[str, dict[str, Any]]] = {
    "order": {**_CODES, "ReferencedRequestSequence": {
        "AccessionNumber": RP.accession_number,
        "RequestedProcedureID": RP.requested_procedure_id,
        "StudyInstanceUID": RP.study_instance_uid}},
    "pushed": {**_CODES, "ReferencedRequestSequence": {
        "AccessionNumber": W.accession_number,
        "RequestedProcedureID": NO_COLUMN,
        "StudyInstanceUID": W.study_instance_uid}},
}
TOP_LEVEL = {"order": ORDER_BORN, "pushed": PUSHED}
# Returned whatever the query asks (Table CC.2.5-3 Return Key Type 1, and the patient).
REQUIRED_RETURN_KEYS = (
    "SOPClassUID", "SOPInstanceUID", "ScheduledProcedureStepPriority",
    "ScheduledProcedureStepModificationDateTime", "ProcedureStepLabel", "WorklistLabel",
    "ScheduledProcedureStepStartDateTime", "InputReadinessState", "ProcedureStepState",
    "PatientName", "PatientID",
)


@dataclass
class SearchResult:
    """A page of matches: ``items`` with the requested and required return keys,
    ``total_capped`` true when more match than were returned (PS3.18 11.9.3.2: the
    origin server tells the client there are more), and ``warnings`` for keys that
    were not matched on. A search asked ``as_json`` fills ``documents`` (the same
    matches in the DICOM JSON model, PS3.18 F.2) instead of ``items``."""

    items: list[Dataset]
    documents: list[dict[str, Any]] = field(default_factory=list)
    total_capped: bool = False
    warnings: list[str] = field(default_factory=list)


Origin = str  # "order" (born from a scheduled step) or "pushed" (created by an SCU)


def conditions(query: Dataset, origin: Origin
               ) -> tuple[list[ColumnElement[bool]], list[ColumnElement[bool]], list[str]]:
    """The SQL conditions of a query dataset for the workitems of one origin: those on
    the workitem row, those on the order's rows (order-born only), and the keys given
    a value that are not matched on."""
    own: list[ColumnElement[bool]] = []
    joined: list[ColumnElement[bool]] = []
    ignored: list[str] = []
    columns, in_item = TOP_LEVEL[origin], IN_ITEM[origin]

    def add(column: Any, value: Any, vr: str) -> None:
        if column is NO_COLUMN:
            if key_condition(W.uid, value, vr) is not None:
                own.append(false())
            return
        condition = key_condition(column, value, vr)
        if condition is not None:
            (own if column.class_ is W else joined).append(condition)

    for keyword in requested_keywords(query):
        if keyword in NEVER_MATCHED:
            continue
        if keyword in columns:
            add(columns[keyword], element_value(query, keyword), dictionary_VR(keyword))
        elif keyword == "PatientName":
            condition = pn_condition(NAMES[origin], element_value(query, keyword))
            if condition is not None:
                (own if origin == "pushed" else joined).append(condition)
        elif keyword in in_item:
            for item in (query[keyword].value or [])[:1]:
                for sub in requested_keywords(item):
                    if sub in in_item[keyword]:
                        add(in_item[keyword][sub], element_value(item, sub),
                            dictionary_VR(sub))
                    elif has_value(item, sub):
                        ignored.append(f"{keyword}>{sub}")
        elif has_value(query, keyword):
            ignored.append(keyword)
    return own, joined, ignored


def _candidates(query: Dataset, origin: Origin, columns: tuple[Any, ...]) -> Select[Any]:
    """The workitems of one origin matching ``query``, in start order. For order-born
    ones the conditions on the patient and request go into ``sps_pk IN (steps of the
    matching orders)``, not joins of the outer query: the planner can then start from
    the patient's or request's index instead of walking every workitem in start order
    (as the worklist query does for station AE titles). Workitems of a patient merged
    away are not listed (as on the worklist)."""
    own, joined, _ignored = conditions(query, origin)
    if origin == "pushed":
        statement = select(*columns).where(W.sps_pk.is_(None), *own)
    elif joined:
        steps = (select(ScheduledProcedureStep.id)
                 .join(RP, ScheduledProcedureStep.procedure_pk == RP.id)
                 .join(ImagingOrder, RP.order_pk == ImagingOrder.id)
                 .join(P, ImagingOrder.patient_pk == P.id)
                 .where(P.merged_into_id.is_(None), *joined))
        statement = select(*columns).where(W.sps_pk.in_(steps), *own)
    else:
        statement = (select(*columns)
                     .join(ScheduledProcedureStep, W.sps_pk == ScheduledProcedureStep.id)
                     .join(RP, ScheduledProcedureStep.procedure_pk == RP.id)
                     .join(ImagingOrder, RP.order_pk == ImagingOrder.id)
                     .join(P, ImagingOrder.patient_pk == P.id)
                     .where(P.merged_into_id.is_(None), *own))
    return statement.order_by(W.start_datetime, W.id)


def _returned(ds: Dataset, wanted: set[str]) -> Dataset:
    """``ds`` (built with only the ``wanted`` keys) with every wanted key it lacks
    present and empty (PS3.4 C.2.2.1.2: a requested key we hold nothing for)."""
    for keyword in wanted:
        if keyword not in ds and keyword != TRANSACTION_UID:
            put(ds, keyword, None if dictionary_VR(keyword) != "SQ" else [])
    return ds


def _returned_json(doc: dict[str, Any], wanted: set[str]) -> dict[str, Any]:
    """:func:`_returned` in the DICOM JSON model."""
    added = False
    for keyword in wanted:
        known = json_key(keyword)
        if known is not None and known[0] not in doc and keyword != TRANSACTION_UID:
            doc[known[0]] = json_element(known[1], [] if known[1] == "SQ" else None)
            added = True
    return dict(sorted(doc.items())) if added else doc


def search(session: Session, query: Dataset, *, limit: int | None, offset: int = 0,
           calling: str = "", include_all: bool = False,
           as_json: bool = False) -> SearchResult:
    """The workitems matching ``query`` in start order, ``offset`` of them skipped,
    at most ``limit``; each with the keys the query asks for (an empty sequence key
    returns the whole sequence) and :data:`REQUIRED_RETURN_KEYS`, or with everything
    held when ``include_all`` (UPS-RS ``includefield=all``, PS3.18 11.9.3). ``calling``
    names who asks (kept for the log's ids, never its keys). ``as_json`` gives the
    matches as DICOM JSON documents (:func:`workitem_json`, no Dataset built: the
    UPS-RS answer) rather than Datasets (C-FIND).

    Each origin is read in start order up to the page's end (its index walk stops
    there) and the two are merged."""
    ignored = conditions(query, "order")[2]
    offset = max(offset, 0)
    wanted_rows = None if limit is None else offset + limit + 1
    found: list[tuple[str, int]] = []
    for origin in ("order", "pushed"):
        statement = _candidates(query, origin, (W.start_datetime, W.id))
        if wanted_rows is not None:
            statement = statement.limit(wanted_rows)
        found += [(start, pk) for start, pk in session.execute(statement)]
    found.sort()
    page = found[offset:] if limit is None else found[offset:offset + limit]
    capped = limit is not None and len(found) > offset + limit
    ids = [pk for _start, pk in page]
    loaded = {w.id: (w, s, rp, o, p) for w, s, rp, o, p in session.execute(
        select(W, ScheduledProcedureStep, RP, ImagingOrder, P)
        .outerjoin(ScheduledProcedureStep, W.sps_pk == ScheduledProcedureStep.id)
        .outerjoin(RP, ScheduledProcedureStep.procedure_pk == RP.id)
        .outerjoin(ImagingOrder, RP.order_pk == ImagingOrder.id)
        .outerjoin(P, ImagingOrder.patient_pk == P.id)
        .where(W.id.in_(ids)))} if ids else {}
    rows = [loaded[pk] for pk in ids if pk in loaded]
    wanted = set(requested_keywords(query)) | set(REQUIRED_RETURN_KEYS)
    inputs: dict[str, list[dict[str, Any]]] = {}
    if "InputInformationSequence" in wanted:
        inputs = input_information(session, [rp.study_instance_uid for _w, _s, rp, _o, _p
                                             in rows if rp is not None])
    if include_all:
        wanted.add("InputInformationSequence")
        inputs = input_information(session, [rp.study_instance_uid for _w, _s, rp, _o, _p
                                             in rows if rp is not None])
    build = workitem_json if as_json else workitem_dataset
    built: list[Any] = [build(w, s, rp, o, p,
                              inputs.get(rp.study_instance_uid, []) if rp else [],
                              wanted=None if include_all else wanted)
                        for w, s, rp, o, p in rows]
    if not include_all:
        built = [_returned_json(doc, wanted) if as_json else _returned(doc, wanted)
                 for doc in built]
    warnings = [f"{key} is not a matching key of this service: ignored" for key in ignored]
    if as_json:
        return SearchResult([], built, capped, warnings)
    return SearchResult(built, [], capped, warnings)


def matching_uids(session: Session, query: Dataset, uids: list[str]) -> set[str]:
    """Which of ``uids`` match ``query`` (a filtered global subscription's filter)."""
    if not uids:
        return set()
    out: set[str] = set()
    for origin in ("order", "pushed"):
        statement = _candidates(query, origin, (W.uid,)).where(W.uid.in_(uids))
        out |= set(session.scalars(statement))
    return out
