"""Message-store retention: what may be pruned once it is older than
MWLB_RETENTION_DAYS, and what never is.

Pruned: inbound messages that were processed or rejected (except one an order still
names as its last message), worklist query records with their results, MPPS/IAN
request records, outbound messages the EHR accepted, counts of refused DICOM
associations. Never pruned: messages still
waiting or failed (someone has to look at them), outbound messages pending or failed,
orders, steps and their history, MPPS instances, the instance index, reconciliation
items. With retention 0 nothing is pruned.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from broker.models import (
    DicomRefusal,
    DicomRequest,
    ImagingOrder,
    InboundMessage,
    MessageStatus,
    OutboundMessage,
    OutboundStatus,
    WorklistQuery,
    WorklistQueryResult,
)


def prune(session: Session, retention_days: float, *, dry_run: bool = False,
          now: datetime | None = None) -> dict[str, int]:
    """Delete (or, ``dry_run``, count) what is past retention; returns counts per kind."""
    if retention_days <= 0:
        return {}
    cutoff = (now or datetime.now(UTC)) - timedelta(days=retention_days)
    kept_messages = select(ImagingOrder.last_message_pk).where(
        ImagingOrder.last_message_pk.is_not(None))
    old_queries = select(WorklistQuery.id).where(WorklistQuery.at < cutoff)
    targets: dict[str, tuple[Any, list[Any]]] = {
        "inbound messages": (InboundMessage, [
            InboundMessage.received_at < cutoff,
            InboundMessage.status.in_([MessageStatus.PROCESSED.value,
                                       MessageStatus.REJECTED.value]),
            InboundMessage.id.not_in(kept_messages)]),
        "worklist query results": (WorklistQueryResult,
                                   [WorklistQueryResult.query_pk.in_(old_queries)]),
        "worklist queries": (WorklistQuery, [WorklistQuery.at < cutoff]),
        "DICOM requests": (DicomRequest, [DicomRequest.received_at < cutoff]),
        "outbound messages": (OutboundMessage, [
            OutboundMessage.created_at < cutoff,
            OutboundMessage.status == OutboundStatus.SENT.value]),
        "refused DICOM association counts": (DicomRefusal, [DicomRefusal.at < cutoff]),
    }
    counts = {}
    for label, (model, conditions) in targets.items():
        if dry_run:
            counts[label] = session.scalar(select(func.count()).select_from(model)
                                           .where(*conditions)) or 0
        else:
            result = session.execute(delete(model).where(*conditions)
                                     .execution_options(synchronize_session=False))
            counts[label] = int(getattr(result, "rowcount", 0) or 0)
    return counts
