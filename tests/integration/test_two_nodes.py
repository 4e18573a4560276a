"""Two broker nodes on one database (high availability behind a virtual IP): both
answer the same message when processing stalls, and both must send the one ACK that
is stored for it (HL7 v2 original mode: a resend is answered with the same ACK)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from broker.application import Reception
from broker.config import AckMode
from broker.db import make_engine, make_session_factory
from broker.migrations import upgrade
from broker.models import InboundMessage
from broker.services.inbound import Inbox
from broker.services.message_store import MessageStoreWriter
from tests.builders import order

pytestmark = [pytest.mark.postgres]


class _ReadTogether:
    """A session factory whose sessions wait for each other after their first read:
    both nodes have seen "no ACK stored yet" before either writes one."""

    def __init__(self, factory: Any, barrier: threading.Barrier) -> None:
        self.factory, self.barrier = factory, barrier

    def __call__(self) -> Any:
        session = self.factory()
        original = session.get

        def get(*args: Any, **kwargs: Any) -> Any:
            row = original(*args, **kwargs)
            self.barrier.wait(10)
            return row

        session.get = get
        return session


def test_two_nodes_answering_one_message_send_the_same_stored_ack(postgres_url: str) -> None:
    upgrade(postgres_url)
    engine = make_engine(postgres_url)
    factory = make_session_factory(engine)
    writer = MessageStoreWriter(engine)
    try:
        raw = order(7)
        _, pending = Inbox(writer, AckMode.APPLICATION).prepare(raw, "127.0.0.1:1")
        stored = writer.store(pending).result(30)
        assert stored is not None and stored[1] is None  # stored, no ACK yet
        pk = stored[0]
        barrier = threading.Barrier(2)
        nodes = [Reception(Inbox(writer, AckMode.APPLICATION), dispatcher=None,  # type: ignore[arg-type]
                             session_factory=_ReadTogether(factory, barrier),
                             ack_timeout=0.1) for _ in range(2)]
        with ThreadPoolExecutor(2) as pool:
            first, second = pool.map(lambda node: node._final_ack(pk, raw), nodes)
        for node in nodes:
            node.close()
        with factory() as session:
            row = session.get(InboundMessage, pk)
            assert row is not None and row.ack is not None
            kept = bytes(row.ack)
        assert b"MSA|AA|B7" in kept
        assert first == second == kept
    finally:
        writer.close()
        engine.dispose()
