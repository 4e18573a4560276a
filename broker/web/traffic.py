"""Traffic over a recent window, for the dashboard: HL7 messages received, sent and
failed per time bucket, the adjustments (warnings) they were accepted with, and the
Modality Worklist C-FIND queries (PS3.4 K.4) of each station.

Counted in the database, so the numbers cover every process (serve, web, workers), with
one GROUP BY per table over a bounded range of an indexed column: inbound messages on
``(status, received_at)`` (every status is named, so the index serves the range and
covers the count), outbound messages on ``sent_at``, worklist queries on ``at``.

A window is the last 1, 3, 6, 12 or 24 hours in at most 180 buckets: one minute wide
up to 3 hours (messages per minute), 2, 4 or 8 minutes beyond. Buckets are whole
multiples of their width since the Unix epoch (UTC), so the same message falls in the
same bucket for every caller; the last bucket is the one running now.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, Integer, func, literal_column, select
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Session
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

from broker.domain.status import MessageStatus
from broker.hl7.warnings import from_json
from broker.models import InboundMessage, OutboundMessage, WorklistQuery

WINDOW_HOURS = (1, 3, 6, 12, 24)
DEFAULT_HOURS = 3
MAX_BUCKETS = 180
FAILED = (MessageStatus.FAILED.value, MessageStatus.REJECTED.value)
PENDING = "pending"  # what the console calls a stored message not applied yet
WARNED_MESSAGES_READ = 1000  # warnings are tallied over the latest this many messages


class EpochBucket(FunctionElement[int]):
    """``epoch_bucket(timestamp, width)``: the number of whole ``width``-second buckets
    between the Unix epoch and a UTC timestamp column."""

    type = Integer()
    name = "epoch_bucket"
    inherit_cache = True


@compiles(EpochBucket, "sqlite")
def _sqlite_bucket(element: EpochBucket, compiler: SQLCompiler, **kw: Any) -> str:
    # SQLAlchemy stores "YYYY-MM-DD HH:MM:SS.ffffff"; strftime would round the fraction.
    column, width = (compiler.process(c, **kw) for c in element.clauses)
    return f"(CAST(strftime('%s', substr({column}, 1, 19)) AS INTEGER) / {width})"


@compiles(EpochBucket, "postgresql")
def _postgresql_bucket(element: EpochBucket, compiler: SQLCompiler, **kw: Any) -> str:
    column, width = (compiler.process(c, **kw) for c in element.clauses)
    return f"CAST(floor(extract(epoch FROM {column}) / {width}) AS INTEGER)"


@dataclass(frozen=True)
class Window:
    """``buckets`` buckets of ``width`` seconds, the last one holding ``now``."""

    hours: int
    width: int
    buckets: int
    first: int  # the first bucket's number since the epoch

    @classmethod
    def last(cls, hours: int, now: datetime | None = None) -> Window:
        """The last ``hours`` (one of WINDOW_HOURS, else the default) up to ``now``."""
        hours = hours if hours in WINDOW_HOURS else DEFAULT_HOURS
        width = 60 * max(1, hours * 60 // MAX_BUCKETS)
        buckets = hours * 3600 // width
        current = int((now or datetime.now(UTC)).timestamp()) // width
        return cls(hours, width, buckets, current - buckets + 1)

    @property
    def since(self) -> datetime:
        return self.start(0)

    @property
    def until(self) -> datetime:
        return self.start(self.buckets)

    def start(self, index: int) -> datetime:
        """When bucket ``index`` (0 = the oldest) begins."""
        return datetime.fromtimestamp((self.first + index) * self.width, UTC)

    def bucket(self, column: Any) -> ColumnElement[int]:
        """The SQL expression of ``column``'s bucket number."""
        return EpochBucket(column, literal_column(str(self.width)))

    def describe(self) -> dict[str, Any]:
        return {"hours": self.hours, "bucket_seconds": self.width,
                "since": self.since.isoformat(timespec="seconds"),
                "until": self.until.isoformat(timespec="seconds")}


def hl7(session: Session, window: Window) -> dict[str, Any]:
    """Per bucket: inbound messages ``received`` (whatever became of them), ``failed``
    (failed or rejected, counted where they arrived) and outbound messages ``sent``
    (when the EHR's ACK came); ``totals`` over the window, and inbound ``by_status``
    (processed, failed, rejected, and pending: received, not applied yet)."""
    received = [0] * window.buckets
    failed = [0] * window.buckets
    sent = [0] * window.buckets
    by_status: Counter[str] = Counter()
    bucket = window.bucket(InboundMessage.received_at)
    for number, status, count in session.execute(
            select(bucket, InboundMessage.status, func.count())
            .where(InboundMessage.status.in_([s.value for s in MessageStatus]),
                   InboundMessage.received_at >= window.since,
                   InboundMessage.received_at < window.until)
            .group_by(bucket, InboundMessage.status)):
        index = number - window.first
        received[index] += count
        by_status[status] += count
        if status in FAILED:
            failed[index] += count
    bucket = window.bucket(OutboundMessage.sent_at)
    for number, count in session.execute(
            select(bucket, func.count())
            .where(OutboundMessage.sent_at >= window.since,
                   OutboundMessage.sent_at < window.until)
            .group_by(bucket)):
        sent[number - window.first] += count
    return {**window.describe(),
            "buckets": [{"start": window.start(i).isoformat(timespec="seconds"),
                         "received": received[i], "sent": sent[i], "failed": failed[i]}
                        for i in range(window.buckets)],
            "totals": {"received": sum(received), "sent": sum(sent), "failed": sum(failed),
                       "by_status": {PENDING if s is MessageStatus.RECEIVED else s.value:
                                     by_status[s.value] for s in MessageStatus}}}


def warnings(session: Session, window: Window) -> dict[str, Any]:
    """The adjustments inbound messages of the window were accepted with, most frequent
    first: each warning's code, place and text (never a value) and how many messages
    had it, read from the latest WARNED_MESSAGES_READ messages with warnings."""
    tally: Counter[str] = Counter()
    rows = session.scalars(
        select(InboundMessage.warnings)
        .where(InboundMessage.status.in_([s.value for s in MessageStatus]),
               InboundMessage.received_at >= window.since,
               InboundMessage.received_at < window.until,
               InboundMessage.warning_count > 0)
        .order_by(InboundMessage.received_at.desc()).limit(WARNED_MESSAGES_READ)).all()
    for found in rows:
        tally.update({str(w) for w in from_json(found)})
    return {"messages": len(rows), "complete": len(rows) < WARNED_MESSAGES_READ,
            "by_warning": [{"warning": text, "messages": n} for text, n in tally.most_common()]}


def stations(session: Session, window: Window) -> list[dict[str, Any]]:
    """Worklist queries per calling AE title over the window, busiest first: how many,
    how many were not successful (final status other than 0000), the items returned,
    the mean time to answer, the last one, and the count per bucket."""
    bucket = window.bucket(WorklistQuery.at)
    found: dict[str, dict[str, Any]] = {}
    for ae, number, count, unsuccessful, items, millis, last in session.execute(
            select(WorklistQuery.calling_ae_title, bucket, func.count(),
                   func.count().filter(WorklistQuery.status != 0),
                   func.sum(WorklistQuery.result_count), func.sum(WorklistQuery.duration_ms),
                   func.max(WorklistQuery.at))
            .where(WorklistQuery.at >= window.since, WorklistQuery.at < window.until)
            .group_by(WorklistQuery.calling_ae_title, bucket)):
        station = found.setdefault(ae, {"ae_title": ae, "queries": 0, "unsuccessful": 0,
                                        "items_returned": 0, "total_ms": 0.0, "last": None,
                                        "per_bucket": [0] * window.buckets})
        station["queries"] += count
        station["unsuccessful"] += unsuccessful
        station["items_returned"] += int(items or 0)
        station["total_ms"] += float(millis or 0.0)
        station["per_bucket"][number - window.first] = count
        station["last"] = max(filter(None, (station["last"], _utc(last))))
    return [{"ae_title": s["ae_title"], "queries": s["queries"],
             "unsuccessful": s["unsuccessful"], "items_returned": s["items_returned"],
             "mean_ms": round(s["total_ms"] / s["queries"], 1),
             "last": s["last"].isoformat(timespec="seconds"), "per_bucket": s["per_bucket"]}
            for s in sorted(found.values(), key=lambda s: (-s["queries"], s["ae_title"]))]


def _utc(value: datetime) -> datetime:
    """SQLite gives back naive UTC datetimes, PostgreSQL aware ones."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)

