"""The DICOM JSON Model in and out of the UPS-RS adapter (PS3.18 F.2), UID syntax
(PS3.5 9.1) and media-type checks (PS3.18 8.7)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydicom.dataset import Dataset
from starlette.requests import Request

from broker.web.dicomjson import (
    DicomWebError,
    from_json,
    json_response,
    require_acceptable,
    require_json_body,
    to_json,
    valid_uid,
    warning_value,
)


def _request(**headers: str) -> Request:
    scope: dict[str, Any] = {
        "type": "http", "method": "GET", "path": "/dicomweb/workitems", "query_string": b"",
        "headers": [(k.replace("_", "-").lower().encode(), v.encode())
                    for k, v in headers.items()],
        "server": ("broker.example", 8080), "scheme": "http"}
    return Request(scope)


def _workitem() -> Dataset:
    ds = Dataset()
    ds.SOPInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    ds.PatientName = "DOE^JANE"
    ds.ProcedureStepState = "SCHEDULED"
    ds.ScheduledProcedureStepStartDateTime = "20261202093000"
    station = Dataset()
    station.CodeValue, station.CodingSchemeDesignator = "CT01", "99MWLB"
    station.CodeMeaning = "CT room 1"
    ds.ScheduledStationNameCodeSequence = [station]
    ds.InputInformationSequence = []
    return ds


def test_round_trip_through_dicom_json() -> None:
    ds = _workitem()
    document = to_json(ds)
    assert document["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "DOE^JANE"}]}
    assert document["00741000"] == {"vr": "CS", "Value": ["SCHEDULED"]}
    assert document["00404025"]["Value"][0]["00080100"] == {"vr": "SH", "Value": ["CT01"]}
    back = from_json(json.loads(json.dumps(document)))
    assert back == ds
    assert from_json([document]) == ds  # an array of one dataset is taken too


def test_response_is_an_array_in_the_dicom_json_media_type() -> None:
    response = json_response([_workitem(), _workitem()])
    assert response.media_type == "application/dicom+json"
    assert len(json.loads(bytes(response.body))) == 2


@pytest.mark.parametrize(("document", "says"), [
    ([], "holds 0 datasets"),
    ("text", "not a DICOM JSON dataset"),
    ({"PatientName": {"vr": "PN"}}, "is not a tag"),
    ({"00100010": {"vr": "XX", "Value": ["x"]}}, "'XX' is not a VR"),
    ({"00741000": {"vr": "CS", "Value": "SCHEDULED"}}, "Value is a JSON array"),
    ({"00081195": {"vr": "UI", "Value": ["1.2.abc"]}}, "Invalid value for VR UI"),
    ({"00100030": {"vr": "DA", "Value": ["2025-03-10"]}}, "Invalid value for VR DA"),
    ({"00100010": {"vr": "PN", "Value": [{"Alphabetic": "A" * 70}]}}, "exceeds"),
    ({"00404025": {"vr": "SQ", "Value": [{"00080100": {"vr": "SH", "Value": ["X" * 17]}}]}},
     "00080100"),
])
def test_bad_payloads_are_refused_with_400(document: Any, says: str,
                                           caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(DicomWebError) as caught:
        from_json(document)
    assert caught.value.status == 400 and says in caught.value.text
    assert "Please see" not in caught.value.text
    assert caplog.records == []  # the refused value is not logged


@pytest.mark.parametrize(("uid", "ok"), [
    ("1.2.840.10008.5.1.4.34.6.1", True), ("0", True), ("2.25.1" + "0" * 58, True),
    ("1.2.3.", False), ("1..2", False), ("1.02", False), ("1.2.a", False), ("", False),
    ("2.25." + "1" * 61, False),
])
def test_uid_syntax(uid: str, ok: bool) -> None:
    assert valid_uid(uid) is ok


def test_media_types() -> None:
    require_json_body(_request(content_type="application/dicom+json; charset=utf-8"))
    require_json_body(_request(content_type="application/json"))
    for wrong in ("application/dicom+xml", "text/plain", ""):
        with pytest.raises(DicomWebError) as caught:
            require_json_body(_request(content_type=wrong))
        assert caught.value.status == 415
    for fine in ("", "application/dicom+json", "*/*", "text/html, application/json;q=0.5"):
        require_acceptable(_request(accept=fine))
    for refused in ("application/dicom+xml", "application/dicom+json;q=0"):
        with pytest.raises(DicomWebError) as caught:
            require_acceptable(_request(accept=refused))
        assert caught.value.status == 406


def test_warning_header_value_names_the_service() -> None:
    value = warning_value(_request(host="broker.example:8080"), "The UPS is already IN "
                                                                "PROGRESS\r\nX: injected")
    assert value == "299 broker.example:8080: The UPS is already IN PROGRESSX: injected"
