"""What the UPS DIMSE handlers read from a request (:mod:`broker.dicom.ups_scp`): the
Action Information of each N-ACTION Action Type ID (PS3.4 CC.2.1-CC.2.3), the N-GET
Attribute List (CC.2.7), the Error Comment of a refusal; and the short form of
MWLB_UPS_EVENT_DESTINATIONS."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from pydicom.dataset import Dataset

from broker.config import Settings
from broker.dicom.ups_scp import (
    FILTERED_GLOBAL_SUBSCRIPTION,
    GLOBAL_SUBSCRIPTION,
    ActionType,
    CancelRequest,
    ChangeState,
    Subscription,
    error_comment,
    parse_action,
    requested_attributes,
)
from broker.domain.ups import UPSError

WORKITEM = "2.25.1234"


def info(**values: object) -> Dataset:
    ds = Dataset()
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    return ds


def test_change_state_reads_the_state_and_transaction_uid() -> None:
    action = parse_action(1, info(ProcedureStepState="IN PROGRESS", TransactionUID="2.25.9"),
                          WORKITEM, "AI_APP")
    assert action == ChangeState("IN PROGRESS", "2.25.9")
    assert parse_action(1, None, WORKITEM, "AI_APP") == ChangeState("", "")


def test_request_cancel_takes_the_words_or_else_the_coded_reason() -> None:
    assert parse_action(2, info(ReasonForCancellation="patient left",
                                ContactURI="tel:123"), WORKITEM, "X") == \
        CancelRequest("patient left", "tel:123")
    code = info(CodeValue="110514", CodingSchemeDesignator="DCM",
                CodeMeaning="Incorrect worklist entry selected")
    coded = parse_action(2, info(ProcedureStepDiscontinuationReasonCodeSequence=[code]),
                         WORKITEM, "X")
    assert coded == CancelRequest("Incorrect worklist entry selected", "")


def test_subscribe_reads_receiving_ae_deletion_lock_and_a_filter() -> None:
    plain = parse_action(3, info(ReceivingAE="WATCHER", DeletionLock="TRUE"),
                         GLOBAL_SUBSCRIPTION, "AI_APP")
    assert plain == Subscription(ActionType.SUBSCRIBE, "WATCHER", True, None)
    own = parse_action(3, None, WORKITEM, "AI_APP")  # liberal: the calling AE, no lock
    assert own == Subscription(ActionType.SUBSCRIBE, "AI_APP", False, None)
    filtered = parse_action(3, info(ReceivingAE="WATCHER", DeletionLock="FALSE",
                                    ScheduledProcedureStepPriority="HIGH"),
                            FILTERED_GLOBAL_SUBSCRIPTION, "AI_APP")
    assert isinstance(filtered, Subscription) and filtered.filter is not None
    assert [e.keyword for e in filtered.filter] == ["ScheduledProcedureStepPriority"]


def test_unsubscribe_and_suspend() -> None:
    assert parse_action(4, info(ReceivingAE="WATCHER"), WORKITEM, "X") == \
        Subscription(ActionType.UNSUBSCRIBE, "WATCHER")
    assert parse_action(5, None, GLOBAL_SUBSCRIPTION, "WATCHER") == \
        Subscription(ActionType.SUSPEND_GLOBAL, "WATCHER")
    with pytest.raises(UPSError) as refused:
        parse_action(5, None, WORKITEM, "WATCHER")
    assert refused.value.code == 0xC314


def test_an_unknown_action_type_is_no_such_action() -> None:
    with pytest.raises(UPSError) as refused:
        parse_action(6, None, WORKITEM, "X")
    assert refused.value.code == 0x0123


def test_n_get_returns_what_is_asked_never_the_transaction_uid() -> None:
    workitem = info(ProcedureStepState="IN PROGRESS", PatientName="DOE^JANE",
                    TransactionUID="2.25.9")
    assert set(requested_attributes(workitem, None).keys()) == {0x00741000, 0x00100010}
    asked = requested_attributes(workitem, [0x00741000, 0x00081195, 0x00100020])
    assert asked.ProcedureStepState == "IN PROGRESS"
    assert "TransactionUID" not in asked and "PatientName" not in asked
    assert asked.PatientID is None  # asked for, not held: zero length


def test_error_comment_keeps_the_detail_within_64_characters() -> None:
    assert error_comment("The UPS is already IN PROGRESS") == "The UPS is already IN PROGRESS"
    long = ("The UPS has not met final state requirements for the requested state change: "
            "missing UnifiedProcedureStepPerformedProcedureSequence")
    assert error_comment(long) == "missing UnifiedProcedureStepPerformedProcedureSequence"


def test_event_destinations_short_form_and_json() -> None:
    short = Settings(ups_event_destinations="AI_APP=10.0.0.5:11113, VIEWER=[::1]:104")
    assert [(d.ae_title, d.host, d.port) for d in short.ups_event_destinations] == [
        ("AI_APP", "10.0.0.5", 11113), ("VIEWER", "::1", 104)]
    listed = Settings(ups_event_destinations='[{"ae_title": "A", "host": "h", "port": 5}]')
    assert listed.ups_event_destinations[0].port == 5
    assert Settings(ups_event_destinations="").ups_event_destinations == []
    with pytest.raises(ValidationError, match="AE=host:port"):
        Settings(ups_event_destinations="AI_APP@10.0.0.5")
