"""A person resolves a reconciliation item (``mwl-broker reconcile link|dismiss``).

Linking ties the item's MPPS or study to a requested procedure and then does exactly
what a direct match does: MPPS -> step links, step status, order status messages;
study -> instances and IANs linked, "images available" reported. For a demographic
mismatch, linking to the procedure it is already tied to accepts the discrepancy;
linking to another procedure moves the MPPS or study there.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from broker.config import Settings
from broker.models import (
    AvailabilityNotification,
    MppsStepLink,
    PerformedProcedureStep,
    ReconciliationItem,
    RequestedProcedure,
    SPSStatus,
    StoredInstance,
)
from broker.services import mpps
from broker.services.studies import link_study


class ResolveError(ValueError):
    """The item or the procedure cannot be used; the message says why."""


def find_procedure_ref(session: Session, ref: str) -> RequestedProcedure:
    """A requested procedure by accession number, or by internal id written ``#12``."""
    if ref.startswith("#") and ref[1:].isdigit():
        rp = session.get(RequestedProcedure, int(ref[1:]))
    else:
        rp = session.scalars(select(RequestedProcedure).where(
            RequestedProcedure.accession_number == ref).limit(1)).first()
    if rp is None:
        raise ResolveError(f"no requested procedure {ref!r} (give an accession or #id)")
    return rp


def _open_item(session: Session, item_id: int) -> ReconciliationItem:
    item = session.get(ReconciliationItem, item_id, with_for_update=True)
    if item is None:
        raise ResolveError(f"no reconciliation item {item_id}")
    if item.state != "open":
        raise ResolveError(f"reconciliation item {item_id} is already {item.state}")
    return item


def _close(item: ReconciliationItem, state: str, user: str, rp_pk: int | None) -> None:
    item.state = state
    item.procedure_pk = rp_pk
    item.resolved_at = datetime.now(UTC)
    item.resolved_by = user[:64]


def link_item(session: Session, settings: Settings, item_id: int, procedure_ref: str,
              user: str) -> str:
    """Tie item ``item_id`` to a requested procedure; returns what was done."""
    item = _open_item(session, item_id)
    rp = find_procedure_ref(session, procedure_ref)
    if item.kind == "demographic_mismatch" and item.procedure_pk == rp.id:
        _close(item, "linked", user, rp.id)
        return f"item {item.id}: discrepancy accepted for accession {rp.accession_number}"
    if item.mpps_pk is not None:
        outcome = _link_mpps(session, settings, item.mpps_pk, rp)
    else:
        outcome = _link_study(session, settings, item.study_instance_uid, rp)
    _close(item, "linked", user, rp.id)
    return f"item {item.id} -> accession {rp.accession_number}: {outcome or 'no change'}"


def _link_mpps(session: Session, settings: Settings, mpps_pk: int,
               rp: RequestedProcedure) -> str:
    row = session.get(PerformedProcedureStep, mpps_pk, with_for_update=True)
    if row is None:
        raise ResolveError(f"MPPS {mpps_pk} no longer exists")
    steps = [s for s in rp.steps if s.status != SPSStatus.CANCELLED.value]
    same = [s for s in steps if s.modality == row.modality]
    steps = same or steps
    if not steps:
        raise ResolveError(f"accession {rp.accession_number} has no step that is not cancelled")
    session.execute(delete(MppsStepLink).where(MppsStepLink.mpps_pk == row.id))
    for step in steps:
        session.add(MppsStepLink(mpps_pk=row.id, sps_pk=step.id))
    row.link_state = "linked"
    session.flush()
    session.refresh(row, ["steps"])
    outcome = mpps.apply_state(session, settings, row)
    row.linked_version = row.version
    return outcome


def _link_study(session: Session, settings: Settings, study_uid: str,
                rp: RequestedProcedure) -> str:
    instances = list(session.scalars(select(StoredInstance).where(
        StoredInstance.study_instance_uid == study_uid)))
    notices = list(session.scalars(select(AvailabilityNotification).where(
        AvailabilityNotification.study_instance_uid == study_uid)))
    return link_study(session, settings, rp, instances, notices)


def dismiss_item(session: Session, item_id: int, user: str) -> str:
    item = _open_item(session, item_id)
    _close(item, "dismissed", user, item.procedure_pk)
    return f"item {item.id} dismissed"
