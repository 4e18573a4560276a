"""UPS-RS search parameters -> identifier dataset (PS3.18 8.3.4, 11.9) and the filter of
a filtered global subscription (PS3.18 11.10)."""

from __future__ import annotations

import pytest
from pydicom.dataset import Dataset

from broker.web.dicomjson import DicomWebError
from broker.web.dicomweb_query import FUZZY_WARNING, parse_filter, parse_search


def _refused(params: list[tuple[str, str]]) -> str:
    with pytest.raises(DicomWebError) as caught:
        parse_search(params)
    assert caught.value.status == 400
    return caught.value.text


def test_keywords_tags_and_sequence_paths_become_matching_keys() -> None:
    query = parse_search([
        ("PatientName", "DOE^J*"),
        ("00100020", "PID0001"),
        ("ScheduledProcedureStepStartDateTime", "20261202000000-20261203235959"),
        ("ScheduledStationNameCodeSequence.CodeValue", "CT01"),
        ("ScheduledStationNameCodeSequence.CodingSchemeDesignator", ""),
        ("ProcedureStepState", "SCHEDULED"),
    ])
    ds = query.identifier
    assert str(ds.PatientName) == "DOE^J*"
    assert ds.PatientID == "PID0001"
    assert ds.ScheduledProcedureStepStartDateTime == "20261202000000-20261203235959"
    assert ds.ProcedureStepState == "SCHEDULED"
    [item] = ds.ScheduledStationNameCodeSequence
    assert item.CodeValue == "CT01"
    assert "CodingSchemeDesignator" in item and item.CodingSchemeDesignator in (None, "")
    assert (query.include_all, query.limit, query.offset, query.warnings) == (
        False, None, 0, [])


def test_includefield_list_all_and_paging() -> None:
    query = parse_search([
        ("includefield", "PatientBirthDate,ReferencedRequestSequence.AccessionNumber"),
        ("includefield", "00741200"), ("limit", "10"), ("offset", "20"),
    ])
    ds = query.identifier
    assert "PatientBirthDate" in ds and ds.PatientBirthDate in (None, "")
    assert "AccessionNumber" in ds.ReferencedRequestSequence[0]
    assert "ScheduledProcedureStepPriority" in ds
    assert (query.limit, query.offset, query.include_all) == (10, 20, False)
    assert parse_search([("includefield", "all")]).include_all


def test_a_matching_key_also_named_by_includefield_keeps_its_value() -> None:
    query = parse_search([("PatientID", "P1"), ("includefield", "PatientID")])
    assert query.identifier.PatientID == "P1"


def test_uid_lists_by_comma_backslash_or_repeat() -> None:
    ds = parse_search([("SOPInstanceUID", "1.2.3,1.2.4"),
                       ("SOPInstanceUID", "1.2.5")]).identifier
    assert list(ds.SOPInstanceUID) == ["1.2.3", "1.2.4", "1.2.5"]
    assert parse_search([("00080018", "1.2.3\\1.2.4")]).identifier.SOPInstanceUID == [
        "1.2.3", "1.2.4"]


def test_fuzzymatching_true_warns_and_matches_literally() -> None:
    assert parse_search([("fuzzymatching", "true")]).warnings == [FUZZY_WARNING]
    assert parse_search([("fuzzymatching", "false")]).warnings == []
    assert "fuzzymatching" in _refused([("fuzzymatching", "maybe")])


def test_common_parameters_accept_and_charset_are_taken() -> None:
    query = parse_search([("accept", "application/dicom+json"), ("charset", "utf-8")])
    assert len(query.identifier) == 0


@pytest.mark.parametrize(("params", "says"), [
    ([("PatientNam", "DOE")], "unknown attribute 'PatientNam'"),
    ([("color", "red")], "unknown attribute 'color'"),
    ([("00991010", "x")], "unknown attribute '00991010'"),  # private
    ([("00000100", "1")], "unknown attribute '00000100'"),  # command group
    ([("PatientName.FamilyName", "x")], "PatientName is not a sequence"),
    ([("ScheduledStationNameCodeSequence", "CT01")], "is a sequence"),
    ([("SOPInstanceUID", "1.2.abc")], "'1.2.abc' is not a valid UID"),
    ([("SOPInstanceUID", "1.02.3")], "is not a valid UID"),
    ([("PatientBirthDate", "2026-12-02")], "is not a DA value"),
    ([("ScheduledProcedureStepStartDateTime", "tomorrow")], "is not a DT value"),
    ([("PatientID", "A"), ("PatientID", "B")], "more than once"),
    ([("PatientName", "A" * 65)], "PatientName: The PN component length (65) exceeds"),
    ([("limit", "-1")], "limit"),
    ([("offset", "ten")], "offset"),
    ([("includefield", "Nonsense")], "unknown attribute 'Nonsense'"),
])
def test_bad_parameters_are_refused_with_400(params: list[tuple[str, str]],
                                             says: str) -> None:
    assert says in _refused(params)


def test_code_strings_are_taken_in_any_case() -> None:
    assert parse_search([("ProcedureStepState", "in progress")]).identifier.ProcedureStepState \
        == "IN PROGRESS"


def test_date_and_time_ranges_may_be_open() -> None:
    ds = parse_search([("PatientBirthDate", "-19600101"),
                       ("ScheduledProcedureStepStartDateTime", "20261202-")]).identifier
    assert ds.PatientBirthDate == "-19600101"
    assert ds.ScheduledProcedureStepStartDateTime == "20261202-"
    tz = parse_search([("ScheduledProcedureStepStartDateTime", "20261202093000-0600")])
    assert tz.identifier.ScheduledProcedureStepStartDateTime == "20261202093000-0600"


def test_filter_of_a_filtered_global_subscription() -> None:
    ds = parse_filter(["ScheduledStationNameCodeSequence.CodeValue=CT01,"
                       "ScheduledProcedureStepPriority=HIGH", "InputReadinessState=READY"])
    expected = Dataset()
    assert ds.ScheduledStationNameCodeSequence[0].CodeValue == "CT01"
    assert ds.ScheduledProcedureStepPriority == "HIGH"
    assert ds.InputReadinessState == "READY"
    assert expected is not ds
    with pytest.raises(DicomWebError):
        parse_filter(["ScheduledProcedureStepPriority"])
