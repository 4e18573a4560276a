"""Search for workitems (UPS C-FIND, PS3.4 CC.2.8; UPS-RS Search, PS3.18 11.9) in SQL,
with the matching of the Modality Worklist (:mod:`broker.services.worklist_query`,
PS3.4 C.2.2.2): the same key parsing, wild cards, ranges, UID lists and PN policy,
run on the workitem's columns.

An order-born workitem matches on its patient's and requested procedure's rows (the
truth for them), a pushed one on its own copies: each such key matches
``COALESCE(row of the order, column of the workitem)``. Matching keys (Table CC.2.5-3,
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
from sqlalchemy import ColumnElement, Select, func, or_, select
from sqlalchemy.orm import Session

from broker.models import (
    ImagingOrder,
    Patient,
    RequestedProcedure,
    ScheduledProcedureStep,
    UPSWorkitem,
)
from broker.services.ups.datasets import workitem_dataset
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


def _either(order_column: Any, own_column: Any) -> Any:
    return func.coalesce(order_column, own_column)


TOP_LEVEL: dict[str, Any] = {
    "SOPInstanceUID": W.uid,
    "ProcedureStepState": W.state,
    "ScheduledProcedureStepPriority": W.priority,
    "ProcedureStepLabel": W.label,
    "WorklistLabel": W.worklist_label,
    "InputReadinessState": W.input_readiness,
    "ScheduledProcedureStepStartDateTime": W.start_datetime,
    "ExpectedCompletionDateTime": W.expected_completion,
    "PatientID": _either(P.patient_id, W.patient_id),
    "IssuerOfPatientID": _either(P.issuer, W.issuer),
    "PatientBirthDate": _either(P.birth_date, W.birth_date),
    "PatientSex": _either(P.sex, W.sex),
    "AdmissionID": P.admission_id,
    "StudyInstanceUID": _either(RP.study_instance_uid, W.study_instance_uid),
}
TOP_LEVEL_PN: dict[str, tuple[Any, ...]] = {
    "PatientName": (_either(P.name_key_alphabetic, W.name_key_alphabetic),
                    _either(P.name_key_ideographic, W.name_key_ideographic),
                    _either(P.name_key_phonetic, W.name_key_phonetic)),
}
IN_ITEM: dict[str, dict[str, Any]] = {
    "ScheduledStationNameCodeSequence": {"CodeValue": W.station_name_code},
    "ScheduledStationClassCodeSequence": {"CodeValue": W.station_class_code},
    "ScheduledStationGeographicLocationCodeSequence": {"CodeValue": W.station_location_code},
    "ScheduledWorkitemCodeSequence": {"CodeValue": W.workitem_code_value,
                                      "CodingSchemeDesignator": W.workitem_code_scheme},
    "ReferencedRequestSequence": {
        "AccessionNumber": _either(RP.accession_number, W.accession_number),
        "RequestedProcedureID": RP.requested_procedure_id,
        "StudyInstanceUID": _either(RP.study_instance_uid, W.study_instance_uid)},
}
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
    were not matched on."""

    items: list[Dataset]
    total_capped: bool = False
    warnings: list[str] = field(default_factory=list)


def conditions(query: Dataset) -> tuple[list[ColumnElement[bool]], list[str]]:
    """The SQL conditions of a query dataset, and the keys given a value that are not
    matched on."""
    out: list[ColumnElement[bool]] = [or_(P.id.is_(None), P.merged_into_id.is_(None))]
    ignored: list[str] = []

    def add(condition: ColumnElement[bool] | None) -> None:
        if condition is not None:
            out.append(condition)

    for keyword in requested_keywords(query):
        if keyword in NEVER_MATCHED:
            continue
        if keyword in TOP_LEVEL:
            add(key_condition(TOP_LEVEL[keyword], element_value(query, keyword),
                              dictionary_VR(keyword)))
        elif keyword in TOP_LEVEL_PN:
            add(pn_condition(TOP_LEVEL_PN[keyword], element_value(query, keyword)))
        elif keyword in IN_ITEM:
            items = query[keyword].value or []
            for item in items[:1]:
                for sub in requested_keywords(item):
                    column = IN_ITEM[keyword].get(sub)
                    if column is not None:
                        add(key_condition(column, element_value(item, sub),
                                          dictionary_VR(sub)))
                    elif has_value(item, sub):
                        ignored.append(f"{keyword}>{sub}")
        elif has_value(query, keyword):
            ignored.append(keyword)
    return out, ignored


def _select(columns: tuple[Any, ...]) -> Select[Any]:
    return (select(*columns)
            .outerjoin(ScheduledProcedureStep, W.sps_pk == ScheduledProcedureStep.id)
            .outerjoin(RP, ScheduledProcedureStep.procedure_pk == RP.id)
            .outerjoin(ImagingOrder, RP.order_pk == ImagingOrder.id)
            .outerjoin(P, ImagingOrder.patient_pk == P.id))


def _returned(ds: Dataset, wanted: set[str]) -> Dataset:
    out = Dataset()
    for elem in ds:
        if elem.keyword in wanted or elem.keyword == "SpecificCharacterSet":
            out[elem.tag] = elem
    for keyword in wanted:
        if keyword not in out and keyword not in ("", "TransactionUID"):
            setattr(out, keyword, None)
    return out


def search(session: Session, query: Dataset, *, limit: int | None, offset: int = 0,
           calling: str = "") -> SearchResult:
    """The workitems matching ``query`` in start order, ``offset`` of them skipped,
    at most ``limit``; each with the keys the query asks for (an empty sequence key
    returns the whole sequence) and :data:`REQUIRED_RETURN_KEYS`. ``calling`` names
    who asks (kept for the log's ids, never its keys)."""
    where, ignored = conditions(query)
    statement = (_select((W, ScheduledProcedureStep, RP, ImagingOrder, P)).where(*where)
                 .order_by(W.start_datetime, W.id).offset(max(offset, 0)))
    if limit is not None:
        statement = statement.limit(limit + 1)
    rows = session.execute(statement).all()
    capped = limit is not None and len(rows) > limit
    rows = rows[:limit] if limit is not None else rows
    wanted = set(requested_keywords(query)) | set(REQUIRED_RETURN_KEYS)
    inputs: dict[str, list[dict[str, Any]]] = {}
    if "InputInformationSequence" in wanted:
        inputs = input_information(session, [rp.study_instance_uid for _w, _s, rp, _o, _p
                                             in rows if rp is not None])
    items = [_returned(workitem_dataset(w, s, rp, o, p,
                                        inputs.get(rp.study_instance_uid, []) if rp else []),
                       wanted) for w, s, rp, o, p in rows]
    warnings = [f"{key} is not a matching key of this service: ignored" for key in ignored]
    return SearchResult(items, capped, warnings)


def matching_uids(session: Session, query: Dataset, uids: list[str]) -> set[str]:
    """Which of ``uids`` match ``query`` (a filtered global subscription's filter)."""
    if not uids:
        return set()
    where, _ignored = conditions(query)
    return set(session.scalars(_select((W.uid,)).where(W.uid.in_(uids), *where)))

