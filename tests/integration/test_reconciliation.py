"""Reconciliation: unscheduled MPPS, an unmatched study and a demographic
mismatch each open an item whose first candidate is the right order; linking it with
`mwl-broker reconcile link` applies the status changes and sends the status messages."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import generate_uid
from sqlalchemy import select

from broker.models import (
    AvailabilityNotification,
    ReconciliationItem,
    RequestedProcedure,
    StoredInstance,
)
from tests.conftest import sample
from tests.ehr import EHREndpoint, field
from tests.integration.hl7util import send
from tests.modality import (
    IAN,
    MPPS,
    availability,
    final,
    in_progress,
    n_create,
    n_set,
    step_item,
    storescu,
    write_images,
)
from tests.workflow import STUDY_05, cli, destination, step_statuses, wait_until

pytestmark = [pytest.mark.dcmtk]

STUDY_09 = "2.25.66162651962910795921398064868634157122"


@pytest.fixture
def broker(make_broker: Any, ehr: EHREndpoint) -> Any:
    app = make_broker(outbound_destinations=destination(ehr.port), sweep_interval=0.2)
    acks = send(app.mllp_port, sample("01"), sample("05"), sample("09"))
    assert [a.code for a in acks] == ["AA", "AA", "AA"]
    return app


def items(app: Any, kind: str) -> list[ReconciliationItem]:
    with app.runtime.session_factory() as session:
        return list(session.scalars(select(ReconciliationItem).where(
            ReconciliationItem.kind == kind)))


def linked_instances(app: Any) -> list[int]:
    with app.runtime.session_factory() as session:
        return list(session.scalars(select(StoredInstance.procedure_pk).where(
            StoredInstance.procedure_pk.is_not(None))))


def test_unscheduled_mpps_is_reconciled_to_the_right_order(broker: Any,
                                                           ehr: EHREndpoint) -> None:
    uid = generate_uid()
    ds = in_progress([step_item()], patient_id="864209", patient_name="O'Brien^Sean^Patrick",
                     modality="CT", station="CT01_AE", start=("20250310", "140500"))
    assert n_create(broker.dicom_port, MPPS, uid, ds).Status == 0x0000  # F4
    found = wait_until(lambda: items(broker, "unscheduled_mpps"), what="an item")
    assert found[0].candidates[0]["accession"] == "ACC0002"
    assert {"patient id", "name", "modality"} <= set(found[0].candidates[0]["reasons"])
    assert step_statuses(broker)["SPS0003"] == "SCHEDULED"  # MWL unchanged

    out = cli(broker, "reconcile", "link", str(found[0].id), "ACC0002")
    assert "ACC0002" in out
    assert step_statuses(broker)["SPS0003"] == "STARTED"
    assert step_statuses(broker)["SPS0004"] == "STARTED"
    first = ehr.wait_for(1)
    assert (field(first[0], "ORC", 5), field(first[0], "OBR", 18)) == ("IP", "ACC0002")
    # Later N-SETs of the now linked MPPS apply directly.
    assert n_set(broker.dicom_port, uid, final("COMPLETED")).Status == 0
    wait_until(lambda: step_statuses(broker)["SPS0003"] == "COMPLETED", what="COMPLETED")
    assert [field(m, "ORC", 5) for m in ehr.wait_for(2)] == ["IP", "CM"]
    assert items(broker, "unscheduled_mpps")[0].state == "linked"
    listing = cli(broker, "reconcile", "list", "--state", "all")
    assert "unscheduled_mpps" in listing and "linked" in listing
    shown = cli(broker, "reconcile", "show", str(found[0].id))
    assert "ACC0002" in shown and "patient id" in shown
    outbox = cli(broker, "outbound", "list")
    assert "ACC0002" in outbox and "sent" in outbox


def test_unmatched_study_is_reconciled_by_name_and_time(broker: Any, ehr: EHREndpoint,
                                                        tmp_path: Path) -> None:
    study = generate_uid()
    storescu(broker.dicom_port, write_images(
        tmp_path, 2, accession="", study_uid=study, patient_id="135791",
        patient_name="Doe^Jane^Marie", modality="DX", study_datetime=("20250310", "093400")))
    found = wait_until(lambda: items(broker, "unmatched_study"), what="an item")
    assert found[0].study_instance_uid == study
    assert found[0].candidates[0]["accession"] == "ACC0001"
    assert ehr.messages() == []

    cli(broker, "reconcile", "link", str(found[0].id), "ACC0001")
    with broker.runtime.session_factory() as session:
        rp = session.scalars(select(RequestedProcedure).where(
            RequestedProcedure.accession_number == "ACC0001")).one()
        assert rp.images_available_at is not None
        linked = session.scalars(select(StoredInstance.procedure_pk)).all()
        assert linked == [rp.id, rp.id]
    message = ehr.wait_for(1)[0]
    assert (field(message, "ORC", 5), field(message, "OBR", 18)) == ("A", "ACC0001")
    # A later series of the same study follows the person's decision: no new item.
    storescu(broker.dicom_port, write_images(
        tmp_path / "late", 1, accession="", study_uid=study, patient_id="135791",
        patient_name="Doe^Jane^Marie", modality="DX", study_datetime=("20250310", "093400")))
    wait_until(lambda: len(linked_instances(broker)) == 3, what="third instance linked")
    assert len(items(broker, "unmatched_study")) == 1


def test_demographic_mismatch_is_linked_and_flagged(broker: Any, ehr: EHREndpoint) -> None:
    """The MPPS is never refused for demographics."""
    ds = in_progress([step_item(accession="ACC0001", rp_id="RP0001", sps_id="SPS0001",
                                study_uid=STUDY_05)], patient_id="777777",
                     patient_name="Doe^Janet")
    assert n_create(broker.dicom_port, MPPS, generate_uid(), ds).Status == 0x0000
    wait_until(lambda: step_statuses(broker)["SPS0001"] == "STARTED", what="STARTED")
    found = wait_until(lambda: items(broker, "demographic_mismatch"), what="an item")
    assert "patient id and patient name" in found[0].detail
    assert found[0].candidates[0]["accession"] == "ACC0001"
    assert field(ehr.wait_for(1)[0], "ORC", 5) == "IP"
    out = cli(broker, "reconcile", "link", str(found[0].id), "ACC0001")
    assert "accepted" in out
    assert items(broker, "demographic_mismatch")[0].state == "linked"


def test_mpps_for_a_cancelled_order_is_accepted_for_reconciliation(broker: Any) -> None:
    assert [a.code for a in send(broker.mllp_port, sample("07"))] == ["AA"]
    ds = in_progress([step_item(accession="ACC0001", rp_id="RP0001", sps_id="SPS0001",
                                study_uid=STUDY_05)])
    assert n_create(broker.dicom_port, MPPS, generate_uid(), ds).Status == 0x0000
    found = wait_until(lambda: items(broker, "cancelled_order"), what="an item")
    assert "SPS0001" in found[0].detail
    assert step_statuses(broker)["SPS0001"] == "CANCELLED"


def test_ian_marks_images_available(broker: Any, ehr: EHREndpoint) -> None:
    ds = availability(STUDY_09, [("1.2.840.10008.5.1.4.1.1.2", generate_uid())],
                      accession="ACC0002", patient_id="864209")
    assert n_create(broker.dicom_port, IAN, generate_uid(), ds, aet="PACS").Status == 0
    message = ehr.wait_for(1)[0]
    assert (field(message, "ORC", 5), field(message, "OBR", 18)) == ("A", "ACC0002")
    with broker.runtime.session_factory() as session:
        notice = session.scalars(select(AvailabilityNotification)).one()
        assert notice.procedure_pk is not None and len(notice.instances) == 1
        assert notice.instances[0].availability == "ONLINE"


def test_ian_for_an_unknown_study_and_a_repeated_ian(broker: Any) -> None:
    uid = generate_uid()
    ds = availability(generate_uid(), [("1.2.840.10008.5.1.4.1.1.2", generate_uid())])
    assert n_create(broker.dicom_port, IAN, uid, ds, aet="PACS").Status == 0x0000
    wait_until(lambda: items(broker, "unmatched_study"), what="an item")
    assert n_create(broker.dicom_port, IAN, uid, ds, aet="PACS").Status == 0x0111


def test_ian_referencing_the_mpps_finds_the_order(broker: Any, ehr: EHREndpoint) -> None:
    """RAD-49: a PACS IAN carrying only the Study UID the modality made up and the MPPS
    reference is tied to the order through the MPPS's linked step."""
    mpps_uid = generate_uid()
    ds = in_progress([step_item(accession="ACC0002", rp_id="RP0002", sps_id="SPS0003")],
                     patient_id="864209", patient_name="O'Brien^Sean^Patrick", modality="CT")
    assert n_create(broker.dicom_port, MPPS, mpps_uid, ds).Status == 0
    wait_until(lambda: step_statuses(broker)["SPS0003"] == "STARTED", what="STARTED")
    notice = availability(generate_uid(), [("1.2.840.10008.5.1.4.1.1.2", generate_uid())],
                          mpps_uid=mpps_uid)
    assert n_create(broker.dicom_port, IAN, generate_uid(), notice, aet="PACS").Status == 0
    messages = ehr.wait_for(2)
    assert [(field(m, "ORC", 5), field(m, "OBR", 18)) for m in messages] == [
        ("IP", "ACC0002"), ("A", "ACC0002")]
    assert items(broker, "unmatched_study") == []
