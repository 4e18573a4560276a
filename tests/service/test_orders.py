"""Orders applied by the processor (``process_through``), in-process on SQLite and
PostgreSQL: the order control table (HL7 v2.5.1 4.5.1 Table 0119 ORC-1 with Table
0038 ORC-5, as :mod:`broker.domain.lifecycle` documents it; IHE RAD-2/RAD-3 new
orders, RAD-4/RAD-13 changes) and the per-patient ordering of the message store.

Each test checks what a user would: the steps' statuses and attributes, the message
row's status, error code and location (HL7 Table 0357, ERR location), its ACK."""

from __future__ import annotations

from broker.models import (
    ImagingOrder,
    InboundMessage,
    MessageStatus,
    Patient,
    RequestedProcedure,
    ScheduledProcedureStep,
)
from broker.services.processing import process_through
from tests.conftest import sample
from tests.integration.hl7util import Ack, set_all, set_field
from tests.service.conftest import Services
from tests.service.messages import ACCESSION_05, PATIENT_05, STUDY_05, edited


def assert_processed(row: InboundMessage) -> None:
    assert (row.status, row.error_code, row.ack_code) == (
        MessageStatus.PROCESSED.value, None, "AA"), row.error_text


def assert_failed(row: InboundMessage, code: int, location: str) -> None:
    assert row.status == MessageStatus.FAILED.value, row.outcome
    assert (row.error_code, row.error_location) == (code, location)
    assert row.ack is not None
    ack = Ack.parse(row.ack)
    assert (ack.code, ack.control_id) == ("AE", row.control_id)
    assert str(code) in ack.err


def starts(services: Services) -> dict[str, str]:
    return {sps_id: step.start_datetime for sps_id, step in services.steps().items()}


def test_nw_creates_scheduled_steps_with_the_mapped_attributes(services: Services) -> None:
    """NW (ORC-5 SC): one requested procedure, a SCHEDULED step per ORC/OBR pair."""
    row = services.process(sample("05"))
    assert_processed(row)
    steps = services.steps()
    assert {k: s.status for k, s in steps.items()} == {
        "SPS0001": "SCHEDULED", "SPS0002": "SCHEDULED"}
    first = steps["SPS0001"]
    assert (first.start_datetime, first.modality) == ("20250310093000", "DX")
    assert first.attributes["ScheduledProcedureStepStatus"] == "SCHEDULED"
    assert [(h.old_status, h.new_status) for h in first.history] == [("", "SCHEDULED")]
    assert f"MSH-10 {row.control_id}" in first.history[0].cause
    rp = services.procedure(ACCESSION_05)
    assert (rp.requested_procedure_id, rp.study_instance_uid) == ("RP0001", STUDY_05)
    assert services.patient(PATIENT_05).patient_name == "Doe^Jane^Marie"


def test_nw_with_order_status_in_progress_creates_a_started_step(services: Services) -> None:
    """NW with ORC-5 IP: the order is already being performed (Table 0038 IP)."""
    assert_processed(services.process(edited("05", "NW-IP", order_status="IP")))
    assert services.statuses() == {"SPS0001": "STARTED", "SPS0002": "STARTED"}


def test_nw_again_with_a_new_control_id_is_refused_205(services: Services) -> None:
    """The same order under a new MSH-10 is a new message, not a duplicate: the step
    exists, so AE 205 (duplicate key identifier) at OBR-20, and nothing changes."""
    assert_processed(services.process(sample("05")))
    again = services.process(edited("05", "ORM0005-B"))
    assert_failed(again, 205, "OBR^1^20")
    assert services.statuses() == {"SPS0001": "SCHEDULED", "SPS0002": "SCHEDULED"}
    assert services.count(ImagingOrder) == 1


def test_xo_updates_the_start_time_and_keeps_the_status(services: Services) -> None:
    """XO (ORC-5 SC): the start times of sample 06 replace those of the NW."""
    services.process(sample("05"))
    assert_processed(services.process(sample("06")))
    assert starts(services) == {"SPS0001": "20250310110000", "SPS0002": "20250310110500"}
    assert services.statuses() == {"SPS0001": "SCHEDULED", "SPS0002": "SCHEDULED"}
    assert services.procedure(ACCESSION_05).priority == "ROUTINE"


def test_xo_before_nw_is_refused_204_and_creates_nothing(services: Services) -> None:
    """A change for an unknown order: AE 204 (unknown key identifier) at ORC-2; the
    whole message rolls back, the patient it would have created included, so that the
    sender's resend after the NW is applied."""
    early = services.process(sample("06"))
    assert_failed(early, 204, "ORC^1^2")
    assert services.count(Patient) == services.count(ScheduledProcedureStep) == 0
    assert_processed(services.process(sample("05")))
    assert_processed(services.process(edited("06", "ORM0006-R")))
    assert starts(services)["SPS0001"] == "20250310110000"


def test_ca_cancels_the_pending_steps(services: Services) -> None:
    """CA (ORC-5 CA) with no step performed: every step CANCELLED (off the worklist)."""
    services.process(sample("05"))
    assert_processed(services.process(sample("07")))
    steps = services.steps()
    assert {k: s.status for k, s in steps.items()} == {
        "SPS0001": "CANCELLED", "SPS0002": "CANCELLED"}
    assert [h.new_status for h in steps["SPS0002"].history] == ["SCHEDULED", "CANCELLED"]


def test_ca_after_a_step_started_discontinues_the_rest(services: Services) -> None:
    """CA once a step has started: the procedure can no longer be cancelled (IHE
    RAD-13), so the pending step becomes DISCONTINUED and the started one is kept for
    its MPPS to finish."""
    services.process(sample("05"))
    started = edited("06", "SC-IP-1", order_control="SC", order_status="IP", only_group=1)
    assert_processed(services.process(started))
    assert services.statuses() == {"SPS0001": "STARTED", "SPS0002": "SCHEDULED"}
    assert_processed(services.process(sample("07")))
    assert services.statuses() == {"SPS0001": "STARTED", "SPS0002": "DISCONTINUED"}


def test_dc_discontinues_the_steps_not_yet_performed(services: Services) -> None:
    """DC (sample 08, ORC-5 CA) after the NW of the same order: DISCONTINUED."""
    nw = edited("08", "ORM0008-NW", order_control="NW", order_status="SC")
    assert_processed(services.process(nw))
    assert services.statuses() == {"SPS0005": "SCHEDULED"}
    assert_processed(services.process(sample("08")))
    assert services.statuses() == {"SPS0005": "DISCONTINUED"}


def test_sc_in_progress_then_completed(services: Services) -> None:
    """SC with ORC-5 IP then CM: STARTED, then COMPLETED, each in the step history."""
    services.process(sample("05"))
    ip = edited("06", "SC-IP", order_control="SC", order_status="IP")
    assert_processed(services.process(ip))
    assert services.statuses() == {"SPS0001": "STARTED", "SPS0002": "STARTED"}
    cm = edited("06", "SC-CM", order_control="SC", order_status="CM")
    assert_processed(services.process(cm))
    steps = services.steps()
    assert {k: s.status for k, s in steps.items()} == {
        "SPS0001": "COMPLETED", "SPS0002": "COMPLETED"}
    assert [h.new_status for h in steps["SPS0001"].history] == [
        "SCHEDULED", "STARTED", "COMPLETED"]


def test_xo_on_a_completed_step_is_refused_206(services: Services) -> None:
    """A completed step is final: XO is AE 206 (application record locked) at ORC-1
    and the step keeps its start time; so is a CA of the completed procedure."""
    services.process(sample("05"))
    done = edited("06", "SC-CM", order_control="SC", order_status="CM")
    assert_processed(services.process(done))
    xo = services.process(sample("06"))
    assert_failed(xo, 206, "ORC^1^1")
    assert starts(services)["SPS0001"] == "20250310093000"
    assert_failed(services.process(sample("07")), 206, "ORC^1^1")
    assert services.statuses() == {"SPS0001": "COMPLETED", "SPS0002": "COMPLETED"}


def test_an_order_is_found_by_its_placer_number_before_its_filler_number(
        services: Services) -> None:
    """An XO whose ORC-2 names one order and ORC-3 another changes the order with that
    placer order number (orders are found by ORC-2, else by ORC-3)."""
    services.process(sample("05"))  # PLC-1001 / FIL-5001
    second = edited("05", "NW-2", only_group=1)
    for segment in ("ORC", "OBR"):
        second = set_all(set_all(second, segment, 2, "PLC-2002^EHR"), segment, 3,
                         "FIL-6002^RIS")
    second = set_field(set_field(second, "OBR", 19, "RP0009"), "OBR", 20, "SPS0091")
    assert_processed(services.process(second))
    xo = set_all(edited(second, "XO-2", order_control="XO"), "ORC", 3, "FIL-5001^RIS")
    xo = set_field(xo, "ORC", 7, "1^once^^20250310120000^^R")
    assert_processed(services.process(xo))
    assert starts(services) == {"SPS0001": "20250310093000", "SPS0002": "20250310093500",
                                "SPS0091": "20250310120000"}


def test_groups_that_add_a_procedure_and_a_step_without_rp_id_apply_together(
        services: Services) -> None:
    """A NW whose first group adds procedure RP0002 to order PLC-1001 and whose second
    group sends no RP ID: two procedures with its code now, so none is the one meant
    and the step gets a procedure of its own, with a generated RP ID."""
    services.process(sample("05"))
    more = edited("05", "NW-MORE")
    more = set_field(set_field(more, "OBR", 19, "RP0002", occurrence=0), "OBR", 20, "SPS0003",
                     occurrence=0)
    more = set_field(set_field(more, "OBR", 19, "", occurrence=1), "OBR", 20, "SPS0004",
                     occurrence=1)
    row = services.process(more)
    assert_processed(row)
    assert services.statuses() == dict.fromkeys(
        ("SPS0001", "SPS0002", "SPS0003", "SPS0004"), "SCHEDULED")
    assert services.count(RequestedProcedure) == 3
    generated = services.steps()["SPS0004"].procedure_pk
    assert f"procedure RP{generated:07d} created" in (row.outcome or "")


def test_a_pair_outside_the_table_is_refused_103(services: Services) -> None:
    """NW with ORC-5 CM is no row of the table: AE 103 (table value not found) at
    ORC-1, nothing created."""
    refused = services.process(edited("05", "NW-CM", order_status="CM"))
    assert_failed(refused, 103, "ORC^1^1")
    assert services.count(ScheduledProcedureStep) == 0


def test_one_patients_messages_apply_in_arrival_order(services: Services) -> None:
    """Messages with the same ordering key (PID-3) apply strictly in id order: asked
    to process the later XO first, the processor applies the earlier NW before it."""
    nw, xo = services.store(sample("05")), services.store(sample("06"))
    assert process_through(services.factory, xo, services.map) == 2
    assert_processed(services.message(nw))
    assert_processed(services.message(xo))
    assert starts(services)["SPS0001"] == "20250310110000"
    assert process_through(services.factory, nw, services.map) == 0  # already applied


def test_another_patients_message_is_not_applied_with_it(services: Services) -> None:
    """The ordering key is the patient: processing one patient's message leaves a
    waiting message of another patient to its own task."""
    other = services.store(edited("05", "OTHER", patient_id="999999"))
    mine = services.store(edited("09", "MINE"))
    assert process_through(services.factory, mine, services.map) == 1
    assert services.message(other).status == MessageStatus.RECEIVED.value
    assert_processed(services.message(mine))
