"""Messages applied in the commit that stores them (the message store writer with
:class:`broker.services.apply_at_receipt.ApplyAtReceipt`, as ``serve`` runs it in
embedded mode with application ACKs), on SQLite and PostgreSQL: the outcome's ACK comes
back with the commit (HL7 v2.5.1 2.9.2), messages waiting together share one commit in
arrival order, a message never overtakes an earlier pending one of its patient, and a
database error while applying keeps the raw message for the dispatcher."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import Engine, event, text

from broker.config import AckMode
from broker.models import MessageStatus
from broker.services.apply_at_receipt import ApplyAtReceipt
from broker.services.inbound import Inbox
from broker.services.message_store import MessageStoreWriter, Stored
from tests.conftest import sample
from tests.integration.hl7util import Ack
from tests.service.conftest import PEER, Services
from tests.service.messages import edited
from tests.workflow import wait_until


@pytest.fixture
def applying(services: Services) -> Iterator[Inbox]:
    """An inbox whose writer applies each message as it stores it."""
    writer = MessageStoreWriter(engine_of(services), ApplyAtReceipt(services.map))
    yield Inbox(writer, AckMode.APPLICATION)
    writer.close()


def engine_of(services: Services) -> Engine:
    engine = services.factory.kw["bind"]
    assert isinstance(engine, Engine)
    return engine


def commits(engine: Engine) -> Callable[[], int]:
    """Count the engine's commits from now on."""
    done = [0]

    def count(_conn: Any) -> None:
        done[0] += 1

    event.listen(engine, "commit", count)
    return lambda: done[0]


@contextmanager
def writes_held(engine: Engine) -> Iterator[None]:
    """Hold the message store's writes (SQLite: the write lock; PostgreSQL: a table
    lock that INSERT waits for) until the block ends."""
    with engine.connect() as conn:
        hold = conn.begin()
        try:
            if engine.dialect.name == "postgresql":
                conn.execute(text("LOCK TABLE inbound_message IN SHARE ROW EXCLUSIVE MODE"))
            yield
        finally:
            hold.rollback()


def store(inbox: Inbox, raw: bytes) -> Stored:
    stored = inbox.writer.store(inbox.prepare(raw, PEER)[1]).result(30)
    assert stored is not None
    return stored


def store_together(inbox: Inbox, first: bytes, *rest: bytes) -> list[Stored]:
    """Store ``first``, then ``rest`` while the writer is busy with it, so that they
    wait together and are stored (and applied) in one transaction."""
    engine = inbox.writer.engine
    with writes_held(engine):
        futures = [inbox.writer.store(inbox.prepare(first, PEER)[1])]
        time.sleep(0.3)  # the writer holds ``first`` and waits for the lock
        futures += [inbox.writer.store(inbox.prepare(raw, PEER)[1]) for raw in rest]
        wait_until(lambda: inbox.writer._queue.qsize() == len(rest), what="queued")
    results = [future.result(30) for future in futures]
    assert None not in results
    return [r for r in results if r is not None]


def break_orders(engine: Engine) -> Callable[[], None]:
    """Make inserting an order fail with a database error that a retry would not meet
    (the table its trigger writes is missing); returns the repair."""
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text(
                "CREATE FUNCTION break_orders() RETURNS trigger LANGUAGE plpgsql AS "
                "$$ BEGIN INSERT INTO repaired VALUES (1); RETURN NEW; END $$"))
            conn.execute(text("CREATE TRIGGER break_orders AFTER INSERT ON imaging_order "
                              "FOR EACH ROW EXECUTE FUNCTION break_orders()"))
        else:
            conn.execute(text("CREATE TRIGGER break_orders AFTER INSERT ON imaging_order "
                              "BEGIN INSERT INTO repaired VALUES (1); END"))

    def repair() -> None:
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE repaired (x INTEGER)"))

    return repair


def test_the_outcome_comes_back_with_the_commit(services: Services, applying: Inbox) -> None:
    committed = commits(engine_of(services))
    stored = store(applying, sample("05"))
    assert committed() == 1
    assert (stored.new, stored.status) == (True, MessageStatus.PROCESSED.value)
    assert stored.ack is not None and Ack.parse(stored.ack).code == "AA"
    row = services.message(stored.pk)
    assert (row.status, row.ack, row.raw, row.attempts) == (
        "processed", stored.ack, sample("05"), 1)
    assert services.statuses() == {"SPS0001": "SCHEDULED", "SPS0002": "SCHEDULED"}


def test_a_content_error_is_answered_and_stored_failed(services: Services,
                                                       applying: Inbox) -> None:
    stored = store(applying, sample("06"))  # a change to an order nobody sent
    assert stored.ack is not None
    ack = Ack.parse(stored.ack)
    assert ack.code == "AE" and "204" in ack.err
    row = services.message(stored.pk)
    assert (row.status, row.error_code, row.raw) == ("failed", 204, sample("06"))


def test_messages_waiting_together_share_one_commit_in_arrival_order(
        services: Services, applying: Inbox) -> None:
    """A change right behind its new order, in the same transaction: applied after it
    (alone, first, it would be AE 204)."""
    other = edited("09", "OMI-OTHER")
    committed = commits(engine_of(services))
    first, nw, xo = store_together(applying, other, sample("05"), sample("06"))
    assert committed() == 2  # ``first`` alone, then the two together
    assert [Ack.parse(s.ack or b"").code for s in (first, nw, xo)] == ["AA"] * 3
    assert services.statuses()["SPS0001"] == "SCHEDULED"
    assert services.steps()["SPS0001"].start_datetime == "20250310110000"


def test_a_message_waits_for_an_earlier_pending_one_of_its_patient(
        services: Services, applying: Inbox) -> None:
    """The new order is stored but not applied yet (store ACK mode, say); the change
    that follows is left to the dispatcher, which applies the order first."""
    nw = store(services.inbox, sample("05"))
    assert nw.status == MessageStatus.RECEIVED.value
    xo = store(applying, sample("06"))
    assert (xo.new, xo.status, xo.ack) == (True, MessageStatus.RECEIVED.value, None)
    assert services.use_cases.apply_message(xo.pk) == 2
    assert services.message(nw.pk).status == services.message(xo.pk).status == "processed"
    assert services.steps()["SPS0001"].start_datetime == "20250310110000"


def test_a_database_error_while_applying_keeps_the_message_and_the_batch(
        services: Services, applying: Inbox) -> None:
    """The order meets a database error: its changes are rolled back, it is committed
    ``received`` with its raw bytes, and the message stored beside it is applied all
    the same. Once the database accepts it, the dispatcher's job applies it."""
    engine = engine_of(services)
    repair = break_orders(engine)
    first, broken, adt = store_together(applying, sample("01"), sample("05"),
                                        edited("02", "ADT-OTHER"))
    assert first.status == MessageStatus.PROCESSED.value
    assert (broken.status, broken.ack) == (MessageStatus.RECEIVED.value, None)
    assert adt.status == MessageStatus.PROCESSED.value  # another patient: applied
    row = services.message(broken.pk)
    assert (row.status, row.raw, row.attempts) == ("received", sample("05"), 0)
    assert services.steps() == {}
    repair()
    assert services.use_cases.apply_message(broken.pk) == 1
    assert services.message(broken.pk).status == "processed"
    assert set(services.steps()) >= {"SPS0001", "SPS0002"}
