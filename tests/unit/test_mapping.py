"""The default profile on every sample, profile selection, station rules, validation."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from broker.domain.types import AdtMessage, OrderMessage
from broker.hl7.errors import HL7Error
from broker.hl7.message import parse
from broker.mapping.apply import map_message, render_items
from broker.mapping.profile import ProfileSet, check_directory, load_profiles
from tests.conftest import MAPPINGS, sample
from tests.integration.hl7util import drop_segments, set_all, set_field

ZONE = "America/Chicago"


@pytest.fixture(scope="module")
def profiles() -> ProfileSet:
    return load_profiles(MAPPINGS)


def order(raw: bytes, profiles: ProfileSet) -> OrderMessage:
    mapped = map_message(parse(raw), profiles, timezone=ZONE)
    assert isinstance(mapped, OrderMessage)
    return mapped


def adt(raw: bytes, profiles: ProfileSet) -> AdtMessage:
    mapped = map_message(parse(raw), profiles, timezone=ZONE)
    assert isinstance(mapped, AdtMessage)
    return mapped


def test_01_registration(profiles: ProfileSet) -> None:
    msg = adt(sample("01"), profiles)
    p = msg.patient
    assert (p.patient_id, p.issuer, msg.event) == ("123456", "HOSP", "A04")
    assert p.attributes["PatientName"] == "Müller^Jürgen^Karl^Dr^Jr PhD"
    assert p.attributes["PatientWeight"] == "82.5"
    assert p.attributes["PatientSize"] == "1.81"
    assert p.attributes["Allergies"] == ["Iodinated contrast media"]
    assert p.specific_character_set == ("ISO_IR 192",)
    assert p.attributes["IssuerOfPatientIDQualifiersSequence"][0]["UniversalEntityID"] == (
        "2.16.840.1.113883.3.9999.1")


def test_02_japanese_groups_and_charset(profiles: ProfileSet) -> None:
    p = adt(sample("02"), profiles).patient
    assert p.attributes["PatientName"] == "YAMADA^TARO=山田^太郎=やまだ^たろう"
    assert p.specific_character_set == ("", "ISO 2022 IR 87")


def test_03_explicit_null_clears_and_empty_leaves(profiles: ProfileSet) -> None:
    message = set_field(sample("03"), "PV1", 3, '""')
    p = adt(message, profiles).patient
    assert p.attributes["CurrentPatientLocation"] == ""  # "" -> clear
    assert "PatientWeight" not in p.attributes  # not sent -> unchanged
    assert p.attributes["PatientBirthDate"] == "19750620"


def test_04_merge_names_the_prior_patient(profiles: ProfileSet) -> None:
    msg = adt(sample("04"), profiles)
    assert msg.prior_patient == ("777777", "HOSP")
    assert msg.event_datetime == "20250310120000"


def test_05_two_steps_one_procedure(profiles: ProfileSet) -> None:
    msg = order(sample("05"), profiles)
    [procedure] = msg.procedures
    a = procedure.attributes
    assert (a["AccessionNumber"], a["RequestedProcedureID"]) == ("ACC0001", "RP0001")
    assert a["StudyInstanceUID"] == "2.25.310174223949521671785473488595620964685"
    assert a["RequestedProcedurePriority"] == "HIGH"
    assert a["MedicalAlerts"] == "Cough & fever 3d|r/o pneumonia^effusion"
    assert a["RequestedProcedureCodeSequence"] == [{
        "CodeValue": "XRCH2V", "CodingSchemeDesignator": "99HOSP",
        "CodeMeaning": "Chest PA and lateral"}]
    assert msg.patient.attributes["PregnancyStatus"] == 3
    steps = procedure.steps
    assert [s.attributes["ScheduledProcedureStepID"] for s in steps] == ["SPS0001", "SPS0002"]
    assert [s.start_datetime for s in steps] == ["20250310093000", "20250310093500"]
    assert steps[0].attributes["ScheduledProtocolCodeSequence"] == [{
        "CodeValue": "XRCHPA", "CodingSchemeDesignator": "99HOSP", "CodeMeaning": "Chest PA"}]
    assert steps[0].attributes["ScheduledPerformingPhysicianName"] == "Nguyen^Anna"
    assert steps[0].attributes["ScheduledStationAETitle"] == ["MWL_DEFAULT"]
    assert steps[0].station_rule == "default"
    assert [s.order_control for s in steps] == ["NW", "NW"]


def test_09_omi_ipc_steps(profiles: ProfileSet) -> None:
    msg = order(sample("09"), profiles)
    [procedure] = msg.procedures
    a = procedure.attributes
    assert a["RequestedProcedureComments"] == (
        "Creatinine 1.1 mg/dL\r\nMetformin held 48h & IV access 18G")
    assert a["IssuerOfAccessionNumberSequence"] == [{
        "LocalNamespaceEntityID": "HOSP_RIS", "UniversalEntityID": "2.16.840.1.113883.3.9999.2",
        "UniversalEntityIDType": "ISO"}]
    assert a["RequestedProcedurePriority"] == "STAT"
    assert a["RequestedProcedureCodeSequence"][0]["CodeMeaning"] == (
        "CT abdomen pelvis with IV contrast")
    assert msg.patient.attributes["PatientWeight"] == "91"
    steps = procedure.steps
    assert [s.attributes["ScheduledProcedureStepID"] for s in steps] == ["SPS0003", "SPS0004"]
    assert {s.attributes["ScheduledProcedureStepStartTime"] for s in steps} == {"140000"}
    assert {tuple(s.attributes["ScheduledStationAETitle"]) if isinstance(
        s.attributes["ScheduledStationAETitle"], list) else s.attributes[
        "ScheduledStationAETitle"] for s in steps} == {"CT01_AE"}
    assert {s.station_rule for s in steps} == {"message"}
    assert steps[0].attributes["ScheduledStationName"] == "CT01"


def test_every_sample_order_gives_items_with_a_station(profiles: ProfileSet) -> None:
    for name in ("05", "06", "07", "08", "09"):
        items = render_items(order(sample(name), profiles))
        assert items, name
        for item in items:
            step = item["ScheduledProcedureStepSequence"][0]
            if name in ("05", "06", "09"):
                assert step["ScheduledStationAETitle"], name


def test_a4_other_escape_character(profiles: ProfileSet) -> None:
    raw = sample("05").replace(b"|^~\\&|", b"|^~#&|", 1).replace(
        b"Cough \\T\\ fever 3d\\F\\r/o pneumonia\\S\\effusion",
        b"Cough #T# fever 3d#F#r/o pneumonia#S#effusion")
    msg = order(raw, profiles)
    assert msg.procedures[0].attributes["MedicalAlerts"] == (
        "Cough & fever 3d|r/o pneumonia^effusion")


def test_d3_absent_identifiers_stay_absent(profiles: ProfileSet) -> None:
    raw = sample("05")
    for field in (18, 19, 20):
        raw = set_all(raw, "OBR", field, "")
    msg = order(drop_segments(raw, "ZDS"), profiles)
    for procedure in msg.procedures:
        for key in ("AccessionNumber", "RequestedProcedureID", "StudyInstanceUID"):
            assert key not in procedure.attributes
        for step in procedure.steps:
            assert "ScheduledProcedureStepID" not in step.attributes
            assert step.placer_step_key in ("1", "2")


def test_d4_long_description_truncated(profiles: ProfileSet) -> None:
    raw = set_field(sample("05"), "OBR", 44, "XRCH2V^" + "x" * 80 + "^99HOSP")
    a = order(raw, profiles).procedures[0].attributes
    assert len(a["RequestedProcedureDescription"]) == 64


def test_station_rule_by_modality_and_missing_default(tmp_path: Path) -> None:
    site = tmp_path / "mappings"
    shutil.copytree(MAPPINGS, site)
    text = (site / "default.yaml").read_text()
    text = text.replace("stations:\n", "stations:\n  - name: dx-room-1\n    when: {modality: DX}\n"
                                       "    ae_title: DX_ROOM1\n", 1)
    (site / "default.yaml").write_text(text)
    msg = order(sample("05"), load_profiles(site))
    step = msg.procedures[0].steps[0]
    assert (step.attributes["ScheduledStationAETitle"], step.station_rule) == (
        ["DX_ROOM1"], "dx-room-1")
    rule = "  - name: dx-room-1\n    when: {modality: DX}\n    ae_title: DX_ROOM1\n"
    without = text.replace(rule, "")
    without = without[:without.index("default_station:")] + without[
        without.index("# Procedure catalog"):]
    (site / "default.yaml").write_text(without)
    with pytest.raises(HL7Error) as err:
        order(sample("05"), load_profiles(site))
    assert err.value.code == 103 and str(err.value.location) == "OBR^1^24"


def test_profile_selected_by_sender(tmp_path: Path, profiles: ProfileSet) -> None:
    site = tmp_path / "mappings"
    shutil.copytree(MAPPINGS, site)
    (site / "ehr2.yaml").write_text(
        "name: ehr2\nextends: default\nsenders: [{application: EHR2}]\n"
        "rules:\n  - {attribute: MedicalAlerts, level: procedure, source: OBR-12, "
        "convert: coded_text}\n")
    chosen = load_profiles(site)
    other = order(set_field(sample("05"), "MSH", 3, "EHR2"), chosen)
    assert other.profile == "ehr2"
    assert other.procedures[0].attributes["MedicalAlerts"] == "Contact isolation"
    assert order(sample("05"), chosen).profile == "default"


def test_validation_errors_name_file_and_key(tmp_path: Path) -> None:
    site = tmp_path / "mappings"
    shutil.copytree(MAPPINGS, site)
    (site / "bad.yaml").write_text(
        "name: bad\nsenders: [{application: X}]\nstations:\n"
        "  - {name: a, ae_title: OK}\n  - {name: b, when: {modality: [1]}, ae_title: OK}\n"
        "rules:\n  - {attribute: NoSuchKeyword, level: patient, source: PID-5}\n")
    errors = check_directory(site)
    assert any("bad.yaml: stations[1].when.modality" in e for e in errors), errors
    assert any("bad.yaml: rules[0].attribute" in e and "NoSuchKeyword" in e for e in errors)


def test_missing_patient_id(profiles: ProfileSet) -> None:
    with pytest.raises(HL7Error) as err:
        order(set_field(sample("05"), "PID", 3, ""), profiles)
    assert (err.value.code, str(err.value.location)) == (101, "PID^1^3")


def test_nw_without_start_time(profiles: ProfileSet) -> None:
    with pytest.raises(HL7Error) as err:
        order(set_field(set_field(sample("05"), "ORC", 7, ""), "OBR", 27, ""), profiles)
    assert (err.value.code, str(err.value.location)) == (101, "ORC^1^7")
