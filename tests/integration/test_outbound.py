"""Order status to the EHR: the EHR down for a while then up, AR, AE and
silence; every message arrives once accepted, in order, resends keep their MSH-10."""

from __future__ import annotations

import socket
from typing import Any

import pytest
from pydicom.uid import generate_uid
from sqlalchemy import select

from broker.models import OutboundMessage
from tests.conftest import sample
from tests.ehr import EHREndpoint, field
from tests.integration.hl7util import send
from tests.modality import MPPS, final, in_progress, n_create, n_set, step_item
from tests.workflow import STUDY_05, cli, destination, outbox_statuses, step_statuses, wait_until

pytestmark = [pytest.mark.dcmtk]

GROUPED = [step_item(accession="ACC0001", rp_id="RP0001", sps_id=s, study_uid=STUDY_05)
           for s in ("SPS0001", "SPS0002")]


def perform(app: Any) -> None:
    """Order #05, MPPS IN PROGRESS then COMPLETED for both steps: queues IP and CM."""
    assert [a.code for a in send(app.mllp_port, sample("05"))] == ["AA"]
    uid = generate_uid()
    assert n_create(app.dicom_port, MPPS, uid, in_progress(GROUPED)).Status == 0
    wait_until(lambda: step_statuses(app)["SPS0001"] == "STARTED", what="STARTED")
    assert n_set(app.dicom_port, uid, final("COMPLETED")).Status == 0
    wait_until(lambda: step_statuses(app)["SPS0001"] == "COMPLETED", what="COMPLETED")


def outbox(app: Any) -> list[OutboundMessage]:
    with app.runtime.session_factory() as session:
        return list(session.scalars(select(OutboundMessage).order_by(OutboundMessage.sequence)))


def test_ehr_down_then_up_gets_every_status_once_in_order(make_broker: Any) -> None:
    # The EHR is down: its port is bound but not listening (connection refused), and
    # reserved so that no other listener of the test gets it.
    reserved = socket.socket()
    reserved.bind(("127.0.0.1", 0))
    port = reserved.getsockname()[1]
    app = make_broker(outbound_destinations=destination(port), outbound_retry_max_seconds=0.5)
    perform(app)
    wait_until(lambda: all(m.attempts >= 2 for m in outbox(app)[:1]), what="retries")
    queued = outbox(app)
    assert [(m.trigger, m.status) for m in queued] == [("IP", "pending"), ("CM", "pending")]
    assert "ConnectionRefusedError" in queued[0].last_error

    reserved.close()
    back = EHREndpoint(port=port).start()
    try:
        received = back.wait_for(2)
        wait_until(lambda: outbox_statuses(app) == {"sent"}, what="all sent")
        assert [field(m, "ORC", 5) for m in received] == ["IP", "CM"]
        assert [field(m, "MSH", 10) for m in received] == [m.control_id for m in queued]
        assert len(back.messages()) == 2  # once each
    finally:
        back.stop()


def test_ar_and_silence_are_retried_with_the_same_control_id(make_broker: Any) -> None:
    calls: dict[str, int] = {}

    def answer(message: bytes) -> str | None:
        control_id = field(message, "MSH", 10)
        calls[control_id] = calls.get(control_id, 0) + 1
        first = calls[control_id] == 1
        if field(message, "ORC", 5) == "IP":
            return "AR" if first else "AA"
        return None if first else "AA"  # CM: no answer the first time

    ehr = EHREndpoint(answer=answer).start()
    try:
        app = make_broker(outbound_destinations=destination(ehr.port),
                          outbound_retry_max_seconds=0.5, outbound_ack_timeout=0.5)
        perform(app)
        wait_until(lambda: outbox_statuses(app) == {"sent"}, what="all sent")
        received = ehr.messages()
        order = [(field(m, "ORC", 5), field(m, "MSH", 10)) for m in received]
        ip, cm = (m.control_id for m in outbox(app))
        assert order == [("IP", ip), ("IP", ip), ("CM", cm), ("CM", cm)]
        assert [m.attempts for m in outbox(app)] == [2, 2]
    finally:
        ehr.stop()


def test_ae_fails_the_message_and_the_queue_goes_on(make_broker: Any) -> None:
    ehr = EHREndpoint(answer=lambda m: "AE" if field(m, "ORC", 5) == "IP" else "AA").start()
    try:
        app = make_broker(outbound_destinations=destination(ehr.port), sweep_interval=0.2)
        perform(app)
        wait_until(lambda: [m.status for m in outbox(app)] == ["failed", "sent"],
                   what="IP failed, CM sent")
        failed = outbox(app)[0]
        assert failed.ack_code == "AE" and "AE" in failed.last_error
        assert "failed" in cli(app, "outbound", "list", "--status", "failed")
        # `mwl-broker outbound resend` queues it again with the same MSH-10; the running
        # broker's sweeper sends it.
        ehr.answer = lambda m: "AA"
        assert "queued" in cli(app, "outbound", "resend", str(failed.id))
        wait_until(lambda: outbox(app)[0].status == "sent", what="resent")
        assert [field(m, "MSH", 10) for m in ehr.messages()].count(failed.control_id) == 2
    finally:
        ehr.stop()


def test_omi_destination(make_broker: Any, ehr: EHREndpoint) -> None:
    app = make_broker(outbound_destinations=destination(ehr.port, "OMI^O23"))
    perform(app)
    received = ehr.wait_for(2)
    assert [field(m, "ORC", 5) for m in received] == ["IP", "CM"]
    assert field(received[0], "MSH", 9) == "OMI^O23^OMI_O23"
    assert field(received[0], "MSH", 12) == "2.5.1"
    assert field(received[0], "IPC", 1) == "ACC0001"
    assert field(received[0], "IPC", 3) == STUDY_05
