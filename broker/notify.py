"""Learning that stored inbound messages were applied, for the application-mode ACK
(:meth:`broker.dispatch.Dispatcher.wait`), without polling their rows.

The processor's transaction announces each message it applies (processed or failed) on
the channel :data:`CHANNEL`, in the statement that takes the messages
(:func:`applied_notice`). PostgreSQL delivers a NOTIFY to the sessions listening when,
and only if, that transaction commits, that is exactly when the rows can be read
(PostgreSQL documentation, NOTIFY / LISTEN).

:class:`Notified` (PostgreSQL through psycopg): one connection of its own, in a thread,
listens and wakes the waiting threads. A lost notice never loses an ACK: each waiter
still looks at its row every ``poll_interval`` seconds (a slow safety net), and when
the listening connection is lost the thread reconnects and, once listening again,
looks at the rows of every waiter (the notices sent meanwhile are gone). Ids announced
recently are remembered, so that a waiter arriving after the notice of its message
looks at the row instead of waiting for the poll.

:class:`Polling` (SQLite, which has no notifications): looks at the row briskly, then
backing off to every 10 ms.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Collection, Iterable
from typing import Protocol

import psycopg
from sqlalchemy import ColumnElement, String, cast, func, select
from sqlalchemy.orm import InstrumentedAttribute, Session, sessionmaker

from broker.models import InboundMessage, MessageStatus
from broker.outage import Outage

log = logging.getLogger(__name__)

CHANNEL = "mwlb_applied"
# How the listening session shows in pg_stat_activity.
APPLICATION_NAME = "mwl-broker applied-listener"
# libpq connection parameters of the listening connection, unless the database URL sets
# them (PostgreSQL documentation, "Parameter Key Words"): TCP keepalives, since it only
# ever reads, so a connection lost without a word (a server gone from the network)
# would otherwise go unnoticed, every ACK waiting for the poll; and a bounded connect.
LISTEN_PARAMETERS = {"keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5,
                     "keepalives_count": 3, "connect_timeout": 10}


def applied_notice(message_pk: ColumnElement[int] | InstrumentedAttribute[int]
                   ) -> ColumnElement[None]:
    """A select-list expression of PostgreSQL announcing message ``message_pk`` on
    :data:`CHANNEL`, for the query that takes the messages a transaction applies: the
    notice is delivered when that transaction commits, and not at all if it rolls back
    (duplicates within it are folded into one)."""
    return func.pg_notify(CHANNEL, cast(message_pk, String))


def _finished(factory: sessionmaker[Session], message_pks: Collection[int]) -> set[int]:
    """Those of ``message_pks`` no longer waiting to be applied (applied, or gone)."""
    with factory() as session:
        waiting = set(session.scalars(select(InboundMessage.id).where(
            InboundMessage.id.in_(message_pks),
            InboundMessage.status == MessageStatus.RECEIVED.value)))
    return set(message_pks) - waiting


class AppliedWatch(Protocol):
    def wait(self, message_pk: int, timeout: float) -> bool:
        """True once message ``message_pk`` is applied (or gone), False after
        ``timeout`` seconds."""
        ...

    def close(self) -> None: ...


def applied_watch(factory: sessionmaker[Session]) -> AppliedWatch:
    """Notifications on PostgreSQL through psycopg, polling elsewhere."""
    dialect = factory.kw["bind"].dialect
    if (dialect.name, dialect.driver) == ("postgresql", "psycopg"):
        return Notified(factory)
    return Polling(factory)


class Polling:
    """Looks at the row until it is applied."""

    def __init__(self, factory: sessionmaker[Session]) -> None:
        self.factory = factory

    def wait(self, message_pk: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        pause = 0.001  # the application ACK waits on this: poll briskly, then back off
        while not _finished(self.factory, [message_pk]):
            if time.monotonic() >= deadline:
                return False
            time.sleep(pause)
            pause = min(pause * 1.5, 0.01)
        return True

    def close(self) -> None:
        return None


class Notified:
    """LISTEN on :data:`CHANNEL` in a thread (started by the first :meth:`wait`), with
    the safety nets of the module doc."""

    RECENT = 10_000  # ids remembered: many seconds of traffic
    STOP_CHECK = 0.25  # how often the listening thread looks whether to stop

    def __init__(self, factory: sessionmaker[Session], *, poll_interval: float = 1.0,
                 reconnect_interval: float = 0.5) -> None:
        self.factory = factory
        self.poll_interval = poll_interval
        self.reconnect_interval = reconnect_interval
        self.health = Outage("database notifications (application ACKs wait for the "
                             "slower poll)", log)
        engine = factory.kw["bind"]
        self._connect_args = engine.dialect.create_connect_args(engine.url)
        self._lock = threading.Lock()
        self._waiters: dict[int, list[threading.Event]] = {}
        self._recent: OrderedDict[int, None] = OrderedDict()
        self._listening = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def wait(self, message_pk: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        event = threading.Event()
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._listen, daemon=True,
                                                name="mwl-applied-listener")
                self._thread.start()
            self._waiters.setdefault(message_pk, []).append(event)
            # The notice came before this waiter (or may be missed): look at the row. A
            # notice does not settle it alone: the message may be queued again since.
            look = message_pk in self._recent or not self._listening
        try:
            if look and _finished(self.factory, [message_pk]):
                return True
            while (remaining := deadline - time.monotonic()) > 0:
                if event.wait(min(remaining, self.poll_interval)):
                    return True
                if _finished(self.factory, [message_pk]):  # the safety net
                    return True
            return False
        finally:
            with self._lock:
                events = self._waiters.get(message_pk, [])
                events.remove(event)
                if not events:
                    self._waiters.pop(message_pk, None)

    def _applied(self, message_pks: Iterable[int]) -> None:
        with self._lock:
            for pk in message_pks:
                self._recent[pk] = None
                for event in self._waiters.get(pk, ()):
                    event.set()
            while len(self._recent) > self.RECENT:
                self._recent.popitem(last=False)

    def _listen(self) -> None:
        args, kwargs = self._connect_args
        params = {**LISTEN_PARAMETERS, **kwargs, "autocommit": True,
                  "application_name": APPLICATION_NAME}
        while not self._stop.is_set():
            try:
                with psycopg.connect(*args, **params) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    with self._lock:
                        waiting = list(self._waiters)
                    if waiting:  # applied while nobody listened: no notice will come
                        self._applied(_finished(self.factory, waiting))
                    with self._lock:
                        self._listening = True
                    self.health.ok()
                    while not self._stop.is_set():
                        for notice in conn.notifies(timeout=self.STOP_CHECK):
                            if notice.payload.isdigit():  # the message's id
                                self._applied([int(notice.payload)])
            except Exception as exc:  # the database is away: retry, the polls cover it
                self.health.failed(exc)
            finally:
                with self._lock:
                    self._listening = False
            self._stop.wait(self.reconnect_interval)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2 * self.STOP_CHECK + 1)
