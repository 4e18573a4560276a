"""The group-commit message store: messages waiting together are stored in
one transaction; a repeat of a message in the same batch is a duplicate; one message
the database refuses gets None (AR 207) without taking the others with it."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, func, select, text

from broker.config import AckMode
from broker.db import make_engine
from broker.migrations import upgrade
from broker.models import InboundMessage
from broker.services.inbound import Inbox
from broker.services.message_store import MessageStoreWriter
from tests.builders import order
from tests.console import client
from tests.integration.hl7util import send
from tests.workflow import wait_until


def test_a_batch_keeps_what_it_can_and_detects_repeats(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/store.db"
    upgrade(url)
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TRIGGER refuse_bad BEFORE INSERT ON inbound_message "
                          "WHEN NEW.control_id = 'B3' BEGIN SELECT RAISE(ABORT, 'refused'); "
                          "END"))
    writer = MessageStoreWriter(engine)
    inbox = Inbox(writer, AckMode.STORE)
    blocker = make_engine(url).connect()
    hold = blocker.begin()  # BEGIN IMMEDIATE: the writer's first batch waits on this
    try:
        first = writer.store(inbox.prepare(order(0), "127.0.0.1:1")[1])
        time.sleep(0.3)  # the writer is now blocked inside batch one
        later = [writer.store(inbox.prepare(order(n), "127.0.0.1:1")[1]) for n in (1, 1, 3, 4)]
    finally:
        hold.rollback()
        blocker.close()
    assert first.result(30) is not None
    one, again, bad, four = (f.result(30) for f in later)
    assert one is not None and one.new is True
    assert again is not None  # the repeat replays the first one's ACK
    assert (again.pk, again.ack, again.new) == (one.pk, one.ack, False)
    assert bad is None  # refused: the caller answers AR 207 and nothing is kept
    assert four is not None and four.new is True
    assert b"MSA|AA|B1" in (one.ack or b"")
    writer.close()
    with engine.connect() as conn:
        ids = conn.execute(select(InboundMessage.control_id).order_by(InboundMessage.id)
                           ).scalars().all()
        assert ids == ["B0", "B1", "B4"]
        assert conn.scalar(select(func.count()).select_from(InboundMessage)) == 3
    engine.dispose()


@pytest.mark.parametrize(("fault", "cause"), [
    ("max_page_count", "disk full"),  # SQLite: "database or disk is full"
    ("query_only", "read-only database"),  # SQLite: "attempt to write a readonly database"
])
def test_readiness_fails_while_the_store_cannot_commit(
        make_broker: Any, caplog: pytest.LogCaptureFixture, fault: str, cause: str) -> None:
    """A database that still answers reads but cannot commit: every message gets AR
    207, /readyz answers 503 naming the cause, the log names it once (no patient data),
    and both recover, without traffic, once the database can commit again."""
    app = make_broker(ack_mode="store")
    http = client(app)
    assert [a.code for a in send(app.mllp_port, order(0))] == ["AA"]
    assert http.get("/readyz").status_code == 200
    broken = {"on": True}

    @event.listens_for(app.runtime.engine, "begin")
    def _break(conn: Any) -> None:  # after the engine's own BEGIN IMMEDIATE
        if fault == "max_page_count":  # no page beyond those in use: the disk is "full"
            limit = 1 if broken["on"] else 1_073_741_823
            conn.exec_driver_sql(f"PRAGMA max_page_count={limit}")
        else:
            conn.exec_driver_sql(f"PRAGMA query_only={'ON' if broken['on'] else 'OFF'}")

    with caplog.at_level(logging.INFO):
        codes = [a.code for n in range(1, 40) for a in send(app.mllp_port, order(n))]
        assert codes[-1] == "AR" and "AA" not in codes[codes.index("AR"):], codes
        ready = http.get("/readyz")
        assert ready.status_code == 503, ready.text
        body = ready.json()
        assert body["database"] == "ok"  # it still answers: only the commit fails
        assert body["message_store"]["status"].startswith(f"failing: {cause}"), body
        assert any(cause in r for r in body["reasons"]), body
        broken["on"] = False
        wait_until(lambda: http.get("/readyz").status_code == 200, timeout=15,
                   what="ready again")
    assert http.get("/readyz").json()["message_store"]["status"] == "ok"
    assert [a.code for a in send(app.mllp_port, order(99))] == ["AA"]
    lines = [r.getMessage() for r in caplog.records if "message store" in r.getMessage()]
    assert sum("unavailable:" in line and cause in line for line in lines) == 1, lines
    assert any("available again" in line for line in lines), lines
    leaks = [(r.name, r.levelname) for r in caplog.records
             if "Bench" in r.getMessage() or "PID|" in r.getMessage()]
    assert leaks == []  # the loggers that printed patient data, not the data
