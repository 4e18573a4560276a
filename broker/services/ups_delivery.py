"""One broker process at a time sends the UPS N-EVENT-REPORTs (PS3.4 CC.2.4): with
several nodes on one PostgreSQL database, the sender holding a session advisory lock
sends, the others wait and take over when its connection ends (the process stopped
or died). On SQLite there is one process, which always sends.

Where delivery stands per subscriber AE is the UPS service's (``ups_delivery`` rows,
:func:`broker.services.ups.delivered_up_to` / ``record_delivery``).
"""

from __future__ import annotations

import logging

from sqlalchemy import Connection, Engine, func, select
from sqlalchemy.exc import SQLAlchemyError

log = logging.getLogger(__name__)

SENDER_LOCK = "mwlb:ups-event-sender"


class SenderLock:
    """The right to send UPS event reports, held on a connection of its own."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._connection: Connection | None = None
        self._held = engine.dialect.name != "postgresql"

    def held(self) -> bool:
        """Whether this process sends now (takes the lock when it is free)."""
        if self._engine.dialect.name != "postgresql":
            return True
        try:
            if self._connection is None:
                self._connection = self._engine.connect()
                self._held = False
            elif self._held:
                self._connection.execute(select(1)).scalar()  # still ours?
                self._connection.commit()
                return True
            key = func.hashtextextended(SENDER_LOCK, 0)
            self._held = bool(self._connection.execute(
                select(func.pg_try_advisory_lock(key))).scalar())
            self._connection.commit()
            if self._held:
                log.info("this process sends the UPS event reports")
        except SQLAlchemyError as exc:  # the connection broke: the lock went with it
            log.warning("UPS event sender lock: %s", type(exc).__name__)
            self.release()
        return self._held

    def release(self) -> None:
        if self._connection is not None:
            try:  # closed, not returned to the pool: the session ends, the lock is free
                self._connection.invalidate()
                self._connection.close()
            except SQLAlchemyError:
                pass
        self._connection = None
        self._held = self._engine.dialect.name != "postgresql"
