"""Celery tasks. Each takes row ids only and is idempotent (DESIGN.md).

In embedded mode the same functions are called in-process (calling a Celery task
object runs its body synchronously), so both modes run identical code.
"""

from __future__ import annotations

import logging

from celery import Task
from sqlalchemy.exc import SQLAlchemyError

from broker.runtime import current_runtime
from broker.services.processing import process_through
from workers.celery_app import app

log = logging.getLogger(__name__)

RETRY_BACKOFF_MAX = 60


@app.task(name="mwl_broker.process_inbound", bind=True, max_retries=None)
def process_inbound(self: Task, message_pk: int) -> int:
    """Apply inbound message ``message_pk`` (and any earlier pending message of the
    same patient). Database errors are retried with exponential backoff; the sweeper
    re-dispatches anything still pending if even that is lost."""
    runtime = current_runtime()
    try:
        return process_through(runtime.session_factory, message_pk, runtime.map)
    except SQLAlchemyError as exc:
        if self.request.called_directly:
            raise
        retries = self.request.retries or 0
        countdown = min(2**retries, RETRY_BACKOFF_MAX)
        log.warning("message %s: database error (%s), retry in %ss", message_pk,
                    type(exc).__name__, countdown)
        raise self.retry(exc=exc, countdown=countdown) from None
