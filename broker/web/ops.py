"""Operations endpoints: Prometheus metrics at /metrics, /healthz (the
process answers) and /readyz (database, Redis when configured, age of the oldest
unprocessed message). Metrics are read from the database at scrape time, so they
count the work of every process (serve and all workers) and survive restarts. They
carry counts and timings only, never patient data, and need no login."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, SummaryMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from broker.models import DicomRefusal, InboundMessage, OutboundMessage, WorklistQuery
from broker.runtime import Runtime
from broker.web import queries

router = APIRouter(tags=["operations"])
READY_MAX_QUEUE_AGE = 300.0  # seconds: older unprocessed work means "not ready"


class BrokerCollector(Collector):
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def collect(self) -> Iterator[Any]:
        with self.runtime.session_factory() as session:
            yield from self._messages(session)
            yield from self._worklist(session)
            yield from self._refusals(session)
            yield from self._outbound(session)

    @staticmethod
    def _messages(session: Any) -> Iterator[Any]:
        messages = CounterMetricFamily("mwlb_hl7_messages", "Inbound HL7 messages",
                                       labels=["type", "status"])
        for kind, status, count in session.execute(
                select(InboundMessage.message_type, InboundMessage.status, func.count())
                .group_by(InboundMessage.message_type, InboundMessage.status)):
            messages.add_metric([kind or "", status], count)
        yield messages
        acks = CounterMetricFamily("mwlb_hl7_acks", "ACK codes sent", labels=["code"])
        for code, count in session.execute(select(InboundMessage.ack_code, func.count())
                                           .group_by(InboundMessage.ack_code)):
            if code:
                acks.add_metric([code], count)
        yield acks
        warned, reused = session.execute(select(
            func.count(InboundMessage.id).filter(InboundMessage.warning_count > 0),
            func.count(InboundMessage.id).filter(InboundMessage.control_id_reused))).one()
        yield CounterMetricFamily("mwlb_hl7_messages_with_warnings",
                                  "Messages accepted with adjustments (warnings)", value=warned)
        yield CounterMetricFamily("mwlb_hl7_control_id_reused",
                                  "Messages whose MSH-10 the sender had used for other content",
                                  value=reused)
        queued = session.scalar(select(func.count(InboundMessage.id)).where(
            InboundMessage.status == "received")) or 0
        yield GaugeMetricFamily("mwlb_hl7_queue_depth", "Stored messages not yet applied",
                                value=queued)
        latency = SummaryMetricFamily(
            "mwlb_processing_latency_seconds",
            "Receipt to applied (worklist updated), over the last 1000 processed messages")
        rows = list(session.execute(
            select(InboundMessage.received_at, InboundMessage.processed_at)
            .where(InboundMessage.status == "processed",
                   InboundMessage.processed_at.is_not(None))
            .order_by(InboundMessage.id.desc()).limit(1000)))
        spans = [(done - got).total_seconds() for got, done in rows]
        latency.add_metric([], count_value=len(spans), sum_value=sum(spans))
        yield latency

    @staticmethod
    def _worklist(session: Any) -> Iterator[Any]:
        count, total = session.execute(select(func.count(WorklistQuery.id),
                                              func.sum(WorklistQuery.duration_ms))).one()
        summary = SummaryMetricFamily("mwlb_cfind_duration_seconds",
                                      "Modality Worklist C-FIND queries and their duration")
        summary.add_metric([], count_value=count or 0, sum_value=(total or 0.0) / 1000)
        yield summary

    @staticmethod
    def _refusals(session: Any) -> Iterator[Any]:
        refused = CounterMetricFamily(
            "mwlb_dicom_associations_refused",
            "DICOM associations and connections refused, by reason (PS3.8 Table 9-21 "
            "names, tls-handshake-failed, not-dicom, ...) and calling AE title (empty "
            "when refused before the A-ASSOCIATE-RQ)", labels=["reason", "calling_ae"])
        for reason, calling, count in session.execute(
                select(DicomRefusal.reason, DicomRefusal.calling_ae_title,
                       func.sum(DicomRefusal.count))
                .group_by(DicomRefusal.reason, DicomRefusal.calling_ae_title)):
            refused.add_metric([reason, calling], count)
        yield refused

    @staticmethod
    def _outbound(session: Any) -> Iterator[Any]:
        depth = GaugeMetricFamily("mwlb_outbound_messages", "Outbox by status",
                                  labels=["status"])
        retries = 0
        for status, count, attempts in session.execute(
                select(OutboundMessage.status, func.count(), func.sum(OutboundMessage.attempts))
                .group_by(OutboundMessage.status)):
            depth.add_metric([status], count)
            retries += max(0, int(attempts or 0) - (count if status != "pending" else 0))
        yield depth
        yield CounterMetricFamily("mwlb_outbound_retries", "Delivery attempts beyond the first",
                                  value=retries)


def metrics_registry(runtime: Runtime) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(BrokerCollector(runtime))
    return registry


@router.get("/metrics", include_in_schema=True)
def metrics(request: Request) -> Response:
    registry: CollectorRegistry = request.app.state.metrics
    return Response(generate_latest(registry), media_type="text/plain; version=0.0.4")


@router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
def readyz(request: Request) -> JSONResponse:
    """200 when this node can take messages: the database answers, Redis too when
    configured, the message store's last commit did not fail (a database that answers
    reads can still refuse writes: disk full, read-only), and no message has waited
    longer than READY_MAX_QUEUE_AGE. Otherwise 503, with ``reasons`` naming the cause."""
    runtime: Runtime = request.app.state.runtime
    with runtime.session_factory() as session:
        report = queries.health(session, runtime.settings)
    reasons: list[str] = []
    if report["database"] != "ok":
        reasons.append(f"database {report['database']}")
    if report["redis"] not in ("ok", "not used (embedded)"):
        reasons.append(f"redis {report['redis']}")
    if runtime.store_health is not None:
        store = runtime.store_health.report()
        report["message_store"] = store
        if store["status"] != "ok":
            reasons.append(f"message store {store['status']} since {store['since']}")
    age = report.get("oldest_unprocessed_seconds")
    if age is not None and age >= READY_MAX_QUEUE_AGE:
        reasons.append(f"oldest unprocessed message waiting {age:.0f} s")
    ready = not reasons
    body = {"ready": ready, **report, **({"reasons": reasons} if reasons else {})}
    return JSONResponse(body, status_code=200 if ready else 503)
