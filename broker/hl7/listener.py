"""The MLLP listener's message handler: store, then answer (checklist B1-B2).

``store`` ACK mode answers as soon as the row (with its AA) is committed and hands the
message to the processor. ``application`` mode hands it over and waits for the
processor's ACK (AA, or AE/AR with the ERR naming the field). If processing has not
finished within MWLB_APPLICATION_ACK_TIMEOUT the message is still safely stored, so
the listener answers AA on the store alone (and records that AA for duplicate replay);
the outcome then shows in the message store.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from broker.hl7.ack import build_ack
from broker.hl7.message import parse
from broker.models import InboundMessage
from broker.services.inbound import Inbox
from workers.dispatch import Dispatcher

log = logging.getLogger(__name__)


class HL7Receiver:
    """Handler for :class:`broker.hl7.mllp.MLLPServer`: one call per inbound message."""

    def __init__(self, inbox: Inbox, dispatcher: Dispatcher,
                 session_factory: sessionmaker[Session], *, ack_timeout: float,
                 io_threads: int = 8) -> None:
        self.inbox = inbox
        self.dispatcher = dispatcher
        self.session_factory = session_factory
        self.ack_timeout = ack_timeout
        self._pool = ThreadPoolExecutor(max_workers=io_threads, thread_name_prefix="mwl-mllp")

    async def __call__(self, raw: bytes, peer: str) -> bytes | None:
        loop = asyncio.get_running_loop()
        received = await loop.run_in_executor(self._pool, self.inbox.receive, raw, peer)
        pk = received.message_pk
        if pk is None:  # the store failed: AR 207
            return received.ack
        if received.new:
            self.dispatcher.dispatch(pk)
        if received.ack is not None:  # store mode, rejected, or a duplicate's replay
            return received.ack
        if not received.new:  # a duplicate still in flight: make sure it is queued
            self.dispatcher.dispatch(pk)
        await loop.run_in_executor(self._pool, self.dispatcher.wait, pk, self.ack_timeout)
        return await loop.run_in_executor(self._pool, self._final_ack, pk, raw)

    def _final_ack(self, pk: int, raw: bytes) -> bytes:
        """The ACK the processor stored, else AA on the durable store (see module doc)."""
        try:
            with self.session_factory() as session:
                row = session.get(InboundMessage, pk)
                if row is not None and row.ack is not None:
                    return row.ack
                ack = build_ack(parse(raw), "AA")
                session.execute(
                    update(InboundMessage)
                    .where(InboundMessage.id == pk, InboundMessage.ack.is_(None))
                    .values(ack=ack, ack_code="AA")
                )
                session.commit()
                log.warning("message %s not processed within %.1fs: AA on store", pk,
                            self.ack_timeout)
                return ack
        except SQLAlchemyError as exc:
            log.warning("message %s: store answer without database (%s)", pk,
                        type(exc).__name__)
            return build_ack(parse(raw), "AA")

    def close(self) -> None:
        self._pool.shutdown(wait=True)
