"""Every HL7 -> DICOM conversion rule (checklist M1-M6, A5, D4, H6, H7)."""

from __future__ import annotations

import logging

import pytest

from broker.hl7.errors import HL7Error
from broker.mapping import conversions as conv


def test_m1_xpn_swaps_prefix_and_suffix_and_appends_degree() -> None:
    rep = ["Müller", "Jürgen", "Karl", "Jr", "Dr", "PhD", "L"]
    assert conv.person_name([rep]) == "Müller^Jürgen^Karl^Dr^Jr PhD"


def test_m1_trailing_empty_components_are_trimmed() -> None:
    assert conv.person_name([["Doe", "Jane", "Marie", "", "", "", "L"]]) == "Doe^Jane^Marie"
    assert conv.person_name([["Doe", "", "", "", "", "", "L"]]) == "Doe"


def test_m1_prefers_the_legal_name() -> None:
    reps = [["Nick", "Jay", "", "", "", "", "N"], ["Doe", "Jane", "", "", "", "", "L"]]
    assert conv.person_name(reps) == "Doe^Jane"


def test_a7_name_representations_fill_pn_component_groups() -> None:
    reps = [["YAMADA", "TARO", "", "", "", "", "L", "A"],
            ["山田", "太郎", "", "", "", "", "L", "I"],
            ["やまだ", "たろう", "", "", "", "", "L", "P"]]
    assert conv.person_name(reps) == "YAMADA^TARO=山田^太郎=やまだ^たろう"


def test_v25_family_name_is_the_first_subcomponent() -> None:
    assert conv.person_name([["Smith&van&Smith", "Ann"]], v25=True) == "Smith^Ann"


def test_h7_pn_delimiters_never_leak_from_hl7_data() -> None:
    assert conv.person_name([["O\\Brien", "Se=an"]]) == "O/Brien^Se an"


def test_xcn_drops_the_identifier() -> None:
    assert conv.xcn_name(["5678", "Jones", "Mary", "", "", "Dr"]) == "Jones^Mary^^Dr"


def test_cn_subcomponents_of_obr_34() -> None:
    assert conv.cn_subcomponents("T001&Nguyen&Anna") == "Nguyen^Anna"


@pytest.mark.parametrize(
    ("ts", "zone", "date", "time"),
    [
        ("20250310140000-0500", "America/Chicago", "20250310", "140000"),
        ("20250310140000-0500", "America/New_York", "20250310", "150000"),
        ("20250310140000+0000", "Europe/Berlin", "20250310", "150000"),
        ("202503100930", "America/Chicago", "20250310", "0930"),
        ("20250310093015.25", "UTC", "20250310", "093015.25"),
        ("20250310233000-0800", "America/New_York", "20250311", "033000"),
    ],
)
def test_m2_h6_timestamps_in_the_broker_zone(ts: str, zone: str, date: str, time: str) -> None:
    assert conv.date(ts, zone) == date
    assert conv.time(ts, zone) == time


def test_h6_date_only_start_is_a_data_type_error() -> None:
    with pytest.raises(HL7Error) as err:
        conv.time("20250310", "UTC", keyword="ScheduledProcedureStepStartTime")
    assert err.value.code == 102


def test_h6_nonexistent_local_time_moves_forward_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING):
        assert conv.time("202503090230", "America/New_York") == "0330"
    assert "does not exist" in caplog.text


def test_m2_bad_timestamp() -> None:
    with pytest.raises(HL7Error) as err:
        conv.date("2025031X0930", "UTC")
    assert err.value.code == 102


@pytest.mark.parametrize(("code", "priority"), [("S", "STAT"), ("A", "HIGH"), ("P", "HIGH"),
                                                ("C", "HIGH"), ("R", "ROUTINE"),
                                                ("T", "MEDIUM"), ("X", "")])
def test_m4_priority(code: str, priority: str) -> None:
    assert conv.priority(code) == priority


@pytest.mark.parametrize(("hl7", "dicom"), [("M", "M"), ("F", "F"), ("O", "O"), ("A", "O"),
                                            ("N", "O"), ("U", ""), ("Z", "")])
def test_m5_sex(hl7: str, dicom: str) -> None:
    assert conv.sex(hl7) == dicom


def test_m6_code_item_needs_all_three_parts() -> None:
    assert conv.code_item("71046", "XR CHEST", "C4") == {
        "CodeValue": "71046", "CodingSchemeDesignator": "C4", "CodeMeaning": "XR CHEST"}
    assert conv.code_item("71046", "", "C4") is None


def test_m6_long_code_value_and_meaning_limit() -> None:
    item = conv.code_item("X" * 20, "M" * 80, "99LOCAL")
    assert item is not None
    assert item["LongCodeValue"] == "X" * 20 and "CodeValue" not in item
    assert len(item["CodeMeaning"]) == 64


def test_d4_identifiers_overflow_is_an_error_not_a_truncation() -> None:
    assert conv.identifier("A" * 16) == "A" * 16
    with pytest.raises(HL7Error) as err:
        conv.identifier("A" * 17, keyword="AccessionNumber")
    assert err.value.code == 102 and "AccessionNumber" in err.value.text


def test_d4_descriptions_are_truncated_with_a_warning_naming_no_value(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING):
        cut = conv.text("d" * 80, max_length=64, keyword="RequestedProcedureDescription")
    assert len(cut) == 64
    assert "RequestedProcedureDescription" in caplog.text and "dddd" not in caplog.text


def test_backslash_never_reaches_a_multi_valued_string() -> None:
    assert conv.text("a\\b") == "a/b"
    with pytest.raises(HL7Error):
        conv.identifier("A\\B")


def test_uid_syntax() -> None:
    assert conv.uid("2.25.123") == "2.25.123"
    for bad in ("2.25.0123", "abc", "1." + "2" * 70):
        with pytest.raises(HL7Error):
            conv.uid(bad)


def test_weight_and_height_units() -> None:
    assert conv.quantity("82.5", "kg", conv.WEIGHT_TO_KG, keyword="w") == "82.5"
    assert conv.quantity("82500", "g", conv.WEIGHT_TO_KG, keyword="w") == "82.5"
    assert conv.quantity("200", "lb", conv.WEIGHT_TO_KG, keyword="w") == "90.718474"
    assert conv.quantity("181", "cm", conv.HEIGHT_TO_M, keyword="h") == "1.81"
    with pytest.raises(HL7Error):
        conv.quantity("181", "furlong", conv.HEIGHT_TO_M, keyword="h")


def test_birth_date_keeps_the_date() -> None:
    assert conv.birth_date("19750602") == "19750602"
    assert conv.birth_date("197506020830") == "19750602"
