"""The group-commit message store (issue 6): messages waiting together are stored in
one transaction; a repeat of a message in the same batch is a duplicate; one message
the database refuses gets None (AR 207) without taking the others with it."""

from __future__ import annotations

import time
from pathlib import Path

from sqlalchemy import func, select, text

from broker.config import AckMode
from broker.db import make_engine
from broker.migrations import upgrade
from broker.models import InboundMessage
from broker.services.inbound import Inbox
from broker.services.message_store import MessageStoreWriter
from tests.builders import order


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
    assert one is not None and one[2] is True
    assert again == (one[0], one[1], False)  # the repeat replays the first one's ACK
    assert bad is None  # refused: the caller answers AR 207 and nothing is kept
    assert four is not None and four[2] is True
    assert b"MSA|AA|B1" in (one[1] or b"")
    writer.close()
    with engine.connect() as conn:
        ids = conn.execute(select(InboundMessage.control_id).order_by(InboundMessage.id)
                           ).scalars().all()
        assert ids == ["B0", "B1", "B4"]
        assert conn.scalar(select(func.count()).select_from(InboundMessage)) == 3
    engine.dispose()
