"""A workitem's dataset (PS3.4 Table CC.2.5-3) built from what is stored, and its
matching columns taken from a dataset.

An order-born workitem is assembled from its rows: the scheduled step, the requested
procedure, the order and the patient (so an ADT or order update shows), then what
performers stored on it (``attributes``, DICOM JSON model, PS3.18 F.2) laid over. A
pushed workitem is its stored dataset. Both carry the state, priority and labels of
the workitem row, which are the truth for them. The Transaction UID is never part of
a dataset given out (PS3.4 CC.1.1).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from functools import cache
from typing import Any

from pydicom import config
from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from broker.domain.matching import person_name_keys
from broker.domain.types import station_ae_titles
from broker.models import (
    ImagingOrder,
    Patient,
    RequestedProcedure,
    ScheduledProcedureStep,
    UPSWorkitem,
)

UPS_SOP_CLASS = "1.2.840.10008.5.1.4.34.6.1"  # UPS Push: the SOP Class of every workitem
LOCAL_SCHEME = "99MWLB"  # Coding Scheme Designator of the broker's local codes (PS3.3 8.2)
TRANSACTION_UID = "TransactionUID"
# Requested procedure attributes carried in the Referenced Request Sequence (0040,A370).
REQUEST_KEYWORDS = (
    "AccessionNumber", "IssuerOfAccessionNumberSequence", "StudyInstanceUID",
    "RequestedProcedureID", "RequestedProcedureDescription", "RequestedProcedureCodeSequence",
    "ReasonForTheRequestedProcedure", "RequestingPhysician", "RequestingService",
)


# -- keyword dicts <-> datasets ---------------------------------------------------------

def to_dataset(attributes: Mapping[str, Any]) -> Dataset:
    """A Dataset from a stored keyword dict (a sequence is a list of such dicts).

    The values were checked when they were received and stored; they are not checked
    again here (no value validation: a search builds a dataset per workitem)."""
    ds = Dataset()
    for keyword, value in attributes.items():
        if value is not None:
            put(ds, keyword, value)
    return ds


def put(ds: Dataset, keyword: str, value: Any) -> None:
    """Set ``keyword`` in ``ds`` to a stored value ("" or None: zero length; a list of
    keyword dicts for a sequence), without value validation."""
    tag = tag_for_keyword(keyword)
    if tag is None:
        return
    vr = dictionary_VR(tag)
    if vr == "SQ":
        items = value if isinstance(value, list) else []
        value = Sequence([to_dataset(i) for i in items if isinstance(i, dict)])
    elif value == "":
        value = None
    ds.add(DataElement(tag, vr, value, validation_mode=config.IGNORE))


# -- keyword dicts -> the DICOM JSON model (PS3.18 F.2) --------------------------------

INT_VRS = frozenset({"IS", "SL", "SS", "SV", "UL", "US", "UV"})
FLOAT_VRS = frozenset({"DS", "FD", "FL"})
# VRs whose value may hold a backslash (PS3.5 6.2): never split into values.
ONE_VALUE_VRS = frozenset({"LT", "ST", "UT", "UR", "UN"})
TRANSACTION_UID_TAG = "00081195"


@cache
def json_key(keyword: str) -> tuple[str, str] | None:
    """The DICOM JSON key (tag as 8 hex digits) and VR of a keyword, None if unknown."""
    tag = tag_for_keyword(keyword)
    if tag is None:
        return None
    return f"{tag:08X}", dictionary_VR(tag)


@cache
def keyword_of(key: str) -> str:
    """The keyword of a DICOM JSON key ("" when private or unknown)."""
    try:
        return keyword_for_tag(int(key, 16)) or ""
    except ValueError:
        return ""


def _number(vr: str, text: str) -> Any:
    try:
        number = float(text)
    except ValueError:
        return text
    return int(number) if vr in INT_VRS else number


def json_element(vr: str, value: Any) -> dict[str, Any]:
    """One attribute of a stored keyword dict in the DICOM JSON model (PS3.18 F.2.2):
    what :func:`to_dataset` then pydicom's ``to_json_dict`` give, without a Dataset."""
    if vr == "SQ":
        items = value if isinstance(value, list) else []
        return {"vr": vr, "Value": [json_of(i) for i in items if isinstance(i, dict)]}
    if value is None or value == "" or value == []:
        return {"vr": vr}
    if isinstance(value, list):
        values = [str(v) for v in value]
    elif vr in ONE_VALUE_VRS:
        values = [str(value)]
    else:
        values = str(value).split("\\")
    if vr == "PN":
        names: list[Any] = []
        for name in values:
            groups = name.split("=")
            person = {"Alphabetic": groups[0]}
            if len(groups) > 1:
                person["Ideographic"] = groups[1]
            if len(groups) > 2:
                person["Phonetic"] = groups[2]
            names.append(person)
        return {"vr": vr, "Value": names}
    if vr in INT_VRS or vr in FLOAT_VRS:
        return {"vr": vr, "Value": [_number(vr, v) if v.strip() else None for v in values]}
    return {"vr": vr, "Value": values}


def json_of(attributes: Mapping[str, Any]) -> dict[str, Any]:
    """A stored keyword dict in the DICOM JSON model (PS3.18 F.2), straight from the
    values: the search answer's encoding (a Dataset per workitem costs milliseconds)."""
    out: dict[str, Any] = {}
    for keyword, value in attributes.items():
        known = json_key(keyword) if value is not None else None
        if known is not None:
            out[known[0]] = json_element(known[1], value)
    return out


def keywords(ds: Dataset) -> dict[str, Any]:
    """A dataset as a plain keyword dict (sequences as lists of dicts; values as text or
    lists of text), what the domain's rules read."""
    out: dict[str, Any] = {}
    for elem in ds:
        if not elem.keyword:
            continue
        if elem.VR == "SQ":
            out[elem.keyword] = [keywords(item) for item in elem.value or []]
        elif elem.value is None or elem.value == "":
            out[elem.keyword] = ""
        elif elem.VM > 1:
            out[elem.keyword] = [str(v) for v in elem.value]
        else:
            out[elem.keyword] = str(elem.value)
    return out


def overlay(base: Dataset, top: Dataset) -> Dataset:
    """``base`` with every element of ``top`` put over it (whole sequences replaced)."""
    for elem in top:
        base[elem.tag] = elem
    return base


def stored(row: UPSWorkitem) -> Dataset:
    """What is stored on a workitem (its ``attributes``) as a Dataset."""
    return Dataset.from_json(row.attributes or {})


def _text(value: Any) -> str:
    if isinstance(value, list):
        return str(value[0]) if value else ""
    return "" if value is None else str(value)


def _first_code(attributes: Mapping[str, Any], *sequences: str) -> dict[str, Any]:
    for keyword in sequences:
        items = attributes.get(keyword)
        if isinstance(items, list) and items and isinstance(items[0], dict):
            return items[0]
    return {}


def _code(value: str, scheme: str, meaning: str) -> list[dict[str, str]]:
    if not value:
        return []
    return [{"CodeValue": value, "CodingSchemeDesignator": scheme,
             "CodeMeaning": meaning or value}]


def dicom_datetime(at: datetime | None) -> str:
    """A DT value (UTC, with its offset) of a stored time."""
    if at is None:
        return ""
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    return at.astimezone(UTC).strftime("%Y%m%d%H%M%S.%f") + "+0000"


# -- what a step's workitem holds -------------------------------------------------------

def step_scheduled(step: Mapping[str, Any], procedure: Mapping[str, Any]) -> dict[str, Any]:
    """The scheduled-procedure attributes of a step's workitem (PS3.3 C.30.2) as a
    keyword dict: station name / class / location codes from the Scheduled Station AE
    Title, Modality and SPS Location; the workitem code from the Scheduled Protocol
    Code Sequence, else the Requested Procedure Code Sequence; the label from the step
    or procedure description; the worklist label is the station's AE title (the
    worklist a modality pulls), else the modality."""
    titles = station_ae_titles(dict(step))
    station = titles[0] if titles else ""
    modality = _text(step.get("Modality"))
    location = _text(step.get("ScheduledProcedureStepLocation"))
    code = _first_code(step, "ScheduledProtocolCodeSequence") or _first_code(
        procedure, "RequestedProcedureCodeSequence")
    label = (_text(step.get("ScheduledProcedureStepDescription"))
             or _text(procedure.get("RequestedProcedureDescription"))
             or _text(code.get("CodeMeaning")) or _text(step.get("ScheduledProcedureStepID")))
    return {
        "ProcedureStepLabel": label[:64],
        "WorklistLabel": (station or modality)[:64],
        "ScheduledStationNameCodeSequence": _code(
            station[:16], LOCAL_SCHEME, _text(step.get("ScheduledStationName")) or station),
        "ScheduledStationClassCodeSequence": _code(modality[:16], "DCM", modality),
        "ScheduledStationGeographicLocationCodeSequence": _code(
            location[:16], LOCAL_SCHEME, location),
        "ScheduledWorkitemCodeSequence": _code(
            _text(code.get("CodeValue"))[:16], _text(code.get("CodingSchemeDesignator"))[:16],
            _text(code.get("CodeMeaning"))) if code else [],
    }


def scheduled_columns(scheduled: Mapping[str, Any]) -> dict[str, str]:
    """The workitem's matching columns of its scheduled-procedure attributes (a keyword
    dict as :func:`step_scheduled` or :func:`keywords` give)."""
    workitem = _first_code(scheduled, "ScheduledWorkitemCodeSequence")
    return {
        "label": _text(scheduled.get("ProcedureStepLabel"))[:64],
        "worklist_label": _text(scheduled.get("WorklistLabel"))[:64],
        "station_name_code": _text(_first_code(
            scheduled, "ScheduledStationNameCodeSequence").get("CodeValue"))[:16],
        "station_class_code": _text(_first_code(
            scheduled, "ScheduledStationClassCodeSequence").get("CodeValue"))[:16],
        "station_location_code": _text(_first_code(
            scheduled, "ScheduledStationGeographicLocationCodeSequence").get("CodeValue"))[:16],
        "workitem_code_value": _text(workitem.get("CodeValue"))[:16],
        "workitem_code_scheme": _text(workitem.get("CodingSchemeDesignator"))[:16],
    }


def local_datetime(dt: str) -> str:
    """A DT value as the columns keep it: ``YYYYMMDDHHMMSS[.ffffff]``, the UTC offset
    dropped."""
    text = dt.strip()
    for sign in "+-":
        if sign in text[4:]:
            text = text[:4] + text[4:].split(sign)[0]
    return text[:26]


def pushed_columns(attributes: Mapping[str, Any]) -> dict[str, str]:
    """Every matching column of a pushed workitem, from its dataset as a keyword dict."""
    alphabetic, ideographic, phonetic = person_name_keys(_text(attributes.get("PatientName")))
    request = _first_code(attributes, "ReferencedRequestSequence")
    return {
        **scheduled_columns(attributes),
        "start_datetime": local_datetime(
            _text(attributes.get("ScheduledProcedureStepStartDateTime"))),
        "expected_completion": local_datetime(
            _text(attributes.get("ExpectedCompletionDateTime"))),
        "input_readiness": _text(attributes.get("InputReadinessState")) or "READY",
        "patient_id": _text(attributes.get("PatientID"))[:64],
        "issuer": _text(attributes.get("IssuerOfPatientID"))[:64],
        "name_key_alphabetic": alphabetic[:200],
        "name_key_ideographic": ideographic[:200],
        "name_key_phonetic": phonetic[:200],
        "birth_date": _text(attributes.get("PatientBirthDate"))[:8],
        "sex": _text(attributes.get("PatientSex"))[:16],
        "accession_number": _text(request.get("AccessionNumber"))[:16],
        "study_instance_uid": (_text(attributes.get("StudyInstanceUID"))
                               or _text(request.get("StudyInstanceUID")))[:64],
    }


# -- the dataset given out --------------------------------------------------------------

def _composed(row: UPSWorkitem, step: ScheduledProcedureStep | None,
              procedure: RequestedProcedure | None, order: ImagingOrder | None,
              patient: Patient | None, inputs: list[dict[str, Any]] | None,
              wanted: set[str] | None) -> tuple[dict[str, Any], list[str]]:
    """What a workitem holds apart from its stored ``attributes`` and the row's truth:
    the order-born attributes (keyword dict, only ``wanted`` ones) and the patient's
    Specific Character Set (empty when none)."""
    attrs: dict[str, Any] = {}
    if step is not None and procedure is not None and patient is not None:
        attrs = _order_born(row, step, procedure, order, patient, inputs or [])
    if wanted is not None:
        attrs = {k: v for k, v in attrs.items() if k in wanted}
    charset: list[str] = []
    if step is not None and patient is not None and patient.specific_character_set:
        charset = patient.specific_character_set.split("\\")
    return attrs, charset


def _truth(row: UPSWorkitem) -> dict[str, Any]:
    """The attributes the workitem row is the truth for."""
    return {"SOPClassUID": UPS_SOP_CLASS, "SOPInstanceUID": row.uid,
            "ProcedureStepState": row.state, "ScheduledProcedureStepPriority": row.priority,
            "ScheduledProcedureStepModificationDateTime": dicom_datetime(row.updated_at),
            "InputReadinessState": row.input_readiness}


def workitem_dataset(row: UPSWorkitem, step: ScheduledProcedureStep | None,
                     procedure: RequestedProcedure | None, order: ImagingOrder | None,
                     patient: Patient | None,
                     inputs: list[dict[str, Any]] | None = None, *,
                     wanted: set[str] | None = None) -> Dataset:
    """The workitem as Retrieve / N-GET / C-FIND give it out; with ``wanted``, only
    those top-level keywords (a search's return keys: the rest is never built). The
    same attributes as :func:`workitem_json` (a unit test keeps the two equal)."""
    attrs, charset = _composed(row, step, procedure, order, patient, inputs, wanted)
    ds = to_dataset(attrs)
    if charset:
        ds.SpecificCharacterSet = charset
    if row.attributes:
        own = stored(row)
        if wanted is not None:
            for elem in list(own):
                if elem.keyword not in wanted and elem.keyword != "SpecificCharacterSet":
                    del own[elem.tag]
        overlay(ds, own)
    if TRANSACTION_UID in ds:
        del ds[TRANSACTION_UID]
    truth = _truth(row)
    if "InputReadinessState" in ds:
        del truth["InputReadinessState"]
    for keyword, value in truth.items():
        if wanted is None or keyword in wanted:
            put(ds, keyword, value)
    return ds


def workitem_json(row: UPSWorkitem, step: ScheduledProcedureStep | None,
                  procedure: RequestedProcedure | None, order: ImagingOrder | None,
                  patient: Patient | None,
                  inputs: list[dict[str, Any]] | None = None, *,
                  wanted: set[str] | None = None) -> dict[str, Any]:
    """:func:`workitem_dataset` in the DICOM JSON model (PS3.18 F.2), built straight
    from the rows (the stored ``attributes`` are already that model) without a
    Dataset: what UPS-RS Search answers (PS3.18 11.9), where a Dataset per workitem
    would cost milliseconds each. Keys in tag order, as ``to_json_dict`` gives."""
    attrs, charset = _composed(row, step, procedure, order, patient, inputs, wanted)
    doc = json_of(attrs)
    if charset:
        doc["00080005"] = {"vr": "CS", "Value": charset}
    for key, element in (row.attributes or {}).items():
        if wanted is None or key == "00080005" or keyword_of(key) in wanted:
            doc[key] = element
    doc.pop(TRANSACTION_UID_TAG, None)
    truth = _truth(row)
    if json_key("InputReadinessState")[0] in doc:  # type: ignore[index]
        del truth["InputReadinessState"]
    for keyword, value in truth.items():
        if wanted is None or keyword in wanted:
            key, vr = json_key(keyword)  # type: ignore[misc]
            doc[key] = json_element(vr, value)
    return dict(sorted(doc.items()))


def _order_born(row: UPSWorkitem, step: ScheduledProcedureStep, procedure: RequestedProcedure,
                order: ImagingOrder | None, patient: Patient,
                inputs: list[dict[str, Any]]) -> dict[str, Any]:
    """An order-born workitem's attributes as a keyword dict, from its rows."""
    step_attrs, rp_attrs = step.attributes or {}, procedure.attributes or {}
    attrs: dict[str, Any] = dict(patient.attributes or {})
    attrs.pop("SpecificCharacterSet", None)
    request = {k: rp_attrs[k] for k in REQUEST_KEYWORDS if k in rp_attrs}
    if order is not None:
        request["PlacerOrderNumberImagingServiceRequest"] = order.placer_order_number or ""
        request["FillerOrderNumberImagingServiceRequest"] = order.filler_order_number or ""
    request.update(AccessionNumber=procedure.accession_number,
                   StudyInstanceUID=procedure.study_instance_uid,
                   RequestedProcedureID=procedure.requested_procedure_id)
    attrs.update(step_scheduled(step_attrs, rp_attrs))
    attrs.update(
        ProcedureStepLabel=row.label, WorklistLabel=row.worklist_label,
        ScheduledProcedureStepStartDateTime=row.start_datetime,
        ExpectedCompletionDateTime=row.expected_completion,
        InputReadinessState=row.input_readiness,
        StudyInstanceUID=procedure.study_instance_uid,
        ReferencedRequestSequence=[request],
        InputInformationSequence=inputs,
        ScheduledProcedureStepExpirationDateTime="",
        CommentsOnTheScheduledProcedureStep=_text(
            step_attrs.get("CommentsOnTheScheduledProcedureStep")),
    )
    if step_attrs.get("ScheduledProcessingParametersSequence"):
        attrs["ScheduledProcessingParametersSequence"] = step_attrs[
            "ScheduledProcessingParametersSequence"]
    return attrs
