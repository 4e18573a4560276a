"""The UPS rules of :mod:`broker.domain.ups`: the state table (PS3.4 Table CC.1.1-2),
updates (CC.2.6), request cancellation (CC.2.1.3), final-state requirements (Table
CC.2.5-3), the statuses with their PS3.18 HTTP statuses, priority, which steps become
workitems, and how steps and workitems follow each other."""

from __future__ import annotations

import pytest

from broker.domain import ups
from broker.domain.ups import UPSError, UPSState

S, IP, CA, CM = (UPSState.SCHEDULED, UPSState.IN_PROGRESS, UPSState.CANCELED,
                 UPSState.COMPLETED)
TUID, OTHER = "1.2.3", "1.2.4"


def refused(call: object, *args: object) -> int:
    with pytest.raises(UPSError) as caught:
        call(*args)  # type: ignore[operator]
    return caught.value.code


@pytest.mark.parametrize(("current", "requested", "given", "held", "code"), [
    (S, IP, TUID, "", None),
    (S, IP, "", "", 0xC301),
    (IP, IP, OTHER, TUID, 0xC302),
    (CA, IP, TUID, "", 0xC300),
    (CM, IP, TUID, "", 0xC300),
    (S, CM, TUID, "", 0xC310),
    (S, CA, TUID, "", 0xC310),
    (IP, CM, OTHER, TUID, 0xC301),
    (IP, CA, "", TUID, 0xC301),
    (IP, CM, TUID, TUID, None),
    (IP, CA, TUID, TUID, None),
    (CA, CM, TUID, "", 0xC300),
    (CM, CA, TUID, "", 0xC300),
    (S, S, "", "", 0xC303),
    (IP, S, TUID, TUID, 0xC303),
])
def test_state_table(current: UPSState, requested: UPSState, given: str, held: str,
                     code: int | None) -> None:
    if code is None:
        outcome = ups.change_state(current, requested, given, held)
        assert outcome.state is requested
        assert outcome.claims == (requested is IP)
    else:
        assert refused(ups.change_state, current, requested, given, held) == code


def test_asking_for_the_state_it_is_in_is_a_warning() -> None:
    assert ups.change_state(CA, CA, "", "").warning == 0xB304
    assert ups.change_state(CM, CM, "", "").warning == 0xB306
    assert ups.change_state(CM, CM, "", "").state is None


def test_updates_need_the_transaction_uid_only_in_progress() -> None:
    ups.check_update(S, "", "")
    ups.check_update(IP, TUID, TUID)
    assert refused(ups.check_update, IP, "", TUID) == 0xC301
    assert refused(ups.check_update, IP, OTHER, TUID) == 0xC301
    assert refused(ups.check_update, CM, TUID, "") == 0xC300
    assert refused(ups.check_update, CA, "", "") == 0xC300


def test_request_cancellation() -> None:
    assert ups.check_cancel_request(S).state is CA
    assert ups.check_cancel_request(IP).state is None
    assert ups.check_cancel_request(CA).warning == 0xB304
    assert refused(ups.check_cancel_request, CM) == 0xC311


def test_final_state_requirements_of_completed() -> None:
    performed = {"PerformedProcedureStepStartDateTime": "20261202090000",
                 "PerformedProcedureStepEndDateTime": "20261202091000",
                 "PerformedStationNameCodeSequence": [{"CodeValue": "AI1"}],
                 "PerformedWorkitemCodeSequence": [{"CodeValue": "110005"}],
                 "OutputInformationSequence": []}
    complete = {ups.PERFORMED_SEQUENCE: [performed]}
    assert ups.missing_for_final_state(CM, complete) == []
    assert ups.missing_for_final_state(CM, {}) == [ups.PERFORMED_SEQUENCE]
    no_end = {ups.PERFORMED_SEQUENCE: [{**performed, "PerformedProcedureStepEndDateTime": ""}]}
    assert ups.missing_for_final_state(CM, no_end) == [
        f"{ups.PERFORMED_SEQUENCE}>PerformedProcedureStepEndDateTime"]
    no_output = {ups.PERFORMED_SEQUENCE: [{k: v for k, v in performed.items()
                                           if k != "OutputInformationSequence"}]}
    assert ups.missing_for_final_state(CM, no_output) == [
        f"{ups.PERFORMED_SEQUENCE}>OutputInformationSequence"]
    assert ups.missing_for_final_state(CA, {}) == []
    with pytest.raises(UPSError) as caught:
        ups.require_final_state(CM, {})
    assert (caught.value.code, caught.value.http_status) == (0xC304, 409)
    assert ups.PERFORMED_SEQUENCE in caught.value.reason


@pytest.mark.parametrize(("code", "http"), [
    (0xC307, 404), (0xC302, 409), (0xC301, 400), (0xC300, 409), (0xC304, 409),
    (0xC310, 409), (0xC311, 409), (0xC303, 400), (0x0106, 400), (0x0111, 409)])
def test_each_status_has_its_http_status(code: int, http: int) -> None:
    error = ups.refusal(code, "detail")
    assert (error.code, error.http_status) == (code, http)
    assert error.reason.endswith(": detail") and len(error.reason) > len(": detail")


def test_states_and_priorities_are_read_strictly() -> None:
    assert ups.parse_state(" in progress ") is IP
    assert refused(ups.parse_state, "STARTED") == 0x0106
    assert ups.parse_priority("low") is ups.UPSPriority.LOW
    assert refused(ups.parse_priority, "URGENT") == 0x0106


@pytest.mark.parametrize(("order", "workitem"), [
    ("STAT", "HIGH"), ("HIGH", "HIGH"), ("ROUTINE", "MEDIUM"), ("MEDIUM", "MEDIUM"),
    ("LOW", "LOW"), ("", "MEDIUM"), ("whenever", "MEDIUM")])
def test_priority_from_the_order(order: str, workitem: str) -> None:
    assert ups.priority_for(order).value == workitem


def test_workitem_selection() -> None:
    assert ups.EVERY_STEP.selects("CT", [])
    assert not ups.WorkitemSelection(enabled=False).selects("CT", ["X"])
    ct = ups.WorkitemSelection(modalities=("CT",))
    assert ct.selects("ct", []) and not ct.selects("MR", [])
    lung = ups.WorkitemSelection(modalities=("CT",), codes=("LUNG",))
    assert lung.selects("CT", ["HEAD", "LUNG"]) and not lung.selects("CT", ["HEAD"])


@pytest.mark.parametrize(("step", "state"), [
    ("SCHEDULED", S), ("ARRIVED", S), ("READY", S), ("STARTED", IP), ("DEPARTED", IP),
    ("COMPLETED", CM), ("DISCONTINUED", CA), ("CANCELLED", CA)])
def test_state_for_step(step: str, state: UPSState) -> None:
    assert ups.state_for_step(step) is state


def test_workitems_follow_their_steps_forward_only() -> None:
    assert ups.follows_step(S, "STARTED") is IP
    assert ups.follows_step(S, "CANCELLED") is CA
    assert ups.follows_step(IP, "COMPLETED") is CM
    assert ups.follows_step(IP, "STARTED") is None
    assert ups.follows_step(IP, "SCHEDULED") is None  # an MPPS "wrong worklist entry"
    assert ups.follows_step(CM, "DISCONTINUED") is None
    assert ups.follows_step(CA, "STARTED") is None


def test_steps_follow_their_workitems() -> None:
    assert ups.step_status_for(IP, "SCHEDULED") == "STARTED"
    assert ups.step_status_for(IP, "STARTED") is None
    assert ups.step_status_for(CM, "STARTED") == "COMPLETED"
    assert ups.step_status_for(CA, "SCHEDULED") == "DISCONTINUED"
    assert ups.step_status_for(CA, "COMPLETED") is None
    assert ups.step_status_for(CM, "CANCELLED") is None
