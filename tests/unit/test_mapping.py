"""The default profile on every sample, profile selection, station rules, validation."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from broker.domain.types import AdtMessage, OrderMessage
from broker.hl7 import warnings
from broker.hl7.errors import HL7Error
from broker.hl7.message import parse
from broker.hl7.warnings import HL7Warning
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


def test_omi_steps_of_two_procedures_in_one_group(profiles: ProfileSet) -> None:
    raw = set_field(sample("09"), "IPC", 1, "ACC0003^HOSP_RIS", occurrence=1)
    raw = set_field(raw, "IPC", 2, "RP0003", occurrence=1)
    raw = set_field(raw, "TQ1", 7, "20250310150000-0500")
    msg, found = mapped(raw, profiles)
    assert isinstance(msg, OrderMessage)
    first, second = msg.procedures
    assert (first.attributes["AccessionNumber"], second.attributes["AccessionNumber"]) == (
        "ACC0002", "ACC0003")
    assert second.attributes["IssuerOfAccessionNumberSequence"] == [
        {"LocalNamespaceEntityID": "HOSP_RIS"}]
    for key in ("RequestedProcedureCodeSequence", "RequestedProcedureComments",
                "RequestedProcedurePriority", "ReasonForRequestedProcedureCodeSequence"):
        assert first.attributes[key] == second.attributes[key], key
    first.attributes["RequestedProcedureCodeSequence"][0]["CodeValue"] = "CHANGED"
    assert second.attributes["RequestedProcedureCodeSequence"][0]["CodeValue"] == "CTAPC"
    assert [s.start_datetime for s in steps(msg)] == ["20250310150000"] * 2
    assert found == []


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




# -- liberal reading, strict keeping -----------------------------------------------------

# 2025-03-10 14:05:09 UTC = 09:05:09 CDT (America/Chicago, UTC-5 since 03-09).
RECEIVED = datetime(2025, 3, 10, 14, 5, 9, tzinfo=UTC)


def mapped(raw: bytes, profiles: ProfileSet,
           **kwargs: Any) -> tuple[OrderMessage | AdtMessage, list[HL7Warning]]:
    """Map with the warnings collected (as the processor does)."""
    with warnings.collecting() as found:
        result = map_message(parse(raw), profiles, timezone=ZONE,
                             received_at=kwargs.pop("received_at", RECEIVED), **kwargs)
    return result, found


def where(found: list[HL7Warning]) -> list[tuple[int, str]]:
    return [(w.code, str(w.location)) for w in found]


def no_start(raw: bytes, tq: str = "1^once^^^^S") -> bytes:
    """Every ORC-7 / OBR-27 with a quantity/timing but no start (a STAT order)."""
    return set_all(set_all(raw, "ORC", 7, tq), "OBR", 27, tq)


def steps(msg: OrderMessage | AdtMessage) -> list[Any]:
    assert isinstance(msg, OrderMessage)
    return [s for p in msg.procedures for s in p.steps]


def site_profile(tmp_path: Path, old: str, new: str) -> ProfileSet:
    site = tmp_path / "mappings"
    shutil.copytree(MAPPINGS, site)
    text = (site / "default.yaml").read_text()
    assert old in text
    (site / "default.yaml").write_text(text.replace(old, new, 1))
    return load_profiles(site)


def test_order_without_start_is_scheduled_at_receipt_with_a_warning(
        profiles: ProfileSet) -> None:
    msg, found = mapped(no_start(sample("05")), profiles)
    for step in steps(msg):
        assert step.attributes["ScheduledProcedureStepStartDate"] == "20250310"
        assert step.attributes["ScheduledProcedureStepStartTime"] == "090509"  # CDT
        assert step.start_datetime == "20250310090509"
    assert where(found) == [(101, "ORC^1^7"), (101, "ORC^2^7")]
    assert "received" in found[0].text and "OBR-36" in found[0].text
    assert msg.procedures[0].attributes["RequestedProcedurePriority"] == "STAT"


def test_omi_without_tq1_start_names_tq1_7(profiles: ProfileSet) -> None:
    msg, found = mapped(set_field(sample("09"), "TQ1", 7, ""), profiles)
    assert {s.attributes["ScheduledProcedureStepStartTime"] for s in steps(msg)} == {"090509"}
    assert where(found) == [(101, "TQ1^1^7")]


def test_missing_start_reject_keeps_the_refusal(tmp_path: Path) -> None:
    strict = site_profile(tmp_path, "missing_start: receipt", "missing_start: reject")
    with pytest.raises(HL7Error) as err:
        mapped(no_start(sample("05")), strict)
    assert (err.value.code, str(err.value.location)) == (101, "ORC^1^7")
    with pytest.raises(HL7Error) as err:
        mapped(set_field(sample("09"), "TQ1", 7, ""), strict)
    assert (err.value.code, str(err.value.location)) == (101, "TQ1^1^7")


def test_missing_start_is_inherited_and_validated(tmp_path: Path) -> None:
    site = tmp_path / "mappings"
    shutil.copytree(MAPPINGS, site)
    (site / "ehr2.yaml").write_text("name: ehr2\nextends: default\nsenders: "
                                    "[{application: EHR2}]\nmissing_start: reject\n")
    (site / "bad.yaml").write_text("name: bad\nsenders: [{application: X}]\n"
                                   "missing_start: later\nrules:\n"
                                   "  - {attribute: PatientSex, level: patient, source: PID-8,"
                                   " convert: sex, on_overflow: cut}\n")
    errors = check_directory(site)
    assert any("bad.yaml: missing_start" in e for e in errors), errors
    assert any("bad.yaml: rules[0].on_overflow" in e for e in errors), errors
    (site / "bad.yaml").unlink()
    chosen = load_profiles(site)
    assert chosen.select("EHR2", "").start_policy == "reject"
    assert chosen.select("EHR", "").start_policy == "receipt"


def test_xo_without_start_keeps_the_stored_start(profiles: ProfileSet) -> None:
    msg, found = mapped(no_start(sample("06")), profiles)
    assert all("ScheduledProcedureStepStartDate" not in s.attributes for s in steps(msg))
    assert found == []


def test_start_taken_from_obr_36_with_a_warning(profiles: ProfileSet) -> None:
    raw = set_field(no_start(sample("05")), "OBR", 36, "20250311071500")
    msg, found = mapped(raw, profiles)
    first = steps(msg)[0]
    assert first.start_datetime == "20250311071500"
    assert (101, "OBR^1^36") in where(found)
    assert any("ORC-7.4, OBR-27.4, TQ1-7 empty; taken from OBR-36" in w.text for w in found)


@pytest.mark.parametrize(("segment", "field"), [("OBR", 6), ("ORC", 15), ("OBR", 7)])
def test_later_start_sources(profiles: ProfileSet, segment: str, field: int) -> None:
    raw = set_all(no_start(sample("05")), segment, field, "202503120800")
    assert {s.start_datetime for s in steps(mapped(raw, profiles)[0])} == {"202503120800"}


def test_tq1_in_an_orm_is_a_start_source(profiles: ProfileSet) -> None:
    raw = no_start(sample("05")).replace(b"\rOBR|1|", b"\rTQ1|1||||||20250312081500\rOBR|1|")
    assert steps(mapped(raw, profiles)[0])[0].start_datetime == "20250312081500"


def test_date_only_start_takes_the_time_of_a_later_source_on_that_date(
        profiles: ProfileSet) -> None:
    raw = no_start(sample("05"), "1^once^^20250312^^R")
    raw = set_field(raw, "OBR", 36, "20250312143000")
    msg, found = mapped(raw, profiles)
    assert steps(msg)[0].start_datetime == "20250312143000"
    assert any(w.location is not None and str(w.location) == "ORC^1^7^4"
               and "taken from OBR-36" in w.text for w in found)


def test_date_only_start_on_another_date_keeps_its_date(profiles: ProfileSet) -> None:
    raw = no_start(sample("05"), "1^once^^20250312^^R")
    raw = set_field(raw, "OBR", 36, "20250311143000")  # another day: not its time
    first = steps(mapped(raw, profiles)[0])[0]
    assert first.start_datetime == "20250312000000"


def test_date_only_start_of_the_receipt_day_is_the_receipt_time(profiles: ProfileSet) -> None:
    raw = no_start(sample("05"), "1^once^^20250310^^S")
    msg, found = mapped(raw, profiles)
    assert {s.start_datetime for s in steps(msg)} == {"20250310090509"}
    assert any("time of receipt" in w.text for w in found)


def test_malformed_start_in_the_chosen_source_is_refused(profiles: ProfileSet) -> None:
    raw = set_field(sample("05"), "ORC", 7, "1^once^^2025031X0930^^A")
    with pytest.raises(HL7Error) as err:
        mapped(raw, profiles)
    assert (err.value.code, str(err.value.location)) == (102, "ORC^1^7^4")
    raw = set_field(no_start(sample("05")), "OBR", 36, "tomorrow")
    with pytest.raises(HL7Error) as err:
        mapped(raw, profiles)
    assert (err.value.code, str(err.value.location)) == (102, "OBR^1^36")


def test_coded_fields_read_their_first_component_trimmed(profiles: ProfileSet) -> None:
    raw = set_field(sample("05"), "PID", 8, "F^")
    raw = set_all(raw, "OBR", 24, " MR")
    msg, found = mapped(raw, profiles)
    assert isinstance(msg, OrderMessage)
    assert msg.patient.attributes["PatientSex"] == "F"
    first = steps(msg)[0]
    assert first.attributes["Modality"] == "MR"
    assert (first.attributes["ScheduledStationAETitle"], first.station_rule) == (
        ["MR01_AE"], "mr-room-1")
    assert found == []
    omi, _ = mapped(set_field(sample("09"), "TQ1", 9, "S^"), profiles)
    assert isinstance(omi, OrderMessage)
    assert omi.procedures[0].attributes["RequestedProcedurePriority"] == "STAT"


def test_identifier_losing_a_component_is_kept_with_a_warning(profiles: ProfileSet) -> None:
    raw = set_all(sample("05"), "OBR", 18, "ACC0001^RIS")
    msg, found = mapped(raw, profiles)
    assert isinstance(msg, OrderMessage)
    assert msg.procedures[0].attributes["AccessionNumber"] == "ACC0001"
    assert (102, "OBR^1^18") in where(found)


def test_a08_empty_components_never_clear_only_the_null_does(profiles: ProfileSet) -> None:
    raw = set_field(set_field(sample("03"), "PID", 8, "^"), "PID", 5, "^^^")
    raw = set_field(set_field(raw, "PID", 7, " "), "PV1", 3, "^^^")
    p = adt(raw, profiles).patient
    for key in ("PatientSex", "PatientName", "PatientBirthDate", "CurrentPatientLocation"):
        assert key not in p.attributes, key
    cleared = adt(set_field(sample("03"), "PID", 8, '""'), profiles).patient
    assert cleared.attributes["PatientSex"] == ""


def test_unknown_sex_code_leaves_the_stored_sex(profiles: ProfileSet) -> None:
    msg, found = mapped(set_field(sample("03"), "PID", 8, "Z"), profiles)
    assert "PatientSex" not in msg.patient.attributes
    assert where(found) == [(103, "PID^1^8")]


def test_long_description_truncated_with_a_located_warning(profiles: ProfileSet) -> None:
    raw = set_field(sample("05"), "OBR", 44, "XRCH2V^" + "x" * 80 + "^99HOSP")
    msg, found = mapped(raw, profiles)
    assert isinstance(msg, OrderMessage)
    assert len(msg.procedures[0].attributes["RequestedProcedureDescription"]) == 64
    assert (102, "OBR^1^44^2") in where(found)
    assert all("xxxx" not in w.text for w in found)


def test_station_name_over_sh_is_truncated_not_refused(profiles: ProfileSet) -> None:
    raw = sample("09").replace(b"|CT01|CTROOM1|CT01_AE", b"|" + b"S" * 20 + b"|CTROOM1|CT01_AE")
    msg, found = mapped(raw, profiles)
    assert {s.attributes["ScheduledStationName"] for s in steps(msg)} == {"S" * 16}
    assert (102, "IPC^1^7") in where(found)


def test_long_accession_refused_naming_obr_18(profiles: ProfileSet) -> None:
    with pytest.raises(HL7Error) as err:
        mapped(set_all(sample("05"), "OBR", 18, "A" * 17), profiles)
    assert (err.value.code, str(err.value.location)) == (102, "OBR^1^18")


def test_on_overflow_per_rule(tmp_path: Path) -> None:
    rule = "{attribute: AccessionNumber, level: procedure, source: {ORM: OBR-18, OMI: IPC-1.1}, " \
           "convert: identifier, max_length: 16"
    cut = site_profile(tmp_path, rule + "}", rule + ", on_overflow: truncate}")
    msg, found = mapped(set_all(sample("05"), "OBR", 18, "A" * 20), cut)
    assert isinstance(msg, OrderMessage)
    assert msg.procedures[0].attributes["AccessionNumber"] == "A" * 16
    assert (102, "OBR^1^18") in where(found)


def test_malformed_optional_values_are_dropped_with_a_warning(profiles: ProfileSet) -> None:
    raw = set_field(sample("01"), "PID", 7, "1990505")
    raw = raw.replace(b"|82.5|kg", b"|82,5kg|kg")
    msg, found = mapped(raw, profiles)
    assert "PatientBirthDate" not in msg.patient.attributes
    assert "PatientWeight" not in msg.patient.attributes
    assert msg.patient.attributes["PatientSize"] == "1.81"
    assert (102, "PID^1^7") in where(found)
    assert any(w.location is not None and w.location.segment == "OBX" and "PatientWeight"
               in w.text for w in found)
    unit = sample("01").replace(b"|82.5|kg", b"|82.5|stone")
    msg, found = mapped(unit, profiles)
    assert "PatientWeight" not in msg.patient.attributes
    assert [w.code for w in found] == [103]


def test_bad_uid_is_still_refused(profiles: ProfileSet) -> None:
    with pytest.raises(HL7Error) as err:
        mapped(set_field(sample("05"), "ZDS", 1, "not-a-uid^100^Application^DICOM"), profiles)
    assert (err.value.code, str(err.value.location)) == (102, "ZDS^1^1^1")


def test_subcomponents_are_decoded_in_names_locations_and_codes(profiles: ProfileSet) -> None:
    raw = set_field(sample("05"), "PID", 5, "&&SMITH^JOHN")
    raw = set_all(raw, "OBR", 16, "5678^&&Jones^Mary^^^Dr")
    raw = set_field(raw, "PV1", 3, "RAD&1.2.3&ISO^XR1^^HOSP")
    raw = set_all(raw, "OBR", 44, "XRCH2V&X^Chest PA and lateral^99HOSP&Y")
    msg, _ = mapped(raw, profiles)
    assert isinstance(msg, OrderMessage)
    a = msg.patient.attributes
    assert a["PatientName"] == "SMITH^JOHN"
    assert a["CurrentPatientLocation"] == "RAD^XR1"
    proc = msg.procedures[0].attributes
    assert proc["RequestingPhysician"] == "Jones^Mary^^Dr"
    assert proc["RequestedProcedureCodeSequence"] == [{
        "CodeValue": "XRCH2V", "CodingSchemeDesignator": "99HOSP",
        "CodeMeaning": "Chest PA and lateral"}]
    for item in render_items(msg):
        assert "&" not in repr({k: v for k, v in item.items() if k != "MedicalAlerts"})


def test_escaped_ampersand_is_still_a_literal_ampersand(profiles: ProfileSet) -> None:
    raw = set_field(sample("09"), "PID", 5, "Smith \\T\\ Jones&&X^Ann")
    raw = set_field(raw, "PV1", 3, "4W \\T\\ 5W^412")
    msg, _ = mapped(raw, profiles)
    assert msg.patient.attributes["PatientName"] == "Smith & Jones^Ann"
    assert msg.patient.attributes["CurrentPatientLocation"] == "4W & 5W^412"
    assert isinstance(msg, OrderMessage)
    assert msg.procedures[0].attributes["RequestedProcedureDescription"] == (
        "CT abdomen pelvis with IV contrast")
    code = msg.procedures[0].attributes["RequestedProcedureCodeSequence"]
    assert code[0]["CodeValue"] == "CTAPC"


def test_v25_family_name_takes_the_surname_subcomponent(profiles: ProfileSet) -> None:
    raw = set_field(sample("09"), "PID", 5, "van Beethoven&van&Beethoven^Ludwig")
    assert mapped(raw, profiles)[0].patient.attributes["PatientName"] == "van Beethoven^Ludwig"


def test_dry_run_without_received_at_uses_now(profiles: ProfileSet) -> None:
    before = datetime.now(UTC)
    msg = map_message(parse(no_start(sample("05"))), profiles, timezone="UTC")
    start = steps(msg)[0].start_datetime
    assert before.strftime("%Y%m%d%H%M") <= start[:12] <= datetime.now(UTC).strftime(
        "%Y%m%d%H%M")


# -- rules compiled once per loaded profile set -----------------------------------------

START_TIME_RULE = """  - attribute: ScheduledProcedureStepStartTime
    level: step
    source:
      ORM: [ORC-7.4, OBR-27.4, TQ1-7, OBR-36, OBR-6, ORC-15, OBR-7]"""


def test_start_date_and_time_rules_with_their_own_sources(tmp_path: Path) -> None:
    own = site_profile(tmp_path, START_TIME_RULE, START_TIME_RULE.replace(
        "[ORC-7.4, OBR-27.4, TQ1-7, OBR-36, OBR-6, ORC-15, OBR-7]", "[OBR-36]"))
    raw = set_field(sample("05"), "OBR", 36, "20250312071500")
    first = steps(mapped(raw, own)[0])[0]
    assert first.attributes["ScheduledProcedureStepStartDate"] == "20250310"  # ORC-7.4
    assert first.attributes["ScheduledProcedureStepStartTime"] == "071500"  # OBR-36


def test_a_start_read_for_both_start_rules_warns_once(profiles: ProfileSet) -> None:
    raw = set_field(no_start(sample("05")), "OBR", 36, "20250311071500")
    _msg, found = mapped(raw, profiles)
    assert [str(w.location) for w in found if "taken from OBR-36" in w.text] == ["OBR^1^36"]


def test_a_source_that_is_not_an_hl7_path_is_refused_when_a_message_needs_it(
        tmp_path: Path) -> None:
    odd = site_profile(tmp_path, "source: {ORM: OBR-24,", "source: {ORM: [OBR-24, OBR 24],")
    assert steps(mapped(sample("05"), odd)[0])[0].attributes["Modality"] == "DX"
    with pytest.raises(ValueError, match="not an HL7 path"):
        mapped(set_all(sample("05"), "OBR", 24, ""), odd)


def test_a_start_source_that_is_not_an_hl7_path_is_refused(tmp_path: Path) -> None:
    odd = site_profile(tmp_path, START_TIME_RULE, START_TIME_RULE.replace("OBR-7]", "OBR7]"))
    with pytest.raises(ValueError, match="not an HL7 path"):
        mapped(sample("05"), odd)


def test_profiles_loaded_again_map_with_their_new_rules(tmp_path: Path) -> None:
    site = tmp_path / "mappings"
    shutil.copytree(MAPPINGS, site)
    before = load_profiles(site)
    assert steps(mapped(sample("05"), before)[0])[0].attributes["Modality"] == "DX"
    text = (site / "default.yaml").read_text()
    (site / "default.yaml").write_text(text.replace("source: {ORM: OBR-24,", "source: "
                                                    "{ORM: OBR-4.6,", 1))
    after = load_profiles(site)
    assert steps(mapped(sample("05"), after)[0])[0].attributes["Modality"] == "99HOSP"
    assert steps(mapped(sample("05"), before)[0])[0].attributes["Modality"] == "DX"
