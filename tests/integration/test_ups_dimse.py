"""UPS over DIMSE (PS3.4 Annex CC) on a real ``mwl-broker serve`` with a real worker,
PostgreSQL and Redis: orders arrive over MLLP, a performer finds, claims, updates and
completes their workitems with a pynetdicom SCU (UPS Pull, Push, Watch), and
subscribers (a pynetdicom SCP) receive the N-EVENT-REPORTs of UPS Event, also across
a restart of the broker. UPS Push runs on the embedded broker, with and without the
DICOM fast path (which serves N-CREATE and N-SET as they arrive)."""

from __future__ import annotations

import queue
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, evt
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from broker.models import DicomRequest
from tests.conftest import sample
from tests.integration.conftest import free_port
from tests.integration.hl7util import send
from tests.workflow import wait_until

PUSH = "1.2.840.10008.5.1.4.34.6.1"
WATCH = "1.2.840.10008.5.1.4.34.6.2"
PULL = "1.2.840.10008.5.1.4.34.6.3"
EVENT = "1.2.840.10008.5.1.4.34.6.4"
QUERY = "1.2.840.10008.5.1.4.34.6.5"
GLOBAL = "1.2.840.10008.5.1.4.34.5"
CHANGE_STATE, REQUEST_CANCEL, SUBSCRIBE, UNSUBSCRIBE = 1, 2, 3, 4


@dataclass
class Report:
    """One N-EVENT-REPORT as a subscriber received it."""

    called: str
    sop_class: str
    uid: str
    event_type: int
    info: Dataset


class Subscriber:
    """A UPS Event SCU (the event receiver) listening on loopback for every AE title:
    accepts the broker's SCP role for UPS Event, answers each report with success."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._reports: dict[str, queue.Queue[Report]] = {}
        self._lock = threading.Lock()
        self._ae = AE(ae_title="SUBSCRIBER")
        self._ae.require_called_aet = False
        self._ae.add_supported_context(EVENT, scu_role=False, scp_role=True)
        self._server: Any = None

    def _on_report(self, event: Any) -> tuple[int, None]:
        req = event.request
        called = str(event.assoc.requestor.primitive.called_ae_title).strip()
        self._queue(called).put(Report(called, str(req.AffectedSOPClassUID),
                                       str(req.AffectedSOPInstanceUID), int(req.EventTypeID),
                                       event.event_information))
        return 0x0000, None

    def _queue(self, called: str) -> queue.Queue[Report]:
        with self._lock:
            return self._reports.setdefault(called, queue.Queue())

    def start(self) -> Subscriber:
        self._server = self._ae.start_server(
            ("127.0.0.1", self.port), block=False,
            evt_handlers=[(evt.EVT_N_EVENT_REPORT, self._on_report)])
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def next(self, called: str, uid: str | None = None, timeout: float = 20,
             **expected: Any) -> Report:
        """The next report to ``called`` (about ``uid``) with the ``expected`` Event
        Information values; others to that AE title before it are skipped."""
        reports = self._queue(called)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            assert left > 0, f"no report to {called} about {uid} with {expected}"
            try:
                report = reports.get(timeout=left)
            except queue.Empty:
                continue
            assert report.sop_class == PUSH  # Affected SOP Class of a UPS event (CC.2.4.3)
            if (uid is None or report.uid == uid) and all(
                    report.info.get(k) == v for k, v in expected.items()):
                return report

    def drain(self, seconds: float) -> list[Report]:
        """Every report arriving within ``seconds``."""
        time.sleep(seconds)
        out = []
        with self._lock:
            queues = list(self._reports.values())
        for reports in queues:
            while not reports.empty():
                out.append(reports.get_nowait())
        return out


@pytest.fixture
def subscriber() -> Iterator[Subscriber]:
    receiver = Subscriber(free_port())
    yield receiver
    receiver.stop()


@contextmanager
def ups_scu(port: int, aet: str = "AI_APP") -> Iterator[Any]:
    ae = AE(ae_title=aet)
    for sop_class in (PUSH, WATCH, PULL, QUERY):
        ae.add_requested_context(sop_class)
    assoc = ae.associate("127.0.0.1", port, ae_title="MWL_BROKER")
    assert assoc.is_established, "association with the broker refused"
    try:
        yield assoc
    finally:
        assoc.release()


def find(assoc: Any, query: Dataset, sop_class: str = PULL) -> list[Dataset]:
    out = []
    for status, identifier in assoc.send_c_find(query, sop_class):
        assert status is not None and "Status" in status, "no C-FIND response"
        if status.Status in (0xFF00, 0xFF01):
            out.append(identifier)
        else:
            assert status.Status == 0x0000, hex(status.Status)
    return out


def action(assoc: Any, action_type: int, uid: str, sop_class: str = PULL,
           **info: Any) -> Dataset:
    ds = Dataset()
    for keyword, value in info.items():
        setattr(ds, keyword, value)
    status, _reply = assoc.send_n_action(ds if info else None, action_type, sop_class, uid)
    assert status is not None and "Status" in status, "no N-ACTION response"
    return status


def n_set(assoc: Any, uid: str, ds: Dataset) -> Dataset:
    status, _ = assoc.send_n_set(ds, PULL, uid)
    assert status is not None and "Status" in status, "no N-SET response"
    return status


def query(**keys: Any) -> Dataset:
    ds = Dataset()
    ds.SOPInstanceUID = ""
    ds.ProcedureStepState = ""
    ds.PatientName = ""
    ds.ScheduledProcedureStepStartDateTime = ""
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


def requests(database_url: str) -> list[tuple[str, int]]:
    """(command, status) of every DIMSE request the broker kept, in order."""
    engine = create_engine(database_url)
    try:
        with Session(engine) as session:
            return [(r.command, r.status) for r in session.scalars(
                select(DicomRequest).order_by(DicomRequest.id))]
    finally:
        engine.dispose()


def orders_in(broker: Any) -> list[Dataset]:
    """Send the two-step order of Jane Doe; its two workitems as UPS Pull finds them."""
    assert [a.code for a in send(broker.mllp_port, sample("05"))] == ["AA"]
    with ups_scu(broker.dicom_port) as assoc:
        return wait_until(lambda: len(found := find(assoc, query(PatientName="DOE*"))) == 2
                          and found, timeout=60, what="Jane Doe's two workitems")


def restart_serve(procs: Any) -> None:
    serve = next(p for p, _log in procs.children if "serve" in p.args and p.poll() is None)
    serve.terminate()
    try:
        serve.wait(30)
    except subprocess.TimeoutExpired:
        serve.kill()
    procs.children = [(p, log) for p, log in procs.children if p is not serve]
    procs.start("serve")
    procs.wait_for("serve", r"mwl-broker listening")


@pytest.mark.postgres
@pytest.mark.redis
def test_a_performer_claims_updates_and_completes_over_dimse(
        start_distributed: Any, subscriber: Subscriber) -> None:
    port = subscriber.port
    broker = start_distributed(
        ups_event_destinations=f"WATCHER=127.0.0.1:{port},ITEMWATCH=127.0.0.1:{port}",
        dicom_allowed_calling='[{"ae_title": "AI_APP"}, {"ae_title": "WATCHER"}]')
    subscriber.start()
    doe = orders_in(broker)
    assert {ds.ProcedureStepState for ds in doe} == {"SCHEDULED"}
    assert {str(ds.PatientName) for ds in doe} == {"Doe^Jane^Marie"}

    # The same calling-AE allow-list as the worklist.
    intruder = AE(ae_title="INTRUDER")
    intruder.add_requested_context(PULL)
    refused = intruder.associate("127.0.0.1", broker.dicom_port, ae_title="MWL_BROKER")
    assert refused.is_rejected

    with ups_scu(broker.dicom_port) as assoc:
        # Matching: a date-time range picks the first step; UPS Query finds the same.
        [first] = find(assoc, query(
            ScheduledProcedureStepStartDateTime="20250310093000-20250310093200"))
        uid = str(first.SOPInstanceUID)
        other = next(str(ds.SOPInstanceUID) for ds in doe if ds.SOPInstanceUID != uid)
        assert [str(ds.SOPInstanceUID) for ds in find(
            assoc, query(SOPInstanceUID=uid), QUERY)] == [uid]
        assert find(assoc, query(PatientName="ROE*")) == []

        # N-GET: the attributes asked for, never the Transaction UID.
        status, item = assoc.send_n_get([0x00741000, 0x00100010, 0x0040A370, 0x00081195],
                                        PULL, uid)
        assert status.Status == 0x0000
        assert item.ProcedureStepState == "SCHEDULED"
        assert item.ReferencedRequestSequence[0].AccessionNumber == "ACC0001"
        assert "TransactionUID" not in item
        assert assoc.send_n_get([0x00741000, 0x00100010], PULL, generate_uid())[0].Status == 0xC307

        # Subscriptions: the global one and one workitem; an AE without address: 0xC308.
        assert action(assoc, SUBSCRIBE, GLOBAL, WATCH, ReceivingAE="WATCHER",
                      DeletionLock="FALSE").Status == 0x0000
        assert action(assoc, SUBSCRIBE, other, WATCH, ReceivingAE="ITEMWATCH",
                      DeletionLock="FALSE").Status == 0x0000
        assert action(assoc, SUBSCRIBE, GLOBAL, WATCH, ReceivingAE="NOWHERE",
                      DeletionLock="FALSE").Status == 0xC308
        initial = [subscriber.next("WATCHER") for _ in range(2)]
        assert {r.uid for r in initial} == {uid, other}
        assert {(r.event_type, r.info.ProcedureStepState) for r in initial} == {
            (1, "SCHEDULED")}  # UPS State Reports
        subscriber.next("ITEMWATCH", other, ProcedureStepState="SCHEDULED")

        # Claim with a new Transaction UID; a second claim is refused.
        transaction = generate_uid()
        assert action(assoc, CHANGE_STATE, uid, ProcedureStepState="IN PROGRESS",
                      TransactionUID=transaction).Status == 0x0000
        assert subscriber.next("WATCHER", uid, ProcedureStepState="IN PROGRESS")
        again = action(assoc, CHANGE_STATE, uid, ProcedureStepState="IN PROGRESS",
                       TransactionUID=generate_uid())
        assert again.Status == 0xC302 and "IN PROGRESS" in again.ErrorComment

        # Updates and state changes need the claim's Transaction UID.
        progress = Dataset()
        step = Dataset()
        step.ProcedureStepProgress = 50
        progress.ProcedureStepProgressInformationSequence = [step]
        progress.TransactionUID = generate_uid()
        assert n_set(assoc, uid, progress).Status == 0xC301
        assert action(assoc, CHANGE_STATE, uid, ProcedureStepState="COMPLETED",
                      TransactionUID=generate_uid()).Status == 0xC301
        progress.TransactionUID = transaction
        assert n_set(assoc, uid, progress).Status == 0x0000
        report = subscriber.next("WATCHER", uid)
        assert report.event_type == 3  # UPS Progress Report
        assert report.info.ProcedureStepProgressInformationSequence[0] \
            .ProcedureStepProgress == 50

        # COMPLETED needs the final-state attributes (PS3.4 Table CC.2.5-3).
        early = action(assoc, CHANGE_STATE, uid, ProcedureStepState="COMPLETED",
                       TransactionUID=transaction)
        assert early.Status == 0xC304 and "PerformedProcedure" in early.ErrorComment
        performed = Dataset()
        done = Dataset()
        done.PerformedProcedureStepStartDateTime = "20250310093100"
        done.PerformedProcedureStepEndDateTime = "20250310093900"
        done.OutputInformationSequence = []
        performed.UnifiedProcedureStepPerformedProcedureSequence = [done]
        performed.TransactionUID = transaction
        assert n_set(assoc, uid, performed).Status == 0x0000
        assert action(assoc, CHANGE_STATE, uid, ProcedureStepState="COMPLETED",
                      TransactionUID=transaction).Status == 0x0000
        subscriber.next("WATCHER", uid, ProcedureStepState="COMPLETED")
        status, item = assoc.send_n_get([0x00741000, 0x00100010], PULL, uid)
        assert item.ProcedureStepState == "COMPLETED"
        assert action(assoc, CHANGE_STATE, uid, ProcedureStepState="COMPLETED",
                      TransactionUID=transaction).Status == 0xB306  # already

        # Unsubscribe WATCHER; cancel the other workitem: only ITEMWATCH hears of it.
        assert action(assoc, UNSUBSCRIBE, GLOBAL, WATCH,
                      ReceivingAE="WATCHER").Status == 0x0000
        assert action(assoc, REQUEST_CANCEL, other, PUSH,
                      ReasonForCancellation="patient declined").Status == 0x0000
        cancel = subscriber.next("ITEMWATCH", other)
        assert cancel.event_type == 2  # UPS Cancel Requested
        assert cancel.info.ReasonForCancellation == "patient declined"
        assert cancel.info.RequestingAE == "AI_APP"
        subscriber.next("ITEMWATCH", other, ProcedureStepState="CANCELED")
        late = [r for r in subscriber.drain(2) if r.called == "WATCHER" and r.uid == other]
        assert late == [], "events after unsubscribing"
        assert action(assoc, REQUEST_CANCEL, uid, PUSH).Status == 0xC311  # COMPLETED
        assert action(assoc, 9, uid).Status == 0x0123  # no such action

    kept = wait_until(lambda: (rows := requests(broker.database_url))
                      and ("N-GET", 0xC307) in rows and rows, what="requests kept")
    assert {("N-ACTION 1", 0xC302), ("N-ACTION 1", 0xC301), ("N-ACTION 1", 0xC304),
            ("N-ACTION 1", 0), ("N-SET", 0xC301), ("N-SET", 0), ("N-ACTION 3", 0xC308),
            ("N-ACTION 2", 0), ("C-FIND", 0), ("N-GET", 0)} <= set(kept)


@pytest.mark.postgres
@pytest.mark.redis
def test_event_reports_survive_a_restart_and_are_not_sent_twice(
        start_distributed: Any, subscriber: Subscriber) -> None:
    broker = start_distributed(ups_event_destinations=f"WATCHER=127.0.0.1:{subscriber.port}")
    doe = orders_in(broker)
    uids = {str(ds.SOPInstanceUID) for ds in doe}
    with ups_scu(broker.dicom_port) as assoc:
        assert action(assoc, SUBSCRIBE, GLOBAL, WATCH, ReceivingAE="WATCHER",
                      DeletionLock="FALSE").Status == 0x0000
    # The subscriber is not listening yet: the reports wait in the database.
    restart_serve(broker)
    subscriber.start()
    first = [subscriber.next("WATCHER", timeout=30) for _ in uids]
    assert {r.uid for r in first} == uids
    assert {r.info.ProcedureStepState for r in first} == {"SCHEDULED"}

    uid = sorted(uids)[0]
    with ups_scu(broker.dicom_port) as assoc:
        assert action(assoc, CHANGE_STATE, uid, ProcedureStepState="IN PROGRESS",
                      TransactionUID=generate_uid()).Status == 0x0000
    subscriber.next("WATCHER", uid, ProcedureStepState="IN PROGRESS")
    restart_serve(broker)
    assert subscriber.drain(3) == [], "reports sent again after a restart"


def pushed(patient_id: str, **values: Any) -> Dataset:
    """A workitem an SCU creates (PS3.4 CC.2.5): patient, label, state, start."""
    ds = Dataset()
    ds.PatientName, ds.PatientID = "Roe^Richard", patient_id
    ds.ProcedureStepLabel = "Lung nodule AI"
    ds.ScheduledProcedureStepStartDateTime = "20261202100000"
    ds.ProcedureStepState = "SCHEDULED"
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    return ds


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast-path", "pynetdicom"])
def test_a_requester_pushes_workitems(make_broker: Any, fast_path: bool) -> None:
    app = make_broker(dicom_fast_path=fast_path)
    uid = generate_uid()
    with ups_scu(app.dicom_port, aet="REQUESTER") as assoc:
        status, _ = assoc.send_n_create(pushed("P-77"), PUSH, uid)
        assert status.Status == 0x0000
        assert assoc.send_n_create(pushed("P-77"), PUSH, uid)[0].Status == 0x0111
        done = assoc.send_n_create(pushed("P-77", ProcedureStepState="COMPLETED"), PUSH,
                                   generate_uid())[0]
        assert done.Status == 0xC309
        # Without a UID the broker chooses one (in the response, PS3.7 10.1.5.1.4).
        assert assoc.send_n_create(pushed("P-78"), PUSH, None)[0].Status == 0x0000
        [chosen_item] = find(assoc, query(PatientID="P-78"))
        chosen = str(chosen_item.SOPInstanceUID)

        found = find(assoc, query(PatientID="P-7*", ProcedureStepLabel=""), QUERY)
        assert {str(ds.SOPInstanceUID) for ds in found} == {uid, chosen}
        assert {ds.ProcedureStepLabel for ds in found} == {"Lung nodule AI"}

        # A SCHEDULED workitem is updated without a Transaction UID; its identity is not.
        change = Dataset()
        change.ProcedureStepLabel = "Lung nodule AI, second read"
        change.SOPInstanceUID = generate_uid()
        status = n_set(assoc, uid, change)
        assert status.Status == 0x0107 and "SOPInstanceUID" in status.ErrorComment
        status, item = assoc.send_n_get([0x00741204, 0x00080018], PUSH, uid)
        assert item.ProcedureStepLabel == "Lung nodule AI, second read"
        assert item.SOPInstanceUID == uid
        assert action(assoc, REQUEST_CANCEL, chosen, PUSH).Status == 0x0000
        assert assoc.send_n_get([0x00741000, 0x00080018], PUSH,
                                chosen)[1].ProcedureStepState == "CANCELED"
    with app.runtime.session_factory() as session:
        kept = [(r.command, r.status, r.sop_instance_uid) for r in session.scalars(
            select(DicomRequest).where(DicomRequest.command == "N-CREATE"))]
    assert (("N-CREATE", 0, chosen) in kept and ("N-CREATE", 0x0111, uid) in kept
            and ("N-CREATE", 0xC309) in {k[:2] for k in kept})
