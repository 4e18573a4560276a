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

The waiter is told the ACK stored with the outcome (:class:`Waited`), so that it can
answer without reading the row itself: after each packet of notices, the listening
thread reads the stored ACKs of the messages someone waits for, in one query on the
listening connection (the transaction that announced them has committed, so the rows
hold their outcome).

:class:`Polling` (SQLite, which has no notifications): looks at the row briskly, then
backing off to every 10 ms.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Collection
from typing import Any, NamedTuple, Protocol

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


# The stored ACKs of messages announced, read by the listening thread (driver SQL on
# its own psycopg connection; status as text, see broker.domain.status).
STORED_ACKS = ("SELECT id, ack FROM inbound_message WHERE id = ANY(%s) "
               "AND status <> 'received' AND ack IS NOT NULL")


class Waited(NamedTuple):
    """What a wait for a message learnt: whether it was applied (or is gone), and the
    ACK stored with its outcome when the watch read it (None: read the row)."""

    applied: bool
    ack: bytes | None = None


def _finished(factory: sessionmaker[Session],
              message_pks: Collection[int]) -> dict[int, bytes | None]:
    """Those of ``message_pks`` no longer waiting to be applied (applied, or gone),
    each with its stored ACK (None when gone or without one)."""
    with factory() as session:
        rows = session.execute(select(InboundMessage.id, InboundMessage.status,
                                      InboundMessage.ack).where(
            InboundMessage.id.in_(message_pks))).all()
    found = {pk: (status, ack) for pk, status, ack in rows}
    finished: dict[int, bytes | None] = {}
    for pk in message_pks:
        status, ack = found.get(pk, (None, None))
        if status != MessageStatus.RECEIVED.value:
            finished[pk] = bytes(ack) if ack is not None else None
    return finished


class AppliedWatch(Protocol):
    def wait_ack(self, message_pk: int, timeout: float) -> Waited:
        """Applied (or gone), with the stored ACK when known, once message
        ``message_pk`` is; not applied after ``timeout`` seconds."""
        ...

    def wait(self, message_pk: int, timeout: float) -> bool:
        """:meth:`wait_ack`, whether applied only."""
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
        return self.wait_ack(message_pk, timeout).applied

    def wait_ack(self, message_pk: int, timeout: float) -> Waited:
        deadline = time.monotonic() + timeout
        pause = 0.001  # the application ACK waits on this: poll briskly, then back off
        while not (finished := _finished(self.factory, [message_pk])):
            if time.monotonic() >= deadline:
                return Waited(False)
            time.sleep(pause)
            pause = min(pause * 1.5, 0.01)
        return Waited(True, finished[message_pk])

    def close(self) -> None:
        return None


class _Waiter:
    """One waiting thread: woken by ``event``, told ``ack`` when it was read."""

    __slots__ = ("ack", "event")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.ack: bytes | None = None


class Notified:
    """LISTEN on :data:`CHANNEL` in a thread (started by the first wait), with the
    safety nets of the module doc."""

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
        self._waiters: dict[int, list[_Waiter]] = {}
        self._recent: OrderedDict[int, None] = OrderedDict()
        self._listening = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def wait(self, message_pk: int, timeout: float) -> bool:
        return self.wait_ack(message_pk, timeout).applied

    def wait_ack(self, message_pk: int, timeout: float) -> Waited:
        deadline = time.monotonic() + timeout
        waiter = _Waiter()
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._listen, daemon=True,
                                                name="mwl-applied-listener")
                self._thread.start()
            self._waiters.setdefault(message_pk, []).append(waiter)
            # The notice came before this waiter (or may be missed): look at the row. A
            # notice does not settle it alone: the message may be queued again since.
            look = message_pk in self._recent or not self._listening
        try:
            if look and (finished := _finished(self.factory, [message_pk])):
                return Waited(True, finished[message_pk])
            while (remaining := deadline - time.monotonic()) > 0:
                if waiter.event.wait(min(remaining, self.poll_interval)):
                    return Waited(True, waiter.ack)
                if finished := _finished(self.factory, [message_pk]):  # the safety net
                    return Waited(True, finished[message_pk])
            return Waited(False)
        finally:
            with self._lock:
                waiters = self._waiters.get(message_pk, [])
                waiters.remove(waiter)
                if not waiters:
                    self._waiters.pop(message_pk, None)

    def _applied(self, message_pks: Collection[int],
                 acks: dict[int, bytes | None] | None = None) -> None:
        acks = acks or {}
        with self._lock:
            for pk in message_pks:
                self._recent[pk] = None
                for waiter in self._waiters.get(pk, ()):
                    waiter.ack = acks.get(pk)
                    waiter.event.set()
            while len(self._recent) > self.RECENT:
                self._recent.popitem(last=False)

    def _announced(self, conn: psycopg.Connection[Any], message_pks: list[int]) -> None:
        """Wake the waiters of the messages announced, with the ACKs stored for them
        (read on the listening connection, for those someone waits for). If the read
        fails they are woken without (and read their rows); the error goes up, to
        reconnect."""
        with self._lock:
            waited = [pk for pk in message_pks if pk in self._waiters]
        acks: dict[int, bytes | None] = {}
        try:
            if waited:
                acks = {int(pk): bytes(ack) for pk, ack in
                        conn.execute(STORED_ACKS, (waited,)).fetchall()}
        finally:
            self._applied(message_pks, acks)

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
                        finished = _finished(self.factory, waiting)
                        self._applied(finished, finished)
                    with self._lock:
                        self._listening = True
                    self.health.ok()
                    while not self._stop.is_set():
                        # One packet of notices at a time (those arriving meanwhile
                        # wait in the connection), then their ACKs in one query.
                        announced = [int(notice.payload) for notice in conn.notifies(
                            timeout=self.STOP_CHECK, stop_after=1)
                            if notice.payload.isdigit()]  # the messages' ids
                        if announced:
                            self._announced(conn, announced)
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
