"""Where N-EVENT-REPORT delivery stands per subscriber AE (PS3.4 CC.2.4), kept in the
database so that delivery resumes after a restart at the first event not yet
answered, and leased so that two broker processes never send one AE's events at once.

Delivery is at least once: the position moves after the subscriber answered an event
report, so a crash between its answer and the commit sends that report again.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from broker.models import UPSEventDelivery

D = UPSEventDelivery


def position(session: Session, ae_title: str) -> int:
    """The id of the last event ``ae_title`` answered (0 when none), read without a
    lease: to learn whether anything waits before writing anything."""
    return int(session.scalar(select(D.last_event_id).where(D.ae_title == ae_title)) or 0)


def take(session: Session, ae_title: str, owner: str, lease_seconds: float) -> int | None:
    """Lease ``ae_title``'s delivery to ``owner`` for ``lease_seconds`` and return the
    id of the last event it answered (0 for an AE new to delivery); None while another
    owner's lease runs."""
    now = datetime.now(UTC)
    until = now + timedelta(seconds=lease_seconds)
    taken = session.execute(
        update(D).where(D.ae_title == ae_title,
                        or_(D.owner == owner, D.owner == "", D.lease_until.is_(None),
                            D.lease_until < now))
        .values(owner=owner, lease_until=until)).rowcount  # type: ignore[attr-defined]
    if not taken:
        if session.get(D, ae_title) is not None:
            return None  # leased elsewhere
        try:
            with session.begin_nested():
                session.add(D(ae_title=ae_title, last_event_id=0, owner=owner,
                              lease_until=until, failures=0, last_error=""))
        except IntegrityError:  # another process created it meanwhile: its lease
            return None
    return int(session.scalar(select(D.last_event_id).where(D.ae_title == ae_title)) or 0)


def delivered(session: Session, ae_title: str, owner: str, event_id: int,
              lease_seconds: float) -> None:
    """The subscriber answered every event up to ``event_id``; the lease runs on."""
    now = datetime.now(UTC)
    session.execute(update(D).where(D.ae_title == ae_title, D.owner == owner,
                                    D.last_event_id < event_id)
                    .values(last_event_id=event_id, failures=0, last_error="",
                            delivered_at=now,
                            lease_until=now + timedelta(seconds=lease_seconds)))


def failed(session: Session, ae_title: str, owner: str, error: str) -> int:
    """A delivery attempt failed (the subscriber could not be reached, or did not
    answer); returns how many attempts in a row have."""
    session.execute(update(D).where(D.ae_title == ae_title, D.owner == owner)
                    .values(failures=D.failures + 1, last_error=error[:200]))
    return int(session.scalar(select(D.failures).where(D.ae_title == ae_title)) or 0)


def release(session: Session, ae_title: str, owner: str) -> None:
    """Give the lease up (the process stops)."""
    session.execute(update(D).where(D.ae_title == ae_title, D.owner == owner)
                    .values(owner="", lease_until=None))
