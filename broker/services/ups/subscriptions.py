"""Subscriptions to UPS events and the events each subscriber is due (PS3.4 CC.2.2,
CC.2.3; PS3.18 11.10-11.12).

* Subscribing to one workitem (it must exist: 0xC307) gets that AE an initial State
  Report of its current state; subscribing again changes the deletion lock only.
* The Global Subscription (1.2.840.10008.5.1.4.34.5) covers every workitem, existing
  and future; the Filtered Global Subscription (...34.5.1) those matching its filter
  (the search's matching). Each sends an initial State Report of every workitem not
  yet COMPLETED or CANCELED that it covers.
* Unsubscribing from a global subscription also ends the AE's subscriptions to single
  workitems (PS3.4 CC.2.3.2, "Unsubscribe from the Global Subscription").
* Suspending the global subscription keeps the AE subscribed to the workitems it
  covers now and stops new ones from being added.

An AE receives the events of its subscriptions made after it subscribed, plus those
addressed to it (``recipient``), in id order: :func:`events_after`.
"""

from __future__ import annotations

from typing import Any

from pydicom.dataset import Dataset
from sqlalchemy import and_, delete, exists, func, or_, select
from sqlalchemy.orm import Session

from broker.domain import ups as rules
from broker.domain.ups import UPSEventType, UPSState, refusal
from broker.models import UPSDelivery, UPSEvent, UPSSubscription, UPSWorkitem
from broker.services.ups import events
from broker.services.ups.events import UPSEventRow
from broker.services.ups.search import matching_uids

GLOBAL_SUBSCRIPTION = "1.2.840.10008.5.1.4.34.5"
FILTERED_GLOBAL_SUBSCRIPTION = "1.2.840.10008.5.1.4.34.5.1"
GLOBAL_UIDS = (GLOBAL_SUBSCRIPTION, FILTERED_GLOBAL_SUBSCRIPTION)
OPEN_STATES = (UPSState.SCHEDULED.value, UPSState.IN_PROGRESS.value)


def _ae(ae_title: str) -> str:
    title = ae_title.strip()
    if not title or len(title) > 16 or "\\" in title:
        raise refusal(rules.INVALID_ATTRIBUTE_VALUE,
                      f"{ae_title!r} is not an AE title (1 to 16 characters)")
    return title


def _subscription(session: Session, ae: str, uid: str) -> UPSSubscription | None:
    return session.scalars(select(UPSSubscription).where(
        UPSSubscription.ae_title == ae, UPSSubscription.workitem_uid == uid)).first()


def _initial_reports(session: Session, ae: str, workitems: list[tuple[str, str, str]]) -> None:
    events.append(session, [
        events.row(uid, UPSEventType.STATE_REPORT, events.state_report(state, readiness),
                   cause=f"subscribed: {ae}", recipient=ae)
        for uid, state, readiness in workitems])


def subscribe(session: Session, ae_title: str, uid: str, *, deletion_lock: bool,
              filter: Dataset | None = None) -> None:
    """Subscribe ``ae_title`` to workitem ``uid`` or to a global subscription UID."""
    ae = _ae(ae_title)
    uid = uid.strip()
    if uid not in GLOBAL_UIDS:
        found = session.execute(select(UPSWorkitem.uid, UPSWorkitem.state,
                                       UPSWorkitem.input_readiness)
                                .where(UPSWorkitem.uid == uid)).first()
        if found is None:
            raise refusal(rules.NO_SUCH_WORKITEM, uid)
        current = _subscription(session, ae, uid)
        if current is not None:
            current.deletion_lock = deletion_lock
            return
        session.add(UPSSubscription(ae_title=ae, workitem_uid=uid, deletion_lock=deletion_lock))
        session.flush()
        _initial_reports(session, ae, [tuple(found)])  # type: ignore[list-item]
        return
    stored_filter = (filter.to_json_dict() if filter is not None and uid ==
                     FILTERED_GLOBAL_SUBSCRIPTION else None)
    current = _subscription(session, ae, uid)
    if current is None:
        session.add(UPSSubscription(ae_title=ae, workitem_uid=uid, deletion_lock=deletion_lock,
                                    filter=stored_filter))
    else:
        current.deletion_lock, current.filter, current.suspended = (
            deletion_lock, stored_filter, False)
    session.flush()
    covered = [tuple(r) for r in session.execute(
        select(UPSWorkitem.uid, UPSWorkitem.state, UPSWorkitem.input_readiness)
        .where(UPSWorkitem.state.in_(OPEN_STATES)).order_by(UPSWorkitem.id))]
    if stored_filter is not None and filter is not None:
        keep = matching_uids(session, filter, [str(c[0]) for c in covered])
        covered = [c for c in covered if c[0] in keep]
    _initial_reports(session, ae, covered)  # type: ignore[arg-type]


def unsubscribe(session: Session, ae_title: str, uid: str) -> None:
    """End a subscription (none: nothing to do); a global UID ends every subscription
    of the AE."""
    ae = _ae(ae_title)
    statement = delete(UPSSubscription).where(UPSSubscription.ae_title == ae)
    if uid.strip() not in GLOBAL_UIDS:
        statement = statement.where(UPSSubscription.workitem_uid == uid.strip())
    session.execute(statement)


def suspend_global(session: Session, ae_title: str) -> None:
    """Suspend the AE's global subscriptions: it stays subscribed to the workitems not
    yet final that they cover now, and gets no new ones."""
    ae = _ae(ae_title)
    globals_ = session.scalars(select(UPSSubscription).where(
        UPSSubscription.ae_title == ae, UPSSubscription.workitem_uid.in_(GLOBAL_UIDS),
        UPSSubscription.suspended.is_(False))).all()
    if not globals_:
        return
    have = set(session.scalars(select(UPSSubscription.workitem_uid).where(
        UPSSubscription.ae_title == ae)))
    open_uids = list(session.scalars(select(UPSWorkitem.uid).where(
        UPSWorkitem.state.in_(OPEN_STATES)).order_by(UPSWorkitem.id)))
    for sub in globals_:
        covered = open_uids
        if sub.filter is not None:
            keep = matching_uids(session, Dataset.from_json(sub.filter), open_uids)
            covered = [u for u in open_uids if u in keep]
        for uid in covered:
            if uid not in have:
                session.add(UPSSubscription(ae_title=ae, workitem_uid=uid,
                                            deletion_lock=sub.deletion_lock,
                                            created_at=sub.created_at))
                have.add(uid)
        sub.suspended = True
    session.flush()


def _event_row(row: UPSEvent) -> UPSEventRow:
    return UPSEventRow(row.id, row.workitem_uid, row.event_type_id,
                       Dataset.from_json(row.payload or {}))


def events_after(session: Session, event_id: int, ae_title: str,
                 limit: int = 100) -> list[UPSEventRow]:
    """The events ``ae_title`` is due after ``event_id`` (at most ``limit``, id order):
    those of workitems it is subscribed to, raised since it subscribed, and those
    addressed to it."""
    ae = ae_title.strip()
    E, S = UPSEvent, UPSSubscription
    subs = session.scalars(select(S).where(S.ae_title == ae, S.workitem_uid.in_(GLOBAL_UIDS),
                                           S.suspended.is_(False))).all()
    unfiltered = [s for s in subs if s.workitem_uid == GLOBAL_SUBSCRIPTION]
    filtered = [s for s in subs if s.workitem_uid == FILTERED_GLOBAL_SUBSCRIPTION]
    specific = exists(select(S.id).where(S.ae_title == ae, S.workitem_uid == E.workitem_uid,
                                         E.created_at >= S.created_at))
    broad: list[Any] = [specific]
    broad += [E.created_at >= s.created_at for s in unfiltered]
    broad += [E.created_at >= s.created_at for s in filtered]
    condition = or_(E.recipient == ae, and_(E.recipient.is_(None), or_(*broad)))
    out: list[UPSEventRow] = []
    after = event_id
    while len(out) < limit:
        page = session.scalars(select(E).where(E.id > after, condition)
                               .order_by(E.id).limit(limit)).all()
        if not page:
            break
        after = page[-1].id
        due = page
        if filtered and not unfiltered:
            due = _filter(session, ae, list(page), filtered)
        out += [_event_row(r) for r in due]
    return out[:limit]


def _filter(session: Session, ae: str, page: list[UPSEvent],
            filtered: list[UPSSubscription]) -> list[UPSEvent]:
    """Keep the events due through a specific subscription or addressed to the AE, and
    those of workitems matching a filtered global subscription's filter."""
    uids = list({r.workitem_uid for r in page})
    specific = set(session.scalars(select(UPSSubscription.workitem_uid).where(
        UPSSubscription.ae_title == ae, UPSSubscription.workitem_uid.in_(uids))))
    matching: set[str] = set()
    for sub in filtered:
        matching |= matching_uids(session, Dataset.from_json(sub.filter or {}), uids)
    return [r for r in page if r.recipient == ae or r.workitem_uid in specific
            or r.workitem_uid in matching]



def subscriber_ae_titles(session: Session) -> list[str]:
    """Every AE title with a subscription (global or to a workitem), for delivery."""
    return list(session.scalars(select(UPSSubscription.ae_title).distinct()
                                .order_by(UPSSubscription.ae_title)))


def delivered_up_to(session: Session, ae_title: str) -> int:
    """The id of the last event delivered to ``ae_title`` (0: none yet)."""
    found = session.get(UPSDelivery, ae_title.strip())
    return found.last_event_id if found is not None else 0


def record_delivery(session: Session, ae_title: str, event_id: int) -> None:
    """Remember that the events up to ``event_id`` reached ``ae_title`` (never moves
    back)."""
    ae = _ae(ae_title)
    found = session.get(UPSDelivery, ae, with_for_update=True)
    if found is None:
        session.add(UPSDelivery(ae_title=ae, last_event_id=event_id))
    elif event_id > found.last_event_id:
        found.last_event_id = event_id


def latest_event_id(session: Session) -> int:
    """The id of the newest event (0: none): where a deliverer that has sent nothing
    yet starts, so a new channel does not replay history."""
    return int(session.scalar(select(func.coalesce(func.max(UPSEvent.id), 0))) or 0)
