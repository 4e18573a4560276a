"""Orders to worklist over real sockets on the embedded default (SQLite, in-process
tasks): each sample over MLLP with its expected ACK, then DCMTK findscu as the
modality. Each test names its items of docs/swf-conformance.md."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from tests.conftest import sample
from tests.dcmtk import WORKLIST_KEYS, findscu, sps
from tests.integration.hl7util import drop_segments, send, set_all, set_field

pytestmark = pytest.mark.dcmtk

STUDY_05 = "2.25.310174223949521671785473488595620964685"
STUDY_09 = "2.25.66162651962910795921398064868634157122"


def query(broker: Any, **keys: str) -> list[Any]:
    """findscu -W with the standard return keys plus the given matching keys."""
    args = []
    for key, value in keys.items():
        if key.startswith("sps_"):
            key = f"ScheduledProcedureStepSequence[0].{key[4:]}"
        args.append(f"{key}={value}")
    given = {a.split("=")[0] for a in args}
    return findscu(broker.dicom_port, [k for k in WORKLIST_KEYS if k not in given] + args)


def by_sps_id(items: list[Any]) -> dict[str, Any]:
    return {sps(ds).ScheduledProcedureStepID: ds for ds in items}


def test_sample_05_gives_two_steps_with_mapped_attributes(make_broker: Any) -> None:
    broker = make_broker()
    [ack] = send(broker.mllp_port, sample("05"))
    assert (ack.code, ack.control_id) == ("AA", "ORM0005")
    items = by_sps_id(query(broker, AccessionNumber="ACC0001"))
    assert sorted(items) == ["SPS0001", "SPS0002"]  # D2: one item per SPS
    first, second = items["SPS0001"], items["SPS0002"]
    assert sps(first).ScheduledProcedureStepStartDate == "20250310"
    assert sps(first).ScheduledProcedureStepStartTime.startswith("0930")
    assert sps(second).ScheduledProcedureStepStartTime.startswith("0935")
    for ds in (first, second):
        assert ds.RequestedProcedureID == "RP0001"
        assert ds.StudyInstanceUID == STUDY_05
        assert str(ds.PatientName) == "Doe^Jane^Marie"
        assert ds.PatientID == "135790"
        assert ds.PatientBirthDate == "19900214"
        assert ds.PatientSex == "F"
        assert ds.RequestedProcedurePriority == "HIGH"  # D7: ORC-7.6 A
        assert ds.MedicalAlerts == "Cough & fever 3d|r/o pneumonia^effusion"  # A5
        assert ds.PregnancyStatus == 3  # PV1-15 B6
        assert sps(ds).Modality == "DX"
        assert sps(ds).ScheduledStationAETitle  # default station (D9)
        assert str(sps(ds).ScheduledPerformingPhysicianName) == "Nguyen^Anna"
        assert sps(ds).ScheduledProcedureStepStatus == "SCHEDULED"
        assert "PatientWeight" in ds and ds.PatientWeight is None  # Type 2, unknown


def test_sample_09_omi_steps_in_the_broker_time_zone(make_broker: Any) -> None:
    broker = make_broker(timezone="America/Chicago")
    [ack] = send(broker.mllp_port, sample("09"))
    assert (ack.code, ack.control_id) == ("AA", "OMI0009")
    items = by_sps_id(query(broker, AccessionNumber="ACC0002"))
    assert sorted(items) == ["SPS0003", "SPS0004"]
    for ds in items.values():
        step = sps(ds)
        assert step.ScheduledStationAETitle == "CT01_AE"
        assert step.Modality == "CT"
        assert step.ScheduledProcedureStepStartTime.startswith("1400")  # H6: -0500 = CDT
        assert ds.RequestedProcedurePriority == "STAT"
        assert ds.StudyInstanceUID == STUDY_09
        assert float(ds.PatientWeight) == 91.0
        assert str(ds.PatientName) == "O'Brien^Sean^Patrick"


def test_time_zone_setting_moves_the_start_time(make_broker: Any) -> None:
    broker = make_broker(timezone="America/New_York")
    send(broker.mllp_port, sample("09"))
    [ds, _] = query(broker, AccessionNumber="ACC0002")
    assert sps(ds).ScheduledProcedureStepStartTime.startswith("1500")  # EDT since 03-09


@pytest.mark.parametrize("ending", ["\n", "\r\n"])
def test_lf_and_crlf_segment_ends_give_identical_items(make_broker: Any, ending: str) -> None:
    """A3: every sample also sent with \\n (and \\r\\n) segment ends."""
    plain, other = make_broker(), make_broker()
    names = ["01", "02", "03", "04", "05", "09"]
    for name in names:
        assert send(plain.mllp_port, sample(name))[0].code == "AA"
        [ack] = send(other.mllp_port, sample(name).replace(b"\r", ending.encode()))
        assert ack.code == "AA", name
    for accession in ("ACC0001", "ACC0002"):
        a = query(plain, AccessionNumber=accession)
        b = query(other, AccessionNumber=accession)
        assert len(a) == len(b) == 2
        strip = {"SOPInstanceUID"}
        assert [{e.keyword: e.value for e in ds if e.keyword not in strip} for ds in a] == [
            {e.keyword: e.value for e in ds if e.keyword not in strip} for ds in b]


def test_every_sample_is_acknowledged_and_reaches_its_state(make_broker: Any) -> None:
    """Samples 01-09 in order: ADT, orders, reschedule, cancel, OMI."""
    broker = make_broker()
    acks = send(broker.mllp_port, *(sample(n) for n in ["01", "02", "03", "05", "09"]))
    assert [(a.code, a.control_id) for a in acks] == [
        ("AA", "ADT0001"), ("AA", "ADT0002"), ("AA", "ADT0003"), ("AA", "ORM0005"),
        ("AA", "OMI0009")]
    # D5: XO reschedules in place, same study, ROUTINE.
    [ack] = send(broker.mllp_port, sample("06"))
    assert ack.code == "AA"
    items = by_sps_id(query(broker, AccessionNumber="ACC0001"))
    assert sorted(items) == ["SPS0001", "SPS0002"]
    assert sps(items["SPS0001"]).ScheduledProcedureStepStartTime.startswith("1100")
    assert sps(items["SPS0002"]).ScheduledProcedureStepStartTime.startswith("1105")
    assert {ds.RequestedProcedurePriority for ds in items.values()} == {"ROUTINE"}
    assert {ds.StudyInstanceUID for ds in items.values()} == {STUDY_05}
    # D6/E14: CA without MPPS removes both steps from the worklist ...
    [ack] = send(broker.mllp_port, sample("07"))
    assert ack.code == "AA"
    assert query(broker, AccessionNumber="ACC0001") == []
    # ... and they are still there when asked for by status.
    cancelled = query(broker, AccessionNumber="ACC0001",
                      sps_ScheduledProcedureStepStatus="CANCELLED")
    assert len(cancelled) == 2
    # The OMI order is untouched.
    assert len(query(broker, AccessionNumber="ACC0002")) == 2


def test_discontinue_and_adt_authority_over_order_demographics(make_broker: Any) -> None:
    """Sample 08 (DC) after an NW for RP0003; its PID-5 differs from the registered name
    and must not change it (C5)."""
    broker = make_broker()
    send(broker.mllp_port, sample("01"))
    nw = set_all(set_all(sample("08"), "ORC", 1, "NW"), "ORC", 5, "SC")
    nw = set_field(nw, "MSH", 10, "ORM0008NW")
    assert send(broker.mllp_port, nw)[0].code == "AA"
    [ds] = query(broker, AccessionNumber="ACC0003")
    assert str(ds.PatientName) == "Müller^Jürgen^Karl^Dr^Jr PhD"
    assert ds.RequestedProcedurePriority == "STAT"
    [ack] = send(broker.mllp_port, sample("08"))
    assert ack.code == "AA"
    assert query(broker, AccessionNumber="ACC0003") == []
    [gone] = query(broker, AccessionNumber="ACC0003",
                   sps_ScheduledProcedureStepStatus="DISCONTINUED")
    assert str(gone.PatientName) == "Müller^Jürgen^Karl^Dr^Jr PhD"


def test_adt_update_and_merge_reach_pending_items(make_broker: Any) -> None:
    """C2: A08 changes the DOB on pending items; C3: A40 moves 777777's orders."""
    broker = make_broker()
    a04 = set_field(sample("01"), "PID", 3, "777777^^^HOSP&2.16.840.1.113883.3.9999.1&ISO^MR")
    a04 = set_field(a04, "MSH", 10, "ADT-777")
    order = set_all(sample("05"), "PID", 3, "777777^^^HOSP&2.16.840.1.113883.3.9999.1&ISO^MR")
    send(broker.mllp_port, sample("01"), a04, order)
    assert len(query(broker, PatientID="777777")) == 2
    # A08 for 777777 with a new birth date.
    a08 = set_field(set_field(sample("03"), "PID", 3,
                              "777777^^^HOSP&2.16.840.1.113883.3.9999.1&ISO^MR"),
                    "MSH", 10, "ADT-777-A08")
    assert send(broker.mllp_port, a08)[0].code == "AA"
    assert {ds.PatientBirthDate for ds in query(broker, PatientID="777777")} == {"19750620"}
    # A40: 777777 merged into 123456.
    assert send(broker.mllp_port, sample("04"))[0].code == "AA"
    assert query(broker, PatientID="777777") == []
    moved = query(broker, PatientID="123456")
    assert {ds.AccessionNumber for ds in moved} == {"ACC0001"}
    assert {str(ds.PatientName) for ds in moved} == {"Müller-Lüdenscheidt^Jürgen^Karl^Dr^Jr PhD"}
    # MRG-1 = PID-3 -> AE 205.
    same = set_field(set_field(sample("04"), "MRG", 1,
                               "123456^^^HOSP&2.16.840.1.113883.3.9999.1&ISO^MR"),
                     "MSH", 10, "ADT-SELF")
    [ack] = send(broker.mllp_port, same)
    assert ack.code == "AE" and "205" in ack.err and "MRG" in ack.err


def test_generated_identifiers_are_stable_across_xo(make_broker: Any) -> None:
    """D3: the placer sends no accession, RP ID, SPS ID or study UID."""
    broker = make_broker()

    def strip(message: bytes) -> bytes:
        for field in (18, 19, 20):
            message = set_all(message, "OBR", field, "")
        return drop_segments(message, "ZDS")

    assert send(broker.mllp_port, strip(sample("05")))[0].code == "AA"
    before = query(broker, PatientID="135790")
    assert len(before) == 2
    accession = before[0].AccessionNumber
    uid = before[0].StudyInstanceUID
    assert accession and len(accession) <= 16
    assert uid.startswith("2.25.") and len(uid) <= 64
    assert {ds.StudyInstanceUID for ds in before} == {uid}
    step_ids = {sps(ds).ScheduledProcedureStepID for ds in before}
    assert len(step_ids) == 2 and all(len(s) <= 16 for s in step_ids)
    assert send(broker.mllp_port, strip(sample("06")))[0].code == "AA"
    after = query(broker, PatientID="135790")
    assert {sps(ds).ScheduledProcedureStepID for ds in after} == step_ids
    assert {(ds.AccessionNumber, ds.StudyInstanceUID) for ds in after} == {(accession, uid)}
    assert {sps(ds).ScheduledProcedureStepStartTime[:4] for ds in after} == {"1100", "1105"}


def test_duplicate_message_replays_the_ack_and_does_no_new_work(make_broker: Any) -> None:
    """H1: same MSH-10 twice -> identical AA, still 2 items; same order with a new MSH-10
    -> AE 205, no duplicates."""
    broker = make_broker()
    first, second = send(broker.mllp_port, sample("05"), sample("05"))
    assert first.raw == second.raw and first.code == "AA"
    assert len(query(broker, AccessionNumber="ACC0001")) == 2
    [again] = send(broker.mllp_port, set_field(sample("05"), "MSH", 10, "ORM0005-B"))
    assert again.code == "AE" and "205" in again.err
    assert len(query(broker, AccessionNumber="ACC0001")) == 2


def test_out_of_order_xo_is_refused_then_accepted(make_broker: Any) -> None:
    """H2: XO before NW -> AE 204 (nothing created); NW -> AA; the XO resent -> AA."""
    broker = make_broker()
    [early] = send(broker.mllp_port, sample("06"))
    assert early.code == "AE" and "204" in early.err
    assert query(broker, PatientID="135790") == []
    assert send(broker.mllp_port, sample("05"))[0].code == "AA"
    assert {sps(ds).ScheduledProcedureStepStartTime[:4]
            for ds in query(broker, PatientID="135790")} == {"0930", "0935"}


def test_xo_on_a_completed_step_is_refused(make_broker: Any) -> None:
    broker = make_broker()
    send(broker.mllp_port, sample("05"))
    done = set_field(set_all(set_all(sample("06"), "ORC", 1, "SC"), "ORC", 5, "CM"),
                     "MSH", 10, "ORM-SC-CM")
    assert send(broker.mllp_port, done)[0].code == "AA"
    [ack] = send(broker.mllp_port, sample("06"))
    assert ack.code == "AE" and "206" in ack.err
    assert query(broker, AccessionNumber="ACC0001") == []


def test_several_procedures_in_one_order(make_broker: Any) -> None:
    """D10: a second IPC group with its own RP and study UID -> 3 items, 2 studies."""
    broker = make_broker()
    message = sample("09").decode()
    extra = ("IPC|ACC0002^HOSP_RIS^2.16.840.1.113883.3.9999.2^ISO|RP0004|2.25.4242|SPS0009|"
             "CT^Computed Tomography^DCM|CTHEAD^CT head^99HOSP|CT01|CTROOM1|CT01_AE")
    message = message.rstrip("\r") + "\r" + extra
    assert send(broker.mllp_port, message.encode())[0].code == "AA"
    items = query(broker, AccessionNumber="ACC0002")
    assert len(items) == 3
    assert {ds.StudyInstanceUID for ds in items} == {STUDY_09, "2.25.4242"}
    assert {ds.RequestedProcedureID for ds in items} == {"RP0002", "RP0004"}


PATIENT_KEYS = {
    "PatientID": "135790",
    "PatientName": "Doe^Jane^Marie",
    "AccessionNumber": "ACC0001",
    "RequestedProcedureID": "RP0001",
}


@pytest.mark.parametrize(
    "combo",
    [c for n in range(1, 5) for c in itertools.combinations(sorted(PATIENT_KEYS), n)],
    ids=lambda c: "+".join(c),
)
def test_patient_based_query_combinations(loaded_broker: Any, combo: tuple[str, ...]) -> None:
    """E2: every one of the 15 patient-based key combinations finds exactly #05's steps."""
    items = query(loaded_broker, **{k: PATIENT_KEYS[k] for k in combo})
    assert sorted(sps(ds).ScheduledProcedureStepID for ds in items) == ["SPS0001", "SPS0002"]


BROAD_KEYS = {"sps_Modality": "CT", "sps_ScheduledStationAETitle": "CT01_AE",
              "sps_ScheduledProcedureStepStartDate": "20250310"}


@pytest.mark.parametrize(
    "combo",
    [c for n in range(1, 4) for c in itertools.combinations(sorted(BROAD_KEYS), n)],
    ids=lambda c: "+".join(k[4:] for k in c),
)
def test_broad_query_combinations(loaded_broker: Any, combo: tuple[str, ...]) -> None:
    """E2: the 7 broad-query combinations (station AE, date, modality)."""
    items = query(loaded_broker, **{k: BROAD_KEYS[k] for k in combo})
    expected = (["SPS0001", "SPS0002", "SPS0003", "SPS0004"] if combo == (
        "sps_ScheduledProcedureStepStartDate",) else ["SPS0003", "SPS0004"])
    assert sorted(sps(ds).ScheduledProcedureStepID for ds in items) == expected


def test_wildcards_ranges_and_case(loaded_broker: Any) -> None:
    """E3-E5 through the whole stack."""
    b = loaded_broker
    assert len(query(b, PatientName="Doe*")) == 2
    assert len(query(b, PatientName="D?e^*")) == 2
    assert len(query(b, PatientName="doe^jane^marie")) == 2  # PN: case-insensitive
    assert query(b, AccessionNumber="acc0001") == []  # others: case-sensitive
    morning = query(b, sps_ScheduledProcedureStepStartDate="20250310",
                    sps_ScheduledProcedureStepStartTime="0800-1000")
    assert sorted(sps(ds).ScheduledProcedureStepID for ds in morning) == ["SPS0001", "SPS0002"]
    afternoon = query(b, sps_ScheduledProcedureStepStartTime="1300-")
    assert sorted(sps(ds).ScheduledProcedureStepID for ds in afternoon) == ["SPS0003", "SPS0004"]
    assert query(b, sps_ScheduledProcedureStepStartDate="20250311-") == []
    assert len(query(b, StudyInstanceUID=f"{STUDY_05}\\{STUDY_09}")) == 4  # E6


@pytest.fixture
def loaded_broker(make_broker: Any) -> Any:
    broker = make_broker()
    acks = send(broker.mllp_port, sample("05"), sample("09"))
    assert [a.code for a in acks] == ["AA", "AA"]
    return broker


def test_a02_transfer_updates_the_location_on_pending_items(make_broker: Any) -> None:
    """C4: A02 moving 135790 to 4W^412^B -> (0038,0300) on its worklist items."""
    broker = make_broker()
    send(broker.mllp_port, sample("05"))
    a02 = set_field(set_field(sample("03"), "MSH", 9, "ADT^A02^ADT_A02"), "MSH", 10, "A02-1")
    a02 = set_field(a02, "PID", 3, "135790^^^HOSP&2.16.840.1.113883.3.9999.1&ISO^MR")
    a02 = set_field(set_field(a02, "PID", 5, "Doe^Jane^Marie^^^^L"), "PID", 7, "19900214")
    a02 = set_field(set_field(a02, "PID", 8, "F"), "PV1", 3, "4W^412^B^HOSP")
    assert send(broker.mllp_port, a02)[0].code == "AA"
    items = findscu(broker.dicom_port, ["PatientID=135790", "CurrentPatientLocation"])
    assert {ds.CurrentPatientLocation for ds in items} == {"4W^412^B"}


def test_e13_timezone_offset_is_returned_never_empty(make_broker: Any) -> None:
    broker = make_broker(timezone="America/Chicago")
    send(broker.mllp_port, sample("05"))
    items = findscu(broker.dicom_port, ["AccessionNumber=ACC0001", "TimezoneOffsetFromUTC"])
    assert {ds.TimezoneOffsetFromUTC for ds in items} == {"-0500"}  # CDT on 2025-03-10
