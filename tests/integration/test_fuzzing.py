"""Fuzzing (hypothesis): mutated HL7 always gets an ACK (AA, AE or AR), never
a crash, a hang or a dropped connection; fuzzed C-FIND identifiers and MPPS datasets
always get a DICOM status. Derandomized, so CI runs the same cases every time."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom import config
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE

from broker.app import BrokerApp
from broker.hl7.client import MLLPClient
from tests.conftest import SAMPLES, broker_settings
from tests.modality import MPPS, in_progress, step_item

pytestmark = [pytest.mark.dcmtk]

FUZZ = settings(max_examples=60, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow,
                                       HealthCheck.function_scoped_fixture])
SAMPLE_BYTES = [p.read_bytes() for p in sorted(SAMPLES.glob("*.hl7"))]


@pytest.fixture(scope="module", autouse=True)
def _invalid_values_allowed() -> Iterator[None]:
    """Fuzzed values break VR rules on purpose: pydicom must not refuse to build them."""
    saved = (config.settings.reading_validation_mode, config.settings.writing_validation_mode)
    config.settings.reading_validation_mode = config.IGNORE
    config.settings.writing_validation_mode = config.IGNORE
    yield
    config.settings.reading_validation_mode, config.settings.writing_validation_mode = saved


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerApp]:
    directory: Path = tmp_path_factory.mktemp("fuzz")
    broker = BrokerApp(broker_settings(directory, application_ack_timeout=5.0))
    broker.start()
    yield broker
    broker.stop()


@st.composite
def mutated_message(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SAMPLE_BYTES)))
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["delete", "duplicate", "replace", "truncate", "insert",
                                     "delimiter", "empty-field"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if kind == "delete" and len(data) > 10:
            del data[at:at + draw(st.integers(1, 20))]
        elif kind == "duplicate":
            data[at:at] = data[at:at + draw(st.integers(1, 40))]
        elif kind == "replace":
            data[at] = draw(st.integers(0, 255))
        elif kind == "truncate":
            data = data[:max(at, 8)]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=12))
        elif kind == "delimiter":
            data[at] = draw(st.sampled_from(b"|^~\\&\r\n"))
        elif kind == "empty-field":
            data[at:at] = b"||"
    # Framing bytes inside the payload would split the frame: MLLP forbids them (HL7
    # Implementation Guide Appendix C).
    return bytes(data).replace(b"\x0b", b" ").replace(b"\x1c", b" ")


@FUZZ
@given(message=mutated_message())
def test_mutated_hl7_always_gets_an_ack(app: BrokerApp, message: bytes) -> None:
    with MLLPClient("127.0.0.1", app.mllp_port, timeout=15) as client:
        ack = client.send(message)
    separator = ack[3:4]  # the ACK speaks the message's own delimiters when it has them
    assert ack.startswith(b"MSH") and b"\rMSA" + separator in ack, ack[:200]
    code = ack.split(b"\rMSA" + separator, 1)[1][:2]
    assert code in (b"AA", b"AE", b"AR"), ack[:200]


KEYS = ["PatientName", "PatientID", "AccessionNumber", "PatientBirthDate", "PatientSex",
        "RequestedProcedureID", "StudyInstanceUID", "RequestedProcedurePriority",
        "IssuerOfPatientID", "ReferringPhysicianName", "MedicalAlerts"]
SPS_KEYS = ["ScheduledStationAETitle", "ScheduledProcedureStepStartDate",
            "ScheduledProcedureStepStartTime", "Modality", "ScheduledProcedureStepID",
            "ScheduledProcedureStepStatus", "ScheduledPerformingPhysicianName"]
VALUE = st.one_of(st.just(""), st.text(alphabet="AZaz09*?-\\^=. ", max_size=20),
                  st.sampled_from(["*", "?", "-", "20250310-", "-0930", "0930-1000", "A\\B",
                                   "Doe*", "=", "^^^^", "20251399", "2500"]))


@st.composite
def identifier(draw: st.DrawFn) -> Dataset:
    # At least one key: pynetdicom's SCU sends a C-FIND with an empty identifier without
    # its data set, and the SCP then waits for it until the DIMSE timeout (a client
    # quirk, not a broker answer; DCMTK findscu refuses an empty query outright).
    ds = Dataset()
    for key in draw(st.lists(st.sampled_from(KEYS), unique=True, min_size=1, max_size=6)):
        setattr(ds, key, draw(VALUE))
    if draw(st.booleans()):
        items = []
        for _ in range(draw(st.integers(0, 2))):
            item = Dataset()
            for key in draw(st.lists(st.sampled_from(SPS_KEYS), unique=True, max_size=5)):
                setattr(item, key, draw(VALUE))
            items.append(item)
        ds.ScheduledProcedureStepSequence = items
    return ds


def _association(app: BrokerApp, sop_class: str) -> Any:
    ae = AE(ae_title="FUZZ")
    ae.add_requested_context(sop_class)
    assoc = ae.associate("127.0.0.1", app.dicom_port, ae_title="MWL_BROKER")
    assert assoc.is_established
    return assoc


@FUZZ
@given(query=identifier())
def test_fuzzed_worklist_queries_end_with_a_status(app: BrokerApp, query: Dataset) -> None:
    assoc = _association(app, "1.2.840.10008.5.1.4.31")
    try:
        finals = [status.Status for status, _ in
                  assoc.send_c_find(query, "1.2.840.10008.5.1.4.31")
                  if status and status.Status not in (0xFF00, 0xFF01)]
        assert not assoc.is_aborted
    finally:
        assoc.release()
    assert len(finals) == 1 and finals[0] in (0x0000, 0xA700, 0xA900, 0xC000, 0xFE00), finals


MPPS_KEYS = ["PerformedProcedureStepID", "PerformedStationAETitle", "Modality",
             "PerformedProcedureStepStartDate", "PerformedProcedureStepStartTime",
             "PerformedProcedureStepStatus", "PatientID", "PatientName",
             "ScheduledStepAttributesSequence", "PerformedSeriesSequence"]


@FUZZ
@given(drop=st.lists(st.sampled_from(MPPS_KEYS), unique=True, max_size=4),
       changes=st.dictionaries(st.sampled_from(MPPS_KEYS[:8]), VALUE, max_size=4))
def test_fuzzed_mpps_always_gets_a_status(app: BrokerApp, drop: list[str],
                                          changes: dict[str, str]) -> None:
    ds = in_progress([step_item(accession="ACC0001", sps_id="SPS0001")])
    for key in drop:
        delattr(ds, key)
    for key, value in changes.items():
        setattr(ds, key, value)
    assoc = _association(app, MPPS)
    try:
        status, _ = assoc.send_n_create(ds, MPPS, generate_uid())
        assert not assoc.is_aborted
    finally:
        assoc.release()
    assert status is not None and "Status" in status
    assert status.Status in (0x0000, 0x0106, 0x0110, 0x0111, 0x0120, 0x0121, 0x0213), \
        hex(status.Status)
