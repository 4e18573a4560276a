"""Workitem -> scheduled step: one state machine for the Modality Worklist and UPS.

Claiming an order-born workitem starts its step (it leaves the worklist, as an MPPS
IN PROGRESS takes it off: IHE RAD TF-2 4.6); completing or cancelling it completes or
discontinues the step (:func:`broker.domain.ups.step_status_for`). The change is in the
step's history like any other, and :func:`report` queues the order status messages it
leads to, exactly as the MPPS path does (:func:`broker.services.outbox.report_procedure`).
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from broker.config import Settings
from broker.domain.ups import UPSState, step_status_for
from broker.models import ScheduledProcedureStep, SPSStatus, UPSWorkitem
from broker.services.outbox import lock_procedures, report_procedure
from broker.services.records import set_step_status


def follow_workitem(session: Session, sps_pk: int, state: UPSState, *, cause: str) -> bool:
    """Move step ``sps_pk`` to where the workitem's new ``state`` leads, under its
    procedure's row lock; True when it changed."""
    step = session.get(ScheduledProcedureStep, sps_pk)
    if step is None:
        return False
    lock_procedures(session, {step.procedure_pk})
    new = step_status_for(state, step.status)
    if new is None:
        return False
    changed = set_step_status(step, SPSStatus(new), cause=cause)
    session.flush()
    return changed


def report(session: Session, settings: Settings, uid: str) -> list[str]:
    """Queue the order status messages a workitem's change leads to (IP when claimed,
    CM when completed, DC when cancelled: HL7 Table 0038) for its requested procedure;
    [] for a pushed workitem or when nothing is to be reported."""
    sps_pk = session.scalar(select(UPSWorkitem.sps_pk).where(UPSWorkitem.uid == uid))
    if sps_pk is None:
        return []
    step = session.get(ScheduledProcedureStep, sps_pk)
    if step is None:
        return []
    lock_procedures(session, {step.procedure_pk})
    return report_procedure(session, settings, step.procedure)
