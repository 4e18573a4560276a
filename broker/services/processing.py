"""Apply stored inbound messages to patients and orders: the body of the Celery tasks.

Contract:

* Takes message row ids; idempotent: a message that is no longer ``received`` is left
  alone, so a task that runs twice has no double effect. A worker's task may also take
  other waiting messages ahead (:func:`process_batch`); their own tasks find them done.
* Messages with the same ordering key (the patient, PID-3) are applied strictly in
  arrival (id) order, however many workers run: before a message, every earlier
  pending message of the same patient is applied, under a per-patient lock
  (PostgreSQL advisory transaction locks, taken in one statement in the order of their
  lock ids so that two workers locking several patients never deadlock; SQLite's
  BEGIN IMMEDIATE serialises all writers anyway).
* A batch of messages is applied in one transaction (up to TRANSACTION_MESSAGES of
  them; a longer batch in several, in id order), each message with its new status,
  outcome and (in application ACK mode) its ACK: all of that message or nothing of
  it. The transaction also announces the messages it applies
  (:func:`broker.notify.applied_notice`), delivered when it commits.
* How: an order message writes nothing until all its rules have passed, so its rows
  are held and written with those of the batch's other messages, one statement per
  table and kind of change, at the end of the batch, or before a message that looks
  up one of the rows held (the same patient or order number) or an ADT message (under
  a savepoint); audit records and results are written at the end. If anything fails
  after a write, the transaction rolls back and the batch is applied again, each
  message under a savepoint of its own with its writes made at once
  (:func:`apply_message`), so that a failure is that message's alone.
* Each transaction maps all its messages with one set of profiles: the version in
  force, read once at its start (:meth:`broker.mapping.deployed.DeployedMappings.current`),
  so a deploy takes effect between transactions. Each message row records the profile
  that mapped it and that version (``profile``, ``profile_version``), failed ones too.
* A content error (HL7Error) rolls back the message's changes and records status
  ``failed`` with the Table 0357 code, location and text; an unexpected error does
  the same with code 207, and so does data the database refuses (DataError,
  IntegrityError: it would fail again on every retry). The other messages of the batch
  are applied all the same. Other database errors are transient and propagate: the
  whole transaction rolls back, every row stays ``received`` and is retried (task retry
  with back-off, then the sweeper, or the sender's resend).
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable, Collection
from datetime import UTC, datetime
from typing import Any, Protocol, runtime_checkable

from sqlalchemy import (
    ColumnElement,
    ColumnExpressionArgument,
    Connection,
    Table,
    and_,
    case,
    func,
    or_,
    select,
)
from sqlalchemy.exc import DataError, IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.orm.attributes import set_committed_value

from broker.audit import hooks as audit
from broker.audit.events import record_all
from broker.db import unit_of_work
from broker.domain.types import AdtMessage, OrderMessage
from broker.driver_rows import savepoint, update_by_key
from broker.hl7 import warnings
from broker.hl7.ack import build_ack
from broker.hl7.errors import ErrorCode, HL7Error
from broker.hl7.message import Message, parse
from broker.hl7.warnings import HL7Warning
from broker.mapping.deployed import Deployed
from broker.models import InboundMessage, MessageStatus, utcnow
from broker.notify import applied_notice
from broker.services import order_state
from broker.services.order_state import Key, OrderState
from broker.services.orders import apply_order, prepare_order, step_cause
from broker.services.patients import apply_adt
from broker.services.rows import table
from broker.services.ups.from_orders import workitems_for_steps

log = logging.getLogger(__name__)

_INBOUND = table(InboundMessage)

class Mapper(Protocol):
    """Maps a parsed message to domain records; bound to the loaded profiles by the
    caller. ``received_at`` is the stored row's receipt time (the start of an order
    that carries none); None means now."""

    def __call__(self, msg: Message, *,
                 received_at: datetime | None = None) -> OrderMessage | AdtMessage: ...


@runtime_checkable
class Mappings(Protocol):
    """The deployed profiles of a process (:class:`broker.mapping.deployed.DeployedMappings`):
    the version in force, read in the caller's transaction."""

    def current(self, connection: Connection) -> Deployed: ...


# What the processor maps with: the deployed mappings (the version in force is read once
# per transaction), or one fixed mapper.
MapperSource = Mapper | Mappings


def bind_mapper(source: MapperSource, connection: Connection) -> Mapper:
    """The mapper for one transaction: the version in force read on ``connection``
    when ``source`` is the deployed mappings; else ``source`` itself."""
    if isinstance(source, Mappings):
        return source.current(connection)
    return source


# Messages applied in one transaction, a savepoint each. PostgreSQL keeps the ids of up
# to 64 subtransactions of a transaction in shared memory; beyond that every other
# session's snapshot looks them up in pg_subtrans (PostgreSQL documentation,
# "Subtransactions"), slowing the worklist queries while the transaction runs.
TRANSACTION_MESSAGES = 50

# Parses stored bytes; the caller binds the read options used at receipt (charset
# aliases), so a message reads the same, with the same warnings, at both times.
Reader = Callable[[bytes], Message]


def _lock_id(key: ColumnExpressionArgument[str] | str) -> ColumnElement[int]:
    # PostgreSQL's 64-bit text hash: computed by the server, so that a statement can
    # lock the keys it reads.
    return func.hashtextextended(key, 0)


def lock_key(session: Session, key: str) -> None:
    """Serialise transactions on ``key`` (PostgreSQL transaction advisory lock; SQLite's
    BEGIN IMMEDIATE already serialises every writer)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(select(func.pg_advisory_xact_lock(_lock_id(key))))


def process_through(factory: sessionmaker[Session], message_pk: int, mapper: MapperSource, *,
                    read: Reader = parse, ahead: bool = False) -> int:
    """Apply every pending message of the same patient up to and including
    ``message_pk``, oldest first. Returns how many messages were applied here.
    ``ahead``: see :func:`process_batch`."""
    return process_batch(factory, [message_pk], mapper, read=read, ahead=ahead)


def process_batch(factory: sessionmaker[Session], message_pks: Collection[int],
                  mapper: MapperSource, *, read: Reader = parse, ahead: bool = False) -> int:
    """Apply the messages ``message_pks`` (in any order), each after every earlier
    pending message of its patient, in transactions of up to TRANSACTION_MESSAGES
    messages in id order (see the module doc). Returns how many messages were applied
    here.

    ``ahead``: the last transaction is filled up to TRANSACTION_MESSAGES with the
    oldest other waiting messages whose ordering keys no other transaction holds (a
    backlog then drains in full transactions whatever the tasks hold; the tasks of the
    messages taken find them applied). Taken only when some of ``message_pks`` still
    wait."""
    ordered = sorted(message_pks)
    chunks = [ordered[at:at + TRANSACTION_MESSAGES]
              for at in range(0, len(ordered), TRANSACTION_MESSAGES)]
    return sum(_apply_together(factory, chunk, mapper, read,
                               TRANSACTION_MESSAGES - len(chunk)
                               if ahead and chunk is chunks[-1] else 0)
               for chunk in chunks)


def _apply_together(factory: sessionmaker[Session], message_pks: list[int],
                    mapper: MapperSource, read: Reader, ahead: int) -> int:
    try:
        with unit_of_work(factory) as session:
            return _apply_pending(session, message_pks, mapper, read, ahead, deferred=True)
    except _Careful:
        # Rolled back; applied again, each message under a savepoint of its own.
        log.debug("batch of %d messages applied again, a savepoint each", len(message_pks))
    try:
        with unit_of_work(factory) as session:
            return _apply_pending(session, message_pks, mapper, read, ahead, deferred=False)
    except SQLAlchemyError:
        if not ahead:
            raise
        # A message taken ahead may be what fails (and would fail every task that takes
        # it): the task's own messages are applied without the others.
        log.warning("batch of %d messages failed with the messages taken ahead; "
                    "applied without them", len(message_pks))
    with unit_of_work(factory) as session:
        return _apply_pending(session, message_pks, mapper, read, 0, deferred=False)


class _Careful(Exception):
    """A batch to apply again with a savepoint per message: something failed after
    a message wrote to the database."""


def _apply_pending(session: Session, message_pks: list[int], source: MapperSource,
                   read: Reader, ahead: int, *, deferred: bool) -> int:
    waiting = _lock_waiting(session, message_pks)
    if not waiting:  # a task run again, or its messages applied with others
        return 0
    if ahead:
        waiting.update(_take_ahead(session, waiting, ahead))
    pending = _pending(session, waiting)
    connection = session.connection()
    mapper = bind_mapper(source, connection)  # one version for the whole transaction
    if not deferred:
        for row in pending:
            apply_message(session, row, mapper, read=read)
        return len(pending)
    batch = _Deferred()
    try:
        for row in pending:
            _apply_deferred(connection, row, mapper, read, batch)
        batch.write(connection)
    except Exception as exc:
        raise _Careful from exc
    return len(pending)


class _Deferred:
    """What the order messages of a batch write, held until the end of the batch (or
    until a message looks up a row held here: :func:`order_state.written_keys`), then
    written together, one statement per table and kind of change; and their audit
    records and results, written at the end."""

    def __init__(self) -> None:
        self.states: list[OrderState] = []
        # Per state held: its message's workitem selection, cause and result, so the
        # steps' UPS workitems are written after them and their lines join the outcome.
        self.workitems: list[tuple[OrderState, OrderMessage, str, dict[str, Any]]] = []
        self.written: set[Key] = set()  # the lookup keys of the rows in ``states``
        self.handed_out: dict[Table, int] = {}  # primary keys (:class:`KeyPool`)
        self.audit: list[dict[str, Any]] = []
        self.results: list[tuple[InboundMessage, dict[str, Any]]] = []

    def flush(self, connection: Connection) -> None:
        """Write the states held, then their steps' UPS workitems."""
        if self.states:
            order_state.write(connection, self.states)
        for state, message, cause, result in self.workitems:
            lines = workitems_for_steps(connection, state, message.workitems, cause=cause)
            if lines:
                result["outcome"] = "; ".join(filter(None, [result["outcome"], *lines]))
        self.states, self.written, self.workitems = [], set(), []

    def write(self, connection: Connection) -> None:
        self.flush(connection)
        record_all(connection, self.audit)
        groups: dict[tuple[str, ...], list[tuple[InboundMessage, dict[str, Any]]]] = {}
        for row, result in self.results:
            values = _recorded(row, result)
            groups.setdefault(tuple(values), []).append((row, values))
        for same in groups.values():
            update_by_key(connection, _INBOUND, [(row.id, values) for row, values in same])
            for row, values in same:
                _committed(row, values)


def _apply_deferred(connection: Connection, row: InboundMessage, mapper: Mapper,
                    read: Reader, batch: _Deferred) -> None:
    """:func:`apply_message` without a savepoint for an order message, its writes,
    audit record and result left to ``batch``. An order message writes nothing until
    all its rules have passed (:func:`broker.services.orders.prepare_order`), so a
    refusal (HL7Error) has nothing to undo. An ADT message is applied at once, after
    the writes held, under a savepoint. Any other exception raises :class:`_Careful`."""
    msg: Message | None = None
    held: OrderState | None = None
    handed_out = dict(batch.handed_out)
    with warnings.collecting() as found:
        try:
            msg = read(row.raw)
            mapped = mapper(msg, received_at=row.received_at)
            if isinstance(mapped, AdtMessage):
                batch.flush(connection)
                with connection.begin_nested():
                    outcome = apply_adt(connection, mapped)
            else:
                if order_state.lookup_keys(mapped.patient, mapped.procedures) & batch.written:
                    batch.flush(connection)
                state, outcome = prepare_order(connection, mapped, row,
                                               handed_out=batch.handed_out)
                held = state
                batch.states.append(state)
                batch.written |= order_state.written_keys(mapped.patient, state)
        except HL7Error as exc:
            batch.handed_out.clear()  # the keys it took are free again
            batch.handed_out.update(handed_out)
            batch.results.append((row, _failure(row, msg or exc.partial, exc, mapper)))
            _log_refused(row, exc)
            return
    batch.audit.append(audit.hl7_applied_values(row, mapped))
    result = _success(row, msg, outcome, found, mapped)
    batch.results.append((row, result))
    if held is not None and isinstance(mapped, OrderMessage):
        batch.workitems.append((held, mapped, step_cause(row), result))
    log.info("message %s (MSH-10 %s) processed", row.id, row.control_id)


def _lock_waiting(session: Session, message_pks: list[int]) -> dict[int, str]:
    """Those of ``message_pks`` still waiting, with their ordering keys, each key
    locked on PostgreSQL, in lock id order, in this one statement (the server sorts
    before it evaluates a volatile function of the select list). A message without a
    key takes no lock: it is applied alone, and its row lock (:func:`_pending`) keeps a
    second run out."""
    query = select(InboundMessage.id, InboundMessage.ordering_key).where(
        InboundMessage.id.in_(message_pks),
        InboundMessage.status == MessageStatus.RECEIVED.value)
    if session.get_bind().dialect.name == "postgresql":
        lock_id = _lock_id(InboundMessage.ordering_key)
        query = query.add_columns(case((InboundMessage.ordering_key != "",
                                        func.pg_advisory_xact_lock(lock_id)))
                                  ).order_by(lock_id)
    return {pk: key for pk, key, *_ in session.execute(query)}


def _take_ahead(session: Session, waiting: dict[int, str], limit: int) -> dict[int, str]:
    """Up to ``limit`` of the oldest other waiting messages with an ordering key, with
    their keys, each key locked on PostgreSQL if no other transaction holds it (a
    message whose key is held is left: it never waits here, so no deadlock)."""
    candidates = select(InboundMessage.id, InboundMessage.ordering_key).where(
        InboundMessage.status == MessageStatus.RECEIVED.value,
        InboundMessage.ordering_key != "", InboundMessage.id.not_in(list(waiting)),
    ).order_by(InboundMessage.received_at, InboundMessage.id).limit(limit)
    if session.get_bind().dialect.name == "postgresql":
        # The LIMIT keeps the subquery apart, so the locks are tried on its rows only.
        found = candidates.subquery()
        candidates = select(found.c.id, found.c.ordering_key).where(
            func.pg_try_advisory_xact_lock(_lock_id(found.c.ordering_key)))
    return {pk: key for pk, key in session.execute(candidates)}


def _pending(session: Session, waiting: dict[int, str]) -> list[InboundMessage]:
    """What to apply, oldest first, read again (and row-locked) now that the keys are
    locked: the ``waiting`` messages that still wait and, before each, every waiting
    message of its ordering key. On PostgreSQL the same statement announces each of
    them (:func:`broker.notify.applied_notice`): the notices go out when the
    transaction commits, when each of them has its outcome, and not at all if it rolls
    back."""
    through: dict[str, int] = {}  # per ordering key, its last message asked for
    for pk, key in waiting.items():
        if key:
            through[key] = max(pk, through.get(key, 0))
    query = (
        select(InboundMessage)
        .where(InboundMessage.status == MessageStatus.RECEIVED.value,
               or_(InboundMessage.id.in_([pk for pk, key in waiting.items() if not key]),
                   *(and_(InboundMessage.ordering_key == key, InboundMessage.id <= last)
                     for key, last in through.items())))
        .order_by(InboundMessage.id)
        .with_for_update()
    )
    if session.get_bind().dialect.name == "postgresql":
        query = query.add_columns(applied_notice(InboundMessage.id))
    return list(session.scalars(query))


def apply_message(session: Session, row: InboundMessage, mapper: MapperSource, *,
                  read: Reader = parse) -> None:
    """Apply one message inside the caller's transaction (in a savepoint of its own)
    and record the result on its row (:func:`_record`). Given the deployed mappings,
    the version in force is read first (:func:`bind_mapper`)."""
    msg: Message | None = None
    # The caller's pending changes (the row itself, when just added) go in first,
    # outside the savepoint. Patients, orders and the audit record are then written
    # with Core statements on the session's connection, in a savepoint of the
    # connection: the session has none of its objects changed inside it, so nothing
    # to undo when it is rolled back.
    session.flush()
    connection = session.connection()
    mapper = bind_mapper(mapper, connection)
    try:
        with savepoint(connection), warnings.collecting() as found:
            msg = read(row.raw)
            mapped = mapper(msg, received_at=row.received_at)
            if isinstance(mapped, AdtMessage):
                outcome = apply_adt(connection, mapped)
            else:
                outcome = apply_order(connection, mapped, row)
            audit.hl7_applied(connection, row, mapped)
    except HL7Error as exc:
        _record(connection, row, _failure(row, msg or exc.partial, exc, mapper))
        _log_refused(row, exc)
        return
    except (DataError, IntegrityError) as exc:
        # Not transient: the same message would fail the same way on every retry (a
        # value the database refuses). Fail it, keeping the reason, instead of looping.
        log.error("message %s (MSH-10 %s): the database refuses its data (%s)", row.id,
                  row.control_id, type(exc).__name__)
        _record(connection, row, _failure(row, msg, HL7Error(
            ErrorCode.APPLICATION_INTERNAL_ERROR,
            f"the database refused the data ({type(exc).__name__})"), mapper))
        return
    except SQLAlchemyError:
        row.attempts += 1  # kept if the caller's transaction goes on
        raise
    except Exception as exc:
        where = traceback.extract_tb(exc.__traceback__)[-1]
        # Class and code location only: an exception's text may quote patient data.
        log.error("message %s failed: %s at %s:%s", row.id, type(exc).__name__,
                  where.filename, where.lineno)
        _record(connection, row, _failure(row, msg, HL7Error(
            ErrorCode.APPLICATION_INTERNAL_ERROR,
            f"internal error ({type(exc).__name__}: {exc})"[:500]), mapper))
        return
    _record(connection, row, _success(row, msg, outcome, found, mapped))
    log.info("message %s (MSH-10 %s) processed", row.id, row.control_id)


def _log_refused(row: InboundMessage, exc: HL7Error) -> None:
    log.info("message %s (MSH-10 %s) refused: %s %s", row.id, row.control_id,
             exc.code, exc.location or "")


def _success(row: InboundMessage, msg: Message, outcome: list[str],
             found: list[HL7Warning], mapped: OrderMessage | AdtMessage) -> dict[str, Any]:
    found_warnings = merged_warnings(row, msg.warnings, found)
    result: dict[str, Any] = {
        "status": MessageStatus.PROCESSED.value, "outcome": "; ".join(outcome),
        "profile": mapped.profile[:64], "profile_version": mapped.profile_version,
        "error_code": None, "error_location": None, "error_text": None,
        "processed_at": datetime.now(UTC), "warnings": warnings.to_json(found_warnings),
        "warning_count": len(found_warnings)}
    if row.ack is None:
        result["ack"] = build_ack(msg, "AA", warnings=found_warnings)
        result["ack_code"] = "AA"
    return result


def merged_warnings(row: InboundMessage, read: list[HL7Warning],
                    found: list[HL7Warning]) -> list[HL7Warning]:
    """Every adjustment made to accept the message, kept on the row and sent in the
    ACK: a reused control id, those of reading it, those of mapping it. They are
    worked out again on each attempt, so reprocessing replaces the earlier list."""
    merged = [warnings.CONTROL_ID_REUSED] if row.control_id_reused else []
    merged += [w for w in [*read, *found] if w not in merged]
    return merged


def _failure(row: InboundMessage, msg: Message | None, error: HL7Error,
             mapper: Mapper) -> dict[str, Any]:
    deployed = mapper if isinstance(mapper, Deployed) else None
    result: dict[str, Any] = {
        "status": MessageStatus.FAILED.value, "error_code": error.code,
        # The profile and version that tried (the version even when no profile serves).
        "profile": deployed.profile_name(msg)[:64] if deployed is not None else "",
        "profile_version": deployed.version if deployed is not None else None,
        "error_location": str(error.location or ""), "error_text": error.text,
        "processed_at": datetime.now(UTC)}
    if row.ack is None:
        result["ack"] = build_ack(msg, error.ack_code, error)
        result["ack_code"] = error.ack_code
    return result


def _record(connection: Connection, row: InboundMessage, result: dict[str, Any]) -> None:
    """Write the result of an attempt (one more attempt counted) with one Core UPDATE
    of the row, and give the row object the values written as its stored state
    (``set_committed_value``): the caller reads them from it, and the ORM has nothing
    of the row left to flush."""
    values = _recorded(row, result)
    update_by_key(connection, _INBOUND, [(row.id, values)])
    _committed(row, values)


def _recorded(row: InboundMessage, result: dict[str, Any]) -> dict[str, Any]:
    return {**result, "attempts": row.attempts + 1, "updated_at": utcnow()}


def _committed(row: InboundMessage, values: dict[str, Any]) -> None:
    for name, value in values.items():
        set_committed_value(row, name, value)


def reset_for_reprocess(session: Session, row: InboundMessage) -> bool:
    """Put a failed (or processed) message back in the queue.

    An AA already sent stays the ACK replayed for duplicates; an AE/AR is dropped so
    that the processor stores the ACK of the new outcome. Returns False for rejected
    messages: they were refused at the door and would be refused again.
    """
    if row.status == MessageStatus.REJECTED.value:
        return False
    row.status = MessageStatus.RECEIVED.value
    if row.ack_code != "AA":
        row.ack = None
        row.ack_code = None
    return True
