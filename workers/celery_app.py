"""The Celery application (distributed mode: Redis broker, ``mwl-broker worker``).

Redis carries only "work is waiting" signals; the database is the truth.
Choices, each deliberate:

* ``task_acks_late``: a task is acknowledged after it ran, so a worker killed mid-task
  does not lose it; ``task_reject_on_worker_lost=True`` requeues it when the child
  process dies. Tasks are idempotent (they take row ids and skip finished rows), so
  running twice is harmless.
* ``worker_prefetch_multiplier=1``: a worker holds one task at a time, so a slow
  message does not strand others behind it.
* ``worker_cancel_long_running_tasks_on_connection_loss``: when Redis goes away, the
  tasks in flight are cancelled (and redelivered, they are idempotent) instead of
  acknowledged later on the dead connection, which crashed the worker's consumer
  ("Unrecoverable error: AttributeError ... hostname" in kombu) in the Redis-restart
  fault test.
* Redis ``visibility_timeout`` (MWLB_REDIS_VISIBILITY_TIMEOUT, default 1 h) set on the
  broker transport and for results: an unacknowledged task is redelivered after it.
  It is far above any task's run time, so a task is not redelivered while running.
* Results are not stored: callers look at the database rows.
* The consumer reconnects to Redis every RECONNECT_INTERVAL seconds while it is away,
  instead of kombu's default back-off (2, 4, 6 ... 30 s), which kept a worker idle for
  up to half a minute after Redis was back (:class:`PromptReconnectConsumer`).
"""

from __future__ import annotations

import functools
from typing import Any

from celery import Celery
from celery.signals import worker_process_init
from celery.worker.consumer import Consumer

from broker.config import Settings

app = Celery("mwl_broker", include=["workers.tasks"])

RECONNECT_INTERVAL = 0.5


class PromptReconnectConsumer(Consumer):
    """Celery's consumer, retrying the broker connection every RECONNECT_INTERVAL."""

    def ensure_connected(self, conn: Any) -> Any:
        conn.ensure_connection = functools.partial(
            conn.ensure_connection, interval_start=RECONNECT_INTERVAL, interval_step=0,
            interval_max=RECONNECT_INTERVAL)
        return super().ensure_connected(conn)


def configure(settings: Settings) -> Celery:
    """Point the app at the configured broker with the choices above."""
    transport = {"visibility_timeout": settings.redis_visibility_timeout}
    app.conf.update(
        broker_url=settings.celery_broker_url,
        broker_transport_options=transport,
        result_backend=None,
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_cancel_long_running_tasks_on_connection_loss=True,
        task_serializer="json",
        accept_content=["json"],
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        worker_consumer="workers.celery_app:PromptReconnectConsumer",
        task_default_queue="mwl_broker",
    )
    return app


@worker_process_init.connect
def _after_fork(**_: Any) -> None:
    # A forked child must not reuse the parent's pooled connections.
    from broker.runtime import current_runtime

    current_runtime().dispose(close=False)
