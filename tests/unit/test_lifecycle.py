"""The ORC-1/ORC-5 table (docs/swf-conformance.md D1) and the SPS state machine; the
domain's refusals and how the order service answers them in HL7."""

from __future__ import annotations

import pytest

from broker.domain.errors import OrderRule, OrderRuleError
from broker.domain.lifecycle import (
    OrderAction,
    can_transition,
    cancel_outcomes,
    decide,
    discontinue_outcome,
    require_updatable,
)
from broker.domain.status import SPSStatus as S
from broker.domain.types import StepRecord
from broker.hl7.errors import HL7Error
from broker.services import orders


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
    assert not decision.order_status_ignored


@pytest.mark.parametrize(("control", "status", "rule"), [
    ("HD", "", OrderRule.UNSUPPORTED_CONTROL), ("NW", "CM", OrderRule.UNSUPPORTED_CONTROL),
    ("SC", "", OrderRule.UNSUPPORTED_CONTROL), ("", "SC", OrderRule.MISSING_CONTROL)])
def test_unsupported_order_control_is_a_domain_refusal(control: str, status: str,
                                                       rule: OrderRule) -> None:
    with pytest.raises(OrderRuleError) as err:
        decide(control, status, sequence=2)
    assert (err.value.rule, err.value.sequence) == (rule, 2)


def _step(control: str, status: str) -> StepRecord:
    return StepRecord(order_control=control, order_status=status, placer_step_key="1")


@pytest.mark.parametrize(("control", "status", "code", "text"), [
    ("HD", "", 103, "order control HD with order status (empty) is not supported"),
    ("NW", "CM", 103, "order control NW with order status CM is not supported"),
    ("SC", "", 103, "order control SC with order status (empty) is not supported"),
    ("", "SC", 101, "ORC-1 order control is required")])
def test_unsupported_order_control_is_refused_at_orc_1(control: str, status: str,
                                                       code: int, text: str) -> None:
    with pytest.raises(HL7Error) as err:
        orders.decide(_step(control, status), 2)
    assert err.value.code == code
    assert err.value.text == text
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
    with pytest.raises(OrderRuleError) as refused:
        require_updatable(S.COMPLETED, sequence=3)
    assert (refused.value.rule, refused.value.current) == (OrderRule.STEP_FINAL, "COMPLETED")
    err = orders.order_rule_error(refused.value)
    assert (err.code, str(err.location)) == (206, "ORC^3^1")
    assert err.text == "step is COMPLETED and can no longer be changed"


def test_an_order_status_outside_table_0038_is_ignored_with_a_warning() -> None:
    """Epic-style ``NW`` with ORC-5 ``Final``: not a Table 0038 value, so the order
    control alone decides; a real status that does not fit (NW + CM) stays refused."""
    from broker.hl7 import warnings

    decision = decide("NW", "Final", sequence=2)
    assert (decision.action, decision.order_status_ignored) == (OrderAction.CREATE, True)
    with warnings.collecting() as found:
        decision = orders.decide(_step("NW", "Final"), 2)
    assert decision.action is OrderAction.CREATE
    assert [(w.code, str(w.location)) for w in found] == [(103, "ORC^2^5")]
    with pytest.raises(HL7Error):
        orders.decide(_step("NW", "CM"), 1)
    with warnings.collecting() as found, pytest.raises(HL7Error):
        orders.decide(_step("HD", "Final"), 1)
    assert [(w.code, str(w.location)) for w in found] == [(103, "ORC^1^5")]
