"""UPS Event delivery over DIMSE: N-EVENT-REPORTs (PS3.4 CC.2.4) to the subscribers of
:attr:`~broker.config.Settings.ups_event_destinations` (``MWLB_UPS_EVENT_DESTINATIONS``).

One thread per broker process reads, for each configured AE, the UPS events it is due
after the last one it answered (``events_after``, the ``ups_event`` table), opens an
association to it and sends them in order. The association proposes the UPS Event SOP
Class with SCP/SCU Role Selection (PS3.7 D.3.3.4) asking for the SCP role only: the
broker, the association requestor here, is the SCP of UPS Event (it sends the
N-EVENT-REPORTs); a subscriber that answers without the item gets the reports all the
same. Each N-EVENT-REPORT-RQ names the UPS Push SOP Class and the workitem (Affected
SOP Class / Instance UID, PS3.4 CC.2.4.1), with the Event Type ID (1 State Report, 2
Cancel Requested, 3 Progress Report, 4 SCP Status Change, 5 Assigned) and its Event
Information.

Delivery is at least once and survives a restart: where it stands per AE is kept in
the database (:mod:`broker.services.ups_delivery`), moved after each answer. Any answer
counts as delivered (a failure status is logged: sending it again would get the same
answer); no answer (the AE cannot be reached, aborts, times out) leaves the position,
and the AE is tried again after 1, 2, 4 ... seconds, at most a minute. Its lease keeps
two broker processes from sending one AE's events at once. The thread wakes when a UPS
use case of this process commits events and polls otherwise (events of other
processes: an order applied by a worker).
"""

from __future__ import annotations

import itertools
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from pynetdicom import AE
from pynetdicom.presentation import build_role
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from broker.config import EventDestination
from broker.db import unit_of_work
from broker.dicom.ups_scp import UPS_EVENT, UPS_PUSH
from broker.services import ups_delivery

log = logging.getLogger(__name__)

PAGE = 100  # events read and sent per association at most
LEASE_SECONDS = 60.0
POLL_SECONDS = 1.0
MAX_BACKOFF = 60.0

EventsAfter = Callable[[int, str, int], Sequence[Any]]


class EventReportSender:
    """Sends the UPS events due to each of ``destinations`` (see the module docstring).
    ``events_after(event_id, ae_title, limit)`` reads them (:meth:`UPSUseCases.events_after`),
    ``factory`` opens the sessions of the delivery positions."""

    def __init__(self, ae_title: str, destinations: Sequence[EventDestination],
                 factory: sessionmaker[Session], events_after: EventsAfter, *,
                 transfer_syntaxes: Sequence[str], timeout: float = 10.0,
                 poll: float = POLL_SECONDS) -> None:
        self._destinations = list(destinations)
        self._factory = factory
        self._events_after = events_after
        self._poll = poll
        self._owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"[:100]
        self._ae = AE(ae_title=ae_title)
        self._ae.add_requested_context(UPS_EVENT, list(transfer_syntaxes))
        self._ae.acse_timeout = self._ae.dimse_timeout = self._ae.network_timeout = timeout
        self._role = build_role(UPS_EVENT, scu_role=False, scp_role=True)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._retry_at: dict[str, float] = {}
        self._thread = threading.Thread(target=self._run, name="mwl-ups-events", daemon=True)

    def start(self) -> None:
        self._thread.start()
        log.info("UPS event reports to %s", ", ".join(d.ae_title for d in self._destinations))

    def wake(self) -> None:
        """New events may be waiting (called after a commit; never blocks)."""
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(30)
        try:
            with unit_of_work(self._factory) as session:
                for dest in self._destinations:
                    ups_delivery.release(session, dest.ae_title, self._owner)
        except SQLAlchemyError as exc:
            log.warning("UPS event leases not released: %s", type(exc).__name__)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            for dest in self._destinations:
                if self._stop.is_set():
                    return
                if self._retry_at.get(dest.ae_title, 0.0) > time.monotonic():
                    continue
                try:
                    self.deliver(dest)
                except SQLAlchemyError as exc:
                    log.warning("UPS event delivery to %s: database error %s", dest.ae_title,
                                type(exc).__name__)
                except Exception:  # never let the thread die
                    log.exception("UPS event delivery to %s failed", dest.ae_title)
            self._wake.wait(self._poll)

    def deliver(self, dest: EventDestination) -> int:
        """Send ``dest`` the events it is due (one page); returns how many it answered."""
        ae_title = dest.ae_title
        with self._factory() as session:  # idle: reads only
            seen = ups_delivery.position(session, ae_title)
        if not self._events_after(seen, ae_title, 1):
            return 0
        with unit_of_work(self._factory) as session:
            position = ups_delivery.take(session, ae_title, self._owner, LEASE_SECONDS)
        if position is None:
            return 0  # another broker process sends to it
        events = list(self._events_after(position, ae_title, PAGE))
        if not events:
            return 0
        answered = 0
        error = ""
        assoc = self._ae.associate(dest.host, dest.port, ae_title=ae_title,
                                   ext_neg=[self._role])
        try:
            if not assoc.is_established:
                error = "association rejected or aborted" if assoc.is_rejected or \
                    assoc.is_aborted else f"{dest.host}:{dest.port} not reachable"
            else:
                message_ids = itertools.count(1)
                for event in events:
                    rsp, _reply = assoc.send_n_event_report(
                        event.payload, int(event.event_type_id), UPS_PUSH,
                        event.workitem_uid, msg_id=next(message_ids), meta_uid=UPS_EVENT)
                    code = rsp.get("Status") if rsp is not None else None
                    if code is None:
                        error = "no N-EVENT-REPORT response"
                        break
                    if code:
                        log.warning("UPS event %d to %s answered 0x%04X", event.id, ae_title,
                                    int(code))
                    with unit_of_work(self._factory) as session:
                        ups_delivery.delivered(session, ae_title, self._owner, int(event.id),
                                               LEASE_SECONDS)
                    answered += 1
        finally:
            if assoc.is_established:
                assoc.release()
        if error:
            with unit_of_work(self._factory) as session:
                failures = ups_delivery.failed(session, ae_title, self._owner, error)
            delay = min(2.0 ** max(failures - 1, 0), MAX_BACKOFF)
            self._retry_at[ae_title] = time.monotonic() + delay
            log.warning("UPS event reports to %s: %s; again in %.0f s", ae_title, error, delay)
        else:
            self._retry_at.pop(ae_title, None)
            if len(events) == PAGE:
                self._wake.set()  # more may be waiting
        if answered:
            log.info("UPS event reports to %s: %d sent", ae_title, answered)
        return answered
