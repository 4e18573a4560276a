"""How committed work reaches the task code: in-process (embedded) or via Celery.

Both dispatchers run the task functions of :mod:`workers.tasks`; they differ only in
where. ``dispatch`` hands over a stored inbound message; ``submit`` any other task by
name (MPPS linking, study reconciliation, outbound delivery, forwarding), optionally
after ``countdown`` seconds. ``wait`` lets the MLLP listener hold an application-mode
ACK until the message has been applied.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from broker.models import InboundMessage, MessageStatus

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
    from workers.tasks import TASKS

    try:
        TASKS[task](*args)
    except Exception as exc:  # the sweeper retries what is still pending
        log.error("%s%r: error %s; left for the sweeper", task, args, type(exc).__name__)


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
        pause = 0.002
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
            pause = min(pause * 2, 0.05)

    def close(self) -> None:
        return None
