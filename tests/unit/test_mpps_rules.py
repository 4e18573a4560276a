"""MPPS rules (docs/swf-conformance.md F1, F2, F5, F6) and step transitions, without a network."""

from __future__ import annotations

import pytest
from pydicom.dataset import Dataset

from broker.domain.mpps import (
    MppsError,
    apply_set,
    check_create,
    check_final,
    check_set,
    is_incorrect_worklist_entry,
    step_status_for,
)
from tests.modality import final, in_progress, step_item


def test_complete_n_create_is_accepted() -> None:
    check_create(in_progress([step_item(accession="A1")]))


@pytest.mark.parametrize(("change", "status"), [
    (lambda ds: setattr(ds, "PerformedProcedureStepStatus", "COMPLETED"), 0x0106),
    (lambda ds: delattr(ds, "Modality"), 0x0120),
    (lambda ds: setattr(ds, "PerformedStationAETitle", ""), 0x0121),
    (lambda ds: setattr(ds.ScheduledStepAttributesSequence[0], "StudyInstanceUID", ""), 0x0121),
])
def test_n_create_refusals(change: object, status: int) -> None:
    ds = in_progress([step_item()])
    change(ds)  # type: ignore[operator]
    with pytest.raises(MppsError) as caught:
        check_create(ds)
    assert caught.value.status == status


def test_type2_attributes_may_be_missing() -> None:
    ds = in_progress([step_item()])
    del ds.PerformedStationName, ds.StudyID
    check_create(ds)


def test_n_set_rules() -> None:
    with pytest.raises(MppsError) as finished:
        check_set("COMPLETED", final())
    assert (finished.value.status, finished.value.error_id) == (0x0110, 0xA710)
    change = Dataset()
    change.Modality = "MR"
    with pytest.raises(MppsError) as refused:
        check_set("IN PROGRESS", change)
    assert refused.value.status == 0x0106 and refused.value.tags == [0x00080060]


def test_final_state_needs_end_and_series() -> None:
    stored = in_progress([step_item()])
    with pytest.raises(MppsError):
        check_final(apply_set(stored, final(with_series=False)))
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
