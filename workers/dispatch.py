"""How committed work reaches the task code: in-process (embedded) or via Celery.

Both dispatchers run the task functions of :mod:`workers.tasks`; they differ only in
where. ``dispatch`` hands over a stored inbound message; ``submit`` any other task by
name (MPPS linking, study reconciliation, outbound delivery, forwarding), optionally
after ``countdown`` seconds. ``wait`` lets the MLLP listener hold an application-mode
ACK until the message has been applied.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from broker.batching import take_batch
from broker.models import InboundMessage, MessageStatus
from broker.outage import Outage, describe_redis

log = logging.getLogger(__name__)

# In-process lanes: network-bound tasks get their own thread so that an EHR or PACS
# that does not answer never delays order processing.
LANES = {"deliver_outbound": "outbound", "forward_instances": "forward"}


class Dispatcher(Protocol):
    def dispatch(self, message_pk: int) -> None: ...

    def submit(self, task: str, *args: Any, countdown: float = 0.0) -> None: ...

    def wait(self, message_pk: int, timeout: float) -> bool: ...

    def close(self) -> None: ...


def _run(task: str, args: tuple[Any, ...]) -> None:
    from sqlalchemy.exc import OperationalError

    from workers.tasks import DATABASE, TASKS

    try:
        TASKS[task](*args)
    except OperationalError as exc:  # the database is away: one line per outage
        DATABASE.failed(exc)
    except Exception as exc:  # the sweeper retries what is still pending
        log.error("%s%r: error %s; left for the sweeper", task, args, type(exc).__name__)
    else:
        DATABASE.ok()


class InProcessDispatcher:
    """Embedded mode: one thread per lane, FIFO; a task already queued and not yet
    started is not queued twice (tasks are idempotent, a second run would find
    nothing to do)."""

    def __init__(self) -> None:
        self._pools: dict[str, ThreadPoolExecutor] = {}
        self._futures: dict[int, Future[None]] = {}
        self._queued: set[tuple[str, tuple[Any, ...]]] = set()
        self._timers: set[threading.Timer] = set()
        self._lock = threading.Lock()
        self._closed = False

    def _pool(self, task: str) -> ThreadPoolExecutor:
        lane = LANES.get(task, "work")
        with self._lock:
            if lane not in self._pools:
                self._pools[lane] = ThreadPoolExecutor(max_workers=1,
                                                       thread_name_prefix=f"mwl-{lane}")
            return self._pools[lane]

    def dispatch(self, message_pk: int) -> None:
        future = self._pool("process_inbound").submit(_run, "process_inbound", (message_pk,))
        with self._lock:
            self._futures[message_pk] = future
        future.add_done_callback(lambda _f: self._forget(message_pk, _f))

    def _forget(self, message_pk: int, future: Future[None]) -> None:
        with self._lock:
            if self._futures.get(message_pk) is future:
                del self._futures[message_pk]

    def submit(self, task: str, *args: Any, countdown: float = 0.0) -> None:
        if countdown > 0:
            timer = threading.Timer(countdown, self._fire, (task, args))
            timer.daemon = True
            with self._lock:
                self._timers.add(timer)
            timer.start()
            return
        key = (task, args)
        with self._lock:
            if key in self._queued or self._closed:
                return
            self._queued.add(key)
        self._pool(task).submit(self._start, key)

    def _fire(self, task: str, args: tuple[Any, ...]) -> None:
        with self._lock:
            self._timers = {t for t in self._timers if t.is_alive()
                            and t is not threading.current_thread()}
        self.submit(task, *args)

    def _start(self, key: tuple[str, tuple[Any, ...]]) -> None:
        with self._lock:
            self._queued.discard(key)
        _run(*key)

    def wait(self, message_pk: int, timeout: float) -> bool:
        with self._lock:
            future = self._futures.get(message_pk)
        if future is None:
            return True
        try:
            future.result(timeout)
        except FutureTimeout:
            return False
        return True

    def close(self) -> None:
        with self._lock:
            self._closed = True
            timers, pools = list(self._timers), list(self._pools.values())
        for timer in timers:
            timer.cancel()
        for pool in pools:
            pool.shutdown(wait=True, cancel_futures=False)


class CeleryDispatcher:
    """Distributed mode: publish to Redis; wait by watching the message row."""

    def __init__(self, session_factory: sessionmaker[Session]) -> None:
        self.session_factory = session_factory

    def dispatch(self, message_pk: int) -> None:
        self.submit("process_inbound", message_pk)

    def submit(self, task: str, *args: Any, countdown: float = 0.0) -> None:
        from workers.tasks import TASKS

        TASKS[task].apply_async(args, countdown=countdown or None)

    def wait(self, message_pk: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        pause = 0.001  # the application ACK waits on this: poll briskly, then back off
        while True:
            with self.session_factory() as session:
                status = session.scalar(
                    select(InboundMessage.status).where(InboundMessage.id == message_pk)
                )
            if status != MessageStatus.RECEIVED.value:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(pause)
            pause = min(pause * 1.5, 0.01)

    def close(self) -> None:
        return None


class BackgroundDispatcher:
    """Publishes from a thread of its own, for the serve process: a Redis round trip
    per task would otherwise hold up the MLLP event loop (most of its time when
    profiled). Inbound messages waiting together are published as one
    ``process_inbound_batch`` task (a publish costs 0.6-1 ms of CPU here, more than
    storing the message); when the last publish was less than LINGER ago, the publisher
    waits LINGER for more to gather, so a burst costs a few publishes while a lone
    message goes out at once. The work is committed before it is handed over, so a task
    not yet published when the process dies is re-dispatched by the sweeper; ``close``
    publishes what is still queued."""

    MAX_COALESCED = 500
    LINGER = 0.005

    def __init__(self, inner: CeleryDispatcher) -> None:
        self.inner = inner
        self.health = Outage("task broker (Redis): publishing", log)
        # Called when a publish succeeds after failed ones (the sweeper's wake): the
        # messages whose publish failed are committed and wait for it.
        self.on_recovered: Callable[[str], None] | None = None
        self._queue: queue.Queue[tuple[str, tuple[Any, ...], float] | None] = queue.Queue()
        self._last_publish = 0.0
        self._thread = threading.Thread(target=self._run, name="mwl-publish", daemon=True)
        self._thread.start()

    def dispatch(self, message_pk: int) -> None:
        self.submit("process_inbound", message_pk)

    def submit(self, task: str, *args: Any, countdown: float = 0.0) -> None:
        self._queue.put((task, args, countdown))

    def wait(self, message_pk: int, timeout: float) -> bool:
        return self.inner.wait(message_pk, timeout)

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            if time.monotonic() - self._last_publish < self.LINGER:
                time.sleep(self.LINGER)
            items = take_batch(self._queue, item, self.MAX_COALESCED)
            inbound = [args[0] for task, args, countdown in items
                       if task == "process_inbound" and not countdown]
            if len(inbound) > 1:
                items = [i for i in items if i[0] != "process_inbound" or i[2]]
                items.insert(0, ("process_inbound_batch", (inbound,), 0.0))
            for task, args, countdown in items:
                self._publish(task, args, countdown)
            self._last_publish = time.monotonic()

    def _publish(self, task: str, args: tuple[Any, ...], countdown: float) -> None:
        try:
            self.inner.submit(task, *args, countdown=countdown)
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
