"""Receiving an HL7 message (the use case behind the MLLP listener): store, then
answer (AA only after the commit, HL7 v2.5.1 2.9.2).

``store`` ACK mode answers as soon as the row (with its AA) is committed and hands the
message to the processor. Parsing happens on the event loop (linear and capped, tens
of microseconds) except for large messages, which are parsed in a worker thread; the
commit is waited for, off the loop, in the group-commit writer. ``application`` mode
answers with the processor's ACK (AA, or AE/AR with the ERR naming the field): when
the writer applied the message in the commit that stored it (embedded mode), that ACK
comes back with the commit; otherwise the message is handed over and the listener waits
for the processor (the in-process dispatcher's future, or the row's status in
distributed mode). If processing has not finished within MWLB_APPLICATION_ACK_TIMEOUT
the message is still safely stored, so the listener answers AA on the store alone (and
records that AA for duplicate replay); the outcome then shows in the message store.
"""

from __future__ import annotations

import asyncio
import logging
import os
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from broker.dispatch import Dispatcher
from broker.hl7.ack import build_ack
from broker.hl7.warnings import from_json
from broker.models import InboundMessage
from broker.services.inbound import Inbox

log = logging.getLogger(__name__)


class Reception:
    """Receive one inbound message per :meth:`receive` call (what the MLLP listener
    hands over) and return the ACK to send, or None for no answer."""

    def __init__(self, inbox: Inbox, dispatcher: Dispatcher,
                 session_factory: sessionmaker[Session], *, ack_timeout: float,
                 io_threads: int = 8, failpoint: str = "") -> None:
        self.inbox = inbox
        # Durability tests: "crash-after-commit:N" exits after the N-th stored message,
        # before its task is published (what a power cut there would do).
        self._crash_after = int(failpoint.split(":")[1]) if failpoint.startswith(
            "crash-after-commit:") else 0
        self._stored = 0
        self.dispatcher = dispatcher
        self.session_factory = session_factory
        self.ack_timeout = ack_timeout
        self._pool = ThreadPoolExecutor(max_workers=io_threads, thread_name_prefix="mwl-mllp")

    async def receive(self, raw: bytes, peer: str) -> bytes | None:
        received = await self.inbox.receive(raw, peer)
        pk = received.message_pk
        if pk is None:  # the store failed: AR 207
            return received.ack
        if received.new:
            self._failpoint()
        # Committed ``received``, or a duplicate still in flight: make sure it is queued.
        if received.pending or received.ack is None:
            self._dispatch(pk)
        if received.ack is not None:  # applied, store mode, rejected, or a replay
            return received.ack
        return await asyncio.get_running_loop().run_in_executor(
            self._pool, self._processed_ack, pk, raw)

    def _dispatch(self, pk: int) -> None:
        """Hand over a committed message; if Redis is away the row is safe and the
        sweeper dispatches it later, so this never fails the message."""
        try:
            self.dispatcher.dispatch(pk)
        except Exception as exc:
            log.warning("message %s committed but not dispatched (%s): left for the sweeper",
                        pk, type(exc).__name__)

    def _failpoint(self) -> None:
        if self._crash_after:
            self._stored += 1
            if self._stored >= self._crash_after:
                log.critical("failpoint crash-after-commit reached: exiting")
                os._exit(137)

    def _processed_ack(self, pk: int, raw: bytes) -> bytes:
        """Wait (up to the ACK timeout) for the processor, then answer: the ACK stored
        with the outcome, as the wait learnt it, else as :meth:`_final_ack` finds it."""
        waited = self.dispatcher.wait(pk, self.ack_timeout)
        if waited.applied and waited.ack is not None:
            return waited.ack
        return self._final_ack(pk, raw)

    def _final_ack(self, pk: int, raw: bytes) -> bytes:
        """The ACK the processor stored, else AA on the durable store (see module doc).
        Only one ACK is ever stored for a message, and only that one is sent: when the
        write of ours finds one already there (the processor finished meanwhile, or
        another node answering a resend of the same message timed out too), the stored
        one is sent instead, so every answer to one message carries the same bytes."""
        try:
            with self.session_factory() as session:
                row = session.get(InboundMessage, pk)
                if row is not None and row.ack is not None:
                    return row.ack
                ack = build_ack(self.inbox.read(raw), "AA",
                                warnings=from_json(row.warnings if row is not None else None))
                written = session.execute(
                    update(InboundMessage)
                    .where(InboundMessage.id == pk, InboundMessage.ack.is_(None))
                    .values(ack=ack, ack_code="AA")
                    .execution_options(synchronize_session=False)
                )
                session.commit()
                if getattr(written, "rowcount", 1) == 0:
                    stored = session.scalar(select(InboundMessage.ack)
                                            .where(InboundMessage.id == pk))
                    if stored is not None:
                        return bytes(stored)
                log.warning("message %s not processed within %.1fs: AA on store", pk,
                            self.ack_timeout)
                return ack
        except SQLAlchemyError as exc:
            log.warning("message %s: store answer without database (%s)", pk,
                        type(exc).__name__)
            return build_ack(self.inbox.read(raw), "AA")

    def close(self) -> None:
        self._pool.shutdown(wait=True)
