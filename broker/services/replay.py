"""Bulk reprocessing of stored messages (a replay run), e.g. the failed ones since a
mapping deploy, and its progress.

Contract:

* :func:`start_replay` selects the messages by status (``failed`` or ``processed``),
  receipt time (``since`` inclusive, ``until`` exclusive) and sender (MSH-3, optionally
  MSH-4: HL7 v2.5.1 2.14.9.3-4), puts each back in the queue as a single reprocess does
  (:func:`broker.services.processing.reset_for_reprocess`) and records a
  :class:`~broker.models.ReplayRun` with their ids, in the caller's transaction. The
  caller dispatches the messages after the commit.
* :func:`progress` is read from those messages' statuses alone: ``received`` is
  waiting, ``processed`` passed, ``failed`` failing (grouped by HL7 error: Table 0357
  code, ERR location, text); a message no longer stored (pruned) is counted as
  ``missing``. A run is finished when none waits.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from broker.models import InboundMessage, MappingDeployment, MessageStatus, ReplayRun
from broker.services.processing import reset_for_reprocess

# Statuses a replay can select: a received message is queued already, a rejected one
# was refused at the door and would be refused again.
REPLAYABLE = (MessageStatus.FAILED.value, MessageStatus.PROCESSED.value)
# Ids per IN (...) list.
CHUNK = 1000


@dataclass(frozen=True)
class ReplayCriteria:
    """Which stored messages a replay takes. ``sender`` is ``APP`` or ``APP/FAC``
    (MSH-3 / MSH-4 as stored)."""

    status: str = MessageStatus.FAILED.value
    since: datetime | None = None
    until: datetime | None = None
    sender: str | None = None

    def __post_init__(self) -> None:
        if self.status not in REPLAYABLE:
            raise ValueError(f"status {self.status!r}: a replay takes "
                             + " or ".join(REPLAYABLE) + " messages")
        if self.since and self.until and self.until <= self.since:
            raise ValueError("until must be after since")

    def as_json(self) -> dict[str, Any]:
        return {"status": self.status,
                "since": self.since.isoformat() if self.since else None,
                "until": self.until.isoformat() if self.until else None,
                "sender": self.sender}


def matching(session: Session, criteria: ReplayCriteria) -> list[int]:
    """Ids of the messages ``criteria`` selects, oldest first."""
    query = select(InboundMessage.id).where(InboundMessage.status == criteria.status)
    if criteria.since is not None:
        query = query.where(InboundMessage.received_at >= criteria.since)
    if criteria.until is not None:
        query = query.where(InboundMessage.received_at < criteria.until)
    if criteria.sender:
        application, _slash, facility = criteria.sender.partition("/")
        query = query.where(InboundMessage.sending_application == application)
        if _slash:
            query = query.where(InboundMessage.sending_facility == facility)
    return list(session.scalars(query.order_by(InboundMessage.id)))


def version_in_force(session: Session) -> int | None:
    """The mapping version of the latest deployment (None: nothing deployed yet)."""
    return session.scalar(select(MappingDeployment.version)
                          .order_by(MappingDeployment.id.desc()).limit(1))


def start_replay(session: Session, *, status: str = MessageStatus.FAILED.value,
                 since: datetime | None = None, until: datetime | None = None,
                 sender: str | None = None, user: str, version: int | None) -> ReplayRun:
    """Queue the messages selected by ``status``, ``since``, ``until`` and ``sender``
    (:class:`ReplayCriteria`; ValueError if they select nothing sensible) again and
    record the run (flushed, so it has its id); the caller commits, then dispatches
    ``run.message_ids``."""
    criteria = ReplayCriteria(status, since, until, sender)
    queued = []
    for chunk in _chunks(matching(session, criteria)):
        rows = session.scalars(select(InboundMessage).where(InboundMessage.id.in_(chunk))
                               .order_by(InboundMessage.id).with_for_update())
        queued += [row.id for row in rows
                   if row.status == criteria.status and reset_for_reprocess(session, row)]
    run = ReplayRun(created_by=user[:64], criteria=criteria.as_json(), message_ids=queued,
                    version=version)
    session.add(run)
    session.flush()
    return run


def _chunks(ids: Sequence[int]) -> Iterator[list[int]]:
    for start in range(0, len(ids), CHUNK):
        yield list(ids[start:start + CHUNK])


@dataclass(frozen=True)
class Reason:
    """Why messages still fail: the HL7 error recorded on them, and how many."""

    code: int | None
    location: str
    text: str
    count: int

    def __str__(self) -> str:
        return f"{self.code} at {self.location or '-'}: {self.text}"


@dataclass(frozen=True)
class ReplayProgress:
    run_id: int
    total: int
    passed: int
    failing: int
    waiting: int
    missing: int = 0
    reasons: list[Reason] = field(default_factory=list)  # commonest first
    created_at: datetime | None = None
    created_by: str = ""
    criteria: dict[str, Any] = field(default_factory=dict)
    version: int | None = None

    @property
    def done(self) -> int:
        return self.total - self.waiting

    @property
    def finished(self) -> bool:
        return self.waiting == 0

    def as_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "total": self.total, "done": self.done,
                "passed": self.passed, "failing": self.failing, "waiting": self.waiting,
                "missing": self.missing, "finished": self.finished,
                "reasons": [{"code": r.code, "location": r.location, "text": r.text,
                             "count": r.count} for r in self.reasons],
                "created_at": self.created_at.isoformat() if self.created_at else None,
                "created_by": self.created_by, "criteria": self.criteria,
                "version": self.version}


def progress(session: Session, run_id: int) -> ReplayProgress:
    """Where run ``run_id`` is, from its messages' statuses; KeyError if unknown."""
    run = session.get(ReplayRun, run_id)
    if run is None:
        raise KeyError(run_id)
    ids = list(run.message_ids or [])
    statuses: Counter[str] = Counter()
    reasons: Counter[tuple[int | None, str, str]] = Counter()
    for chunk in _chunks(ids):
        rows = session.execute(
            select(InboundMessage.status, InboundMessage.error_code,
                   InboundMessage.error_location, InboundMessage.error_text,
                   func.count())
            .where(InboundMessage.id.in_(chunk))
            .group_by(InboundMessage.status, InboundMessage.error_code,
                      InboundMessage.error_location, InboundMessage.error_text))
        for status, code, location, text, count in rows:
            statuses[status] += count
            if status == MessageStatus.FAILED.value:
                reasons[(code, location or "", text or "")] += count
    found = sum(statuses.values())
    return ReplayProgress(
        run_id=run.id, total=len(ids), passed=statuses[MessageStatus.PROCESSED.value],
        failing=statuses[MessageStatus.FAILED.value] + statuses[MessageStatus.REJECTED.value],
        waiting=statuses[MessageStatus.RECEIVED.value], missing=len(ids) - found,
        reasons=[Reason(code, location, text, count)
                 for (code, location, text), count in reasons.most_common()],
        created_at=run.created_at, created_by=run.created_by,
        criteria=dict(run.criteria or {}), version=run.version)
