"""Flat keyword paths of the attribute changes an impact report lists."""

from __future__ import annotations

from broker.services.mapping_impact import attribute_changes


def test_a_one_item_sequence_has_no_index_and_a_longer_one_has() -> None:
    old = {"PatientName": "DOE^JANE", "Modality": "CT",
           "ScheduledProcedureStepSequence": [{"ScheduledStationAETitle": ["CT01_AE"]}],
           "ScheduledProtocolCodeSequence": [{"CodeValue": "A"}]}
    new = {"PatientName": "DOE^JANE", "StudyComments": "new",
           "ScheduledProcedureStepSequence": [{"ScheduledStationAETitle": ["CT02_AE"]}],
           "ScheduledProtocolCodeSequence": [{"CodeValue": "A"}, {"CodeValue": "B"}]}
    assert list(attribute_changes(old, new)) == [
        ("Modality", "CT", None),
        ("ScheduledProcedureStepSequence.ScheduledStationAETitle", ["CT01_AE"], ["CT02_AE"]),
        ("ScheduledProtocolCodeSequence[1].CodeValue", None, "B"),
        ("StudyComments", None, "new"),
    ]


def test_equal_items_have_no_change() -> None:
    item = {"ScheduledProcedureStepSequence": [{"Modality": "MR"}], "PatientID": "1"}
    assert list(attribute_changes(item, dict(item))) == []
