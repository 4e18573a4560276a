"""The UPS use cases (PS3.4 Annex CC; UPS-RS, PS3.18 11), what both UPS adapters call:
the DICOMweb routes and the UPS DIMSE handlers. Each method is one transaction around
one call of :mod:`broker.services.ups`; refusals raise
:class:`broker.domain.ups.UPSError` with nothing changed.

After a commit that changed an order-born workitem's step, the order status messages
it queued (IP, CM, DC: as for an MPPS) are delivered; and every callable registered
with :meth:`UPSUseCases.on_events` is told that new ``ups_event`` rows may be waiting
(the in-process event deliverers: WebSocket channel, N-EVENT-REPORT). Events written
by other processes (an order applied by a worker) are found by the deliverers' own
reading of :meth:`UPSUseCases.events_after`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

from pydicom.dataset import Dataset
from sqlalchemy.orm import Session, sessionmaker

from broker.audit import hooks as audit
from broker.config import Settings
from broker.db import unit_of_work
from broker.services import ups
from broker.services.ups import SearchResult, UPSEventRow
from broker.services.ups.workitems import audit_subjects

log = logging.getLogger(__name__)

T = TypeVar("T")


class UPSUseCases:
    """UPS operations on one database. ``start_delivery`` dispatches outbox delivery
    (:meth:`broker.application.UseCases.start_delivery`)."""

    def __init__(self, factory: sessionmaker[Session], settings: Settings,
                 start_delivery: Callable[[], None]) -> None:
        self._factory = factory
        self._settings = settings
        self._start_delivery = start_delivery
        self._listeners: list[Callable[[], None]] = []

    def on_events(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` (no arguments, must not block) after each commit that
        appended UPS events."""
        self._listeners.append(listener)

    def _changed(self) -> None:
        for listener in list(self._listeners):
            try:
                listener()
            except Exception:
                log.exception("UPS event listener failed")

    def _write(self, body: Callable[[Session], T], *, report_uid: str = "") -> T:
        """Run ``body`` in one transaction; with ``report_uid``, queue the order status
        messages of that workitem's step in it. Delivery and listeners after commit."""
        reported: list[str] = []
        with unit_of_work(self._factory) as session:
            result = body(session)
            if report_uid:
                reported = ups.report(session, self._settings, report_uid)
        if reported:
            self._start_delivery()
        self._changed()
        return result

    # -- reading -----------------------------------------------------------------------

    def search(self, query: Dataset, *, limit: int | None, offset: int = 0,
               calling: str = "", include_all: bool = False,
               as_json: bool = False) -> SearchResult:
        """Search Workitems / UPS C-FIND (:func:`broker.services.ups.search`)."""
        with self._factory() as session:
            return ups.search(session, query, limit=limit, offset=offset, calling=calling,
                              include_all=include_all, as_json=as_json)

    def retrieve(self, uid: str) -> Dataset:
        """Retrieve Workitem / N-GET (:func:`broker.services.ups.retrieve`)."""
        with self._factory() as session:
            return ups.retrieve(session, uid)

    def claimed_as(self, uid: str) -> str:
        """The AE title workitem ``uid`` was claimed as over UPS-RS
        (:func:`broker.services.ups.claimed_as`)."""
        with self._factory() as session:
            return ups.claimed_as(session, uid)

    def events_after(self, event_id: int, ae_title: str, limit: int = 100
                     ) -> list[UPSEventRow]:
        """The events ``ae_title`` is due after ``event_id``
        (:func:`broker.services.ups.events_after`)."""
        with self._factory() as session:
            return ups.events_after(session, event_id, ae_title, limit)

    def latest_event_id(self) -> int:
        """The newest event's id: where a new event channel starts."""
        with self._factory() as session:
            return ups.latest_event_id(session)

    def subscribers(self) -> list[str]:
        """AE titles with a subscription (:func:`broker.services.ups.subscriber_ae_titles`)."""
        with self._factory() as session:
            return ups.subscriber_ae_titles(session)

    def delivered_up_to(self, ae_title: str) -> int:
        """The last event id delivered to ``ae_title`` (N-EVENT-REPORT resumes after it)."""
        with self._factory() as session:
            return ups.delivered_up_to(session, ae_title)

    def record_delivery(self, ae_title: str, event_id: int) -> None:
        """Remember the events up to ``event_id`` reached ``ae_title``."""
        with unit_of_work(self._factory) as session:
            ups.record_delivery(session, ae_title, event_id)

    # -- changing ----------------------------------------------------------------------

    @staticmethod
    def _audit(session: Session, uid: str, by: str, address: str, action: str,
               what: str) -> None:
        """The Procedure Record audit event (PS3.15 A.5.3.11) of a workitem change, in
        the change's transaction."""
        patient_id, study_uid = audit_subjects(session, uid)
        audit.workitem_record(session, by, address, action, f"UPS {uid} {what}",
                              patient_id, study_uid)

    def create(self, dataset: Dataset, *, uid: str | None = None, by: str,
               address: str = "") -> str:
        """Create Workitem / N-CREATE; returns the workitem's UID. Audited as a
        Procedure Record created (``address``: the requestor's network address)."""
        def body(session: Session) -> str:
            created = ups.create(session, dataset, uid=uid, by=by)
            self._audit(session, created, by, address, "C", "created")
            return created
        return self._write(body)

    def update(self, uid: str, transaction_uid: str, changes: Dataset, *,
               by: str) -> list[str]:
        """Update Workitem / N-SET; returns warnings."""
        return self._write(lambda s: ups.update(s, uid, transaction_uid, changes, by=by))

    def change_state(self, uid: str, state: str, transaction_uid: str, *, by: str,
                     address: str = "", claimed_as: str = "") -> int:
        """Change Workitem State / N-ACTION 1; returns 0 or the warning status (0xB304,
        0xB306). Claiming, completing or cancelling an order-born workitem moves its
        step and reports the order status to the placer. Audited as a Procedure Record
        modified (a warning status changed nothing and is not audited). A claim records
        ``claimed_as``, the AE title a UPS-RS performer claims as."""
        def body(session: Session) -> int:
            status = ups.change_state(session, uid, state, transaction_uid, by=by,
                                      claimed_as=claimed_as)
            if status == 0:
                self._audit(session, uid, by, address, "U", f"state {state}")
            return status
        return self._write(body, report_uid=uid)

    def request_cancellation(self, uid: str, *, by: str, reason: str = "",
                             contact: str = "", address: str = "") -> int:
        """Request Cancellation / N-ACTION 2; returns 0 or the warning 0xB304. Audited
        as a Procedure Record modified (the request is recorded on the workitem)."""
        def body(session: Session) -> int:
            status = ups.request_cancellation(session, uid, by=by, reason=reason,
                                              contact=contact)
            if status == 0:
                self._audit(session, uid, by, address, "U", "cancellation requested")
            return status
        return self._write(body, report_uid=uid)

    def subscribe(self, ae_title: str, uid: str, *, deletion_lock: bool,
                  filter: Dataset | None = None) -> None:
        """Subscribe / N-ACTION 3 (workitem UID or a global subscription UID)."""
        self._write(lambda s: ups.subscribe(s, ae_title, uid, deletion_lock=deletion_lock,
                                            filter=filter))

    def unsubscribe(self, ae_title: str, uid: str) -> None:
        """Unsubscribe / N-ACTION 4."""
        self._write(lambda s: ups.unsubscribe(s, ae_title, uid))

    def suspend_global(self, ae_title: str) -> None:
        """Suspend Global Subscription / N-ACTION 5."""
        self._write(lambda s: ups.suspend_global(s, ae_title))
