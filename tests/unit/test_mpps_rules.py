"""MPPS rules (docs/swf-conformance.md F1, F2, F5, F6) and step transitions, without a
network; the DIMSE statuses the rules' refusals are answered with (PS3.4 F.7.2)."""

from __future__ import annotations

import pytest
from pydicom.dataset import Dataset

from broker.domain.errors import MppsRule, MppsRuleError
from broker.domain.mpps import (
    apply_set,
    check_create,
    check_final,
    check_set,
    is_incorrect_worklist_entry,
    step_status_for,
)
from broker.services.dimse_status import mpps_refusal
from tests.modality import final, in_progress, step_item


def test_complete_n_create_is_accepted() -> None:
    check_create(in_progress([step_item(accession="A1")]))


@pytest.mark.parametrize(("change", "rule", "status", "comment", "tags"), [
    (lambda ds: setattr(ds, "PerformedProcedureStepStatus", "COMPLETED"),
     MppsRule.NOT_IN_PROGRESS, 0x0106,
     "PPS Status (0040,0252) must be IN PROGRESS, not COMPLETED", [0x00400252]),
    (lambda ds: delattr(ds, "Modality"), MppsRule.MISSING_ATTRIBUTE, 0x0120,
     "missing (0008,0060) Modality", [0x00080060]),
    (lambda ds: setattr(ds, "PerformedStationAETitle", ""), MppsRule.MISSING_VALUE, 0x0121,
     "empty PerformedStationAETitle", []),
    (lambda ds: setattr(ds.ScheduledStepAttributesSequence[0], "StudyInstanceUID", ""),
     MppsRule.MISSING_VALUE, 0x0121,
     "empty ScheduledStepAttributesSequence[1]>StudyInstanceUID", []),
])
def test_n_create_refusals(change: object, rule: MppsRule, status: int, comment: str,
                           tags: list[int]) -> None:
    ds = in_progress([step_item()])
    change(ds)  # type: ignore[operator]
    with pytest.raises(MppsRuleError) as caught:
        check_create(ds)
    assert caught.value.rule is rule
    refusal = mpps_refusal(caught.value)
    assert (refusal.status, refusal.comment, refusal.tags) == (status, comment, tags)


def test_type2_attributes_may_be_missing() -> None:
    ds = in_progress([step_item()])
    del ds.PerformedStationName, ds.StudyID
    check_create(ds)


def test_n_set_rules() -> None:
    with pytest.raises(MppsRuleError) as finished:
        check_set("COMPLETED", final())
    assert finished.value.rule is MppsRule.NO_LONGER_UPDATABLE
    refusal = mpps_refusal(finished.value)
    assert (refusal.status, refusal.error_id) == (0x0110, 0xA710)
    change = Dataset()
    change.Modality = "MR"
    with pytest.raises(MppsRuleError) as refused:
        check_set("IN PROGRESS", change)
    refusal = mpps_refusal(refused.value)
    assert refusal.status == 0x0106 and refusal.tags == [0x00080060]
    assert refusal.comment == "not allowed in N-SET: (0008,0060) Modality"
    change = Dataset()
    change.PerformedProcedureStepStatus = "DONE"
    with pytest.raises(MppsRuleError) as unknown:
        check_set("IN PROGRESS", change)
    refusal = mpps_refusal(unknown.value)
    assert (refusal.status, refusal.comment, refusal.tags) == (
        0x0106, "unknown PPS status 'DONE'", [0x00400252])


def test_final_state_needs_end_and_series() -> None:
    stored = in_progress([step_item()])
    with pytest.raises(MppsRuleError) as incomplete:
        check_final(apply_set(stored, final(with_series=False)))
    refusal = mpps_refusal(incomplete.value)
    assert (refusal.status, refusal.comment) == (
        0x0121, "final state needs (0040,0340) PerformedSeriesSequence")
    check_final(apply_set(in_progress([step_item()]), final()))


def test_n_set_keeps_the_stored_character_set() -> None:
    stored = in_progress([step_item()])
    stored.SpecificCharacterSet = "ISO_IR 100"
    change = final()
    change.SpecificCharacterSet = "ISO_IR 192"
    assert apply_set(stored, change).SpecificCharacterSet == "ISO_IR 100"


@pytest.mark.parametrize(("pps", "current", "wrong", "expected"), [
    ("IN PROGRESS", "SCHEDULED", False, "STARTED"),
    ("IN PROGRESS", "CANCELLED", False, "CANCELLED"),
    ("COMPLETED", "STARTED", False, "COMPLETED"),
    ("DISCONTINUED", "STARTED", False, "DISCONTINUED"),
    ("DISCONTINUED", "STARTED", True, "SCHEDULED"),
    ("IN PROGRESS", "COMPLETED", False, "COMPLETED"),
])
def test_step_transitions(pps: str, current: str, wrong: bool, expected: str) -> None:
    assert step_status_for(pps, current, wrong_entry=wrong) == expected


def test_incorrect_worklist_entry_reason() -> None:
    assert is_incorrect_worklist_entry(final("DISCONTINUED", reason=("110514", "DCM", "x")))
    assert not is_incorrect_worklist_entry(final("DISCONTINUED", reason=("110513", "DCM", "x")))
