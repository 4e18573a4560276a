"""Real EHR orders reach the worklist (in-process broker, real MLLP, DCMTK findscu): a
sender's quirk is accepted and recorded as a warning on the message (and as ERR
severity W in a v2.5+ ACK); only what would corrupt data is refused, naming the field."""

from __future__ import annotations

import shutil
from datetime import UTC
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from tests.conftest import MAPPINGS, sample
from tests.dcmtk import WORKLIST_KEYS, findscu, sps
from tests.integration.hl7util import send, set_all, set_field
from tests.integration.test_bad_input import stored

pytestmark = pytest.mark.dcmtk


def query(broker: Any, **keys: str) -> list[Any]:
    args = [f"{k}={v}" for k, v in keys.items()]
    given = {a.split("=")[0] for a in args}
    return findscu(broker.dicom_port, [k for k in WORKLIST_KEYS if k not in given] + args)


def no_start(raw: bytes) -> bytes:
    """A STAT order whose ORC-7 / OBR-27 carry no start (``1^once^^^^S``)."""
    return set_all(set_all(raw, "ORC", 7, "1^once^^^^S"), "OBR", 27, "1^once^^^^S")


def test_order_without_start_is_scheduled_at_receipt_in_the_broker_zone(
        make_broker: Any) -> None:
    broker = make_broker(timezone="Asia/Tokyo")
    [ack] = send(broker.mllp_port, no_start(sample("05")))
    assert ack.code == "AA" and ack.err == ""  # 2.3.1: warnings stay in the store
    [row] = stored(broker)
    assert row.status == "processed" and row.warning_count == 2
    assert {(w["code"], w["location"]) for w in row.warnings} == {(101, "ORC^1^7"),
                                                                  (101, "ORC^2^7")}
    received = row.received_at.replace(tzinfo=row.received_at.tzinfo or UTC)
    local = received.astimezone(ZoneInfo("Asia/Tokyo"))
    items = query(broker, AccessionNumber="ACC0001")
    assert len(items) == 2
    for ds in items:
        assert sps(ds).ScheduledProcedureStepStartDate == local.strftime("%Y%m%d")
        assert sps(ds).ScheduledProcedureStepStartTime.startswith(local.strftime("%H%M%S"))
        assert ds.RequestedProcedurePriority == "STAT"


def test_missing_start_reject_profile_answers_ae_101(make_broker: Any, tmp_path: Path) -> None:
    site = tmp_path / "mappings"
    shutil.copytree(MAPPINGS, site)
    text = (site / "default.yaml").read_text()
    (site / "default.yaml").write_text(text.replace("missing_start: receipt",
                                                    "missing_start: reject", 1))
    broker = make_broker(mappings_dir=site)
    [ack] = send(broker.mllp_port, no_start(sample("05")))
    assert ack.code == "AE" and ack.err.startswith("ERR|ORC^1^7^101&")
    assert query(broker, AccessionNumber="ACC0001") == []


def test_start_in_obr_36_is_used(make_broker: Any) -> None:
    broker = make_broker()
    raw = set_field(set_field(no_start(sample("05")), "OBR", 36, "20250311071500"),
                    "OBR", 36, "20250311072000", occurrence=1)
    assert send(broker.mllp_port, raw)[0].code == "AA"
    items = {sps(ds).ScheduledProcedureStepID: sps(ds) for ds in
             query(broker, AccessionNumber="ACC0001")}
    assert items["SPS0001"].ScheduledProcedureStepStartDate == "20250311"
    assert items["SPS0001"].ScheduledProcedureStepStartTime.startswith("0715")
    assert items["SPS0002"].ScheduledProcedureStepStartTime.startswith("0720")


def test_coded_fields_with_stray_components_and_spaces(make_broker: Any) -> None:
    """PID-8 ``F^`` is F; OBR-24 `` MR`` is MR and the MR station rule applies."""
    broker = make_broker()
    raw = set_all(set_field(sample("05"), "PID", 8, "F^"), "OBR", 24, " MR")
    [ack] = send(broker.mllp_port, raw)
    assert ack.code == "AA"
    items = query(broker, AccessionNumber="ACC0001")
    assert len(items) == 2
    for ds in items:
        assert ds.PatientSex == "F"
        assert sps(ds).Modality == "MR"
        assert sps(ds).ScheduledStationAETitle == "MR01_AE"


def test_long_description_truncated_with_err_w_in_the_v25_ack(make_broker: Any) -> None:
    broker = make_broker()
    raw = set_field(sample("09"), "OBR", 44, "CTAPC^" + "x" * 80 + "^99HOSP")
    [ack] = send(broker.mllp_port, raw)
    assert ack.code == "AA"
    segments = ack.raw.decode().split("\r")
    assert any(s.startswith("ERR||OBR^1^44^2|102^Data type error^HL70357|W")
               and "RequestedProcedureDescription" in s and "xxxx" not in s
               for s in segments), segments
    [ds, _] = query(broker, AccessionNumber="ACC0002")
    assert ds.RequestedProcedureDescription == "x" * 64


def test_long_accession_is_refused_naming_obr_18(make_broker: Any) -> None:
    broker = make_broker()
    [ack] = send(broker.mllp_port, set_all(sample("05"), "OBR", 18, "A" * 17))
    assert ack.code == "AE" and ack.err.startswith("ERR|OBR^1^18^102&")
    assert query(broker, PatientID="135790") == []


def test_bad_birth_date_is_dropped_with_a_warning(make_broker: Any) -> None:
    broker = make_broker()
    [ack] = send(broker.mllp_port, set_field(sample("05"), "PID", 7, "1990505"))
    assert ack.code == "AA"
    [row] = stored(broker)
    assert [(w["code"], w["location"]) for w in row.warnings] == [(102, "PID^1^7")]
    assert "1990505" not in str(row.warnings)
    items = query(broker, AccessionNumber="ACC0001")
    assert len(items) == 2 and {ds.PatientBirthDate for ds in items} == {""}


def test_v23_name_with_surname_in_subcomponent_3(make_broker: Any) -> None:
    broker = make_broker()
    assert send(broker.mllp_port, set_field(sample("05"), "PID", 5, "&&SMITH^JOHN"))[0].code == "AA"
    assert {str(ds.PatientName) for ds in query(broker, AccessionNumber="ACC0001")} == {
        "SMITH^JOHN"}


def test_a08_with_an_empty_component_keeps_the_stored_sex(make_broker: Any) -> None:
    broker = make_broker()
    assert send(broker.mllp_port, sample("05"))[0].code == "AA"
    a08 = set_field(set_field(sample("03"), "PID", 3,
                              "135790^^^HOSP&2.16.840.1.113883.3.9999.1&ISO^MR"), "PID", 8, "^")
    assert send(broker.mllp_port, set_field(a08, "MSH", 10, "A08-SEX"))[0].code == "AA"
    items = query(broker, PatientID="135790")
    assert len(items) == 2
    assert {ds.PatientSex for ds in items} == {"F"}
    assert {ds.PatientBirthDate for ds in items} == {"19750620"}  # the A08 did apply
