"""Applying an inbound message in the transaction that stores it: the row and its
outcome share one commit (one fsync), and the ACK built from the outcome is sent after
that commit (an original-mode AA means the receiving application accepted the
message, HL7 v2.5.1 2.9.2). Used by the group-commit writer
(:class:`broker.services.message_store.MessageStoreWriter`) when the processing runs in
the same process as the listener (embedded mode, application ACK mode).

Contract, for a message the writer has just stored, inside its transaction:

* Per-patient arrival order, as :func:`broker.services.processing.process_through`
  keeps it: under the patient's ordering lock, a message whose ordering key has an
  earlier message still ``received`` is not applied here. It is committed
  ``received`` and left to the dispatcher, which applies the earlier ones first.
* Otherwise it is applied by :func:`broker.services.processing.apply_message` inside a
  savepoint: status, outcome and ACK as the processor records them (a content error
  is recorded ``failed`` with its AE/AR). An exception that escapes it (a transient
  database error, an unexpected error) rolls back that savepoint only: the raw message
  is committed ``received`` and left to the dispatcher, and is never lost. On SQLite
  the savepoint ``apply_message`` takes for its writes is enough: a statement that
  fails there undoes its own changes and leaves the transaction open ("Response To
  Errors Within A Transaction"), where a PostgreSQL transaction would refuse every
  later statement until rolled back to a savepoint of its own.
* The messages of one group commit are mapped with one set of profiles: the version
  in force, read in the writer's transaction before its first message is applied
  (:meth:`broker.mapping.deployed.DeployedMappings.current`), then kept for the group.
* The message as the listener parsed it is applied (``message``), not parsed again:
  the same bytes read with the same options.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, make_transient_to_detached

from broker.hl7.message import Message, parse
from broker.models import InboundMessage, MessageStatus
from broker.services.message_store import Applied
from broker.services.processing import (
    Mapper,
    MapperSource,
    Reader,
    apply_message,
    bind_mapper,
    lock_key,
)

log = logging.getLogger(__name__)

# Is an earlier message of this ordering key still waiting to be applied? Driver SQL
# on the writer's cursor: through the ORM session it cost a hundred times more than
# the indexed lookup itself. ``{mark}``: the driver's placeholder.
EARLIER_PENDING = ("SELECT 1 FROM inbound_message WHERE ordering_key = {mark} "
                   f"AND status = '{MessageStatus.RECEIVED.value}' AND id < {{mark}} LIMIT 1")


class ApplyAtReceipt:
    """Applies one just-stored message in the caller's session (see the module
    contract); returns its outcome, or None when it is left to the dispatcher."""

    def __init__(self, mapper: MapperSource, *, read: Reader = parse) -> None:
        self.mapper = mapper
        self.read = read
        self._earlier_sql: dict[str, str] = {}  # by driver placeholder style
        # The mapper of the writer's current group (its session), read once per group.
        self._group: tuple[Session, Mapper] | None = None

    def _mapper_for(self, session: Session) -> Mapper:
        group = self._group
        if group is None or group[0] is not session:
            group = self._group = (session, bind_mapper(self.mapper, session.connection()))
        return group[1]

    def __call__(self, session: Session, pk: int, values: dict[str, Any], *,
                 message: Message | None = None) -> Applied | None:
        mapper = self._mapper_for(session)
        key = values["ordering_key"]
        if key:
            lock_key(session, key)
            if self._earlier_pending(session, key, pk):
                return None
        row = InboundMessage(id=pk, processed_at=None, outcome=None, **values)
        make_transient_to_detached(row)  # the row as just inserted, without reading it
        session.add(row)
        raw, read = values["raw"], self.read
        if message is not None:
            def read(data: bytes) -> Message:
                return message if data is raw else self.read(data)
        savepoint: contextlib.AbstractContextManager[Any] = (
            contextlib.nullcontext() if session.get_bind().dialect.name == "sqlite"
            else session.begin_nested())
        try:
            with savepoint:
                apply_message(session, row, mapper, read=read)
                session.flush()
        except Exception as exc:
            session.expunge(row)
            if not self._still_stored(session, pk):
                raise  # the whole transaction is gone: the writer stores the raw messages
            log.warning("message %s stored, not applied at receipt (%s): left to the "
                        "dispatcher", pk, type(exc).__name__)
            return None
        return Applied(row.status, row.ack)

    def _earlier_pending(self, session: Session, key: str, pk: int) -> bool:
        connection = session.connection()
        style = connection.dialect.paramstyle
        sql = self._earlier_sql.get(style)
        if sql is None:
            sql = self._earlier_sql[style] = EARLIER_PENDING.format(
                mark="?" if style == "qmark" else "%s")
        cursor = connection.connection.cursor()
        try:
            cursor.execute(sql, (key, pk))
            return cursor.fetchone() is not None
        finally:
            cursor.close()

    @staticmethod
    def _still_stored(session: Session, pk: int) -> bool:
        """Whether the transaction still holds the stored row after a failure. SQLite
        rolls the whole transaction back on some errors (RAISE(ROLLBACK) in a trigger,
        a full disk, an I/O error; "Response To Errors Within A Transaction") and then
        runs later statements, COMMIT included, outside of any: the row is gone and the
        commit would keep nothing. A PostgreSQL transaction in the failed state refuses
        the query."""
        try:
            return session.scalar(select(InboundMessage.id)
                                  .where(InboundMessage.id == pk)) is not None
        except Exception:
            return False
