"""The ORC-1/ORC-5 table (docs/swf-conformance.md D1) and the SPS state machine."""

from __future__ import annotations

import pytest

from broker.domain.lifecycle import (
    OrderAction,
    can_transition,
    cancel_outcomes,
    decide,
    discontinue_outcome,
    require_updatable,
)
from broker.hl7.errors import HL7Error
from broker.models import SPSStatus as S


@pytest.mark.parametrize(
    ("control", "status", "action", "result"),
    [
        ("NW", "", OrderAction.CREATE, S.SCHEDULED),
        ("NW", "SC", OrderAction.CREATE, S.SCHEDULED),
        ("NW", "IP", OrderAction.CREATE, S.STARTED),
        ("SN", "", OrderAction.CREATE, S.SCHEDULED),
        ("XO", "SC", OrderAction.UPDATE, None),
        ("XO", "CM", OrderAction.SET_STATUS, S.COMPLETED),
        ("CA", "CA", OrderAction.CANCEL, S.CANCELLED),
        ("CA", "", OrderAction.CANCEL, S.CANCELLED),
        ("OC", "CA", OrderAction.CANCEL, S.CANCELLED),
        ("DC", "CA", OrderAction.DISCONTINUE, S.DISCONTINUED),
        ("DC", "DC", OrderAction.DISCONTINUE, S.DISCONTINUED),
        ("SC", "IP", OrderAction.SET_STATUS, S.STARTED),
        ("SC", "CM", OrderAction.SET_STATUS, S.COMPLETED),
        ("sc", "dc", OrderAction.SET_STATUS, S.DISCONTINUED),
    ],
)
def test_order_control_table(control: str, status: str, action: OrderAction,
                             result: S | None) -> None:
    decision = decide(control, status)
    assert decision.action is action
    assert decision.status == result


@pytest.mark.parametrize(("control", "status", "code"),
                         [("HD", "", 103), ("NW", "CM", 103), ("SC", "", 103), ("", "SC", 101)])
def test_unsupported_order_control_is_refused_at_orc_1(control: str, status: str,
                                                       code: int) -> None:
    with pytest.raises(HL7Error) as err:
        decide(control, status, sequence=2)
    assert err.value.code == code
    assert str(err.value.location) == "ORC^2^1"
    assert err.value.ack_code == "AE"


def test_cancel_before_start_cancels_every_pending_step() -> None:
    assert cancel_outcomes([S.SCHEDULED, S.SCHEDULED]) == [S.CANCELLED, S.CANCELLED]


def test_cancel_after_start_discontinues_the_rest_and_keeps_the_started_step() -> None:
    assert cancel_outcomes([S.STARTED, S.SCHEDULED]) == [S.STARTED, S.DISCONTINUED]


def test_discontinue_leaves_started_and_final_steps() -> None:
    assert discontinue_outcome(S.SCHEDULED) is S.DISCONTINUED
    assert discontinue_outcome(S.STARTED) is S.STARTED
    assert discontinue_outcome(S.COMPLETED) is S.COMPLETED


def test_state_machine() -> None:
    assert can_transition(S.SCHEDULED, S.STARTED)
    assert can_transition(S.STARTED, S.COMPLETED)
    assert not can_transition(S.COMPLETED, S.SCHEDULED)
    assert not can_transition(S.CANCELLED, S.STARTED)
    assert not can_transition(S.STARTED, S.CANCELLED)
    assert can_transition(S.COMPLETED, S.COMPLETED)


def test_final_steps_cannot_be_updated() -> None:
    require_updatable(S.SCHEDULED)
    require_updatable(S.STARTED)
    with pytest.raises(HL7Error) as err:
        require_updatable(S.COMPLETED)
    assert err.value.code == 206


def test_an_order_status_outside_table_0038_is_ignored_with_a_warning() -> None:
    """Epic-style ``NW`` with ORC-5 ``Final``: not a Table 0038 value, so the order
    control alone decides; a real status that does not fit (NW + CM) stays refused."""
    from broker.hl7 import warnings

    with warnings.collecting() as found:
        decision = decide("NW", "Final", sequence=2)
    assert decision.action is OrderAction.CREATE
    assert [(w.code, str(w.location)) for w in found] == [(103, "ORC^2^5")]
    with pytest.raises(HL7Error):
        decide("NW", "CM")
