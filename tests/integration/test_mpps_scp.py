"""MPPS SCP statuses (PS3.4 F.7.2; docs/swf-conformance.md F1-F6), each with the scheduled step's
state checked afterwards, over real pynetdicom associations."""

from __future__ import annotations

from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.tag import Tag
from pydicom.uid import generate_uid
from sqlalchemy import select

from broker.jobs import Job
from broker.models import (
    DicomRequest,
    MppsStepLink,
    OutboundMessage,
    PerformedProcedureStep,
    ScheduledProcedureStep,
    StepStatusChange,
)
from tests.conftest import sample
from tests.dcmtk import findscu, sps
from tests.ehr import EHREndpoint, field
from tests.integration.hl7util import send
from tests.modality import MPPS, final, in_progress, n_create, n_set, step_item
from tests.workflow import STUDY_05, destination, step_statuses, wait_until

SPS1 = step_item(accession="ACC0001", rp_id="RP0001", sps_id="SPS0001", study_uid=STUDY_05)


@pytest.fixture
def broker(make_broker: Any) -> Any:
    app = make_broker()
    assert [a.code for a in send(app.mllp_port, sample("05"))] == ["AA"]
    return app


def started(app: Any) -> str:
    """Create an IN PROGRESS MPPS for SPS0001 and wait until the step is STARTED."""
    uid = generate_uid()
    assert n_create(app.dicom_port, MPPS, uid, in_progress([SPS1])).Status == 0
    wait_until(lambda: step_statuses(app)["SPS0001"] == "STARTED", what="STARTED")
    return uid


def stored(app: Any, uid: str) -> PerformedProcedureStep:
    with app.runtime.session_factory() as session:
        return session.scalars(select(PerformedProcedureStep).where(
            PerformedProcedureStep.sop_instance_uid == uid)).one()


def settle(app: Any) -> dict[str, str]:
    """Step statuses once every accepted MPPS request has been linked."""
    def linked() -> bool:
        with app.runtime.session_factory() as session:
            return not session.scalars(select(PerformedProcedureStep.id).where(
                PerformedProcedureStep.linked_version < PerformedProcedureStep.version)).first()
    wait_until(linked, what="MPPS linked")
    return step_statuses(app)


def test_n_create_needs_in_progress(broker: Any) -> None:
    status = n_create(broker.dicom_port, MPPS, generate_uid(),
                      in_progress([SPS1], status="COMPLETED"))
    assert status.Status == 0x0106
    assert "IN PROGRESS" in status.ErrorComment
    assert settle(broker)["SPS0001"] == "SCHEDULED"
    with broker.runtime.session_factory() as session:
        request = session.scalars(select(DicomRequest)).one()
        assert (request.command, request.status) == ("N-CREATE", 0x0106)
        assert request.dataset, "the refused attribute list stays in the store"


def test_n_create_same_uid_twice_is_a_duplicate(broker: Any) -> None:
    uid = started(broker)
    status = n_create(broker.dicom_port, MPPS, uid, in_progress([SPS1]))
    assert status.Status == 0x0111
    assert settle(broker)["SPS0001"] == "STARTED"


def test_n_create_missing_type1_attribute(broker: Any) -> None:
    ds = in_progress([SPS1])
    del ds.PerformedProcedureStepID
    status = n_create(broker.dicom_port, MPPS, generate_uid(), ds)
    assert status.Status == 0x0120
    assert "(0040,0253)" in status.ErrorComment
    assert settle(broker)["SPS0001"] == "SCHEDULED"


def test_n_create_without_instance_uid_gets_one(broker: Any) -> None:
    status = n_create(broker.dicom_port, MPPS, None, in_progress([SPS1]))
    assert status.Status == 0x0000
    wait_until(lambda: step_statuses(broker)["SPS0001"] == "STARTED", what="STARTED")


def test_n_set_after_completed_may_no_longer_be_updated(broker: Any) -> None:
    uid = started(broker)
    assert n_set(broker.dicom_port, uid, final("COMPLETED")).Status == 0
    wait_until(lambda: step_statuses(broker)["SPS0001"] == "COMPLETED", what="COMPLETED")
    again = n_set(broker.dicom_port, uid, final("DISCONTINUED"))
    assert again.Status == 0x0110
    assert again.ErrorID == 0xA710
    assert settle(broker)["SPS0001"] == "COMPLETED"
    assert stored(broker, uid).status == "COMPLETED"


def test_n_set_unknown_instance(broker: Any) -> None:
    assert n_set(broker.dicom_port, generate_uid(), final()).Status == 0x0112
    assert settle(broker)["SPS0001"] == "SCHEDULED"


def test_n_set_not_allowed_attribute_is_refused_and_unchanged(broker: Any) -> None:
    uid = started(broker)
    change = Dataset()
    change.PatientID = "999999"
    change.PerformedProcedureStepDescription = "changed"
    status = n_set(broker.dicom_port, uid, change)
    assert status.Status == 0x0106
    listed = status.AttributeIdentifierList
    assert Tag("PatientID") in (listed if isinstance(listed, list) else [listed])
    row = stored(broker, uid)
    assert row.patient_id == "135790"
    assert row.attributes["00400254"].get("Value") is None  # description not set either
    assert settle(broker)["SPS0001"] == "STARTED"


def test_completed_needs_end_time_and_performed_series(broker: Any) -> None:
    uid = started(broker)
    status = n_set(broker.dicom_port, uid, final("COMPLETED", with_series=False))
    assert status.Status == 0x0121
    assert "PerformedSeriesSequence" in status.ErrorComment
    assert stored(broker, uid).status == "IN PROGRESS"
    assert settle(broker)["SPS0001"] == "STARTED"
    assert n_set(broker.dicom_port, uid, final("COMPLETED")).Status == 0
    wait_until(lambda: step_statuses(broker)["SPS0001"] == "COMPLETED", what="COMPLETED")


def test_n_set_sequence_replaces_the_whole_sequence(broker: Any) -> None:
    uid = started(broker)
    two = final("COMPLETED")
    two.PerformedSeriesSequence.append(final("COMPLETED").PerformedSeriesSequence[0])
    del two.PerformedProcedureStepStatus
    assert n_set(broker.dicom_port, uid, two).Status == 0
    assert len(stored(broker, uid).attributes["00400340"]["Value"]) == 2
    one = final("COMPLETED", series_uid="1.2.3.4")
    assert n_set(broker.dicom_port, uid, one).Status == 0
    series = stored(broker, uid).attributes["00400340"]["Value"]
    assert [s["0020000E"]["Value"] for s in series] == [["1.2.3.4"]]


def test_incorrect_worklist_entry_puts_the_step_back(broker: Any) -> None:
    uid = started(broker)
    assert findscu(broker.dicom_port, ["AccessionNumber=ACC0001"]) != []  # SPS0002 only
    status = n_set(broker.dicom_port, uid, final(
        "DISCONTINUED", reason=("110514", "DCM", "Incorrect worklist entry selected")))
    assert status.Status == 0
    wait_until(lambda: step_statuses(broker)["SPS0001"] == "SCHEDULED", what="SCHEDULED")
    items = findscu(broker.dicom_port, [
        "AccessionNumber=ACC0001", "ScheduledProcedureStepSequence[0].ScheduledProcedureStepID"])
    assert sorted(sps(ds).ScheduledProcedureStepID for ds in items) == ["SPS0001", "SPS0002"]


def test_discontinued_for_another_reason(broker: Any) -> None:
    uid = started(broker)
    status = n_set(broker.dicom_port, uid, final(
        "DISCONTINUED", reason=("110513", "DCM", "Discontinued for unspecified reason")))
    assert status.Status == 0
    wait_until(lambda: step_statuses(broker)["SPS0001"] == "DISCONTINUED", what="DISCONTINUED")


def test_started_steps_can_stay_on_the_worklist(make_broker: Any) -> None:
    """MWLB_WORKLIST_STATUSES decides whether a STARTED step is still listed."""
    app = make_broker(worklist_statuses=["SCHEDULED", "STARTED"])
    assert [a.code for a in send(app.mllp_port, sample("05"))] == ["AA"]
    started(app)
    items = findscu(app.dicom_port, [
        "AccessionNumber=ACC0001", "ScheduledProcedureStepSequence[0].ScheduledProcedureStepID",
        "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStatus"])
    assert sorted((sps(ds).ScheduledProcedureStepID, sps(ds).ScheduledProcedureStepStatus)
                  for ds in items) == [("SPS0001", "STARTED"), ("SPS0002", "SCHEDULED")]


class HeldTasks:
    """Stands in for the use cases' dispatcher and keeps every job it is handed until
    :meth:`release`: the linking job cannot run in the meantime, whatever the timing
    (the sweeper only re-dispatches after MWLB_SWEEP_GRACE, 30 s)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.held: list[tuple[Job, tuple[Any, ...]]] = []
        app.use_cases.dispatcher = self

    def submit(self, job: Job, *args: Any, countdown: float = 0.0) -> None:
        self.held.append((job, args))

    def release(self) -> None:
        self.app.use_cases.dispatcher = self.app.dispatcher
        for job, args in self.held:
            self.app.dispatcher.submit(job, *args)


def history(app: Any, sps_id: str) -> list[tuple[str, str, str]]:
    with app.runtime.session_factory() as session:
        return [tuple(r) for r in session.execute(
            select(StepStatusChange.old_status, StepStatusChange.new_status,
                   StepStatusChange.cause)
            .join(ScheduledProcedureStep, StepStatusChange.sps_pk == ScheduledProcedureStep.id)
            .where(ScheduledProcedureStep.sps_id == sps_id).order_by(StepStatusChange.id))]


def links(app: Any) -> list[tuple[int, int]]:
    with app.runtime.session_factory() as session:
        return [tuple(r) for r in session.execute(select(MppsStepLink.mpps_pk,
                                                          MppsStepLink.sps_pk))]


def reported(app: Any) -> list[str]:
    with app.runtime.session_factory() as session:
        return list(session.scalars(select(OutboundMessage.trigger)
                                    .order_by(OutboundMessage.sequence)))


def test_n_create_takes_the_step_off_the_worklist_before_its_response(
        make_broker: Any, ehr: EHREndpoint) -> None:
    """An unambiguous reference (SPS ID + RP ID + Accession) is linked and the step
    STARTED in the N-CREATE's transaction: another modality's C-FIND right after the
    response no longer sees it SCHEDULED, with the linking task not run yet. The task
    then does the rest once: the IP report, no second link or history entry."""
    app = make_broker(outbound_destinations=destination(ehr.port))
    assert [a.code for a in send(app.mllp_port, sample("05"))] == ["AA"]
    held = HeldTasks(app)
    uid = generate_uid()
    assert n_create(app.dicom_port, MPPS, uid, in_progress([SPS1]), aet="CT01_AE").Status == 0

    step_keys = ["ScheduledProcedureStepSequence[0].ScheduledProcedureStepID",
                 "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStatus"]
    listed = findscu(app.dicom_port, ["AccessionNumber=ACC0001", *step_keys], aet="DX02_AE")
    assert [(sps(ds).ScheduledProcedureStepID, sps(ds).ScheduledProcedureStepStatus)
            for ds in listed] == [("SPS0002", "SCHEDULED")]
    scheduled = findscu(app.dicom_port, [
        "AccessionNumber=ACC0001", step_keys[0], f"{step_keys[1]}=SCHEDULED"], aet="DX02_AE")
    assert [sps(ds).ScheduledProcedureStepID for ds in scheduled] == ["SPS0002"]
    started = findscu(app.dicom_port, [
        "AccessionNumber=ACC0001", step_keys[0], f"{step_keys[1]}=STARTED"], aet="DX02_AE")
    assert [sps(ds).ScheduledProcedureStepID for ds in started] == ["SPS0001"]

    row = stored(app, uid)
    assert held.held == [(Job.LINK_MPPS, (row.id,))], "the task has not run"
    assert (row.link_state, row.linked_version, row.version) == ("linked", 0, 1)
    cause = f"MPPS {row.id} (IN PROGRESS)"
    assert history(app, "SPS0001")[-1] == ("SCHEDULED", "STARTED", cause)
    assert len(links(app)) == 1
    assert reported(app) == [], "the order status report is the task's"

    held.release()
    assert settle(app) == {"SPS0001": "STARTED", "SPS0002": "SCHEDULED"}
    assert [field(m, "ORC", 5) for m in ehr.wait_for(1)] == ["IP"]
    assert app.use_cases.link_mpps(row.id) == "nothing to do"  # again: no second effect
    assert reported(app) == ["IP"] and len(ehr.messages()) == 1
    assert [h for h in history(app, "SPS0001") if h[2] == cause] == [
        ("SCHEDULED", "STARTED", cause)]
    assert len(links(app)) == 1

    assert n_set(app.dicom_port, uid, final("COMPLETED")).Status == 0
    assert settle(app)["SPS0001"] == "COMPLETED"
    assert history(app, "SPS0001")[-2:] == [("SCHEDULED", "STARTED", cause),
                                            ("STARTED", "COMPLETED", f"MPPS {row.id} (COMPLETED)")]


def test_an_ambiguous_reference_is_left_to_the_task(broker: Any) -> None:
    """An Accession Number alone names two steps here: the N-CREATE only stores the MPPS,
    and the linking task picks the step (by modality, DX: both) as before."""
    held = HeldTasks(broker)
    uid = generate_uid()
    ds = in_progress([step_item(accession="ACC0001", study_uid=STUDY_05)])
    assert n_create(broker.dicom_port, MPPS, uid, ds).Status == 0
    assert step_statuses(broker) == {"SPS0001": "SCHEDULED", "SPS0002": "SCHEDULED"}
    assert stored(broker, uid).link_state == "pending" and links(broker) == []
    held.release()
    assert settle(broker) == {"SPS0001": "STARTED", "SPS0002": "STARTED"}
    assert stored(broker, uid).link_state == "linked" and len(links(broker)) == 2
