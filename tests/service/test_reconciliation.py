"""Performed work tied back to orders, in-process on SQLite and PostgreSQL: Instance
Availability Notifications (PS3.4 Annex R, IHE RAD-49) reconciled to their requested
procedure (:func:`broker.services.studies.reconcile_study`), and a person resolving a
reconciliation item (:mod:`broker.services.resolve`)."""

from __future__ import annotations

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, generate_uid
from sqlalchemy import select

from broker.models import AvailabilityNotification, ReconciliationKind
from broker.services import mpps, resolve, studies
from broker.services.dimse_status import DUPLICATE_INSTANCE, MppsError
from tests.conftest import sample
from tests.modality import availability, in_progress, step_item
from tests.service.conftest import Services
from tests.service.messages import ACCESSION_05, PATIENT_05


def ian(study_uid: str, **kwargs: str) -> Dataset:
    return availability(study_uid, [(CTImageStorage, generate_uid())], **kwargs)


def notify(services: Services, ds: Dataset, uid: str | None = None) -> str:
    """IAN N-CREATE as the SCP applies it, then the reconciliation task; its outcome."""
    sop_uid = uid or generate_uid()
    services.task(f"ian:{sop_uid}", lambda s: studies.record_availability(
        s, ds, sop_instance_uid=sop_uid, calling_ae_title="PACS"))
    study = str(ds.StudyInstanceUID)
    return services.task(f"study:{study}",
                         lambda s: studies.reconcile_study(s, services.settings, study))


def notices(services: Services) -> list[AvailabilityNotification]:
    with services.factory() as session:
        return list(session.scalars(select(AvailabilityNotification).order_by(
            AvailabilityNotification.id)))


def test_an_ian_with_the_accession_marks_images_available(services: Services) -> None:
    """An IAN for a study the PACS numbered itself but carrying the order's Accession
    Number is tied to that procedure: images available, "A" queued for the EHR once;
    the task run again has nothing to do."""
    services.process(sample("05"))
    study = generate_uid()
    outcome = notify(services, ian(study, accession=ACCESSION_05, patient_id=PATIENT_05))
    assert outcome.endswith("reported A")
    rp = services.procedure(ACCESSION_05)
    assert rp.images_available_at is not None
    [notice] = notices(services)
    assert (notice.reconciled, notice.procedure_pk) == (True, rp.id)
    assert [(m.trigger, m.accession_number) for m in services.outbox()] == [
        ("A", ACCESSION_05)]
    assert services.items() == []
    assert services.task("again", lambda s: studies.reconcile_study(
        s, services.settings, study)) == "nothing to do"


def test_a_repeated_ian_instance_is_refused(services: Services) -> None:
    """An IAN SOP Instance UID already stored is refused 0x0111 "Duplicate SOP
    Instance" (PS3.4 R.3) and changes nothing."""
    services.process(sample("05"))
    uid = generate_uid()
    notify(services, ian(generate_uid(), accession=ACCESSION_05), uid)
    with pytest.raises(MppsError) as refused:
        notify(services, ian(generate_uid(), accession=ACCESSION_05), uid)
    assert refused.value.status == DUPLICATE_INSTANCE
    assert len(notices(services)) == 1


def test_a_matched_study_of_another_patient_id_opens_a_mismatch_item(
        services: Services) -> None:
    """Performed work is never refused for demographics: the images are tied to the
    order by accession and a "demographic mismatch" item names the discrepancy."""
    services.process(sample("05"))
    notify(services, ian(generate_uid(), accession=ACCESSION_05, patient_id="000001"))
    assert services.procedure(ACCESSION_05).images_available_at is not None
    [item] = services.items()
    assert (item.kind, item.state) == (ReconciliationKind.DEMOGRAPHICS.value, "open")
    assert "patient id" in item.detail


def test_a_person_links_an_unmatched_study(services: Services) -> None:
    """A study matching no order opens an "unmatched study" item; linking it to the
    accession does what a match does (images available, "A" queued), and a later IAN
    of the same study follows that decision."""
    services.process(sample("05"))
    study = generate_uid()
    assert notify(services, ian(study, patient_id="424242")).startswith("unmatched")
    [item] = services.items()
    assert (item.kind, item.state) == (ReconciliationKind.UNMATCHED_STUDY.value, "open")
    assert services.outbox() == []
    outcome = services.use_cases.link_item(item.id, ACCESSION_05, "alice")
    assert ACCESSION_05 in outcome
    [linked] = services.items()
    rp = services.procedure(ACCESSION_05)
    assert (linked.state, linked.procedure_pk, linked.resolved_by) == ("linked", rp.id, "alice")
    assert rp.images_available_at is not None
    assert [m.trigger for m in services.outbox()] == ["A"]
    notify(services, ian(study, patient_id="424242"))
    assert {n.procedure_pk for n in notices(services)} == {rp.id}
    assert len(services.items()) == 1


def test_a_person_links_an_unscheduled_mpps(services: Services) -> None:
    """Linking an "unscheduled MPPS" item to an accession links the MPPS to its steps
    as a match would: STARTED, IP queued; the item cannot be resolved twice and the
    linking task finds nothing left to do."""
    services.process(sample("05"))
    uid = generate_uid()
    pk = services.task("create", lambda s: mpps.create(
        s, uid, in_progress([step_item()], modality="DX"), "DX01").id)
    services.use_cases.link_mpps(pk)
    [item] = services.items()
    assert item.kind == ReconciliationKind.UNSCHEDULED_MPPS.value
    services.use_cases.link_item(item.id, ACCESSION_05, "alice")
    assert services.statuses() == {"SPS0001": "STARTED", "SPS0002": "STARTED"}
    assert [m.trigger for m in services.outbox()] == ["IP"]
    assert services.items()[0].state == "linked"
    with pytest.raises(resolve.ResolveError, match="already linked"):
        services.use_cases.link_item(item.id, ACCESSION_05, "bob")
    assert services.use_cases.link_mpps(pk) == "nothing to do"


def test_a_person_dismisses_an_item(services: Services) -> None:
    """Dismissing closes the item without touching orders or the outbox."""
    notify(services, ian(generate_uid(), patient_id="424242"))
    [item] = services.items()
    services.use_cases.dismiss_item(item.id, "alice")
    [closed] = services.items()
    assert (closed.state, closed.resolved_by, closed.procedure_pk) == ("dismissed", "alice", None)
    assert services.outbox() == []
