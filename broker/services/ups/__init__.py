"""Unified Procedure Step workitems (PS3.4 Annex CC; UPS-RS, PS3.18 11): the service
both UPS adapters call (through the application layer), the DICOMweb one and the DIMSE
one. Plain functions taking an SQLAlchemy Session first, run in the caller's
transaction; refusals raise :class:`broker.domain.ups.UPSError` (DIMSE status, PS3.18
HTTP status, words) with nothing changed; every change appends its ``ups_event`` rows.

The workitems of orders are written by the order apply path
(:func:`~broker.services.ups.from_orders.workitems_for_steps`); claims, completions and
cancellations move the scheduled step too, and MPPS moves the workitem
(:func:`~broker.services.ups.workitems.follow_steps`): one state machine.
"""

from __future__ import annotations

from broker.domain.ups import UPSError as UPSError
from broker.services.ups.datasets import UPS_SOP_CLASS
from broker.services.ups.events import UPSEventRow
from broker.services.ups.from_orders import workitems_for_steps
from broker.services.ups.search import SearchResult, search
from broker.services.ups.steps import report
from broker.services.ups.subscriptions import (
    FILTERED_GLOBAL_SUBSCRIPTION,
    GLOBAL_SUBSCRIPTION,
    delivered_up_to,
    events_after,
    latest_event_id,
    record_delivery,
    subscribe,
    subscriber_ae_titles,
    suspend_global,
    unsubscribe,
)
from broker.services.ups.workitems import (
    change_state,
    claimed_as,
    create,
    follow_steps,
    request_cancellation,
    retrieve,
    update,
)

__all__ = [
    "FILTERED_GLOBAL_SUBSCRIPTION", "GLOBAL_SUBSCRIPTION", "UPS_SOP_CLASS", "SearchResult",
    "UPSError", "UPSEventRow", "change_state", "claimed_as", "create", "delivered_up_to",
    "events_after", "follow_steps", "latest_event_id", "record_delivery", "report",
    "request_cancellation", "retrieve", "search", "subscribe", "subscriber_ae_titles",
    "suspend_global", "unsubscribe", "update", "workitems_for_steps",
]
