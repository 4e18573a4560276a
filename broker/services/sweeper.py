"""Re-dispatch committed but unfinished work (DESIGN.md: lost publish, killed worker,
Redis restart). Messages still ``received`` some time after they arrived are handed to
the dispatcher again; processing is idempotent, so a second dispatch is harmless."""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from broker.models import InboundMessage, MessageStatus
from workers.dispatch import Dispatcher

log = logging.getLogger(__name__)


def pending_messages(session: Session, older_than: timedelta, limit: int = 1000) -> list[int]:
    cutoff = datetime.now(UTC) - older_than
    return list(session.scalars(
        select(InboundMessage.id)
        .where(InboundMessage.status == MessageStatus.RECEIVED.value,
               InboundMessage.received_at <= cutoff)
        .order_by(InboundMessage.id).limit(limit)
    ))


def sweep(factory: sessionmaker[Session], dispatcher: Dispatcher,
          older_than: timedelta) -> int:
    """Dispatch every pending message older than ``older_than``; returns the count."""
    with factory() as session:
        ids = pending_messages(session, older_than)
    for pk in ids:
        dispatcher.dispatch(pk)
    if ids:
        log.info("sweeper re-dispatched %d pending message(s)", len(ids))
    return len(ids)


class Sweeper(threading.Thread):
    """Runs :func:`sweep` at start (everything pending) and then every ``interval``."""

    def __init__(self, factory: sessionmaker[Session], dispatcher: Dispatcher,
                 interval: float = 15.0, grace: float = 30.0) -> None:
        super().__init__(name="mwl-sweeper", daemon=True)
        self.factory, self.dispatcher = factory, dispatcher
        self.interval, self.grace = interval, grace
        self._stop_event = threading.Event()

    def run(self) -> None:
        older_than = timedelta(0)
        while not self._stop_event.is_set():
            try:
                sweep(self.factory, self.dispatcher, older_than)
            except Exception as exc:  # the database may be down; try again later
                log.warning("sweeper pass failed: %s", type(exc).__name__)
            older_than = timedelta(seconds=self.grace)
            self._stop_event.wait(self.interval)

    def stop(self) -> None:
        self._stop_event.set()
