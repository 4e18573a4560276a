"""The outbox delivered over MLLP to a real small listener (tests/ehr.py), in-process on
SQLite and PostgreSQL: :func:`broker.services.outbox.enqueue` then
:func:`broker.services.outbound.deliver` (HL7 v2.5.1 2.9.2 original-mode
acknowledgement: AA sent, AE failed and visible, AR or no answer retried with the same
MSH-10, in sequence order per destination)."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from broker.config import Destination, Settings
from broker.models import RequestedProcedure
from broker.services import outbound, outbox
from tests.conftest import sample
from tests.ehr import EHREndpoint, field
from tests.service.conftest import Services
from tests.service.messages import ACCESSION_05
from tests.workflow import destination

RETRY_SECONDS = 0.05


def queue(services: Services, *statuses: str) -> list[str]:
    """Order #05, then one status message per ``statuses`` queued for "ehr"; their
    MSH-10 values."""
    services.process(sample("05"))

    def body(session: Session) -> list[str]:
        rp = session.scalars(select(RequestedProcedure).where(
            RequestedProcedure.accession_number == ACCESSION_05)).one()
        return [row.control_id for status in statuses
                for row in outbox.enqueue(session, services.settings, rp, status)]

    return services.task("enqueue", body)


def pointed_at(services: Services, port: int) -> Settings:
    """The same settings, with destination "ehr" at ``port`` and a short back-off."""
    return services.settings.model_copy(update={
        "outbound_destinations": [Destination(**d) for d in destination(port)],
        "outbound_retry_max_seconds": RETRY_SECONDS, "outbound_ack_timeout": 5.0})


@pytest.fixture
def ehr() -> Iterator[Callable[..., EHREndpoint]]:
    started: list[EHREndpoint] = []

    def start(answer: Callable[[bytes], str | None] | None = None) -> EHREndpoint:
        endpoint = EHREndpoint(answer=answer).start()
        started.append(endpoint)
        return endpoint

    yield start
    for endpoint in started:
        endpoint.stop()


def test_enqueue_builds_the_status_message(services: Services) -> None:
    """One row per destination wanting the status, numbered in sequence; MSH-10 fixed
    at creation (so a resend is the same message); ORM^O01 with ORC-1 SC, ORC-5 the
    status (IHE RAD-3)."""
    ip, cm = queue(services, "IP", "CM")
    rows = services.outbox()
    assert [(m.sequence, m.trigger, m.control_id, m.status) for m in rows] == [
        (1, "IP", ip, "pending"), (2, "CM", cm, "pending")]
    payload = rows[0].payload
    assert field(payload, "MSH", 9).startswith("ORM^O01")
    assert field(payload, "MSH", 10) == ip
    assert (field(payload, "ORC", 1), field(payload, "ORC", 5)) == ("SC", "IP")
    assert field(payload, "OBR", 18) == ACCESSION_05


def test_delivered_and_acknowledged_aa_is_sent(
        services: Services, ehr: Callable[..., EHREndpoint]) -> None:
    """AA: each message ``sent`` with its ACK stored, in sequence order."""
    ip, cm = queue(services, "IP", "CM")
    endpoint = ehr()
    assert outbound.deliver(services.factory, pointed_at(services, endpoint.port), "ehr") is None
    assert [field(m, "MSH", 10) for m in endpoint.messages()] == [ip, cm]
    rows = services.outbox()
    assert [(m.status, m.ack_code, m.attempts) for m in rows] == [("sent", "AA", 1)] * 2
    assert all(m.sent_at is not None and m.ack for m in rows)


def test_ar_is_retried_with_the_same_control_id_and_holds_the_queue(
        services: Services, ehr: Callable[..., EHREndpoint]) -> None:
    """AR: the message stays pending with a back-off and nothing behind it is sent;
    the retry carries the same MSH-10 and, accepted, the queue moves on."""
    ip, cm = queue(services, "IP", "CM")
    answers = iter(["AR"])
    endpoint = ehr(lambda _m: next(answers, "AA"))
    settings = pointed_at(services, endpoint.port)
    delay = outbound.deliver(services.factory, settings, "ehr")
    assert delay == pytest.approx(RETRY_SECONDS)
    first, second = services.outbox()
    assert (first.status, first.ack_code, first.attempts, first.last_error) == (
        "pending", "AR", 1, "AR from the EHR")
    assert (second.status, second.attempts) == ("pending", 0)
    assert [field(m, "MSH", 10) for m in endpoint.messages()] == [ip]
    time.sleep(RETRY_SECONDS * 2)
    assert outbound.deliver(services.factory, settings, "ehr") is None
    assert [field(m, "MSH", 10) for m in endpoint.messages()] == [ip, ip, cm]
    assert [(m.status, m.attempts) for m in services.outbox()] == [("sent", 2), ("sent", 1)]


def test_ae_fails_the_message_and_the_queue_goes_on(
        services: Services, ehr: Callable[..., EHREndpoint]) -> None:
    """AE: the EHR read the message and refused it; it is ``failed`` (visible,
    resendable) and the next message is sent."""
    queue(services, "IP", "CM")
    answers = iter(["AE"])
    endpoint = ehr(lambda _m: next(answers, "AA"))
    assert outbound.deliver(services.factory, pointed_at(services, endpoint.port), "ehr") is None
    assert [(m.status, m.last_error) for m in services.outbox()] == [
        ("failed", "AE from the EHR"), ("sent", "")]


def test_an_ehr_that_is_down_leaves_the_message_pending(services: Services) -> None:
    """No connection: pending, the reason kept, retried after the back-off."""
    queue(services, "IP")
    reserved = socket.socket()  # bound, not listening: connection refused
    reserved.bind(("127.0.0.1", 0))
    try:
        delay = outbound.deliver(services.factory,
                                 pointed_at(services, reserved.getsockname()[1]), "ehr")
    finally:
        reserved.close()
    assert delay == pytest.approx(RETRY_SECONDS)
    [row] = services.outbox()
    assert (row.status, row.attempts, row.ack) == ("pending", 1, None)
    assert "Connection" in row.last_error
