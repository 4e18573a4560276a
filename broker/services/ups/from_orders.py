"""Workitems of an order's scheduled steps, written in the order apply path's own
transaction with SQLAlchemy Core (the write path is performance-critical: one
multi-row INSERT of workitems and one of events per order message).

Each new step the profile's ``workitems`` selection picks
(:class:`broker.domain.ups.WorkitemSelection`; default: every step) becomes a workitem
in the state its step status leads to (:func:`broker.domain.ups.state_for_step`), with
its priority from the order (:func:`broker.domain.ups.priority_for`). A step whose
status the message changes moves its workitem (a cancelled order cancels its
SCHEDULED workitems: :func:`broker.domain.ups.follows_step`), and a step the message
updates (XO) updates the scheduled attributes of its workitem while SCHEDULED (a new
station is a UPS Assigned event, PS3.4 CC.2.4.2).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, select

from broker.domain.ups import (
    UPSEventType,
    UPSState,
    WorkitemSelection,
    follows_step,
    priority_for,
    state_for_step,
)
from broker.driver_rows import insert_rows, update_by_key
from broker.models import UPSWorkitem
from broker.services.order_state import OrderState, Procedure, Step
from broker.services.rows import table
from broker.services.ups import events
from broker.services.ups.datasets import scheduled_columns, step_scheduled, to_dataset

WORKITEMS = table(UPSWorkitem)


def new_uid() -> str:
    """A workitem SOP Instance UID under the UUID-derived root 2.25 (PS3.5 B.2)."""
    return f"2.25.{uuid.uuid4().int}"


def _codes(items: Any) -> list[str]:
    if not isinstance(items, list):
        return []
    return [str(i.get("CodeValue", "")) for i in items if isinstance(i, dict)]


def selected(selection: WorkitemSelection, procedure: Procedure, step: Step) -> bool:
    codes = (_codes(step.attributes.get("ScheduledProtocolCodeSequence"))
             + _codes(procedure.attributes.get("RequestedProcedureCodeSequence")))
    return selection.selects(step.columns.get("modality", ""), codes)


def _scheduled(procedure: Procedure, step: Step) -> dict[str, Any]:
    return {**scheduled_columns(step_scheduled(step.attributes, procedure.attributes)),
            "start_datetime": step.columns.get("start_datetime", ""),
            "priority": priority_for(procedure.columns.get("priority", "")).value}


def workitems_for_steps(connection: Connection, state: OrderState,
                        selection: WorkitemSelection, *, cause: str) -> list[str]:
    """Create, move and update the workitems of the steps ``state`` holds, after
    :func:`broker.services.order_state.write`; returns outcome lines (ids only)."""
    now = datetime.now(UTC)
    new_rows: list[dict[str, Any]] = []
    event_rows: list[dict[str, Any]] = []
    touched: dict[int, tuple[Procedure, Step]] = {}
    changed_status = {h["sps_pk"] for h in state.history}
    for order in state.orders:
        for procedure in order.procedures:
            for step in procedure.steps:
                if step.stored is None:
                    if selected(selection, procedure, step):
                        new_rows.append(_new_row(procedure, step, now))
                elif step.id in changed_status or step.attributes != step.stored["attributes"]:
                    touched[step.id] = (procedure, step)
    outcome = []
    for row in new_rows:
        initial = UPSState(row["state"])
        if initial is not UPSState.SCHEDULED:
            event_rows.append(events.row(row["uid"], UPSEventType.STATE_REPORT,
                                         events.state_report(UPSState.SCHEDULED), cause=cause))
        event_rows.append(events.row(row["uid"], UPSEventType.STATE_REPORT,
                                     events.state_report(initial), cause=cause))
    if new_rows:
        insert_rows(connection, WORKITEMS, new_rows)
        outcome.append(f"{len(new_rows)} UPS workitem(s) created")
    if touched:
        outcome += _follow(connection, touched, changed_status, event_rows, now, cause)
    events.append(connection, event_rows)
    return outcome


def _new_row(procedure: Procedure, step: Step, now: datetime) -> dict[str, Any]:
    state = state_for_step(step.status)
    return {
        "uid": new_uid(), "sps_pk": step.id, "state": state.value,
        "transaction_uid": new_uid() if state is UPSState.IN_PROGRESS else "",
        "cancel_requested_by": "", "cancel_requested_at": None, "cancel_reason": "",
        **_scheduled(procedure, step),
        "expected_completion": "", "input_readiness": "READY",
        "patient_id": "", "issuer": "", "name_key_alphabetic": "",
        "name_key_ideographic": "", "name_key_phonetic": "", "birth_date": "", "sex": "",
        "accession_number": "", "study_instance_uid": "", "attributes": {},
        "created_by": "", "created_at": now, "updated_at": now,
    }


def _follow(connection: Connection, touched: dict[int, tuple[Procedure, Step]],
            changed_status: set[int], event_rows: list[dict[str, Any]], now: datetime,
            cause: str) -> list[str]:
    """Move / update the existing workitems of the steps the message changed."""
    found = connection.execute(
        select(WORKITEMS.c.id, WORKITEMS.c.uid, WORKITEMS.c.sps_pk, WORKITEMS.c.state,
               WORKITEMS.c.transaction_uid, WORKITEMS.c.station_name_code)
        .where(WORKITEMS.c.sps_pk.in_(list(touched))).with_for_update()).all()
    moves: list[tuple[int, dict[str, Any]]] = []
    outcome = []
    for pk, uid, sps_pk, current, tuid, station in found:
        procedure, step = touched[sps_pk]
        now_state = UPSState(current)
        if now_state is UPSState.SCHEDULED and step.stored is not None and (
                step.attributes != step.stored["attributes"]):
            scheduled = _scheduled(procedure, step)
            update_by_key(connection, WORKITEMS, [(pk, {**scheduled, "updated_at": now})])
            if scheduled["station_name_code"] != station:
                event_rows.append(events.row(uid, UPSEventType.ASSIGNED, events.assigned(
                    to_dataset(step_scheduled(step.attributes, procedure.attributes))),
                    cause=cause))
        target = follows_step(now_state, step.status) if sps_pk in changed_status else None
        if target is None:
            continue
        if now_state is UPSState.SCHEDULED and target.final:
            event_rows.append(events.row(uid, UPSEventType.STATE_REPORT,
                                         events.state_report(UPSState.IN_PROGRESS),
                                         cause=cause))
        event_rows.append(events.row(uid, UPSEventType.STATE_REPORT,
                                     events.state_report(target), cause=cause))
        moves.append((pk, {"state": target.value, "updated_at": now,
                           "transaction_uid": "" if target.final else (tuid or new_uid())}))
        outcome.append(f"UPS {uid} {target.value}")
    update_by_key(connection, WORKITEMS, moves)
    return outcome
