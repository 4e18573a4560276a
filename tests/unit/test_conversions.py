"""Every HL7 -> DICOM conversion rule (docs/swf-conformance.md M1-M6, A5, D4, H6, H7)."""

from __future__ import annotations

import logging

import pytest

from broker.hl7 import warnings
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
    assert conv.person_name([[["Smith", "van", "Smith"], "Ann"]], v25=True) == "Smith^Ann"


def test_fn_without_surname_takes_its_first_non_empty_subcomponent() -> None:
    """A v2.3 sender's ``&&SMITH^JOHN``: the own surname in sub-component 3."""
    for v25 in (False, True):
        assert conv.person_name([[["", "", "SMITH"], "JOHN"]], v25=v25) == "SMITH^JOHN"


def test_an_already_decoded_component_is_never_split_again() -> None:
    """An escaped ``\\T\\`` arrives as a literal ``&`` inside a plain string."""
    assert conv.person_name([["Smith & Jones", "Ann"]]) == "Smith & Jones^Ann"
    assert conv.xcn_name(["5678", ["", "", "Jones"], "Mary"]) == "Jones^Mary"


def test_pn_component_group_over_64_is_cut_with_a_warning() -> None:
    with warnings.collecting() as found:
        name = conv.person_name([["S" * 70, "Ann"]])
    assert name == "S" * 64
    assert [w.code for w in found] == [102] and "PatientName" in found[0].text
    assert "SSSS" not in found[0].text


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
    assert "does not exist" in caplog.text  # logged when nothing collects
    with warnings.collecting() as found:
        conv.time("202503090230", "America/New_York", keyword="ScheduledProcedureStepStartTime")
    assert len(found) == 1 and "does not exist" in found[0].text
    assert "0230" not in found[0].text and "0330" not in found[0].text


def test_a_date_only_value_is_a_calendar_date_never_shifted() -> None:
    moment, digits = conv.local_datetime("20250310-0800", "Asia/Tokyo")
    assert (conv.dicom_date(moment), digits) == ("20250310", 8)


def test_m2_bad_timestamp() -> None:
    with pytest.raises(HL7Error) as err:
        conv.date("2025031X0930", "UTC")
    assert err.value.code == 102


@pytest.mark.parametrize(("code", "priority"), [("S", "STAT"), ("A", "HIGH"), ("P", "HIGH"),
                                                ("C", "HIGH"), ("R", "ROUTINE"),
                                                ("T", "MEDIUM"), (" s ", "STAT")])
def test_m4_priority(code: str, priority: str) -> None:
    assert conv.priority(code) == priority


@pytest.mark.parametrize(("hl7", "dicom"), [("M", "M"), ("F", "F"), ("O", "O"), ("A", "O"),
                                            ("N", "O"), ("U", ""), (" f", "F")])
def test_m5_sex(hl7: str, dicom: str) -> None:
    assert conv.sex(hl7) == dicom


def test_codes_outside_their_table_are_dropped_with_a_warning() -> None:
    """None: the stored value is kept; a warning names the attribute and the table."""
    with warnings.collecting() as found:
        assert conv.priority("X") is None
        assert conv.sex("Z") is None
    assert [(w.code, w.text.split(":")[0]) for w in found] == [
        (103, "RequestedProcedurePriority"), (103, "PatientSex")]


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


def test_d4_descriptions_are_truncated_with_a_warning_naming_no_value() -> None:
    with warnings.collecting() as found:
        cut = conv.text("d" * 80, max_length=64, keyword="RequestedProcedureDescription")
        long = conv.long_text("c" * 20, max_length=10, keyword="RequestedProcedureComments")
    assert len(cut) == 64 and long == "c" * 10
    assert [w.code for w in found] == [102, 102]
    assert "RequestedProcedureDescription" in found[0].text and "dddd" not in found[0].text
    assert "RequestedProcedureComments" in found[1].text


def test_on_overflow_overrides_the_default_of_the_conversion() -> None:
    with pytest.raises(HL7Error) as err:
        conv.text("d" * 80, max_length=64, keyword="MedicalAlerts", on_overflow="reject")
    assert err.value.code == 102 and "MedicalAlerts" in err.value.text
    with warnings.collecting() as found:
        assert conv.identifier("A" * 20, max_length=16, keyword="AccessionNumber",
                               on_overflow="truncate") == "A" * 16
    assert len(found) == 1 and "AccessionNumber" in found[0].text


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
    for bad in ("1990505", "19900231", "1990-05-05", "١٩٩٠٠٥٠٥"):  # Arabic-Indic digits
        with pytest.raises(HL7Error) as err:
            conv.birth_date(bad)
        assert err.value.code == 102 and "PatientBirthDate" in err.value.text


def test_first_part_is_the_first_non_empty_subcomponent_trimmed() -> None:
    assert conv.first_part(" MR ") == "MR"
    assert conv.first_part(["", " SMITH", "X"]) == "SMITH"
    assert conv.first_part(["", ""]) == ""
