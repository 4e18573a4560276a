"""Durable storing of inbound messages with group commit (the MLLP hot path).

One writer thread owns one database connection. Messages from every MLLP connection
queue up; the writer takes what is waiting (up to MAX_BATCH) and stores it in one
transaction, so concurrent senders share a commit (its fsync) instead of each paying
for one. A caller gets its result only after that commit: AA is still only sent for
a committed message (an original-mode AA means the application accepted it, HL7
v2.5.1 2.9.2).

Each message first reads the stored messages with its (MSH-3, MSH-4, MSH-10): one
with the same content hash makes it a duplicate, whose id and stored ACK are replayed
and nothing is stored; others mean the sender reused the control id for new content,
which is stored as a new message and flagged (``Pending.on_reuse``). Then one ``INSERT
... ON CONFLICT (MSH-3, MSH-4, MSH-10, content hash) DO NOTHING RETURNING id``; no id
back means a racing connection stored the same message first: a duplicate too.

A writer given an ``apply`` step (:mod:`broker.services.apply_at_receipt`: embedded
mode, application ACK mode) also applies, in the same transaction, each new message
stored without an ACK, so the row and its outcome share one commit and the caller gets
the outcome's ACK with the id. A message ``apply`` leaves alone is committed
``received``, without an ACK, for the dispatcher.

If a batch fails, it is stored again without applying anything when it was being
applied (the raw messages are kept whatever went wrong in applying them); if storing
fails, each of its messages is stored again in a transaction of its own, so one message
the database refuses cannot take the others with it; a message that still cannot be
stored gets ``None`` (the caller answers AR 207, nothing is kept).

``health`` says whether the store can commit (readiness, /readyz): a failure that is
not the database refusing one message's content (disk full, read-only database,
database down) marks it failing, with the cause, until a commit succeeds again. While
failing, the writer probes every PROBE_EVERY seconds with a write of its own, so that
recovery is noticed even when no message arrives (a load balancer that stopped sending
to this node because it was not ready).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from broker.batching import take_batch
from broker.hl7.message import Message
from broker.models import InboundMessage
from broker.outage import Outage, refused_by_content

log = logging.getLogger(__name__)

MAX_BATCH = 256
PROBE_EVERY = 2.0  # seconds between write probes while the store cannot commit
KEY_COLUMNS = ("sending_application", "sending_facility", "control_id")
DEDUP_COLUMNS = (*KEY_COLUMNS, "content_hash")


class Stored(NamedTuple):
    """A committed message: its row id, the ACK stored with it (None: not decided yet),
    whether this call stored it (False: a duplicate of a stored message) and its
    status as committed."""

    pk: int
    ack: bytes | None
    new: bool
    status: str


class Applied(NamedTuple):
    """The outcome an ``apply`` step recorded on a message row: its status and the ACK
    to send."""

    status: str
    ack: bytes | None


class Apply(Protocol):
    """Applies a just-stored message in the writer's transaction: (session, row id,
    column values, the message as the listener parsed it) -> the outcome recorded, or
    None when the message is left to the dispatcher."""

    def __call__(self, session: Session, pk: int, values: dict[str, Any], *,
                 message: Message | None = None) -> Applied | None: ...


@dataclass
class Pending:
    """A message ready to store: its column values (ACK included when already known);
    for a refused sender, a security alert written in the same transaction; and what
    to change in the values when the control id turns out to be reused."""

    values: dict[str, Any]
    alert: Callable[[Session], None] | None = None
    on_reuse: Callable[[dict[str, Any]], None] | None = None
    result: Future[Stored | None] = field(default_factory=Future)
    message: Message | None = None  # as parsed from ``values["raw"]``, when it was


class MessageStoreWriter:
    """Stores :class:`Pending` messages (and applies them, given ``apply``);
    ``store`` returns a future of :class:`Stored`, or None when the database failed."""

    def __init__(self, engine: Engine, apply: Apply | None = None) -> None:
        self.engine = engine
        self._apply = apply
        self._statements = _Statements(engine)
        self._queue: queue.Queue[Pending | None] = queue.Queue()
        self._conn: Connection | None = None  # held, not checked out (and pinged) per batch
        self.health = Outage("message store (cannot commit; messages get AR 207)", log)
        self._thread = threading.Thread(target=self._run, name="mwl-store", daemon=True)
        self._thread.start()

    def store(self, pending: Pending) -> Future[Stored | None]:
        self._queue.put(pending)
        return pending.result

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(30)
        self._discard_connection()

    def _discard_connection(self) -> None:
        """After a failure (or at close) the next batch starts on a fresh connection."""
        if self._conn is not None:
            with contextlib.suppress(SQLAlchemyError):
                self._conn.invalidate()
                self._conn.close()
            self._conn = None

    def _run(self) -> None:
        while True:
            try:
                first = self._queue.get(timeout=PROBE_EVERY if self.health.down else None)
            except queue.Empty:
                self._probe()
                continue
            if first is None:
                return
            self._write(take_batch(self._queue, first, MAX_BATCH))

    def _probe(self) -> None:
        """A write that changes nothing (the one-row ``alembic_version`` set to itself),
        committed: it fails on a read-only or unreachable database and when the write
        ahead log cannot grow. SQLite also reports full when no page is left
        (``max_page_count``), which a rewrite in place would not notice."""
        try:
            conn = self._connection()
            with conn.begin():
                if conn.dialect.name == "sqlite":
                    pages = conn.exec_driver_sql("PRAGMA page_count").scalar() or 0
                    limit = conn.exec_driver_sql("PRAGMA max_page_count").scalar() or 0
                    free = conn.exec_driver_sql("PRAGMA freelist_count").scalar() or 0
                    if pages >= limit and not free:
                        raise StoreFull("database or disk is full")
                conn.exec_driver_sql("UPDATE alembic_version SET version_num = version_num")
        except Exception as exc:
            self._discard_connection()
            self.health.failed(exc)
            return
        self.health.ok()

    def _connection(self) -> Connection:
        if self._conn is None or self._conn.closed or self._conn.invalidated:
            self._conn = self.engine.connect()
        return self._conn

    def _write(self, batch: list[Pending], *, apply: bool = True) -> None:
        applying = apply and self._apply is not None
        try:
            conn = self._connection()
            with conn.begin():
                results = self._insert_batch(conn, batch)
                if applying:
                    results = self._apply_batch(conn, batch, results)
        except Exception as exc:  # SQLAlchemy's, or the driver's own (raw cursor)
            self._discard_connection()
            if applying:  # keep the raw messages: store them alone, for the dispatcher
                log.warning("%d message(s) to be stored without applying them (%s)",
                            len(batch), type(exc).__name__)
                self._write(batch, apply=False)
                return
            if len(batch) == 1:
                if refused_by_content(exc):
                    log.error("message store refused a message (%s)", type(exc).__name__)
                else:
                    self.health.failed(exc)
                batch[0].result.set_result(None)
                return
            for pending in batch:  # find the one the database refuses, keep the rest
                self._write([pending], apply=False)
            return
        self.health.ok()
        for pending, result in zip(batch, results, strict=True):
            pending.result.set_result(result)

    def _insert_batch(self, conn: Connection, batch: list[Pending]) -> list[Stored]:
        for pending in batch:
            if pending.alert is not None:
                with Session(bind=conn) as session:
                    pending.alert(session)
                    session.flush()
        cursor = conn.connection.cursor()
        try:
            return [self._statements.store(cursor, pending) for pending in batch]
        finally:
            cursor.close()

    def _apply_batch(self, conn: Connection, batch: list[Pending],
                     results: list[Stored]) -> list[Stored]:
        """Apply, in arrival order, each message this batch stored without an ACK."""
        assert self._apply is not None
        with Session(bind=conn) as session:
            for n, (pending, stored) in enumerate(zip(batch, results, strict=True)):
                if stored.new and stored.ack is None:
                    applied = self._apply(session, stored.pk, pending.values,
                                          message=pending.message)
                    if applied is not None:
                        results[n] = stored._replace(ack=applied.ack, status=applied.status)
        return results


class StoreFull(Exception):
    """The database has no page left for another row (SQLite ``max_page_count``)."""


class _Statements:
    """The two statements of the hot path as driver SQL, written once per process.
    Through the SQL expression layer each cost about half a millisecond of Python here,
    more than the database took. Values pass through the columns'
    own bind processors, so they are stored exactly as the ORM would store them."""

    def __init__(self, engine: Engine) -> None:
        self.dialect = engine.dialect
        self._insert_sql: str | None = None
        self._columns: list[str] = []
        self._processors: dict[str, Callable[[Any], Any]] = {}
        for column in InboundMessage.__table__.columns:
            processor = column.type.dialect_impl(self.dialect).bind_processor(self.dialect)
            if processor is not None:
                self._processors[column.key] = processor
        where = " AND ".join(f"{c} = {self._mark(c)}" for c in KEY_COLUMNS)
        self._select_sql = (f"SELECT id, content_hash, ack, status FROM inbound_message "
                            f"WHERE {where} ORDER BY id")

    def _mark(self, name: str) -> str:
        return f"%({name})s" if self.dialect.paramstyle == "pyformat" else f":{name}"

    def store(self, cursor: Any, pending: Pending) -> Stored:
        values = pending.values
        if values.get("control_id") is not None:
            stored = self._stored(cursor, pending)
            if stored is not None:
                return stored
        if self._insert_sql is None:
            self._columns = sorted(values)
            marks = ", ".join(self._mark(c) for c in self._columns)
            self._insert_sql = (
                f"INSERT INTO inbound_message ({', '.join(self._columns)}) VALUES ({marks}) "
                f"ON CONFLICT ({', '.join(DEDUP_COLUMNS)}) DO NOTHING RETURNING id")
        params = self._params(values, self._columns)
        cursor.execute(self._insert_sql, params)
        row = cursor.fetchone()
        if row is not None:
            return Stored(int(row[0]), values.get("ack"), True, values["status"])
        stored = self._stored(cursor, pending)
        if stored is None:  # cannot happen: the conflicting row is visible now
            raise RuntimeError("message store: conflicting row not found")
        return stored

    def _stored(self, cursor: Any, pending: Pending) -> Stored | None:
        """The stored duplicate of the message (same key and content), if any; a stored
        message with the same key and other content marks it as reusing the key."""
        values = pending.values
        cursor.execute(self._select_sql, self._params(values, KEY_COLUMNS))
        rows = cursor.fetchall()
        for pk, digest, ack, status in rows:
            if digest == values["content_hash"]:
                return Stored(int(pk), bytes(ack) if ack is not None else None, False, status)
        if rows and not values.get("control_id_reused"):
            values["control_id_reused"] = True
            if pending.on_reuse is not None:
                pending.on_reuse(values)
        return None

    def _params(self, values: dict[str, Any], columns: Sequence[str]) -> dict[str, Any]:
        params = {c: values[c] for c in columns}
        for name, processor in self._processors.items():
            if name in params:
                params[name] = processor(params[name])
        return params
