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
* The pool is prefork (``mwl-broker worker --pool``): a child killed mid-task has its
  task requeued at once by the parent. Measured here, ``solo`` and ``threads`` cost the
  same CPU per message (the prefork parent's hand-over is small next to the task's
  database work), and a killed solo worker's tasks wait for serve to notice its
  presence lapse.
* Celery's per-task INFO lines ("received", "succeeded") show only with --loglevel=DEBUG
  (``workers.cli``); errors and warnings are kept.
* The consumer reconnects to Redis every RECONNECT_INTERVAL seconds while it is away,
  instead of kombu's default back-off (2, 4, 6 ... 30 s), which kept a worker idle for
  up to half a minute after Redis was back (:class:`PromptReconnectConsumer`).
"""

from __future__ import annotations

import functools
from typing import Any

from celery import Celery
from celery.signals import worker_init, worker_process_init
from celery.worker.consumer import Consumer

from broker.bootstrap import Role, Root, build
from broker.config import Settings, load_settings
from broker.dispatch import celery_config

app = Celery("mwl_broker", include=["workers.tasks"])

RECONNECT_INTERVAL = 0.5

# The worker process's composition root: built at worker start (``mwl-broker worker``
# builds it before Celery starts; a bare ``celery -A workers.celery_app worker`` at
# the worker_init signal), inherited by the pool's forked children.
_root: Root | None = None
_settings: Settings | None = None


class PromptReconnectConsumer(Consumer):
    """Celery's consumer, retrying the broker connection every RECONNECT_INTERVAL."""

    def ensure_connected(self, conn: Any) -> Any:
        conn.ensure_connection = functools.partial(
            conn.ensure_connection, interval_start=RECONNECT_INTERVAL, interval_step=0,
            interval_max=RECONNECT_INTERVAL)
        return super().ensure_connected(conn)


def configure(settings: Settings) -> Celery:
    """Point the app at the configured broker with the choices above
    (:func:`broker.dispatch.celery_config`, shared with the publishers)."""
    global _settings
    _settings = settings
    app.conf.update(celery_config(settings),
                    worker_consumer="workers.celery_app:PromptReconnectConsumer")
    return app


def install(root: Root) -> None:
    """Make ``root`` the worker process's composition root (before the pool forks)."""
    global _root
    _root = root


def root() -> Root:
    """The worker process's composition root, which the tasks take their use cases from."""
    if _root is None:
        raise RuntimeError("no composition root: start the worker with `mwl-broker worker`")
    return _root


@worker_init.connect
def _at_worker_start(**_: Any) -> None:
    if _root is None:
        install(build(_settings or load_settings(), Role.WORKER))


@worker_process_init.connect
def _after_fork(**_: Any) -> None:
    # A forked child must not reuse the parent's pooled connections.
    if _root is not None:
        _root.runtime.dispose(close=False)
