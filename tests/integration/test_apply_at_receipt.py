"""Application ACKs on the embedded default (SQLite, in-process processing): the
message is stored and applied in one commit, and the ACK carrying the outcome is sent
after it (HL7 v2.5.1 2.9.2). Whatever goes wrong while applying, the raw message is
kept and applied later; a message never overtakes an earlier one of its patient."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from sqlalchemy import create_engine, event, text

from broker.db import make_engine
from tests.builders import order
from tests.conftest import sample
from tests.dcmtk import findscu, sps
from tests.integration.hl7util import send
from tests.integration.rows import stored
from tests.workflow import wait_until

pytestmark = pytest.mark.dcmtk


def commits(broker: Any) -> Callable[[], int]:
    """Count the commits of the broker's database engine from now on, but for the
    sweeper's housekeeping (planner statistics), which runs on a schedule of its own."""
    done = [0]
    lock = threading.Lock()

    def count(_conn: Any) -> None:
        if threading.current_thread().name == "mwl-sweeper":
            return
        with lock:
            done[0] += 1

    event.listen(broker.runtime.engine, "commit", count)
    return lambda: done[0]


def sql(broker: Any, statement: str) -> None:
    """Change the broker's database behind its back, as an operator (or a fault) would."""
    engine = create_engine(broker.settings.database_url)
    with engine.begin() as conn:
        conn.execute(text(statement))
    engine.dispose()


# Makes every new order fail in the database until the table it names exists: an
# error that is neither the message's content nor its data (it would pass on a retry).
BREAK_ORDERS = ("CREATE TRIGGER break_orders AFTER INSERT ON imaging_order "
                "BEGIN INSERT INTO repaired VALUES (1); END")
REPAIR_ORDERS = "CREATE TABLE repaired (x INTEGER)"


def test_the_ack_follows_one_commit_holding_the_row_and_the_worklist_item(
        make_broker: Any) -> None:
    broker = make_broker()
    committed = commits(broker)
    [ack] = send(broker.mllp_port, sample("05"))
    assert ack.code == "AA"
    assert committed() == 1
    [row] = stored(broker)
    assert (row.status, row.ack, row.raw) == ("processed", ack.raw, sample("05"))
    assert len(findscu(broker.dicom_port, ["AccessionNumber=ACC0001"])) == 2


def test_messages_waiting_together_share_one_commit(make_broker: Any) -> None:
    broker = make_broker()
    blocker = make_engine(broker.settings.database_url).connect()
    hold = blocker.begin()  # BEGIN IMMEDIATE: the writer's first commit waits for it
    committed = commits(broker)
    with ThreadPoolExecutor(6) as pool:
        try:
            first = pool.submit(send, broker.mllp_port, order(0))
            time.sleep(0.3)  # the writer is now waiting with the first message alone
            rest = [pool.submit(send, broker.mllp_port, order(n)) for n in range(1, 6)]
            wait_until(lambda: broker.store_writer._queue.qsize() == 5, what="5 queued")
        finally:
            hold.rollback()
            blocker.close()
        acks = [ack for future in [first, *rest] for ack in future.result(30)]
    assert [ack.code for ack in acks] == ["AA"] * 6
    assert committed() == 2  # the first message alone, then the five together
    assert {row.status for row in stored(broker)} == {"processed"}
    assert len(findscu(broker.dicom_port, ["AccessionNumber=ACC*"])) == 6


def test_an_ae_for_bad_content_keeps_the_raw_message(make_broker: Any) -> None:
    """A change to an order the broker does not know: AE 204, recorded in the same
    commit as the raw bytes."""
    broker = make_broker()
    committed = commits(broker)
    [ack] = send(broker.mllp_port, sample("06"))
    assert ack.code == "AE" and "204" in ack.err
    assert committed() == 1
    [row] = stored(broker)
    assert (row.status, row.error_code, row.ack, row.raw) == (
        "failed", 204, ack.raw, sample("06"))


def test_a_database_error_while_applying_keeps_the_message_for_later(
        make_broker: Any) -> None:
    """The order cannot be applied for now: the raw message is committed all the same,
    answered AA on the store once the ACK timeout passes, and applied by the sweeper
    once the database accepts it."""
    broker = make_broker(application_ack_timeout=1.0, sweep_interval=0.2, sweep_grace=0.5)
    sql(broker, BREAK_ORDERS)
    [ack] = send(broker.mllp_port, sample("05"))
    assert ack.code == "AA"
    [row] = stored(broker)
    assert (row.status, row.raw, row.ack) == ("received", sample("05"), ack.raw)
    assert findscu(broker.dicom_port, ["AccessionNumber=ACC0001"]) == []
    sql(broker, REPAIR_ORDERS)
    wait_until(lambda: stored(broker)[0].status == "processed", what="applied later")
    assert len(findscu(broker.dicom_port, ["AccessionNumber=ACC0001"])) == 2
    assert stored(broker)[0].ack == ack.raw  # a resend still gets what was sent


def test_a_failure_that_ends_the_transaction_still_keeps_the_message(
        make_broker: Any) -> None:
    """An error that takes the whole transaction down (here SQLite's RAISE(ROLLBACK)),
    not only the message's changes: the raw message is stored again on its own, and
    applied once the database accepts it."""
    broker = make_broker(application_ack_timeout=1.0, sweep_interval=0.2, sweep_grace=0.5)
    sql(broker, "CREATE TRIGGER abort_orders BEFORE INSERT ON imaging_order "
                "BEGIN SELECT RAISE(ROLLBACK, 'refused for now'); END")
    [ack] = send(broker.mllp_port, sample("05"))
    assert ack.code == "AA"
    [row] = stored(broker)
    assert (row.status, row.raw) == ("received", sample("05"))
    sql(broker, "DROP TRIGGER abort_orders")
    wait_until(lambda: stored(broker)[0].status == "processed", what="applied later")
    assert len(findscu(broker.dicom_port, ["AccessionNumber=ACC0001"])) == 2


def test_a_message_is_not_applied_before_an_earlier_one_of_its_patient(
        make_broker: Any) -> None:
    """The new order is left pending; the change to it that follows waits for it, so
    it is applied after the order (alone it would be AE 204, unknown order) and moves
    its steps from 09:30 to 11:00."""
    broker = make_broker(application_ack_timeout=1.0)
    sql(broker, BREAK_ORDERS)
    assert send(broker.mllp_port, sample("05"))[0].code == "AA"  # on the store alone
    sql(broker, REPAIR_ORDERS)
    [change] = send(broker.mllp_port, sample("06"))
    assert change.code == "AA", change.err
    nw, xo = stored(broker)
    assert (nw.status, xo.status) == ("processed", "processed")
    assert nw.processed_at is not None and xo.processed_at is not None
    assert nw.processed_at <= xo.processed_at
    items = findscu(broker.dicom_port, ["AccessionNumber=ACC0001",
                                        "ScheduledProcedureStepSequence[0]."
                                        "ScheduledProcedureStepStartTime"])
    assert {sps(ds).ScheduledProcedureStepStartTime[:4] for ds in items} == {"1100", "1105"}
