"""UPS Event delivery over DIMSE: N-EVENT-REPORTs (PS3.4 CC.2.4) to the subscribers of
:attr:`~broker.config.Settings.ups_event_destinations` (``MWLB_UPS_EVENT_DESTINATIONS``).

One thread per broker process reads, for each configured AE, the UPS events it is due
after the last one it answered (``events_after``, the ``ups_event`` table), opens an
association to it and sends them in order. The association proposes the UPS Event SOP
Class with SCP/SCU Role Selection (PS3.7 D.3.3.4) asking for the SCP role only: the
broker, the association requestor here, is the SCP of UPS Event (it sends the
N-EVENT-REPORTs); a subscriber that answers without the item gets the reports all the
same. Each N-EVENT-REPORT-RQ names the UPS Push SOP Class and the workitem (Affected
SOP Class / Instance UID: PS3.4 CC.2.4.3 "the Affected SOP Class UID (0000,0002) in the
N-EVENT-REPORT request shall be the UID of the UPS Push SOP Class", the class of every
workitem, PS3.4 CC.3.1, over the presentation context of UPS Event, CC.3.1.1; the
WebSocket channel of UPS-RS, :mod:`broker.web.ups_events`, sends the same), with the
Event Type ID (1 State Report, 2
Cancel Requested, 3 Progress Report, 4 SCP Status Change, 5 Assigned) and its Event
Information.

Delivery is at least once and survives a restart: where it stands per AE is kept in
the database (``delivered_up_to`` / ``record_delivery`` of the UPS use cases), moved
after each answer. Any answer counts as delivered (a failure status is logged: sending
it again would get the same answer); no answer (the AE cannot be reached, aborts, times
out) leaves the position, and the AE is tried again after 1, 2, 4 ... seconds, at most
a minute. With several broker nodes one sends at a time
(:class:`broker.services.ups_delivery.SenderLock`). The thread wakes when a UPS use
case of this process commits events and polls otherwise (events of other processes:
an order applied by a worker).
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Sequence
from typing import Any, Protocol

from pynetdicom import AE
from pynetdicom.presentation import build_role
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from broker.config import EventDestination
from broker.dicom.ups_scp import UPS_EVENT, UPS_PUSH
from broker.services.ups_delivery import SenderLock

log = logging.getLogger(__name__)

PAGE = 100  # events read and sent per association at most
POLL_SECONDS = 1.0
MAX_BACKOFF = 60.0

class Deliveries(Protocol):
    """The UPS use cases the sender calls (:class:`broker.application.UPSUseCases`)."""

    def events_after(self, event_id: int, ae_title: str, limit: int = 100
                     ) -> Sequence[Any]: ...

    def delivered_up_to(self, ae_title: str) -> int: ...

    def record_delivery(self, ae_title: str, event_id: int) -> None: ...


class EventReportSender:
    """Sends the UPS events due to each of ``destinations`` (see the module docstring),
    through ``ups``; ``engine`` is the database the sender lock is taken on."""

    def __init__(self, ae_title: str, destinations: Sequence[EventDestination],
                 ups: Deliveries, engine: Engine, *, transfer_syntaxes: Sequence[str],
                 timeout: float = 10.0, poll: float = POLL_SECONDS) -> None:
        self._destinations = list(destinations)
        self._ups = ups
        self._lock = SenderLock(engine)
        self._poll = poll
        self._ae = AE(ae_title=ae_title)
        self._ae.add_requested_context(UPS_EVENT, list(transfer_syntaxes))
        self._ae.acse_timeout = self._ae.dimse_timeout = self._ae.network_timeout = timeout
        self._role = build_role(UPS_EVENT, scu_role=False, scp_role=True)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._retry_at: dict[str, float] = {}
        self._failures: dict[str, int] = {}
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
        self._lock.release()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            if not self._lock.held():  # another broker node sends
                self._wake.wait(self._poll)
                continue
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
        events = list(self._ups.events_after(self._ups.delivered_up_to(ae_title), ae_title,
                                             PAGE))
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
                    self._ups.record_delivery(ae_title, int(event.id))
                    answered += 1
        finally:
            if assoc.is_established:
                assoc.release()
        if error:
            failures = self._failures[ae_title] = self._failures.get(ae_title, 0) + 1
            delay = min(2.0 ** (failures - 1), MAX_BACKOFF)
            self._retry_at[ae_title] = time.monotonic() + delay
            log.warning("UPS event reports to %s: %s; again in %.0f s", ae_title, error, delay)
        else:
            self._retry_at.pop(ae_title, None)
            self._failures.pop(ae_title, None)
            if len(events) == PAGE:
                self._wake.set()  # more may be waiting
        if answered:
            log.info("UPS event reports to %s: %d sent", ae_title, answered)
        return answered
