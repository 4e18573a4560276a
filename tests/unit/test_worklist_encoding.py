"""The C-FIND fast path: identifiers encoded straight from stored attributes must be
the identifiers pydicom builds (decoded and compared), and the hand-framed C-FIND-RSP
messages must be what PS3.7/PS3.8 say."""

from __future__ import annotations

import struct
from io import BytesIO
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pynetdicom.dsutils import decode, encode

from broker.dicom.encoder import ResponsePlan, Unsupported
from broker.dicom.items import build_response
from broker.dicom.responses import command_set, frame_message

MERGED = {
    "PatientName": "Doe^Jane^Marie", "PatientID": "135790", "IssuerOfPatientID": "HOSP",
    "PatientBirthDate": "19800214", "PatientSex": "F",
    "IssuerOfPatientIDQualifiersSequence": [
        {"UniversalEntityID": "2.16.840.1.113883.3.9999.1", "UniversalEntityIDType": "ISO"}],
    "AccessionNumber": "ACC0001", "RequestedProcedureID": "RP0001",
    "RequestedProcedureDescription": "XR CHEST 2 VIEWS", "StudyInstanceUID": "2.25.1234567",
    "RequestedProcedureCodeSequence": [
        {"CodeValue": "71046", "CodingSchemeDesignator": "C4", "CodeMeaning": "XR CHEST"}],
}
STEP = {
    "ScheduledStationAETitle": ["CT01_AE", "CT02_AE"], "ScheduledProcedureStepStartDate":
    "20250310", "ScheduledProcedureStepStartTime": "093000", "Modality": "CT",
    "ScheduledProcedureStepID": "SPS0001", "ScheduledProcedureStepDescription": "Chest",
    "ScheduledProcedureStepStatus": "SCHEDULED",
    "ScheduledProtocolCodeSequence": [{"CodeValue": "P1", "CodingSchemeDesignator": "99X",
                                       "CodeMeaning": "Protocol"}],
}


def query(top: list[str], item: list[str] | None) -> Dataset:
    ds = Dataset()
    for keyword in top:
        setattr(ds, keyword, None)
    if item is not None:
        sps = Dataset()
        for keyword in item:
            setattr(sps, keyword, None)
        ds.ScheduledProcedureStepSequence = Sequence([sps] if item else [])
    return ds


QUERIES = [
    query(["PatientName", "PatientID", "AccessionNumber"], None),
    query(["PatientName", "StudyInstanceUID", "RequestedProcedureCodeSequence",
           "IssuerOfPatientIDQualifiersSequence", "ReferringPhysicianName"],
          ["ScheduledStationAETitle", "Modality", "ScheduledProcedureStepStartTime"]),
    query(["PatientID", "TimezoneOffsetFromUTC", "SpecificCharacterSet"], []),  # all SPS
    query(["PatientBirthDate", "PatientWeight", "AdmissionID"],
          ["ScheduledProtocolCodeSequence", "ScheduledPerformingPhysicianName"]),
]


def both(q: Dataset, merged: dict[str, Any], step: dict[str, Any], implicit: bool
         ) -> tuple[Dataset, Dataset]:
    fast = ResponsePlan.from_query(q, implicit=implicit).encode(
        merged, step, zone="Europe/Berlin", start_datetime="20250310093000")
    slow = build_response(q, merged, step, patient_charset="", zone="Europe/Berlin",
                          start_datetime="20250310093000")
    general = encode(slow, implicit, True)
    assert general is not None
    return decode(BytesIO(fast), implicit, True), decode(BytesIO(general), implicit, True)


@pytest.mark.parametrize("implicit", [True, False])
@pytest.mark.parametrize("q", QUERIES)
def test_fast_identifier_equals_the_pydicom_one(q: Dataset, implicit: bool) -> None:
    fast, slow = both(q, MERGED, STEP, implicit)
    assert fast == slow
    assert [e.tag for e in fast] == sorted(e.tag for e in fast)


TEXT = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcxyz0123456789^ .-", max_size=16)


@settings(max_examples=150, deadline=None)
@given(name=TEXT, pid=TEXT, accession=TEXT, titles=st.lists(TEXT, max_size=3),
       modality=st.sampled_from(["CT", "MR", "", "US"]), q=st.sampled_from(QUERIES),
       implicit=st.booleans())
def test_fast_identifier_equals_the_pydicom_one_for_any_values(
        name: str, pid: str, accession: str, titles: list[str], modality: str,
        q: Dataset, implicit: bool) -> None:
    merged = {**MERGED, "PatientName": name, "PatientID": pid, "AccessionNumber": accession}
    step = {**STEP, "ScheduledStationAETitle": [t for t in titles if t], "Modality": modality}
    fast, slow = both(q, merged, step, implicit)
    assert fast == slow


def test_text_outside_the_default_repertoire_takes_the_general_path() -> None:
    plan = ResponsePlan.from_query(QUERIES[0], implicit=True)
    with pytest.raises(Unsupported):
        plan.encode({**MERGED, "PatientName": "Müller^Jürgen"}, STEP, zone="UTC",
                    start_datetime="")


def _pdus(data: bytes) -> list[tuple[int, list[tuple[int, int, bytes]]]]:
    """(PDU type, [(context id, control header, fragment)]) for a P-DATA-TF stream."""
    out, at = [], 0
    while at < len(data):
        kind, _, length = struct.unpack(">BBI", data[at:at + 6])
        body, at = data[at + 6:at + 6 + length], at + 6 + length
        pdvs, k = [], 0
        while k < len(body):
            (item_length,) = struct.unpack(">I", body[k:k + 4])
            pdvs.append((body[k + 4], body[k + 5], body[k + 6:k + 4 + item_length]))
            k += 4 + item_length
        out.append((kind, pdvs))
    return out


def test_command_set_is_a_c_find_rsp() -> None:
    command = decode(BytesIO(command_set("1.2.840.10008.5.1.4.31", 7, 0xFF01)), True, True)
    assert command.CommandField == 0x8020
    assert command.MessageIDBeingRespondedTo == 7
    assert command.Status == 0xFF01
    assert command.CommandDataSetType != 0x0101  # a data set follows
    assert command.AffectedSOPClassUID == "1.2.840.10008.5.1.4.31"
    assert command.CommandGroupLength == len(command_set("1.2.840.10008.5.1.4.31", 7,
                                                         0xFF01)) - 12


def test_message_fits_one_pdu_or_is_fragmented_under_the_peer_maximum() -> None:
    command, dataset = command_set("1.2.840.10008.5.1.4.31", 1, 0xFF00), bytes(range(256)) * 9
    whole = _pdus(frame_message(3, command, dataset, 0))
    assert whole == [(4, [(3, 0x03, command), (3, 0x02, dataset)])]
    pieces = _pdus(frame_message(3, command, dataset, 1000))
    assert pieces[0] == (4, [(3, 0x03, command)])
    assert all(kind == 4 and len(pdvs) == 1 for kind, pdvs in pieces)
    data = [pdvs[0] for _, pdvs in pieces[1:]]
    assert [header for _, header, _ in data] == [0x00] * (len(data) - 1) + [0x02]
    assert b"".join(fragment for _, _, fragment in data) == dataset
    framed = frame_message(3, command, dataset, 1000)
    at = 0
    while at < len(framed):  # no PDU's variable field exceeds the peer's maximum
        (length,) = struct.unpack(">I", framed[at + 2:at + 6])
        assert length <= 1000
        at += 6 + length
