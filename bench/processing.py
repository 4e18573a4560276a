"""Processing throughput: a backlog of stored ORM^O01 messages drained
by one worker process (``mwl-broker worker --concurrency 1``) on PostgreSQL.

The backlog is built with no worker running (store ACK mode: every message committed
and AA'd, its task waiting in Redis); then the worker starts and the clock runs from
its "ready" line until every message is processed."""

from __future__ import annotations

import time

from sqlalchemy import create_engine, func, select

from bench.ingest import ingest
from bench.processes import Broker
from broker.models import InboundMessage, MessageStatus


def drain_rate(database_url: str, first: int, backlog: int) -> float:
    """Messages applied per second by one worker process."""
    engine = create_engine(database_url)
    pending = select(func.count()).select_from(InboundMessage).where(
        InboundMessage.status == MessageStatus.RECEIVED.value)
    try:
        with Broker(database_url, ack_mode="store", celery=True, start_worker=False,
                    sweep_interval="3600") as broker:
            ingest(broker.mllp_port, first, backlog, 8)
            broker.start("worker", "--concurrency", "1")
            began = time.perf_counter()
            deadline = began + 3600
            while time.perf_counter() < deadline:
                with engine.connect() as conn:
                    if conn.scalar(pending) == 0:
                        return backlog / (time.perf_counter() - began)
                time.sleep(0.1)
            raise TimeoutError("the worker did not drain the backlog")
    finally:
        engine.dispose()
