"""MPPS stored and linked to scheduled steps, in-process on SQLite and PostgreSQL:
:func:`broker.services.mpps.create` / ``update`` (the N-CREATE / N-SET handlers'
transaction, PS3.4 F.7.2) and ``link`` (the linking task; IHE RAD-6/RAD-7 Modality
Procedure Step In Progress / Completed, reported to the EHR as HL7 order status,
RAD-3 / Table 0038 IP and CM)."""

from __future__ import annotations

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from broker.models import PerformedProcedureStep, ReconciliationKind
from broker.services import mpps
from tests.conftest import sample
from tests.ehr import field
from tests.modality import final, in_progress, step_item
from tests.service.conftest import Services
from tests.service.messages import ACCESSION_05, STUDY_05

BOTH_STEPS = ("SPS0001", "SPS0002")


def grouped() -> list[Dataset]:
    """Scheduled Step Attributes items naming both steps of sample 05 (PS3.4 Table
    F.7.2-1: SPS ID, Requested Procedure ID, Accession Number, Study Instance UID)."""
    return [step_item(accession=ACCESSION_05, rp_id="RP0001", sps_id=s, study_uid=STUDY_05)
            for s in BOTH_STEPS]


def create(services: Services, uid: str, ds: Dataset) -> int:
    """N-CREATE as the MPPS SCP applies it (one transaction); the new row's id."""
    return services.task(f"create:{uid}", lambda s: mpps.create(s, uid, ds, "CT01_AE").id)


def update(services: Services, uid: str, modification: Dataset) -> int:
    return services.task(f"set:{uid}", lambda s: mpps.update(s, uid, modification).id)


def link(services: Services, pk: int) -> str:
    """The linking use case (the link_mpps job)."""
    return services.use_cases.link_mpps(pk)


def performed(services: Services, pk: int) -> PerformedProcedureStep:
    with services.factory() as session:
        row = session.get(PerformedProcedureStep, pk)
        assert row is not None
        return row


def test_n_create_starts_the_steps_and_linking_reports_ip(services: Services) -> None:
    """An N-CREATE naming its steps takes them off the worklist in its own transaction
    (STARTED before the response); the linking task then queues one IP order status
    message for the EHR (ORM^O01 ORC-1 SC, ORC-5 IP)."""
    services.process(sample("05"))
    pk = create(services, generate_uid(), in_progress(grouped()))
    assert services.statuses() == {"SPS0001": "STARTED", "SPS0002": "STARTED"}
    assert performed(services, pk).link_state == "linked"
    assert services.outbox() == []
    assert "reported IP" in link(services, pk)
    [ip] = services.outbox()
    assert (ip.trigger, ip.status, ip.destination, ip.sequence, ip.accession_number) == (
        "IP", "pending", "ehr", 1, ACCESSION_05)
    assert (field(ip.payload, "ORC", 1), field(ip.payload, "ORC", 5)) == ("SC", "IP")
    assert field(ip.payload, "MSH", 10) == ip.control_id
    assert services.procedure(ACCESSION_05).reported_status == "IP"
    history = services.steps()["SPS0001"].history
    assert [h.new_status for h in history] == ["SCHEDULED", "STARTED"]
    assert history[-1].cause.startswith(f"MPPS {pk}")


def test_n_set_completed_completes_the_steps_and_reports_cm(services: Services) -> None:
    """N-SET COMPLETED (PS3.4 F.7.2.2) then linking: steps COMPLETED, a CM message
    queued after the IP one, in sequence order."""
    services.process(sample("05"))
    uid = generate_uid()
    pk = create(services, uid, in_progress(grouped()))
    link(services, pk)
    assert update(services, uid, final("COMPLETED")) == pk
    assert performed(services, pk).status == "COMPLETED"
    link(services, pk)
    assert services.statuses() == {"SPS0001": "COMPLETED", "SPS0002": "COMPLETED"}
    assert [(m.trigger, m.sequence) for m in services.outbox()] == [("IP", 1), ("CM", 2)]
    assert services.procedure(ACCESSION_05).reported_status == "CM"


def test_completed_before_the_task_ran_reports_ip_then_cm(services: Services) -> None:
    """N-CREATE and N-SET COMPLETED both stored before the linking task runs: one run
    applies the latest state, and the EHR, never told IN PROGRESS, gets IP then CM."""
    services.process(sample("05"))
    uid = generate_uid()
    pk = create(services, uid, in_progress(grouped()))
    update(services, uid, final("COMPLETED"))
    link(services, pk)
    assert services.statuses() == {"SPS0001": "COMPLETED", "SPS0002": "COMPLETED"}
    assert [m.trigger for m in services.outbox()] == ["IP", "CM"]


def test_discontinued_discontinues_the_steps_and_reports_dc(services: Services) -> None:
    """N-SET DISCONTINUED (PS3.4 F.7.2.2): the steps are DISCONTINUED and, after the
    IP, DC is reported (Table 0038)."""
    services.process(sample("05"))
    uid = generate_uid()
    pk = create(services, uid, in_progress(grouped()))
    link(services, pk)
    update(services, uid, final("DISCONTINUED"))
    link(services, pk)
    assert services.statuses() == {"SPS0001": "DISCONTINUED", "SPS0002": "DISCONTINUED"}
    assert [m.trigger for m in services.outbox()] == ["IP", "DC"]


def test_an_incorrect_worklist_entry_goes_back_on_the_worklist(services: Services) -> None:
    """DISCONTINUED with reason (110514, DCM) "Incorrect worklist entry selected"
    (PS3.16 CID 9300): the steps go back to SCHEDULED, on the worklist again, and SC
    is reported after the IP."""
    services.process(sample("05"))
    uid = generate_uid()
    pk = create(services, uid, in_progress(grouped()))
    link(services, pk)
    update(services, uid, final("DISCONTINUED",
                                reason=("110514", "DCM", "Incorrect worklist entry selected")))
    link(services, pk)
    assert services.statuses() == {"SPS0001": "SCHEDULED", "SPS0002": "SCHEDULED"}
    assert [m.trigger for m in services.outbox()] == ["IP", "SC"]


def test_linking_twice_queues_nothing_twice(services: Services) -> None:
    """The linking task is idempotent (it applies each MPPS version once): run again,
    it does nothing and no second IP row appears."""
    services.process(sample("05"))
    pk = create(services, generate_uid(), in_progress(grouped()))
    link(services, pk)
    assert link(services, pk) == "nothing to do"
    assert [m.trigger for m in services.outbox()] == ["IP"]
    row = performed(services, pk)
    assert row.linked_version == row.version == 1


def test_a_study_uid_reference_is_linked_by_the_task(services: Services) -> None:
    """An item giving only the Study Instance UID, which belongs to two steps, is not
    unambiguous: the N-CREATE leaves the steps alone and the task links both by the
    study (IHE RAD TF-2 4.6 unscheduled-looking reference)."""
    services.process(sample("05"))
    pk = create(services, generate_uid(), in_progress([step_item(study_uid=STUDY_05)]))
    assert performed(services, pk).link_state == "pending"
    assert services.statuses() == {"SPS0001": "SCHEDULED", "SPS0002": "SCHEDULED"}
    link(services, pk)
    assert performed(services, pk).link_state == "linked"
    assert services.statuses() == {"SPS0001": "STARTED", "SPS0002": "STARTED"}
    assert [m.trigger for m in services.outbox()] == ["IP"]


def test_an_mpps_matching_no_step_opens_a_reconciliation_item(services: Services) -> None:
    """No step referenced or found (PS3.4 F.7.2.1 unscheduled case): the MPPS is kept,
    nothing changes on the worklist or the outbox, and an "unscheduled MPPS" item is
    opened with the order of the same patient as its first candidate."""
    services.process(sample("05"))
    pk = create(services, generate_uid(), in_progress([step_item()]))
    link(services, pk)
    assert performed(services, pk).link_state == "unscheduled"
    assert services.statuses() == {"SPS0001": "SCHEDULED", "SPS0002": "SCHEDULED"}
    assert services.outbox() == []
    [item] = services.items()
    assert (item.kind, item.state, item.mpps_pk) == (
        ReconciliationKind.UNSCHEDULED_MPPS.value, "open", pk)
    assert item.candidates[0]["accession"] == ACCESSION_05
    link(services, pk)
    assert len(services.items()) == 1


def test_an_mpps_for_a_cancelled_order_opens_an_item(services: Services) -> None:
    """The modality performs a step cancelled meanwhile (CA, sample 07): the step stays
    CANCELLED, nothing is reported, and a "cancelled order" item is opened."""
    services.process(sample("05"))
    services.process(sample("07"))
    pk = create(services, generate_uid(), in_progress(grouped()[:1]))
    link(services, pk)
    assert services.statuses() == {"SPS0001": "CANCELLED", "SPS0002": "CANCELLED"}
    assert services.outbox() == []
    assert [(i.kind, i.mpps_pk) for i in services.items()] == [
        (ReconciliationKind.CANCELLED_ORDER.value, pk)]
