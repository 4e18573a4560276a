"""Celery tasks: one per :class:`broker.jobs.Job`, each a shell around its use case
(:class:`broker.application.UseCases`, from the worker's composition root). Each takes
row ids (or a study UID / destination name) only and is idempotent: running one twice
finds nothing left to do.

Embedded mode runs the same use cases in-process (:mod:`broker.dispatch`), so both
modes run identical code. Here database errors are retried with exponential
back-off; the sweeper re-dispatches whatever is still unfinished if even that is lost.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from celery import Task
from sqlalchemy.exc import SQLAlchemyError

from broker.application import DATABASE, UseCases
from broker.jobs import Job
from workers.celery_app import app, root

log = logging.getLogger(__name__)

RETRY_BACKOFF_MAX = 60
# Bounded: about 8 minutes of back-off, then the task gives up and the row stays
# unfinished, where the sweeper finds it again and /readyz reports its age.
TASK_MAX_RETRIES = 10


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


def _use_cases() -> UseCases:
    return root().use_cases


@app.task(name=Job.PROCESS_INBOUND.task_name, bind=True, max_retries=TASK_MAX_RETRIES)
def process_inbound(self: Task, message_pk: int) -> int:
    """:meth:`UseCases.apply_message`, with other waiting messages (a backlog drains
    in full transactions whatever the tasks hold). Published for a message that came
    alone (one connection waiting for its ACK), so it goes straight to its transaction
    (the read :func:`process_inbound_batch` starts with cost a tenth of this task's
    time there)."""
    use_cases = _use_cases()
    return int(_retrying(self, f"message {message_pk}",
                         lambda: use_cases.apply_message(message_pk, ahead=True)) or 0)


@app.task(name=Job.PROCESS_INBOUND_BATCH.task_name)
def process_inbound_batch(message_pks: list[int]) -> int:
    """:meth:`UseCases.apply_messages` (one transaction; when the database fails it,
    each message goes to a :func:`process_inbound` task of its own, with its retries),
    with other waiting messages as :func:`process_inbound`. Under a backlog another
    task's transaction has often taken these messages ahead: one read
    (:meth:`UseCases.waiting`) finds that, and then no transaction is opened."""
    use_cases = _use_cases()
    try:
        waiting = use_cases.waiting(message_pks)
    except SQLAlchemyError:  # the database away: apply_messages hands each one on
        waiting = message_pks
    if not waiting:
        return 0
    return use_cases.apply_messages(waiting, ahead=True)


@app.task(name=Job.LINK_MPPS.task_name, bind=True, max_retries=TASK_MAX_RETRIES)
def link_mpps(self: Task, mpps_pk: int) -> str:
    """:meth:`UseCases.link_mpps`."""
    use_cases = _use_cases()
    return str(_retrying(self, f"MPPS {mpps_pk}", lambda: use_cases.link_mpps(mpps_pk)))


@app.task(name=Job.RECONCILE_STUDY.task_name, bind=True, max_retries=TASK_MAX_RETRIES)
def reconcile_study(self: Task, study_instance_uid: str) -> str:
    """:meth:`UseCases.reconcile_study`."""
    use_cases = _use_cases()
    return str(_retrying(self, "study reconciliation",
                         lambda: use_cases.reconcile_study(study_instance_uid)))


@app.task(name=Job.DELIVER_OUTBOUND.task_name, bind=True, max_retries=TASK_MAX_RETRIES)
def deliver_outbound(self: Task, destination: str) -> None:
    """:meth:`UseCases.deliver_outbound`."""
    use_cases = _use_cases()
    _retrying(self, f"outbound {destination}",
              lambda: use_cases.deliver_outbound(destination))


@app.task(name=Job.FORWARD_INSTANCES.task_name, bind=True, max_retries=TASK_MAX_RETRIES)
def forward_instances(self: Task) -> None:
    """:meth:`UseCases.forward_instances`."""
    use_cases = _use_cases()
    _retrying(self, "forward", use_cases.forward_instances)


TASKS: dict[Job, Task] = {
    Job.PROCESS_INBOUND: process_inbound,
    Job.PROCESS_INBOUND_BATCH: process_inbound_batch,
    Job.LINK_MPPS: link_mpps,
    Job.RECONCILE_STUDY: reconcile_study,
    Job.DELIVER_OUTBOUND: deliver_outbound,
    Job.FORWARD_INSTANCES: forward_instances,
}
if set(TASKS) != set(Job):  # a job without its task would be published to nobody
    raise ImportError(f"jobs without a task: {set(Job) - set(TASKS)}")
