"""Workitems of orders and the one state machine of steps and workitems, in-process on
SQLite and PostgreSQL: each scheduled step of an order is also a UPS workitem (PS3.4
Annex CC, Table CC.2.5-3) unless the profile's ``workitems`` key says otherwise;
claiming takes the step off the Modality Worklist and reports IP to the EHR;
completing / cancelling reports CM / DC through the outbox as MPPS does; an MPPS moves
the workitem; a cancelled order cancels its SCHEDULED workitems; every change is a UPS
event on the order's timeline."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from sqlalchemy import select
from sqlalchemy.orm import Session

from broker.domain.ups import UPSState, missing_for_final_state
from broker.mapping.profile import load_profiles
from broker.models import UPSEvent, UPSWorkitem
from broker.services import mpps, studies, ups
from broker.services.ups.datasets import keywords
from broker.web.queries import timeline
from tests.conftest import sample
from tests.ehr import field
from tests.modality import final, in_progress, step_item
from tests.service.conftest import Services
from tests.service.messages import ACCESSION_05, STUDY_05, edited
from tests.service.test_ups_service import performed

T = TypeVar("T")
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"


def run(services: Services, body: Callable[[Session], T]) -> T:
    return services.task("ups", body)


def workitems(services: Services) -> dict[str, UPSWorkitem]:
    """Workitems by the SPS ID of their step."""
    steps = {step.id: sps_id for sps_id, step in services.steps().items()}
    with services.factory() as session:
        rows = session.scalars(select(UPSWorkitem).order_by(UPSWorkitem.id)).all()
        return {steps[r.sps_pk]: r for r in rows if r.sps_pk is not None}


def by_accession(services: Services, accession: str = ACCESSION_05) -> list[Dataset]:
    request = Dataset()
    request.AccessionNumber = accession
    query = Dataset()
    query.ReferencedRequestSequence = [request]
    query.PatientName = ""
    query.ScheduledStationClassCodeSequence = []
    return services.use_cases.ups.search(query, limit=None).items


def test_each_step_of_an_order_is_a_workitem(services: Services) -> None:
    services.process(sample("05"))
    made = workitems(services)
    assert sorted(made) == ["SPS0001", "SPS0002"]
    assert {w.state for w in made.values()} == {"SCHEDULED"}
    found = by_accession(services)
    assert [str(i.PatientName) for i in found] == ["Doe^Jane^Marie"] * 2
    ds = services.use_cases.ups.retrieve(made["SPS0001"].uid)
    assert ds.ProcedureStepState == "SCHEDULED"
    assert ds.ScheduledProcedureStepPriority == "HIGH"  # TQ1 priority A (ASAP)
    assert (ds.PatientID, ds.PatientBirthDate, ds.PatientSex) == ("135790", "19900214", "F")
    request = ds.ReferencedRequestSequence[0]
    assert (request.AccessionNumber, request.StudyInstanceUID, request.RequestedProcedureID,
            request.PlacerOrderNumberImagingServiceRequest) == (
        ACCESSION_05, STUDY_05, "RP0001", "PLC-1001")
    assert ds.ScheduledStationClassCodeSequence[0].CodeValue == "DX"
    assert ds.ScheduledWorkitemCodeSequence[0].CodeValue == "XRCHPA"
    assert ds.ProcedureStepLabel == "Chest PA"
    assert ds.ScheduledProcedureStepStartDateTime.startswith("20250310")
    assert ds.InputReadinessState == "READY"
    station = Dataset()
    station.CodeValue = "DX"
    query = Dataset()
    query.ScheduledStationClassCodeSequence = [station]
    query.ScheduledProcedureStepStartDateTime = "20250310-20250310"
    assert len(services.use_cases.ups.search(query, limit=None).items) == 2


def test_claim_takes_the_step_off_the_worklist_and_completion_reports_cm(
        services: Services) -> None:
    services.process(sample("05"))
    uid = workitems(services)["SPS0001"].uid
    tuid = generate_uid()
    use_cases = services.use_cases.ups
    assert use_cases.change_state(uid, "IN PROGRESS", tuid, by="AI_APP") == 0
    assert services.statuses() == {"SPS0001": "STARTED", "SPS0002": "SCHEDULED"}
    [ip] = services.outbox()
    assert (ip.trigger, field(ip.payload, "ORC", 5)) == ("IP", "IP")
    use_cases.update(uid, tuid, performed(), by="AI_APP")
    assert use_cases.change_state(uid, "COMPLETED", tuid, by="AI_APP") == 0
    assert services.statuses()["SPS0001"] == "COMPLETED"
    history = services.steps()["SPS0001"].history
    assert [h.new_status for h in history] == ["SCHEDULED", "STARTED", "COMPLETED"]
    assert history[-1].cause == "UPS COMPLETED by AI_APP"
    other = workitems(services)["SPS0002"].uid
    other_tuid = generate_uid()
    use_cases.change_state(other, "IN PROGRESS", other_tuid, by="AI_APP")
    use_cases.update(other, other_tuid, performed(), by="AI_APP")
    use_cases.change_state(other, "COMPLETED", other_tuid, by="AI_APP")
    assert [m.trigger for m in services.outbox()] == ["IP", "CM"]
    assert services.procedure(ACCESSION_05).reported_status == "CM"


def test_cancelling_a_claimed_workitem_discontinues_its_step(services: Services) -> None:
    services.process(edited("05", "ORM0005-ONE", only_group=1))
    uid = workitems(services)["SPS0001"].uid
    tuid = generate_uid()
    services.use_cases.ups.change_state(uid, "IN PROGRESS", tuid, by="AI_APP")
    services.use_cases.ups.change_state(uid, "CANCELED", tuid, by="AI_APP")
    assert services.statuses() == {"SPS0001": "DISCONTINUED"}
    assert [m.trigger for m in services.outbox()] == ["IP", "DC"]


def test_request_cancellation_of_a_waiting_workitem_reports_dc(services: Services) -> None:
    services.process(edited("05", "ORM0005-ONE", only_group=1))
    uid = workitems(services)["SPS0001"].uid
    assert services.use_cases.ups.request_cancellation(uid, by="RIS", reason="dup") == 0
    assert services.statuses() == {"SPS0001": "DISCONTINUED"}
    assert [m.trigger for m in services.outbox()] == ["IP", "DC"]


def test_mpps_moves_the_workitems(services: Services) -> None:
    services.process(sample("05"))
    items = [step_item(accession=ACCESSION_05, rp_id="RP0001", sps_id=s, study_uid=STUDY_05)
             for s in ("SPS0001", "SPS0002")]
    uid = generate_uid()
    pk = services.task("mpps", lambda s: mpps.create(s, uid, in_progress(items), "DX01").id)
    assert {w.state for w in workitems(services).values()} == {"IN PROGRESS"}
    # Nobody was given the Transaction UID: a performer cannot take it over.
    claimed = workitems(services)["SPS0001"].uid
    taken = services.task("x", lambda s: _refusal(lambda: ups.change_state(
        s, claimed, "COMPLETED", "", by="AI")))
    assert taken == 0xC301
    services.use_cases.link_mpps(pk)
    services.task("mpps", lambda s: mpps.update(s, uid, final("COMPLETED")))
    services.use_cases.link_mpps(pk)
    assert {w.state for w in workitems(services).values()} == {"COMPLETED"}
    assert [m.trigger for m in services.outbox()] == ["IP", "CM"]  # once, by the MPPS
    # What the MPPS reports is kept as the Performed Procedure item (PS3.3 C.30.3),
    # complete as Table CC.2.5-3 asks of a COMPLETED workitem.
    ds = services.use_cases.ups.retrieve(claimed)
    item = ds.UnifiedProcedureStepPerformedProcedureSequence[0]
    assert item.PerformedProcedureStepEndDateTime == "20250310094500"
    assert item.PerformedStationNameCodeSequence[0].CodeValue == "CT01_AE"
    assert len(item.OutputInformationSequence) == 1
    assert missing_for_final_state(UPSState.COMPLETED, keywords(ds)) == []


def _refusal(call: Callable[[], Any]) -> int:
    try:
        call()
    except ups.UPSError as err:
        return err.code
    return 0


def test_cancelled_order_cancels_its_scheduled_workitems(services: Services) -> None:
    services.process(sample("05"))
    claimed = workitems(services)["SPS0002"].uid
    services.use_cases.ups.change_state(claimed, "IN PROGRESS", generate_uid(), by="AI_APP")
    services.process(sample("07"))
    states = {sps: w.state for sps, w in workitems(services).items()}
    # The claimed step was started: CA discontinues the rest and keeps the started one.
    assert states == {"SPS0001": "CANCELED", "SPS0002": "IN PROGRESS"}
    with services.factory() as session:
        reports = [Dataset.from_json(e.payload).ProcedureStepState for e in session.scalars(
            select(UPSEvent).where(UPSEvent.workitem_uid == workitems(services)["SPS0001"].uid)
            .order_by(UPSEvent.id))]
    assert reports == ["SCHEDULED", "IN PROGRESS", "CANCELED"]


def test_reschedule_moves_a_waiting_workitem(services: Services) -> None:
    services.process(sample("05"))
    before = workitems(services)["SPS0001"].start_datetime
    services.process(sample("06"))
    after = workitems(services)["SPS0001"].start_datetime
    assert after != before
    assert after == services.steps()["SPS0001"].start_datetime


def site_profile(services: Services, tmp_path: Path, workitems_key: str) -> None:
    """Serve sample 05's sender with a profile whose ``workitems`` key is given."""
    (tmp_path / "site.yaml").write_text(
        "name: site\nextends: default\nsenders: [{application: EHR}]\n"
        f"workitems: {workitems_key}\n", encoding="utf-8")
    services.profiles = load_profiles(tmp_path)
    services.use_cases.runtime.profiles = services.profiles  # type: ignore[misc]


def test_a_profile_may_keep_a_modality_out_of_ups(services: Services, tmp_path: Path) -> None:
    site_profile(services, tmp_path, "{modalities: [CT]}")
    services.process(sample("05"))
    assert sorted(services.steps()) == ["SPS0001", "SPS0002"]
    assert workitems(services) == {}


def test_a_profile_may_choose_steps_by_code(services: Services, tmp_path: Path) -> None:
    site_profile(services, tmp_path, "{modalities: [dx], codes: [XRCHLAT]}")
    services.process(sample("05"))
    assert list(workitems(services)) == ["SPS0002"]


def test_the_timeline_shows_ups_events(services: Services) -> None:
    services.process(sample("05"))
    uid = workitems(services)["SPS0001"].uid
    services.use_cases.ups.change_state(uid, "IN PROGRESS", generate_uid(), by="AI_APP")
    with services.factory() as session:
        shown = timeline(session, ACCESSION_05)
    assert shown is not None
    ups_lines = [e["text"] for e in shown["events"] if e["kind"] == "UPS"]
    assert any("SPS0001" in t and "IN PROGRESS" in t and "AI_APP" in t for t in ups_lines)
    assert sum("SCHEDULED" in t for t in ups_lines) == 2


def test_a_waiting_order_workitem_is_updated_and_found_by_its_new_values(
        services: Services) -> None:
    services.process(sample("05"))
    uid = workitems(services)["SPS0001"].uid
    change = Dataset()
    change.ScheduledProcedureStepStartDateTime = "20250311080000"
    change.ProcedureStepLabel = "Chest PA, second read"
    assert services.use_cases.ups.update(uid, "", change, by="RIS") == []
    query = Dataset()
    query.ScheduledProcedureStepStartDateTime = "20250311-20250311"
    query.ProcedureStepLabel = "*second read"
    found = services.use_cases.ups.search(query, limit=None).items
    assert [i.SOPInstanceUID for i in found] == [uid]
    assert str(found[0].PatientName) == "Doe^Jane^Marie"  # still the order's patient


def test_search_spans_order_born_and_pushed_workitems(services: Services) -> None:
    """Both origins in one start-ordered answer, each matched on its own columns; a key
    a pushed workitem keeps no column for (Requested Procedure ID) never matches it."""
    services.process(sample("05"))
    pushed = Dataset()
    pushed.PatientName, pushed.PatientID = "Doe^John", "999"
    pushed.ProcedureStepLabel = "Lung nodule AI"
    pushed.ScheduledProcedureStepStartDateTime = "20250310093200"
    uid = services.use_cases.ups.create(pushed, by="RIS")
    query = Dataset()
    query.PatientName = "DOE^J*"
    found = services.use_cases.ups.search(query, limit=None).items
    assert [str(i.PatientName) for i in found] == ["Doe^Jane^Marie", "Doe^John",
                                                   "Doe^Jane^Marie"]
    assert found[1].SOPInstanceUID == uid
    page = services.use_cases.ups.search(query, limit=1, offset=1)
    assert [i.SOPInstanceUID for i in page.items] == [uid] and page.total_capped
    request = Dataset()
    request.RequestedProcedureID = "RP0001"
    query.ReferencedRequestSequence = [request]
    assert len(services.use_cases.ups.search(query, limit=None).items) == 2


def test_instances_held_for_the_study_are_the_input(services: Services) -> None:
    """Input Information Sequence (0040,4021): the instances the broker stored for the
    workitem's study, one item per series (PS3.3 C.30.2)."""
    services.process(sample("05"))
    series, instances = generate_uid(), [generate_uid(), generate_uid()]
    for sop_instance in instances:
        ds = Dataset()
        ds.StudyInstanceUID, ds.SeriesInstanceUID = STUDY_05, series
        ds.AccessionNumber, ds.Modality = ACCESSION_05, "DX"
        services.task("store", lambda s, d=ds, u=sop_instance: studies.index_instance(
            s.connection(), d, sop_class_uid=CT_IMAGE, sop_instance_uid=u,
            calling_ae_title="DX01", transfer_syntax_uid="1.2.840.10008.1.2.1"))
    uid = workitems(services)["SPS0001"].uid
    [item] = services.use_cases.ups.retrieve(uid).InputInformationSequence
    assert (item.StudyInstanceUID, item.SeriesInstanceUID, item.TypeOfInstances) == (
        STUDY_05, series, "DICOM")
    assert [r.ReferencedSOPInstanceUID for r in item.ReferencedSOPSequence] == instances
    query = Dataset()
    query.InputInformationSequence = []
    [found, _other] = services.use_cases.ups.search(query, limit=None).items
    assert len(found.InputInformationSequence[0].ReferencedSOPSequence) == 2


def test_search_answers_the_same_as_json_and_as_datasets(services: Services) -> None:
    """UPS-RS Search encodes the DICOM JSON model straight from the rows (PS3.18 F.2),
    C-FIND builds Datasets: the two give the same attributes, for order-born workitems
    (with a Specific Character Set and attributes a performer stored) and pushed ones,
    for asked keys, empty keys and everything held."""
    services.process(sample("05"))
    pushed = Dataset()
    pushed.SpecificCharacterSet = "ISO_IR 192"
    pushed.PatientName, pushed.PatientID = "Müller^Jürgen=ミュラー^ユルゲン", "999"
    pushed.ProcedureStepLabel = "Lung nodule AI"
    pushed.ScheduledProcedureStepStartDateTime = "20250310093200"
    pushed.ScheduledStationNameCodeSequence = [Dataset()]
    item = pushed.ScheduledStationNameCodeSequence[0]
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = "AI1", "99X", "AI one"
    services.use_cases.ups.create(pushed, by="RIS")
    claimed = next(iter(workitems(services).values())).uid
    services.use_cases.ups.change_state(claimed, "IN PROGRESS", generate_uid(), by="AI")
    queries: list[Dataset] = [Dataset()]
    asked = Dataset()
    asked.PatientName = ""
    asked.PatientBirthDate = ""
    asked.ReferencedRequestSequence = []
    asked.ScheduledWorkitemCodeSequence = []
    asked.InputInformationSequence = []
    asked.CommentsOnTheScheduledProcedureStep = ""
    asked.ScheduledProcedureStepExpirationDateTime = ""
    asked.ProcedureStepProgressInformationSequence = []
    queries.append(asked)
    for query in queries:
        for include_all in (False, True):
            as_datasets = services.use_cases.ups.search(query, limit=None,
                                                        include_all=include_all)
            as_json = services.use_cases.ups.search(query, limit=None,
                                                    include_all=include_all, as_json=True)
            assert len(as_datasets.items) == 3 and not as_json.items  # two steps, one pushed
            assert as_json.documents == [ds.to_json_dict(bulk_data_threshold=2**31)
                                         for ds in as_datasets.items]
