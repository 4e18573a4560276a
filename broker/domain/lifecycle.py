"""Order control (HL7 Table 0119 ORC-1 with Table 0038 ORC-5) -> what happens to the
Scheduled Procedure Steps; the SPS state machine. Pure logic, no I/O.

IHE RAD-2/3/4/13 semantics (RAD TF-2 4.2, 4.3, 4.4, 4.13):

======================  ==========================================  ===============
ORC-1 (ORC-5)           action                                      SPS status
======================  ==========================================  ===============
NW (SC or empty)        create requested procedure(s) + steps       SCHEDULED
NW (IP)                 create an already started step              STARTED
SN (SC or empty)        filler-originated order: as NW              SCHEDULED
XO (SC, IP or empty)    update in place (time, station, protocol)   unchanged
XO (CM)                 mark done                                   COMPLETED
CA (CA or empty)        cancel; steps already started are kept      CANCELLED
                        and the rest DISCONTINUED (RAD-13)
OC (CA or empty)        filler-side cancel (RAD-3), as CA           CANCELLED
DC (CA, DC or empty)    discontinue the steps not yet performed     DISCONTINUED
SC (IP/CM/CA/DC)        status change                               STARTED/...
======================  ==========================================  ===============

Anything else (e.g. ``HD``, or ``NW`` with ORC-5 ``CM``) is refused
(:class:`~broker.domain.errors.OrderRuleError`, which the order service answers with AE
and an ERR at ORC-1, code 103 "table value not found": the pair is not in our table).
An ORC-5 that is no Table 0038 value at all (``Final``, ``F``) says nothing we can act
on: it is read as empty, so the order control alone decides, and the decision says so
(``order_status_ignored``) for the service to warn about.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum

from broker.domain.errors import OrderRule, OrderRuleError
from broker.domain.status import SPSStatus


class OrderAction(StrEnum):
    CREATE = "create"
    UPDATE = "update"
    CANCEL = "cancel"
    DISCONTINUE = "discontinue"
    SET_STATUS = "set_status"


@dataclass(frozen=True)
class Decision:
    """What one ORC group asks for: the action and, for creation or a status change,
    the SPS status that results. ``order_status_ignored``: the order status was no
    HL7 Table 0038 value and was read as empty."""

    action: OrderAction
    status: SPSStatus | None = None
    order_status_ignored: bool = False


_TABLE: dict[tuple[str, str], Decision] = {
    ("NW", ""): Decision(OrderAction.CREATE, SPSStatus.SCHEDULED),
    ("NW", "SC"): Decision(OrderAction.CREATE, SPSStatus.SCHEDULED),
    ("NW", "IP"): Decision(OrderAction.CREATE, SPSStatus.STARTED),
    ("SN", ""): Decision(OrderAction.CREATE, SPSStatus.SCHEDULED),
    ("SN", "SC"): Decision(OrderAction.CREATE, SPSStatus.SCHEDULED),
    ("XO", ""): Decision(OrderAction.UPDATE),
    ("XO", "SC"): Decision(OrderAction.UPDATE),
    ("XO", "IP"): Decision(OrderAction.UPDATE),
    ("XO", "CM"): Decision(OrderAction.SET_STATUS, SPSStatus.COMPLETED),
    ("CA", ""): Decision(OrderAction.CANCEL, SPSStatus.CANCELLED),
    ("CA", "CA"): Decision(OrderAction.CANCEL, SPSStatus.CANCELLED),
    ("OC", ""): Decision(OrderAction.CANCEL, SPSStatus.CANCELLED),
    ("OC", "CA"): Decision(OrderAction.CANCEL, SPSStatus.CANCELLED),
    ("DC", ""): Decision(OrderAction.DISCONTINUE, SPSStatus.DISCONTINUED),
    ("DC", "CA"): Decision(OrderAction.DISCONTINUE, SPSStatus.DISCONTINUED),
    ("DC", "DC"): Decision(OrderAction.DISCONTINUE, SPSStatus.DISCONTINUED),
    ("SC", "IP"): Decision(OrderAction.SET_STATUS, SPSStatus.STARTED),
    ("SC", "CM"): Decision(OrderAction.SET_STATUS, SPSStatus.COMPLETED),
    ("SC", "CA"): Decision(OrderAction.SET_STATUS, SPSStatus.CANCELLED),
    ("SC", "DC"): Decision(OrderAction.SET_STATUS, SPSStatus.DISCONTINUED),
}

# HL7 Table 0038 order status values (v2.5.1 4.5.1.5).
ORDER_STATUSES = frozenset({"A", "CA", "CM", "DC", "ER", "HD", "IP", "RP", "SC"})

# Statuses in which a step is still waiting to be performed (listed on the worklist).
PENDING = frozenset({SPSStatus.SCHEDULED, SPSStatus.ARRIVED, SPSStatus.READY})
# Statuses a step never leaves through an order message.
FINAL = frozenset({SPSStatus.COMPLETED, SPSStatus.CANCELLED, SPSStatus.DISCONTINUED})

_ALLOWED: dict[SPSStatus, frozenset[SPSStatus]] = {
    SPSStatus.SCHEDULED: frozenset(
        {SPSStatus.ARRIVED, SPSStatus.READY, SPSStatus.STARTED, SPSStatus.COMPLETED,
         SPSStatus.CANCELLED, SPSStatus.DISCONTINUED}
    ),
    SPSStatus.ARRIVED: frozenset(
        {SPSStatus.READY, SPSStatus.STARTED, SPSStatus.COMPLETED, SPSStatus.CANCELLED,
         SPSStatus.DISCONTINUED}
    ),
    SPSStatus.READY: frozenset(
        {SPSStatus.STARTED, SPSStatus.COMPLETED, SPSStatus.CANCELLED, SPSStatus.DISCONTINUED}
    ),
    SPSStatus.STARTED: frozenset(
        {SPSStatus.COMPLETED, SPSStatus.DISCONTINUED, SPSStatus.DEPARTED}
    ),
    SPSStatus.DEPARTED: frozenset({SPSStatus.COMPLETED, SPSStatus.DISCONTINUED}),
}


def decide(order_control: str, order_status: str, *, sequence: int = 1) -> Decision:
    """The decision for one ORC group (HL7 v2.5.1 4.5.1.1 Table 0119, 4.5.1.5 Table 0038).

    Raises :class:`OrderRuleError`: ``MISSING_CONTROL`` for an empty order control,
    ``UNSUPPORTED_CONTROL`` for a control/status pair not in the table. An order
    status that is no Table 0038 value is read as empty and the decision has
    ``order_status_ignored`` set.
    """
    control = order_control.strip().upper()
    status = order_status.strip().upper()
    if not control:
        raise OrderRuleError(OrderRule.MISSING_CONTROL, sequence, control, status)
    ignored = bool(status) and status not in ORDER_STATUSES
    if ignored:
        status = ""
    decision = _TABLE.get((control, status))
    if decision is None:
        raise OrderRuleError(OrderRule.UNSUPPORTED_CONTROL, sequence, control, status,
                             order_status_ignored=ignored)
    return replace(decision, order_status_ignored=True) if ignored else decision


def can_transition(current: SPSStatus, new: SPSStatus) -> bool:
    """Whether a step may move from ``current`` to ``new`` (same status: no-op, allowed)."""
    return current == new or new in _ALLOWED.get(current, frozenset())


PERFORMED = frozenset({SPSStatus.STARTED, SPSStatus.DEPARTED, SPSStatus.COMPLETED})


def cancel_outcomes(statuses: list[SPSStatus]) -> list[SPSStatus]:
    """Where CA/OC leaves the steps of one requested procedure.

    With no step performed, every pending step is CANCELLED (it leaves the worklist).
    Once a step has started, the procedure cannot be cancelled any more: IHE RAD-13
    asks for discontinuation, so pending steps become DISCONTINUED and started ones
    are kept for their MPPS to finish.
    """
    started = any(s in PERFORMED for s in statuses)
    target = SPSStatus.DISCONTINUED if started else SPSStatus.CANCELLED
    return [target if s in PENDING else s for s in statuses]


def discontinue_outcome(current: SPSStatus) -> SPSStatus:
    """Where DC leaves a step: pending steps are DISCONTINUED; started or final steps
    keep their status."""
    return SPSStatus.DISCONTINUED if current in PENDING else current


def require_updatable(current: SPSStatus, *, sequence: int = 1) -> None:
    """XO may change a step only while it is pending or started; a final step raises
    :class:`OrderRuleError` ``STEP_FINAL`` (answered 206 "application record locked"
    at ORC-1 by the order service)."""
    if current in FINAL:
        raise OrderRuleError(OrderRule.STEP_FINAL, sequence, current=current.value)
