"""How stored messages reach the processor: in-process (embedded) or via Celery.

Both dispatchers run :func:`workers.tasks.process_inbound`; they differ only in where.
``wait`` lets the MLLP listener hold an application-mode ACK until the message has
been applied.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from broker.models import InboundMessage, MessageStatus

log = logging.getLogger(__name__)


class Dispatcher(Protocol):
    def dispatch(self, message_pk: int) -> None: ...

    def wait(self, message_pk: int, timeout: float) -> bool: ...

    def close(self) -> None: ...


class InProcessDispatcher:
    """Embedded mode: one processing thread (SQLite has one writer anyway), FIFO."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mwl-process")
        self._futures: dict[int, Future[None]] = {}
        self._lock = threading.Lock()

    def dispatch(self, message_pk: int) -> None:
        future = self._pool.submit(self._run, message_pk)
        with self._lock:
            self._futures[message_pk] = future
        future.add_done_callback(lambda _f: self._forget(message_pk, _f))

    def _forget(self, message_pk: int, future: Future[None]) -> None:
        with self._lock:
            if self._futures.get(message_pk) is future:
                del self._futures[message_pk]

    @staticmethod
    def _run(message_pk: int) -> None:
        from workers.tasks import process_inbound

        try:
            process_inbound(message_pk)
        except Exception as exc:  # the sweeper retries what is still pending
            log.error("message %s: processing error %s; left for the sweeper",
                      message_pk, type(exc).__name__)

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
        self._pool.shutdown(wait=True, cancel_futures=False)


class CeleryDispatcher:
    """Distributed mode: publish to Redis; wait by watching the message row."""

    def __init__(self, session_factory: sessionmaker[Session]) -> None:
        self.session_factory = session_factory

    def dispatch(self, message_pk: int) -> None:
        from workers.tasks import process_inbound

        process_inbound.apply_async((message_pk,))

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
