"""Re-dispatch committed but unfinished work (a lost publish, a killed worker, a
Redis restart): inbound messages still ``received``, MPPS not linked at their latest
version, instances and IANs not reconciled (some time after they arrived), outbox
messages due, and instances waiting to be forwarded. Every task is idempotent, so a
second dispatch is harmless. The same thread does the housekeeping: retention and
the SQLite planner statistics."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import cast

from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session, sessionmaker

from broker.db import is_sqlite, refresh_planner_statistics, unit_of_work
from broker.jobs import Job
from broker.models import (
    AvailabilityNotification,
    InboundMessage,
    MessageStatus,
    PerformedProcedureStep,
    ScheduledProcedureStep,
    StoredInstance,
)
from broker.outage import Outage
from broker.services.outbound import due_destinations
from broker.services.retention import prune

log = logging.getLogger(__name__)


def pending_messages(session: Session, older_than: timedelta, limit: int = 1000,
                     after: int = 0) -> list[int]:
    """Ids of messages still ``received`` for ``older_than``, from id ``after`` on."""
    cutoff = datetime.now(UTC) - older_than
    return list(session.scalars(
        select(InboundMessage.id)
        .where(InboundMessage.status == MessageStatus.RECEIVED.value,
               InboundMessage.received_at <= cutoff, InboundMessage.id > after)
        .order_by(InboundMessage.id).limit(limit)
    ))


def pending_tasks(session: Session, older_than: timedelta,
                  limit: int = 1000) -> list[tuple[Job, tuple[object, ...]]]:
    """Performed-work tasks committed but unfinished, and outbound/forward work due."""
    cutoff = datetime.now(UTC) - older_than
    tasks: list[tuple[Job, tuple[object, ...]]] = []
    for pk in session.scalars(select(PerformedProcedureStep.id).where(
            PerformedProcedureStep.linked_version < PerformedProcedureStep.version,
            PerformedProcedureStep.updated_at <= cutoff).limit(limit)):
        tasks.append((Job.LINK_MPPS, (pk,)))
    studies = set(session.scalars(select(StoredInstance.study_instance_uid).where(
        StoredInstance.reconciled.is_(False), StoredInstance.received_at <= cutoff)
        .distinct().limit(limit)))
    studies |= set(session.scalars(select(AvailabilityNotification.study_instance_uid).where(
        AvailabilityNotification.reconciled.is_(False),
        AvailabilityNotification.received_at <= cutoff).distinct().limit(limit)))
    tasks += [(Job.RECONCILE_STUDY, (uid,)) for uid in sorted(studies)]
    tasks += [(Job.DELIVER_OUTBOUND, (name,)) for name in due_destinations(session)]
    if session.scalar(select(StoredInstance.id).where(
            StoredInstance.forward_state == "pending",
            StoredInstance.forward_due_at <= datetime.now(UTC)).limit(1)) is not None:
        tasks.append((Job.FORWARD_INSTANCES, ()))
    return tasks


# The sweep use case (:meth:`broker.application.UseCases.sweep`): dispatch what is
# pending for ``older_than``, except messages ``skip`` says so for; returns the count.
SweepPass = Callable[[timedelta, Callable[[int], bool] | None], int]


class Sweeper(threading.Thread):
    """Runs ``sweep`` (the use case) at start (everything pending) and then every ``interval``;
    prunes past ``retention_days`` once an hour (broker.services.retention); refreshes
    the SQLite planner statistics at start, hourly, and whenever the number of steps
    has doubled since the last time (broker.db.refresh_planner_statistics).

    :meth:`wake` runs a pass now over everything pending, whatever its age: for when
    queued work is known to be lost or stranded (Redis restarted or reachable again, a
    broker or worker process gone without notice; see :mod:`broker.presence`), so that
    recovery starts within seconds instead of after ``grace``."""

    PRUNE_EVERY = timedelta(hours=1)
    ANALYZE_EVERY = timedelta(hours=1)

    def __init__(self, factory: sessionmaker[Session], sweep: SweepPass,
                 interval: float = 15.0, grace: float = 30.0,
                 retention_days: float = 0.0) -> None:
        super().__init__(name="mwl-sweeper", daemon=True)
        self.factory, self.sweep = factory, sweep
        self.interval, self.grace = interval, grace
        self.retention_days = retention_days
        self._pruned_at: datetime | None = None
        self._analyzed: tuple[datetime, int] | None = None  # when, with how many steps
        self._stop_event = threading.Event()
        self._wake = threading.Event()
        self._wake_reason = ""
        # message id -> (times re-dispatched by a timed pass, when it may be again)
        self._backoff: dict[int, tuple[int, float]] = {}
        self._seen: set[int] = set()
        self.health = Outage("sweeper (database)", log)

    def _prune(self) -> None:
        now = datetime.now(UTC)
        if self.retention_days <= 0 or (
                self._pruned_at is not None and now - self._pruned_at < self.PRUNE_EVERY):
            return
        with unit_of_work(self.factory) as session:
            counts = prune(session, self.retention_days, now=now)
        self._pruned_at = now
        if any(counts.values()):
            log.info("retention: pruned %s", ", ".join(f"{n} {k}" for k, n in counts.items()))

    def _analyze(self) -> None:
        now = datetime.now(UTC)
        with self.factory() as session:
            engine = cast(Engine, session.get_bind())
            if not is_sqlite(engine):  # PostgreSQL's autovacuum keeps its statistics
                return
            steps = int(session.scalar(
                select(func.count()).select_from(ScheduledProcedureStep)) or 0)
        if self._analyzed is not None:
            when, count = self._analyzed
            if now - when < self.ANALYZE_EVERY and steps < 2 * count + 100:
                return
        refresh_planner_statistics(engine)
        log.info("planner statistics refreshed (%d steps)", steps)
        self._analyzed = (now, steps)

    MAX_BACKOFF = 600.0

    def _skip(self, pk: int) -> bool:
        """Timed passes: a message re-dispatched and still waiting is most likely still
        queued behind a backlog, not lost; re-dispatch it again after ``grace``, then
        twice that, and so on (at most MAX_BACKOFF), instead of on every pass, so that a
        long backlog is not multiplied in the queue. Known losses wake the sweeper and
        re-dispatch everything at once (``wake``)."""
        now = time.monotonic()
        times, due = self._backoff.get(pk, (0, 0.0))
        if now < due:
            self._seen.add(pk)
            return True
        self._backoff[pk] = (times + 1,
                             now + min(self.grace * 2 ** times, self.MAX_BACKOFF))
        self._seen.add(pk)
        return False

    def _sweep(self, older_than: timedelta, recovery: bool) -> None:
        self._seen = set()
        if recovery:  # everything now, and the back-off starts again from here
            self._backoff.clear()
        self.sweep(older_than, self._skip)
        self._backoff = {pk: v for pk, v in self._backoff.items() if pk in self._seen}

    def wake(self, reason: str) -> None:
        """Sweep everything pending now (thread-safe; see the class doc)."""
        self._wake_reason = reason
        self._wake.set()

    def run(self) -> None:
        older_than, recovery = timedelta(0), True
        while not self._stop_event.is_set():
            try:
                self._sweep(older_than, recovery)
                self._prune()
                self._analyze()
                self.health.ok()
            except Exception as exc:  # the database may be down; try again later
                self.health.failed(exc)
            older_than, recovery = timedelta(seconds=self.grace), False
            if self._wake.wait(self.interval) and not self._stop_event.is_set():
                self._wake.clear()
                log.info("recovery sweep: %s", self._wake_reason)
                older_than, recovery = timedelta(0), True

    def stop(self) -> None:
        self._stop_event.set()
        self._wake.set()
