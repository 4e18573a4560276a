"""Deliver the outbox to one EHR destination over MLLP, in sequence order.

Contract (HL7 v2.5.1 2.9.2 original-mode acknowledgement):

* Messages go out one at a time, lowest sequence first, over one kept-open connection.
* AA (or CA): ``sent``; the ACK is stored. AE (or CE): ``failed`` and visible (the EHR
  read the message and refused it; sending it again would not help); the queue goes on
  with the next message. AR, a wrong MSA-2, no answer within ``outbound_ack_timeout``
  or no connection: the message stays ``pending``, is retried with exponential
  back-off (1, 2, 4 ... s, capped at ``outbound_retry_max_seconds``) with the same
  MSH-10, and nothing behind it is sent before it: order is kept per destination.
* One deliverer per destination at a time (PostgreSQL session advisory lock; in
  embedded mode one outbound thread runs them all).
"""

from __future__ import annotations

import hashlib
import logging
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session, sessionmaker

from broker.config import Destination, Settings
from broker.db import unit_of_work
from broker.hl7.ack import ack_code_of
from broker.hl7.client import MLLPClient
from broker.models import OutboundMessage, OutboundStatus

log = logging.getLogger(__name__)


def _lock_key(destination: str) -> int:
    digest = hashlib.blake2b(f"outbound:{destination}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def _msa_control_id(ack: bytes) -> str:
    for segment in ack.replace(b"\n", b"\r").split(b"\r"):
        if segment.startswith(b"MSA"):
            fields = segment.split(segment[3:4])
            return fields[2].decode("ascii", "replace") if len(fields) > 2 else ""
    return ""


def _as_utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def next_due(session: Session, destination: str) -> OutboundMessage | None:
    return session.scalars(select(OutboundMessage).where(
        OutboundMessage.destination == destination,
        OutboundMessage.status == OutboundStatus.PENDING.value,
    ).order_by(OutboundMessage.sequence).limit(1)).first()


def deliver(factory: sessionmaker[Session], settings: Settings, name: str) -> float | None:
    """Send what is due for destination ``name``. Returns the seconds until the head
    of the queue is due again (after a failed attempt), or None when the queue is empty
    or another process is delivering.

    On PostgreSQL one process at a time delivers to a destination (an advisory lock). A
    delivery turned away while another is finishing relies on that one: after
    unlocking, the finishing delivery looks once more for a due message and goes on if
    one was queued meanwhile, so nothing waits for the sweeper."""
    dest = next((d for d in settings.outbound_destinations if d.name == name), None)
    if dest is None:
        log.warning("outbound: destination %s is not configured", name)
        return None
    while True:
        with factory() as lock_session:
            postgresql = lock_session.get_bind().dialect.name == "postgresql"
            if postgresql:
                got = lock_session.scalar(select(func.pg_try_advisory_lock(_lock_key(name))))
                if not got:
                    return None
            try:
                after = _deliver(factory, settings, dest)
            finally:
                if postgresql:
                    lock_session.execute(text("SELECT pg_advisory_unlock(:k)"),
                                         {"k": _lock_key(name)})
                    lock_session.commit()
        if after is not None or not postgresql or not _due(factory, name):
            return after


def _due(factory: sessionmaker[Session], name: str) -> bool:
    """Whether a message for ``name`` is due now."""
    with factory() as session:
        row = next_due(session, name)
        return row is not None and _as_utc(row.next_attempt_at) <= datetime.now(UTC)


def _deliver(factory: sessionmaker[Session], settings: Settings,
             dest: Destination) -> float | None:
    client: MLLPClient | None = None
    try:
        while True:
            with factory() as session:
                row = next_due(session, dest.name)
                if row is None:
                    return None
                wait = (_as_utc(row.next_attempt_at) - datetime.now(UTC)).total_seconds()
                if wait > 0:
                    return wait
                pk, payload, control_id = row.id, row.payload, row.control_id
            ack, error = None, ""
            try:
                if client is None:
                    client = MLLPClient(dest.host, dest.port, timeout=settings.outbound_ack_timeout)
                    client.connect()
                ack = client.send(payload)
            except (OSError, ConnectionError) as exc:
                error = f"{type(exc).__name__}: {exc}"[:400]
                if client is not None:
                    client.close()
                client = None
            delay = _record(factory, settings, pk, control_id, ack, error)
            if delay is not None:
                return delay
    finally:
        if client is not None:
            client.close()


def _record(factory: sessionmaker[Session], settings: Settings, pk: int, control_id: str,
            ack: bytes | None, error: str) -> float | None:
    """Store the outcome of one attempt; returns the back-off when it must be retried."""
    code = ack_code_of(ack) if ack is not None else ""
    if ack is not None and _msa_control_id(ack) != control_id:
        code, error = "", f"ACK for another message (MSA-2 {_msa_control_id(ack)!r})"
    with unit_of_work(factory) as session:
        row = session.get(OutboundMessage, pk)
        assert row is not None
        row.attempts += 1
        row.ack = ack
        row.ack_code = code or None
        now = datetime.now(UTC)
        if code in ("AA", "CA"):
            row.status, row.sent_at, row.last_error = OutboundStatus.SENT.value, now, ""
            log.info("outbound %s (MSH-10 %s) to %s: %s", row.id, control_id,
                     row.destination, code)
            return None
        if code in ("AE", "CE"):
            row.status, row.last_error = OutboundStatus.FAILED.value, f"{code} from the EHR"
            log.warning("outbound %s (MSH-10 %s) to %s refused: %s", row.id, control_id,
                        row.destination, code)
            return None
        delay = min(2.0 ** (row.attempts - 1), settings.outbound_retry_max_seconds)
        row.next_attempt_at = now + timedelta(seconds=delay)
        row.last_error = error or (f"{code} from the EHR" if code else "no ACK")
        log.info("outbound %s to %s: %s; retry in %.1fs", row.id, row.destination,
                 row.last_error, delay)
        return delay


def resend(session: Session, message_pk: int) -> OutboundMessage | None:
    """Queue a message again (same MSH-10), due now; None when it does not exist."""
    row = session.get(OutboundMessage, message_pk)
    if row is None:
        return None
    row.status = OutboundStatus.PENDING.value
    row.next_attempt_at = datetime.now(UTC)
    row.last_error = ""
    return row


def due_destinations(session: Session) -> list[str]:
    """Destinations with a pending message due now (for the sweeper)."""
    return list(session.scalars(select(OutboundMessage.destination).where(
        OutboundMessage.status == OutboundStatus.PENDING.value,
        OutboundMessage.next_attempt_at <= datetime.now(UTC)).distinct()))
