"""Celery tasks. Each takes row ids (or a study UID / destination name) only and is
idempotent: running one twice finds nothing left to do.

In embedded mode the same functions are called in-process (calling a Celery task
object runs its body synchronously), so both modes run identical code. Database
errors are retried with exponential back-off; the sweeper re-dispatches whatever is
still unfinished if even that is lost.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from celery import Task
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from broker.db import unit_of_work
from broker.models import InboundMessage, MessageStatus
from broker.outage import Outage
from broker.runtime import current_runtime
from broker.services import mpps, outbound, studies
from broker.services.forward import forward_pending
from broker.services.processing import lock_key, process_through
from workers.celery_app import app

log = logging.getLogger(__name__)

RETRY_BACKOFF_MAX = 60
# Bounded: about 8 minutes of back-off, then the task gives up and the row stays
# unfinished, where the sweeper finds it again and /readyz reports its age.
TASK_MAX_RETRIES = 10


# A database outage makes every task of this process retry: it is logged when it
# starts, as a reminder while it lasts, and when it ends, not on every retry.
DATABASE = Outage("database (tasks retry with back-off)", log)


class DatabaseUnavailable(Exception):
    """What a retry is recorded with: the cause only. SQLAlchemy's own text quotes the
    statement's parameters, which can hold patient data (Celery logs the retry)."""


def _retrying(task: Task, what: str, body: Callable[[], Any]) -> Any:
    try:
        result = body()
    except SQLAlchemyError as exc:
        if task.request.called_directly:
            raise
        retries = task.request.retries or 0
        countdown = min(2**retries, RETRY_BACKOFF_MAX)
        cause = DATABASE.failed(exc)
        if retries >= TASK_MAX_RETRIES:
            log.error("%s: database error (%s), giving up after %d retries; left for the "
                      "sweeper", what, cause, retries)
            return None
        raise task.retry(exc=DatabaseUnavailable(cause), countdown=countdown) from None
    DATABASE.ok()
    return result


def _deliver_soon() -> None:
    runtime = current_runtime()
    for dest in runtime.settings.outbound_destinations:
        runtime.dispatcher.submit("deliver_outbound", dest.name)


@app.task(name="mwl_broker.process_inbound", bind=True, max_retries=TASK_MAX_RETRIES)
def process_inbound(self: Task, message_pk: int) -> int:
    """Apply inbound message ``message_pk`` (and any earlier pending message of the
    same patient)."""
    runtime = current_runtime()
    return int(_retrying(self, f"message {message_pk}", lambda: process_through(
        runtime.session_factory, message_pk, runtime.map, read=runtime.read)) or 0)


@app.task(name="mwl_broker.process_inbound_batch")
def process_inbound_batch(message_pks: list[int]) -> int:
    """Apply several stored messages, in order: what the serve process publishes when
    messages arrive faster than it could publish one task each (one Redis round trip
    for many wake-ups). A message that meets a database error is handed to its
    own :func:`process_inbound` task, with that task's retries."""
    runtime = current_runtime()
    applied = 0
    try:  # one query instead of one per message for those already applied (a sweep
        # after a Redis restart re-dispatches what may already be queued)
        with runtime.session_factory() as session:
            pending = set(session.scalars(select(InboundMessage.id).where(
                InboundMessage.id.in_(message_pks),
                InboundMessage.status == MessageStatus.RECEIVED.value)))
        message_pks = [pk for pk in message_pks if pk in pending]
    except SQLAlchemyError:
        pass  # each message meets the error below and is retried on its own
    for message_pk in message_pks:
        try:
            process_through(runtime.session_factory, message_pk, runtime.map,
                            read=runtime.read)
            applied += 1
        except SQLAlchemyError as exc:  # handed to a task of its own, with its retries
            DATABASE.failed(exc)
            runtime.dispatcher.submit("process_inbound", message_pk, countdown=1)
        else:
            DATABASE.ok()
    return applied


def _in_transaction(key: str, body: Callable[[Session], str]) -> str:
    with unit_of_work(current_runtime().session_factory) as session:
        lock_key(session, key)
        return body(session)


@app.task(name="mwl_broker.link_mpps", bind=True, max_retries=TASK_MAX_RETRIES)
def link_mpps(self: Task, mpps_pk: int) -> str:
    """Link MPPS ``mpps_pk`` to its scheduled steps and apply its state."""
    settings = current_runtime().settings
    outcome = str(_retrying(self, f"MPPS {mpps_pk}", lambda: _in_transaction(
        f"mpps:{mpps_pk}", lambda s: mpps.link(s, settings, mpps_pk))))
    _deliver_soon()
    return outcome


@app.task(name="mwl_broker.reconcile_study", bind=True, max_retries=TASK_MAX_RETRIES)
def reconcile_study(self: Task, study_instance_uid: str) -> str:
    """Tie the new instances and IANs of a study to their order."""
    settings = current_runtime().settings
    outcome = str(_retrying(self, "study reconciliation", lambda: _in_transaction(
        f"study:{study_instance_uid}",
        lambda s: studies.reconcile_study(s, settings, study_instance_uid))))
    _deliver_soon()
    return outcome


@app.task(name="mwl_broker.deliver_outbound", bind=True, max_retries=TASK_MAX_RETRIES)
def deliver_outbound(self: Task, destination: str) -> None:
    """Send the due outbox messages of ``destination``; schedule the next attempt."""
    runtime = current_runtime()
    delay = _retrying(self, f"outbound {destination}", lambda: outbound.deliver(
        runtime.session_factory, runtime.settings, destination))
    if delay is not None:
        runtime.dispatcher.submit("deliver_outbound", destination, countdown=max(delay, 0.05))


@app.task(name="mwl_broker.forward_instances", bind=True, max_retries=TASK_MAX_RETRIES)
def forward_instances(self: Task) -> None:
    """Forward spooled instances to the PACS (storage_mode forward)."""
    runtime = current_runtime()
    delay = _retrying(self, "forward", lambda: forward_pending(
        runtime.session_factory, runtime.settings))
    if delay is not None:
        runtime.dispatcher.submit("forward_instances", countdown=delay)


TASKS: dict[str, Task] = {
    "process_inbound": process_inbound,
    "process_inbound_batch": process_inbound_batch,
    "link_mpps": link_mpps,
    "reconcile_study": reconcile_study,
    "deliver_outbound": deliver_outbound,
    "forward_instances": forward_instances,
}
