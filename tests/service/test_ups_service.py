"""The UPS service (:mod:`broker.services.ups`), in-process on SQLite and PostgreSQL:
search with the worklist's matching (PS3.4 C.2.2.2, CC.2.8), claiming and the state
table (PS3.4 Table CC.1.1-2), updates with and without the Transaction UID (CC.2.6),
the final-state requirements of COMPLETED (Table CC.2.5-3), cancellation and its
request (CC.2.1.3), subscriptions and the events each subscriber is due (CC.2.2-2.4).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from sqlalchemy import select
from sqlalchemy.orm import Session

from broker.domain.ups import UPSError
from broker.models import UPSEvent, UPSWorkitem
from broker.services import ups
from tests.service.conftest import Services

T = TypeVar("T")


def run(services: Services, body: Callable[[Session], T]) -> T:
    """One transaction, as the application layer wraps each call."""
    return services.task("ups", body)


def code(value: str, scheme: str = "99TEST", meaning: str = "") -> list[Dataset]:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator = value, scheme
    item.CodeMeaning = meaning or value
    return [item]


def workitem(*, name: str = "DOE^JANE", patient_id: str = "P100", label: str = "CT lung AI",
             start: str = "20261202090000", station: str = "AI_NODE1",
             accession: str = "A100", priority: str = "MEDIUM") -> Dataset:
    """A pushed workitem (PS3.4 Table CC.2.5-3, N-CREATE usage)."""
    ds = Dataset()
    ds.PatientName, ds.PatientID, ds.IssuerOfPatientID = name, patient_id, "HOSP"
    ds.PatientBirthDate, ds.PatientSex = "19700101", "F"
    ds.ProcedureStepLabel, ds.WorklistLabel = label, "AI"
    ds.ScheduledProcedureStepPriority = priority
    ds.ScheduledProcedureStepStartDateTime = start
    ds.ScheduledStationNameCodeSequence = code(station)
    ds.ScheduledWorkitemCodeSequence = code("110005", "DCM", "Interpretation")
    ds.InputReadinessState = "READY"
    request = Dataset()
    request.AccessionNumber, request.StudyInstanceUID = accession, generate_uid()
    request.RequestedProcedureID = "RP1"
    ds.ReferencedRequestSequence = [request]
    return ds


def create(services: Services, ds: Dataset | None = None, by: str = "RIS") -> str:
    return run(services, lambda s: ups.create(s, ds or workitem(), uid=None, by=by))


def search(services: Services, limit: int | None = None, offset: int = 0,
           **keys: Any) -> ups.SearchResult:
    query = Dataset()
    for keyword, value in keys.items():
        setattr(query, keyword, value)
    return run(services, lambda s: ups.search(s, query, limit=limit, offset=offset))


def refused(services: Services, body: Callable[[Session], Any]) -> UPSError:
    with pytest.raises(UPSError) as caught:
        run(services, body)
    return caught.value


def state_of(services: Services, uid: str) -> str:
    return str(run(services, lambda s: ups.retrieve(s, uid)).ProcedureStepState)


def performed(*, output: bool = True, end: bool = True) -> Dataset:
    """What a performer sends before COMPLETED: the Performed Procedure item."""
    item = Dataset()
    item.PerformedProcedureStepStartDateTime = "20261202091000"
    if end:
        item.PerformedProcedureStepEndDateTime = "20261202091500"
    if output:
        out = Dataset()
        out.TypeOfInstances, out.StudyInstanceUID = "DICOM", generate_uid()
        out.SeriesInstanceUID = generate_uid()
        item.OutputInformationSequence = [out]
    ds = Dataset()
    ds.UnifiedProcedureStepPerformedProcedureSequence = [item]
    return ds


# -- create, retrieve, search ------------------------------------------------------------

def test_created_workitem_is_retrieved_scheduled(services: Services) -> None:
    uid = create(services)
    ds = run(services, lambda s: ups.retrieve(s, uid))
    assert (ds.SOPClassUID, ds.SOPInstanceUID) == (ups.UPS_SOP_CLASS, uid)
    assert ds.ProcedureStepState == "SCHEDULED"
    assert (str(ds.PatientName), ds.PatientID, ds.ProcedureStepLabel) == (
        "DOE^JANE", "P100", "CT lung AI")
    assert "TransactionUID" not in ds
    error = refused(services, lambda s: ups.retrieve(s, generate_uid()))
    assert (error.code, error.http_status) == (0xC307, 404)


def test_create_refuses_a_state_other_than_scheduled_and_a_used_uid(
        services: Services) -> None:
    ds = workitem()
    ds.ProcedureStepState = "IN PROGRESS"
    assert refused(services, lambda s: ups.create(s, ds, uid=None, by="RIS")).code == 0xC309
    uid = create(services)
    again = refused(services, lambda s: ups.create(s, workitem(), uid=uid, by="RIS"))
    assert (again.code, again.http_status) == (0x0111, 409)


def test_search_matches_like_the_worklist(services: Services) -> None:
    """Wild cards and case-insensitive PN, DT ranges, codes inside sequences, UID lists,
    states: the matching of PS3.4 C.2.2.2, as MWL C-FIND does it."""
    jane = create(services, workitem(name="DOE^JANE", start="20261202090000"))
    john = create(services, workitem(name="DOE^JOHN", patient_id="P200",
                                     start="20261203100000", station="AI_NODE2"))
    smith = create(services, workitem(name="SMITH^ANN", patient_id="P300",
                                      start="20261202140000", accession="A300"))

    def uids(result: ups.SearchResult) -> list[str]:
        return [str(i.SOPInstanceUID) for i in result.items]

    assert uids(search(services, PatientName="doe*")) == [jane, john]
    assert uids(search(services, ScheduledProcedureStepStartDateTime="20261202-20261202")) == [
        jane, smith]
    assert uids(search(services, ScheduledProcedureStepStartDateTime="20261202120000-")) == [
        smith, john]
    station = Dataset()
    station.CodeValue = "AI_NODE2"
    assert uids(search(services, ScheduledStationNameCodeSequence=[station])) == [john]
    request = Dataset()
    request.AccessionNumber = "A300"
    assert uids(search(services, ReferencedRequestSequence=[request])) == [smith]
    assert uids(search(services, SOPInstanceUID=[jane, smith])) == [jane, smith]
    assert uids(search(services, ProcedureStepState="IN PROGRESS")) == []
    assert uids(search(services, PatientID="P?00")) == [jane, smith, john]  # start order


def test_search_pages_and_returns_the_keys_asked(services: Services) -> None:
    made = [create(services, workitem(start=f"2026120209{m:02d}00")) for m in range(5)]
    first = search(services, limit=2, PatientBirthDate="")
    assert [i.SOPInstanceUID for i in first.items] == made[:2]
    assert first.total_capped
    last = search(services, limit=2, offset=4)
    assert [i.SOPInstanceUID for i in last.items] == made[4:]
    assert not last.total_capped
    item = first.items[0]
    assert item.PatientBirthDate == "19700101"  # asked for
    assert item.ProcedureStepState == "SCHEDULED"  # required return key
    assert "PatientSex" not in item  # neither
    odd = search(services, PatientWeight="70")
    assert odd.warnings and "PatientWeight" in odd.warnings[0]


# -- claim, update, complete, cancel -----------------------------------------------------

def test_claim_and_a_second_claim_refused(services: Services) -> None:
    uid = create(services)
    first, second = generate_uid(), generate_uid()
    assert run(services, lambda s: ups.change_state(s, uid, "IN PROGRESS", first,
                                                    by="AI_A")) == 0
    assert state_of(services, uid) == "IN PROGRESS"
    error = refused(services, lambda s: ups.change_state(s, uid, "IN PROGRESS", second,
                                                         by="AI_B"))
    assert (error.code, error.http_status) == (0xC302, 409)
    other = create(services)
    no_uid = refused(services, lambda s: ups.change_state(s, other, "IN PROGRESS", "",
                                                          by="AI_B"))
    assert no_uid.code == 0xC301
    back = refused(services, lambda s: ups.change_state(s, uid, "SCHEDULED", first, by="AI_A"))
    assert back.code == 0xC303


def test_update_needs_the_transaction_uid_once_in_progress(services: Services) -> None:
    uid = create(services)
    label = Dataset()
    label.ProcedureStepLabel = "CT lung AI v2"
    assert run(services, lambda s: ups.update(s, uid, "", label, by="RIS")) == []
    assert run(services, lambda s: ups.retrieve(s, uid)).ProcedureStepLabel == "CT lung AI v2"
    label_search = search(services, ProcedureStepLabel="*v2")
    assert [i.SOPInstanceUID for i in label_search.items] == [uid]
    tuid = generate_uid()
    run(services, lambda s: ups.change_state(s, uid, "IN PROGRESS", tuid, by="AI_A"))
    progress = Dataset()
    item = Dataset()
    item.ProcedureStepProgress = 50
    progress.ProcedureStepProgressInformationSequence = [item]
    without = refused(services, lambda s: ups.update(s, uid, "", progress, by="AI_A"))
    assert (without.code, without.http_status) == (0xC301, 400)
    wrong = refused(services, lambda s: ups.update(s, uid, generate_uid(), progress, by="AI_A"))
    assert wrong.code == 0xC301
    progress.ProcedureStepState = "COMPLETED"
    warnings = run(services, lambda s: ups.update(s, uid, tuid, progress, by="AI_A"))
    assert warnings == ["ProcedureStepState may not be updated: left as it is"]
    ds = run(services, lambda s: ups.retrieve(s, uid))
    assert ds.ProcedureStepProgressInformationSequence[0].ProcedureStepProgress == 50
    assert ds.ProcedureStepState == "IN PROGRESS"


def test_complete_needs_the_final_state_attributes(services: Services) -> None:
    uid = create(services)
    tuid = generate_uid()
    early = refused(services, lambda s: ups.change_state(s, uid, "COMPLETED", tuid, by="AI"))
    assert early.code == 0xC310  # not yet IN PROGRESS
    run(services, lambda s: ups.change_state(s, uid, "IN PROGRESS", tuid, by="AI"))
    bare = refused(services, lambda s: ups.change_state(s, uid, "COMPLETED", tuid, by="AI"))
    assert (bare.code, bare.http_status) == (0xC304, 409)
    assert "UnifiedProcedureStepPerformedProcedureSequence" in bare.reason
    run(services, lambda s: ups.update(s, uid, tuid, performed(end=False), by="AI"))
    partial = refused(services, lambda s: ups.change_state(s, uid, "COMPLETED", tuid, by="AI"))
    assert "PerformedProcedureStepEndDateTime" in partial.reason
    run(services, lambda s: ups.update(s, uid, tuid, performed(), by="AI"))
    wrong = refused(services, lambda s: ups.change_state(s, uid, "COMPLETED", generate_uid(),
                                                         by="AI"))
    assert wrong.code == 0xC301
    assert run(services, lambda s: ups.change_state(s, uid, "COMPLETED", tuid, by="AI")) == 0
    ds = run(services, lambda s: ups.retrieve(s, uid))
    assert ds.ProcedureStepState == "COMPLETED"
    item = ds.UnifiedProcedureStepPerformedProcedureSequence[0]
    # Left out by the performer: taken from what was scheduled.
    assert item.PerformedStationNameCodeSequence[0].CodeValue == "AI_NODE1"
    assert item.PerformedWorkitemCodeSequence[0].CodeValue == "110005"
    assert run(services, lambda s: ups.change_state(s, uid, "COMPLETED", tuid, by="AI")) == (
        0xB306)
    late = refused(services, lambda s: ups.update(s, uid, tuid, performed(), by="AI"))
    assert late.code == 0xC300
    cancel = refused(services, lambda s: ups.change_state(s, uid, "CANCELED", tuid, by="AI"))
    assert cancel.code == 0xC300


def test_performer_cancels_what_it_claimed(services: Services) -> None:
    uid = create(services)
    tuid = generate_uid()
    scheduled = refused(services, lambda s: ups.change_state(s, uid, "CANCELED", tuid, by="AI"))
    assert scheduled.code == 0xC310
    run(services, lambda s: ups.change_state(s, uid, "IN PROGRESS", tuid, by="AI"))
    assert run(services, lambda s: ups.change_state(s, uid, "CANCELED", tuid, by="AI")) == 0
    ds = run(services, lambda s: ups.retrieve(s, uid))
    assert ds.ProcedureStepState == "CANCELED"
    assert ds.ProcedureStepProgressInformationSequence[0].ProcedureStepCancellationDateTime
    assert run(services, lambda s: ups.change_state(s, uid, "CANCELED", tuid, by="AI")) == 0xB304


def test_request_cancellation(services: Services) -> None:
    """SCHEDULED: cancelled at once (through IN PROGRESS, two state reports); IN
    PROGRESS: the performer is told and the state stays; CANCELED: warning; COMPLETED:
    0xC311."""
    waiting = create(services)
    assert run(services, lambda s: ups.request_cancellation(
        s, waiting, by="RIS", reason="patient left")) == 0
    assert state_of(services, waiting) == "CANCELED"
    assert run(services, lambda s: ups.request_cancellation(s, waiting, by="RIS")) == 0xB304
    busy = create(services)
    tuid = generate_uid()
    run(services, lambda s: ups.change_state(s, busy, "IN PROGRESS", tuid, by="AI"))
    assert run(services, lambda s: ups.request_cancellation(
        s, busy, by="RIS", reason="wrong study", contact="tel:123")) == 0
    assert state_of(services, busy) == "IN PROGRESS"
    run(services, lambda s: ups.update(s, busy, tuid, performed(), by="AI"))
    run(services, lambda s: ups.change_state(s, busy, "COMPLETED", tuid, by="AI"))
    done = refused(services, lambda s: ups.request_cancellation(s, busy, by="RIS"))
    assert (done.code, done.http_status) == (0xC311, 409)
    with services.factory() as session:
        kinds = [(e.workitem_uid, e.event_type_id, e.payload) for e in session.scalars(
            select(UPSEvent).order_by(UPSEvent.id))]
    waiting_events = [(k, Dataset.from_json(p)) for u, k, p in kinds if u == waiting]
    assert [(k, str(p.get("ProcedureStepState", ""))) for k, p in waiting_events] == [
        (1, "SCHEDULED"), (2, ""), (1, "IN PROGRESS"), (1, "CANCELED")]
    assert waiting_events[1][1].ReasonForCancellation == "patient left"
    busy_kinds = [k for u, k, _p in kinds if u == busy]
    assert busy_kinds == [1, 1, 2, 1]  # scheduled, claimed, cancel requested, completed


# -- subscriptions and events ------------------------------------------------------------

def test_subscribers_get_the_events_of_what_they_subscribed_to(services: Services) -> None:
    first, second = create(services), create(services)
    missing = refused(services, lambda s: ups.subscribe(s, "WATCH", generate_uid(),
                                                        deletion_lock=False))
    assert missing.code == 0xC307
    run(services, lambda s: ups.subscribe(s, "WATCH", first, deletion_lock=False))
    run(services, lambda s: ups.subscribe(s, "ALL", ups.GLOBAL_SUBSCRIPTION,
                                          deletion_lock=True))
    tuid = generate_uid()
    run(services, lambda s: ups.change_state(s, first, "IN PROGRESS", tuid, by="AI"))
    run(services, lambda s: ups.request_cancellation(s, second, by="RIS"))

    def due(ae: str, after: int = 0) -> list[tuple[str, int, str]]:
        rows = run(services, lambda s: ups.events_after(s, after, ae))
        return [(r.workitem_uid, r.event_type_id,
                 str(r.payload.get("ProcedureStepState", ""))) for r in rows]

    assert due("WATCH") == [(first, 1, "SCHEDULED"), (first, 1, "IN PROGRESS")]
    assert due("ALL") == [(first, 1, "SCHEDULED"), (second, 1, "SCHEDULED"),
                          (first, 1, "IN PROGRESS"), (second, 2, ""),
                          (second, 1, "IN PROGRESS"), (second, 1, "CANCELED")]
    assert due("NOBODY") == []
    rows = run(services, lambda s: ups.events_after(s, 0, "ALL", limit=2))
    assert len(rows) == 2
    assert [r[0] for r in due("ALL", rows[-1].id)] == [first, second, second, second]
    third = create(services)
    assert due("WATCH", 0)[-1][0] == first  # a new workitem is not WATCH's
    run(services, lambda s: ups.suspend_global(s, "ALL"))
    fourth = create(services)
    after_suspend = [u for u, _k, _s in due("ALL")]
    assert third in after_suspend and fourth not in after_suspend
    run(services, lambda s: ups.unsubscribe(s, "ALL", ups.GLOBAL_SUBSCRIPTION))
    run(services, lambda s: ups.request_cancellation(s, third, by="RIS"))
    assert [u for u, _k, _s in due("ALL", after=max_event(services) - 3)] == []
    run(services, lambda s: ups.unsubscribe(s, "WATCH", first))
    run(services, lambda s: ups.change_state(s, first, "CANCELED", tuid, by="AI"))
    assert (first, 1, "CANCELED") not in due("WATCH")


def test_filtered_global_subscription(services: Services) -> None:
    node1 = create(services, workitem(station="AI_NODE1"))
    node2 = create(services, workitem(station="AI_NODE2"))
    wanted = Dataset()
    station = Dataset()
    station.CodeValue = "AI_NODE2"
    wanted.ScheduledStationNameCodeSequence = [station]
    run(services, lambda s: ups.subscribe(s, "NODE2", ups.FILTERED_GLOBAL_SUBSCRIPTION,
                                          deletion_lock=False, filter=wanted))
    run(services, lambda s: ups.request_cancellation(s, node1, by="RIS"))
    run(services, lambda s: ups.request_cancellation(s, node2, by="RIS"))
    rows = run(services, lambda s: ups.events_after(s, 0, "NODE2"))
    assert {r.workitem_uid for r in rows} == {node2}
    assert [r.event_type_id for r in rows] == [1, 2, 1, 1]


def max_event(services: Services) -> int:
    with services.factory() as session:
        return max(session.scalars(select(UPSEvent.id)))


def test_workitem_rows_keep_the_transaction_uid_private(services: Services) -> None:
    uid = create(services)
    tuid = generate_uid()
    run(services, lambda s: ups.change_state(s, uid, "IN PROGRESS", tuid, by="AI"))
    with services.factory() as session:
        row = session.scalars(select(UPSWorkitem).where(UPSWorkitem.uid == uid)).one()
        assert row.transaction_uid == tuid
    found = search(services, TransactionUID="")
    assert all("TransactionUID" not in i for i in found.items)


def test_a_new_station_is_an_assigned_event(services: Services) -> None:
    uid = create(services)
    run(services, lambda s: ups.subscribe(s, "WATCH", uid, deletion_lock=False))
    change = Dataset()
    change.ScheduledStationNameCodeSequence = code("AI_NODE9")
    run(services, lambda s: ups.update(s, uid, "", change, by="RIS"))
    rows = run(services, lambda s: ups.events_after(s, 0, "WATCH"))
    assert [r.event_type_id for r in rows] == [1, 5]
    assert rows[-1].payload.ScheduledStationNameCodeSequence[0].CodeValue == "AI_NODE9"
    node9 = Dataset()
    node9.CodeValue = "AI_NODE9"
    found = search(services, ScheduledStationNameCodeSequence=[node9])
    assert [i.SOPInstanceUID for i in found.items] == [uid]


def test_two_performers_claiming_at_once_one_wins(services: Services) -> None:
    """Concurrent claims through the use case, each in its own transaction: the row
    lock (PostgreSQL) or the write lock (SQLite) lets exactly one through; the other
    is refused 0xC302 and the winner's Transaction UID is the one kept."""
    uid = create(services)
    barrier = threading.Barrier(4)
    results: dict[str, object] = {}

    def claim(name: str) -> None:
        barrier.wait()
        try:
            results[name] = services.use_cases.ups.change_state(
                uid, "IN PROGRESS", f"2.25.{abs(hash(name))}", by=name)
        except UPSError as err:
            results[name] = err.code

    threads = [threading.Thread(target=claim, args=(f"AI_{n}",)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(results.values(), key=str) == [0, 0xC302, 0xC302, 0xC302]
    [winner] = [name for name, result in results.items() if result == 0]
    with services.factory() as session:
        row = session.scalars(select(UPSWorkitem).where(UPSWorkitem.uid == uid)).one()
        assert row.transaction_uid == f"2.25.{abs(hash(winner))}"


def test_search_may_return_everything_held(services: Services) -> None:
    uid = create(services)
    [item] = run(services, lambda s: ups.search(s, Dataset(), limit=None,
                                                include_all=True)).items
    assert item.SOPInstanceUID == uid
    assert item.ReferencedRequestSequence[0].AccessionNumber == "A100"
    assert item.PatientSex == "F" and "TransactionUID" not in item


def test_delivery_position_per_subscriber(services: Services) -> None:
    uid = create(services)
    use_cases = services.use_cases.ups
    use_cases.subscribe("WATCH", uid, deletion_lock=False)
    use_cases.subscribe("ALL", ups.GLOBAL_SUBSCRIPTION, deletion_lock=False)
    assert use_cases.subscribers() == ["ALL", "WATCH"]
    assert use_cases.delivered_up_to("WATCH") == 0
    assert use_cases.events_after(use_cases.latest_event_id(), "WATCH") == []
    [first] = use_cases.events_after(use_cases.delivered_up_to("WATCH"), "WATCH")
    use_cases.record_delivery("WATCH", first.id)
    use_cases.record_delivery("WATCH", first.id - 1)  # never moves back
    assert use_cases.delivered_up_to("WATCH") == first.id
    use_cases.request_cancellation(uid, by="RIS")
    due = use_cases.events_after(use_cases.delivered_up_to("WATCH"), "WATCH")
    assert [r.event_type_id for r in due] == [2, 1, 1]
