"""The C-FIND fast path: identifiers encoded straight from stored attributes must be
the identifiers pydicom builds (decoded and compared), the hand-framed C-FIND-RSP
messages must be what PS3.7/PS3.8 say, and the responses of one query must be the
same bytes with the fast path on and off (MWLB_DICOM_FAST_PATH)."""

from __future__ import annotations

import struct
from io import BytesIO
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom.dsutils import decode, encode

from broker.dicom import fastpath
from broker.dicom.encoder import ResponsePlan, Unsupported
from broker.dicom.items import build_response
from broker.dicom.responses import command_set, frame_message
from broker.dicom.worklist import PENDING, PENDING_WARNING, WorklistItem

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


# -- fast path on and off: the same responses ------------------------------------------

MWL = "1.2.840.10008.5.1.4.31"
SYNTAXES = [ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian]


class _Socket:
    def __init__(self) -> None:
        self.sent = bytearray()

    def send(self, data: bytes) -> None:
        self.sent += data


def _event(q: Dataset, syntax: str, max_pdu: int) -> Any:
    """What the responders read of an EVT_C_FIND event for query ``q``, with a socket
    that keeps what the fast path writes."""
    assoc = SimpleNamespace(dul=SimpleNamespace(socket=_Socket()),
                            requestor=SimpleNamespace(maximum_length=max_pdu))
    uid = UID(syntax)
    identifier = BytesIO(encode(q, uid.is_implicit_VR, uid.is_little_endian, uid.is_deflated))
    return SimpleNamespace(assoc=assoc,
                           context=SimpleNamespace(transfer_syntax=syntax, context_id=5),
                           request=SimpleNamespace(AffectedSOPClassUID=MWL, MessageID=9,
                                                   Identifier=identifier))


def _messages(data: bytes) -> list[tuple[int, bytes]]:
    """(status, identifier bytes) of the C-FIND-RSP messages in a P-DATA-TF stream."""
    out: list[tuple[int, bytes]] = []
    command, dataset = b"", b""
    for _, pdvs in _pdus(data):
        for _, header, fragment in pdvs:
            if header & 0x01:
                command += fragment
                continue
            dataset += fragment
            if header & 0x02:
                status = decode(BytesIO(command), True, True).Status
                out.append((status, dataset))
                command, dataset = b"", b""
    return out


def item_of(merged: dict[str, Any], step: dict[str, Any], charset: str = "") -> WorklistItem:
    return WorklistItem(1, str(step.get("ScheduledProcedureStepStatus", "SCHEDULED")),
                        "20250310093000", charset, orjson.dumps(step).decode(),
                        orjson.dumps(merged).decode(), "{}")


def responses(q: Dataset, items: list[tuple[int, WorklistItem]], syntax: str, *,
              fast: bool, max_pdu: int = 0) -> list[tuple[int, bytes]]:
    """The pending responses the modality receives: written by the fast path, or
    yielded as (status, Dataset) and encoded as pynetdicom's C-FIND SCP does."""
    event = _event(q, syntax, max_pdu)
    responder = fastpath.find_responder(event, q, "Europe/Berlin", fast=fast)
    yielded = [pair for status, item in items for pair in responder.pending(status, item)]
    responder.close()
    if fast:
        assert not yielded
        return _messages(bytes(event.assoc.dul.socket.sent))
    assert not event.assoc.dul.socket.sent
    uid = UID(syntax)
    return [(status, encode(ds, uid.is_implicit_VR, uid.is_little_endian, uid.is_deflated))
            for status, ds in yielded]


@pytest.mark.parametrize("fast", [True, False], ids=["fast-path", "plain"])
@pytest.mark.parametrize("syntax", SYNTAXES)
@pytest.mark.parametrize("q", QUERIES)
def test_each_mode_answers_with_the_pydicom_identifiers(q: Dataset, syntax: str,
                                                         fast: bool) -> None:
    item = item_of(MERGED, STEP)
    uid = UID(syntax)
    [(status, data)] = responses(q, [(PENDING, item)], syntax, fast=fast)
    assert status == PENDING
    expected = encode(item.dataset(q, "Europe/Berlin"), uid.is_implicit_VR,
                      uid.is_little_endian, False)
    assert decode(BytesIO(data), uid.is_implicit_VR, uid.is_little_endian) == decode(
        BytesIO(expected), uid.is_implicit_VR, uid.is_little_endian)


NAMES = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcxyz0123456789^ .-äüß山", max_size=16)


@settings(max_examples=150, deadline=None)
@given(names=st.lists(NAMES, min_size=1, max_size=4), pid=TEXT,
       titles=st.lists(TEXT, max_size=3), modality=st.sampled_from(["CT", "MR", "", "US"]),
       q=st.sampled_from(QUERIES), syntax=st.sampled_from(SYNTAXES),
       warning=st.booleans(), max_pdu=st.sampled_from([0, 120, 16384]))
def test_fast_path_on_and_off_give_byte_identical_responses(
        names: list[str], pid: str, titles: list[str], modality: str, q: Dataset,
        syntax: str, warning: bool, max_pdu: int) -> None:
    step = {**STEP, "ScheduledStationAETitle": [t for t in titles if t], "Modality": modality}
    status = PENDING_WARNING if warning else PENDING
    items = [(status, item_of({**MERGED, "PatientName": name, "PatientID": pid}, step,
                              "" if name.isascii() else "ISO_IR 192"))
             for name in names]
    fast = responses(q, items, syntax, fast=True, max_pdu=max_pdu)
    plain = responses(q, items, syntax, fast=False)
    assert fast == plain
    assert [s for s, _ in fast] == [status] * len(names)
