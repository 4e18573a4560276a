"""How committed work reaches the use case that does it: in-process (embedded) or
via Celery (distributed). Which one a process uses is decided in
:mod:`broker.bootstrap` only.

Every dispatcher ends in the same job runner (:meth:`broker.application.UseCases.run`,
called in this process or by a Celery task in a worker); they differ only in where.
``dispatch`` hands over a stored inbound message; ``submit`` any other :class:`Job`
(MPPS linking, study reconciliation, outbound delivery, forwarding), optionally after
``countdown`` seconds. ``wait`` lets the MLLP listener hold an application-mode ACK
until the message has been applied (and tells the ACK stored with the outcome when it
was learnt without reading the row, :class:`broker.notify.Waited`).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from broker.batching import take_batch
from broker.config import Settings
from broker.jobs import Job
from broker.notify import Waited, applied_watch
from broker.outage import Outage, describe_redis

if TYPE_CHECKING:
    from celery import Celery

log = logging.getLogger(__name__)

# In-process lanes: network-bound tasks get their own thread so that an EHR or PACS
# that does not answer never delays order processing.
LANES = {Job.DELIVER_OUTBOUND: "outbound", Job.FORWARD_INSTANCES: "forward"}

# Runs one job in this process: :meth:`broker.application.UseCases.run`.
JobRunner = Callable[..., Any]


class Dispatcher(Protocol):
    def dispatch(self, message_pk: int) -> None: ...

    def submit(self, job: Job, *args: Any, countdown: float = 0.0) -> None: ...

    def wait(self, message_pk: int, timeout: float) -> Waited: ...

    def close(self) -> None: ...


def _run(runner: JobRunner, health: Outage, job: Job, args: tuple[Any, ...]) -> None:
    try:
        runner(job, *args)
    except OperationalError as exc:  # the database is away: one line per outage
        health.failed(exc)
    except Exception as exc:  # the sweeper retries what is still pending
        log.error("%s%r: error %s; left for the sweeper", job.value, args,
                  type(exc).__name__)
    else:
        health.ok()


class InProcessDispatcher:
    """Embedded mode: one thread per lane, FIFO; a task already queued and not yet
    started is not queued twice (tasks are idempotent, a second run would find
    nothing to do). ``runner`` runs a job; ``health`` reports database outages."""

    def __init__(self, runner: JobRunner, health: Outage) -> None:
        self._runner, self._health = runner, health
        self._pools: dict[str, ThreadPoolExecutor] = {}
        self._futures: dict[int, Future[None]] = {}
        self._queued: set[tuple[Job, tuple[Any, ...]]] = set()
        self._timers: set[threading.Timer] = set()
        self._lock = threading.Lock()
        self._closed = False

    def _pool(self, job: Job) -> ThreadPoolExecutor:
        lane = LANES.get(job, "work")
        with self._lock:
            if lane not in self._pools:
                self._pools[lane] = ThreadPoolExecutor(max_workers=1,
                                                       thread_name_prefix=f"mwl-{lane}")
            return self._pools[lane]

    def dispatch(self, message_pk: int) -> None:
        future = self._pool(Job.PROCESS_INBOUND).submit(
            _run, self._runner, self._health, Job.PROCESS_INBOUND, (message_pk,))
        with self._lock:
            self._futures[message_pk] = future
        future.add_done_callback(lambda _f: self._forget(message_pk, _f))

    def _forget(self, message_pk: int, future: Future[None]) -> None:
        with self._lock:
            if self._futures.get(message_pk) is future:
                del self._futures[message_pk]

    def submit(self, job: Job, *args: Any, countdown: float = 0.0) -> None:
        if countdown > 0:
            timer = threading.Timer(countdown, self._fire, (job, args))
            timer.daemon = True
            with self._lock:
                self._timers.add(timer)
            timer.start()
            return
        key = (job, args)
        with self._lock:
            if key in self._queued or self._closed:
                return
            self._queued.add(key)
        self._pool(job).submit(self._start, key)

    def _fire(self, job: Job, args: tuple[Any, ...]) -> None:
        with self._lock:
            self._timers = {t for t in self._timers if t.is_alive()
                            and t is not threading.current_thread()}
        self.submit(job, *args)

    def _start(self, key: tuple[Job, tuple[Any, ...]]) -> None:
        with self._lock:
            self._queued.discard(key)
        _run(self._runner, self._health, *key)

    def wait(self, message_pk: int, timeout: float) -> Waited:
        with self._lock:
            future = self._futures.get(message_pk)
        if future is None:
            return Waited(True)
        try:
            future.result(timeout)
        except FutureTimeout:
            return Waited(False)
        return Waited(True)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            timers, pools = list(self._timers), list(self._pools.values())
        for timer in timers:
            timer.cancel()
        for pool in pools:
            pool.shutdown(wait=True, cancel_futures=False)


def celery_config(settings: Settings) -> dict[str, Any]:
    """The Celery configuration shared by the publishers here and the workers
    (``workers.celery_app``, which explains each choice)."""
    return dict(
        broker_url=settings.celery_broker_url,
        broker_transport_options={"visibility_timeout": settings.redis_visibility_timeout},
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
        task_default_queue="mwl_broker",
    )


def celery_publisher(settings: Settings) -> Celery:
    """A Celery app that only publishes (by task name, :attr:`Job.task_name`): the
    task functions live in the worker, which this package never imports."""
    from celery import Celery

    publisher = Celery("mwl_broker", set_as_current=False)
    publisher.conf.update(celery_config(settings))
    return publisher


class CeleryDispatcher:
    """Distributed mode: publish to Redis; learn that a message was applied from the
    database (:mod:`broker.notify`: notifications on PostgreSQL, polling on SQLite)."""

    def __init__(self, celery: Celery, session_factory: sessionmaker[Session]) -> None:
        self.celery = celery
        self.applied = applied_watch(session_factory)

    def dispatch(self, message_pk: int) -> None:
        self.submit(Job.PROCESS_INBOUND, message_pk)

    def submit(self, job: Job, *args: Any, countdown: float = 0.0) -> None:
        self.celery.send_task(job.task_name, args, countdown=countdown or None)

    def wait(self, message_pk: int, timeout: float) -> Waited:
        return self.applied.wait_ack(message_pk, timeout)

    def close(self) -> None:
        self.applied.close()


class BackgroundDispatcher:
    """Publishes from a thread of its own, for the serve process: a Redis round trip
    per task would otherwise hold up the MLLP event loop (most of its time when
    profiled). Inbound messages waiting together are published as one
    :attr:`Job.PROCESS_INBOUND_BATCH` task (a publish costs 0.6-1 ms of CPU here, more
    than storing the message, and a worker pays for each task it takes). Before it
    publishes, the publisher waits up to LINGER for more messages to gather:

    * while a message it published is still being applied with its sender waiting for
      the ACK (application mode, several connections), until that message is applied:
      the next batch is ready when the worker is;
    * after a publish that gathered several messages less than LINGER ago (a
      burst, or a backlog arriving in store mode), in steps of LINGER while more keep
      coming, until BURST_BATCH messages are waiting (a worker's full transaction) or
      BURST_LINGER has passed: a backlog goes
      out as a few tasks of a transaction each, instead of hundreds of small ones that
      the first transactions' take-ahead leaves with nothing to do.

    A lone message, or one connection waiting for each ACK before it sends the next
    message, goes out at once. The work is committed before it is handed over, so a
    task not yet published when the process dies is re-dispatched by the sweeper;
    ``close`` publishes what is still queued."""

    MAX_COALESCED = 500
    LINGER = 0.005
    BURST_LINGER = 0.02
    BURST_BATCH = 50

    def __init__(self, inner: CeleryDispatcher) -> None:
        self.inner = inner
        self.health = Outage("task broker (Redis): publishing", log)
        # Called when a publish succeeds after failed ones (the sweeper's wake): the
        # messages whose publish failed are committed and wait for it.
        self.on_recovered: Callable[[str], None] | None = None
        self._queue: queue.Queue[tuple[Job, tuple[Any, ...], float] | None] = queue.Queue()
        self._last_publish = 0.0
        self._last_gathered = 0  # inbound messages in the last publish
        self._lock = threading.Lock()
        self._unpublished: set[int] = set()  # inbound messages queued here
        self._waiting: Counter[int] = Counter()  # messages whose ACK waits, by id
        self._applying: set[int] = set()  # of those, the ones published
        self._applied = threading.Event()  # set when the last of those is applied
        self._thread = threading.Thread(target=self._run, name="mwl-publish", daemon=True)
        self._thread.start()

    def dispatch(self, message_pk: int) -> None:
        with self._lock:
            self._unpublished.add(message_pk)
        self.submit(Job.PROCESS_INBOUND, message_pk)

    def submit(self, job: Job, *args: Any, countdown: float = 0.0) -> None:
        self._queue.put((job, args, countdown))

    def wait(self, message_pk: int, timeout: float) -> Waited:
        with self._lock:
            self._waiting[message_pk] += 1
            if message_pk not in self._unpublished:
                self._applying.add(message_pk)
        try:
            return self.inner.wait(message_pk, timeout)
        finally:
            with self._lock:
                self._waiting[message_pk] -= 1
                if not self._waiting[message_pk]:
                    del self._waiting[message_pk]
                    self._applying.discard(message_pk)
                idle = not self._applying
            if idle:
                self._applied.set()

    def _linger(self) -> None:
        with self._lock:
            applying = bool(self._applying)
            if applying:
                self._applied.clear()
        if applying:
            self._applied.wait(self.LINGER)
        elif (self._last_gathered > 1
              and time.monotonic() - self._last_publish < self.LINGER):
            deadline = time.monotonic() + self.BURST_LINGER
            gathered = -1
            while (gathered < (waiting := self._queue.qsize()) < self.BURST_BATCH
                   and (left := deadline - time.monotonic()) > 0):
                gathered = waiting
                time.sleep(min(left, self.LINGER))

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            self._linger()
            items = take_batch(self._queue, item, self.MAX_COALESCED)
            inbound = [args[0] for job, args, countdown in items
                       if job is Job.PROCESS_INBOUND and not countdown]
            if len(inbound) > 1:
                items = [i for i in items if i[0] is not Job.PROCESS_INBOUND or i[2]]
                items.insert(0, (Job.PROCESS_INBOUND_BATCH, (inbound,), 0.0))
            for job, args, countdown in items:
                self._publish(job, args, countdown)
            self._last_publish, self._last_gathered = time.monotonic(), len(inbound)
            with self._lock:
                self._unpublished.difference_update(inbound)
                self._applying.update(pk for pk in inbound if pk in self._waiting)

    def _publish(self, job: Job, args: tuple[Any, ...], countdown: float) -> None:
        try:
            self.inner.submit(job, *args, countdown=countdown)
        except Exception as exc:  # Redis away: the sweeper dispatches it later
            self.health.failed(describe_redis(exc))
            return
        if self.health.down:
            self.health.ok()
            if self.on_recovered is not None:
                self.on_recovered("publishing works again after failed publishes")

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(30)
        self.inner.close()


class DeferredDispatcher:
    """For a process that runs no jobs and publishes none (a one-shot command or the
    console alone, in embedded mode): the work is committed, and the running broker's
    sweeper dispatches it within MWLB_SWEEP_INTERVAL."""

    def dispatch(self, message_pk: int) -> None:
        return None

    def submit(self, job: Job, *args: Any, countdown: float = 0.0) -> None:
        return None

    def wait(self, message_pk: int, timeout: float) -> Waited:
        return Waited(False)

    def close(self) -> None:
        return None


class CommandDispatcher:
    """For one-shot commands: an inbound message is applied in the calling thread
    before :meth:`dispatch` returns (the command reports its outcome); any other job
    goes to ``later`` (published to the workers, or deferred to the running broker)."""

    def __init__(self, runner: JobRunner, health: Outage, later: Dispatcher) -> None:
        self._runner, self._health, self.later = runner, health, later

    def dispatch(self, message_pk: int) -> None:
        _run(self._runner, self._health, Job.PROCESS_INBOUND, (message_pk,))

    def hand_over(self, message_pk: int) -> None:
        """Dispatch a message the command does not report on by itself (a bulk replay,
        whose progress is read from the messages): to the workers when there are any
        (distributed), else applied here as :meth:`dispatch` does."""
        if isinstance(self.later, DeferredDispatcher):
            self.dispatch(message_pk)
        else:
            self.later.dispatch(message_pk)

    def submit(self, job: Job, *args: Any, countdown: float = 0.0) -> None:
        self.later.submit(job, *args, countdown=countdown)

    def wait(self, message_pk: int, timeout: float) -> Waited:
        return Waited(True)

    def close(self) -> None:
        self.later.close()
