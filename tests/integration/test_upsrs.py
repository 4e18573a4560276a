"""UPS-RS (the DICOMweb Worklist Service, PS3.18 chapter 11) on a real ``mwl-broker
serve`` with a real worker, PostgreSQL and Redis: orders arrive over MLLP, an
application performs their workitems over HTTP with an API token of the performer
role and follows them over the WebSocket event channel."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from sqlalchemy import create_engine
from sqlalchemy.orm import Session
from websockets.exceptions import InvalidStatus
from websockets.sync.client import ClientConnection, connect

from broker.models import Role
from broker.security.accounts import create_api_token, create_user, set_ae_titles
from tests.builders import order
from tests.conftest import sample
from tests.integration.hl7util import send
from tests.workflow import wait_until

DICOM_JSON = "application/dicom+json"
GLOBAL = "1.2.840.10008.5.1.4.34.5"
FILTERED = "1.2.840.10008.5.1.4.34.5.1"
UPS_PUSH_SOP_CLASS = "1.2.840.10008.5.1.4.34.6.1"  # of every event report, PS3.4 CC.2.4.3
PASSWORD = "correct horse battery"


# The AE titles the tests' performer acts as (an admin binds them, PS3.18 11.10-11.13).
PERFORMER_AE_TITLES = ["AI_APP", "PUSH_WATCH", "X", "CT_AI", "AI_CXR"]


def tokens(database_url: str) -> dict[str, str]:
    """An API token for a new user of each role, by role name; the performer is bound
    to :data:`PERFORMER_AE_TITLES`."""
    engine = create_engine(database_url)
    out = {}
    try:
        with Session(engine) as session, session.begin():
            for role in Role:
                user = create_user(session, f"{role.value}-user", PASSWORD, role)
                if role is Role.PERFORMER:
                    set_ae_titles(session, "test", "", user.name, PERFORMER_AE_TITLES)
                out[role.value] = create_api_token(session, user, "test")
    finally:
        engine.dispose()
    return out


@pytest.fixture
def broker(start_distributed: Any) -> Iterator[Any]:
    procs = start_distributed()
    procs.tokens = tokens(procs.database_url)
    procs.base = f"http://127.0.0.1:{procs.env['MWLB_HTTP_PORT']}"
    procs.clients = []
    yield procs
    for client in procs.clients:
        client.close()


def http(broker: Any, role: str = "performer") -> httpx.Client:
    """A client of the Worklist Service with an API token of ``role``."""
    client = httpx.Client(base_url=broker.base, timeout=30, headers={
        "Authorization": f"Bearer {broker.tokens[role]}", "Accept": DICOM_JSON})
    broker.clients.append(client)
    return client


def channel(broker: Any, ae_title: str, role: str = "performer") -> ClientConnection:
    """The Open Event Channel transaction (PS3.18 11.13) for ``ae_title``."""
    url = broker.base.replace("http://", "ws://") + f"/dicomweb/subscribers/{ae_title}"
    return connect(url, additional_headers={"Authorization": f"Bearer {broker.tokens[role]}"},
                   open_timeout=10)


def datasets(response: httpx.Response) -> list[Dataset]:
    assert response.headers["content-type"].startswith(DICOM_JSON), response.text
    return [Dataset.from_json(item) for item in response.json()]


def body(ds: Dataset) -> bytes:
    return json.dumps(ds.to_json_dict()).encode()


def send_json(client: httpx.Client, method: str, url: str, ds: Dataset) -> httpx.Response:
    return client.request(method, url, content=body(ds),
                          headers={"Content-Type": DICOM_JSON})


def state(name: str, transaction_uid: str) -> Dataset:
    ds = Dataset()
    ds.ProcedureStepState = name
    ds.TransactionUID = transaction_uid
    return ds


def warning(response: httpx.Response) -> str:
    """The Warning header, which every refusal carries (``299 <service>: <text>``)."""
    value = response.headers.get("warning", "")
    assert value.startswith("299 127.0.0.1:"), (response.status_code, response.headers)
    return value


def event(ws: ClientConnection, uid: str, timeout: float = 15, **expected: Any) -> Dataset:
    """The next event report about workitem ``uid`` that has the ``expected`` values
    (others skipped: the initial State Reports of a new subscription, other
    workitems)."""
    while True:
        report = Dataset.from_json(json.loads(ws.recv(timeout=timeout)))
        assert report.AffectedSOPClassUID == UPS_PUSH_SOP_CLASS
        assert report.CommandField == 0x0100  # N-EVENT-REPORT-RQ
        if report.AffectedSOPInstanceUID == uid and all(
                report.get(k) == v for k, v in expected.items()):
            return report


def search(client: httpx.Client, **params: Any) -> list[Dataset]:
    response = client.get("/dicomweb/workitems", params=params)
    if response.status_code == 204:
        assert response.content == b""
        return []
    assert response.status_code == 200, (response.status_code, response.text)
    return datasets(response)


@pytest.mark.postgres
@pytest.mark.redis
def test_an_application_performs_an_ordered_workitem(broker: Any) -> None:
    acks = send(broker.mllp_port, sample("05"), sample("09"), order(7, date="20250312"))
    assert [a.code for a in acks] == ["AA", "AA", "AA"]
    performer = http(broker)
    doe = wait_until(lambda: len(found := search(
        performer, PatientName="DOE*", includefield="ProcedureStepState,SOPClassUID")) == 2
                     and found, timeout=60, what="Jane Doe's two workitems")
    assert {str(ds.PatientName) for ds in doe} == {"Doe^Jane^Marie"}
    assert {ds.ProcedureStepState for ds in doe} == {"SCHEDULED"}
    assert all(ds.SOPClassUID == "1.2.840.10008.5.1.4.34.6.1" for ds in doe)

    # Matching: a date-time range, a station code, together with a name; return keys.
    first = search(performer, ScheduledProcedureStepStartDateTime="20250310093000-20250310093200",
                   includefield="ScheduledStationNameCodeSequence,PatientBirthDate,PatientName")
    assert len(first) == 1 and str(first[0].PatientName) == "Doe^Jane^Marie"
    assert first[0].PatientBirthDate == "19900214"
    assert first[0].ScheduledStationNameCodeSequence[0].CodeValue == "MWL_DEFAULT"
    ct = search(performer, includefield="PatientName",
                **{"ScheduledStationNameCodeSequence.CodeValue": "CT01_AE"})
    assert len(ct) == 2 and {str(ds.PatientName) for ds in ct} == {"O'Brien^Sean^Patrick"}
    assert search(performer, PatientName="DOE*",
                  **{"ScheduledStationNameCodeSequence.CodeValue": "CT01_AE"}) == []
    assert len(search(performer, ScheduledProcedureStepStartDateTime="20250312-")) == 1
    assert len(search(performer, limit=1)) == 1
    [full] = search(performer, PatientName="DOE*", includefield="all", limit=1)
    assert full.ReferencedRequestSequence[0].AccessionNumber == "ACC0001"
    assert full.PatientBirthDate == "19900214" and "TransactionUID" not in full
    paged = performer.get("/dicomweb/workitems", params={"PatientName": "DOE*",
                                                          "fuzzymatching": "true"})
    assert paged.status_code == 200 and "fuzzymatching" in warning(paged)

    uid = str(first[0].SOPInstanceUID)
    other = next(str(ds.SOPInstanceUID) for ds in doe if str(ds.SOPInstanceUID) != uid)
    retrieved = performer.get(f"/dicomweb/workitems/{uid}")
    assert retrieved.status_code == 200
    [item] = datasets(retrieved)
    assert item.SOPInstanceUID == uid and item.ProcedureStepState == "SCHEDULED"
    assert item.ReferencedRequestSequence[0].AccessionNumber == "ACC0001"
    assert "TransactionUID" not in item

    # The application subscribes to every workitem and opens its event channel.
    subscribed = performer.post(f"/dicomweb/workitems/{GLOBAL}/subscribers/AI_APP")
    assert subscribed.status_code == 201, subscribed.text
    with channel(broker, "AI_APP") as ws:
        transaction = generate_uid()
        claim = send_json(performer, "PUT", f"/dicomweb/workitems/{uid}/state",
                          state("IN PROGRESS", transaction))
        assert claim.status_code == 200, claim.text
        event(ws, uid, EventTypeID=1, ProcedureStepState="IN PROGRESS")
        again = send_json(performer, "PUT", f"/dicomweb/workitems/{uid}/state",
                          state("IN PROGRESS", generate_uid()))
        assert again.status_code == 409 and "already IN PROGRESS" in warning(again)
        assert again.json()["status"] == "0xC302"

        progress = Dataset()
        item_progress = Dataset()
        item_progress.ProcedureStepProgress = 50
        item_progress.ProcedureStepProgressDescription = "segmenting"
        progress.ProcedureStepProgressInformationSequence = [item_progress]
        without = send_json(performer, "POST", f"/dicomweb/workitems/{uid}", progress)
        assert without.status_code in (400, 409) and "Transaction UID" in warning(without)
        updated = send_json(performer, "POST", f"/dicomweb/workitems/{uid}?{transaction}",
                            progress)
        assert updated.status_code == 200, updated.text
        report = event(ws, uid, EventTypeID=3)  # UPS Progress Report
        assert report.ProcedureStepProgressInformationSequence[0].ProcedureStepProgress == 50

        early = send_json(performer, "PUT", f"/dicomweb/workitems/{uid}/state",
                          state("COMPLETED", transaction))
        assert early.status_code == 409
        assert "final state" in warning(early)
        performed = Dataset()
        done = Dataset()
        done.PerformedProcedureStepStartDateTime = "20250310093100"
        done.PerformedProcedureStepEndDateTime = "20250310093900"
        done.OutputInformationSequence = []
        performed.UnifiedProcedureStepPerformedProcedureSequence = [done]
        assert send_json(performer, "POST", f"/dicomweb/workitems/{uid}?{transaction}",
                         performed).status_code == 200
        completed = send_json(performer, "PUT", f"/dicomweb/workitems/{uid}/state",
                              state("COMPLETED", transaction))
        assert completed.status_code == 200, completed.text
        event(ws, uid, EventTypeID=1, ProcedureStepState="COMPLETED")
        [final] = datasets(performer.get(f"/dicomweb/workitems/{uid}"))
        assert final.ProcedureStepState == "COMPLETED"
        late = send_json(performer, "POST", f"/dicomweb/workitems/{uid}?{transaction}",
                         progress)
        assert late.status_code == 409 and warning(late)

        # Request Cancellation of the other (SCHEDULED) step: it is cancelled.
        reason = Dataset()
        reason.ReasonForCancellation = "patient left"
        cancel = send_json(performer, "POST", f"/dicomweb/workitems/{other}/cancelrequest",
                           reason)
        assert cancel.status_code == 202, cancel.text
        requested = event(ws, other, EventTypeID=2)  # UPS Cancel Requested
        assert requested.ReasonForCancellation == "patient left"
        event(ws, other, EventTypeID=1, ProcedureStepState="CANCELED")
        [cancelled] = datasets(performer.get(f"/dicomweb/workitems/{other}"))
        assert cancelled.ProcedureStepState == "CANCELED"
    unsubscribed = performer.delete(f"/dicomweb/workitems/{GLOBAL}/subscribers/AI_APP")
    assert unsubscribed.status_code == 200


@pytest.mark.postgres
@pytest.mark.redis
def test_create_then_refusals_and_access(broker: Any) -> None:
    performer = http(broker)
    pushed = Dataset()
    pushed.PatientName = "Push^Test"
    pushed.PatientID = "PUSH1"
    pushed.ProcedureStepLabel = "AI lung nodules"
    pushed.ScheduledProcedureStepStartDateTime = "20250311080000"
    uid = generate_uid()
    created = send_json(performer, "POST", f"/dicomweb/workitems?{uid}", pushed)
    assert created.status_code == 201, created.text
    assert created.headers["location"] == f"{broker.base}/dicomweb/workitems/{uid}"
    assert created.headers["content-location"] == created.headers["location"]
    [got] = datasets(performer.get(created.headers["location"]))
    assert (got.PatientID, got.ProcedureStepState) == ("PUSH1", "SCHEDULED")
    duplicate = send_json(performer, "POST", f"/dicomweb/workitems?{uid}", pushed)
    assert duplicate.status_code == 409 and warning(duplicate)
    generated = send_json(performer, "POST", "/dicomweb/workitems", pushed)
    assert generated.status_code == 201 and generated.headers["location"] != created.headers[
        "location"]

    # A filtered global subscription hears of the matching workitems only.
    subscribed = performer.post(f"/dicomweb/workitems/{FILTERED}/subscribers/PUSH_WATCH",
                                params={"filter": "PatientID=PUSH1"})
    assert subscribed.status_code == 201, subscribed.text
    someone_else = Dataset()
    someone_else.PatientName = "Else^Some"
    someone_else.PatientID = "ELSE1"
    with channel(broker, "PUSH_WATCH") as ws:
        other = generate_uid()
        assert send_json(performer, "POST", f"/dicomweb/workitems?{other}",
                         someone_else).status_code == 201
        for target in (other, uid):
            claimed = send_json(performer, "PUT", f"/dicomweb/workitems/{target}/state",
                                state("IN PROGRESS", generate_uid()))
            assert claimed.status_code == 200, claimed.text
        heard = []
        while not heard or heard[-1] != (uid, "IN PROGRESS"):
            report = Dataset.from_json(json.loads(ws.recv(timeout=15)))
            heard.append((report.AffectedSOPInstanceUID, report.get("ProcedureStepState")))
        assert other not in {heard_uid for heard_uid, _ in heard}
    # Events of a time without a channel arrive when it opens again, and only those.
    later = send_json(performer, "POST", "/dicomweb/workitems", pushed)
    later_uid = later.headers["location"].rsplit("/", 1)[-1]
    with channel(broker, "PUSH_WATCH") as ws:
        report = Dataset.from_json(json.loads(ws.recv(timeout=15)))
        assert (report.AffectedSOPInstanceUID, report.ProcedureStepState) == (
            later_uid, "SCHEDULED")
    global_filter = performer.post(f"/dicomweb/workitems/{GLOBAL}/subscribers/X",
                                   params={"filter": "PatientID=PUSH1"})
    assert global_filter.status_code == 400 and warning(global_filter)

    # Bad requests get the standard's statuses, each with a Warning saying why.
    unknown = performer.get("/dicomweb/workitems", params={"PatientNam": "X"})
    assert unknown.status_code == 400 and "unknown attribute 'PatientNam'" in warning(unknown)
    assert performer.get("/dicomweb/workitems/1.2.abc").status_code == 400
    bad_uid = performer.get("/dicomweb/workitems/1.2.abc")
    assert "not a valid UID" in warning(bad_uid)
    missing = performer.get(f"/dicomweb/workitems/{generate_uid()}")
    assert missing.status_code == 404 and warning(missing)
    xml = performer.post("/dicomweb/workitems", content=b"<NativeDicomModel/>",
                         headers={"Content-Type": "application/dicom+xml"})
    assert xml.status_code == 415 and warning(xml)
    not_json = performer.post("/dicomweb/workitems", content=b"{nope",
                              headers={"Content-Type": DICOM_JSON})
    assert not_json.status_code == 400 and warning(not_json)
    no_state = send_json(performer, "PUT", f"/dicomweb/workitems/{uid}/state", Dataset())
    assert no_state.status_code == 400 and "Procedure Step State" in warning(no_state)
    wrong_accept = performer.get("/dicomweb/workitems", headers={
        "Accept": "application/dicom+xml"})
    assert wrong_accept.status_code == 406
    scheduled = generated.headers["location"].rsplit("/", 1)[-1]
    scheduled_complete = send_json(performer, "PUT", f"/dicomweb/workitems/{scheduled}/state",
                                   state("COMPLETED", generate_uid()))
    assert scheduled_complete.status_code == 409 and "not yet" in warning(scheduled_complete)
    wrong_transaction = send_json(performer, "PUT", f"/dicomweb/workitems/{uid}/state",
                                  state("COMPLETED", generate_uid()))
    assert wrong_transaction.status_code == 400 and "Transaction UID" in warning(
        wrong_transaction)
    bad_ae = performer.post(f"/dicomweb/workitems/{GLOBAL}/subscribers/{'A' * 17}")
    assert bad_ae.status_code == 400

    # Only performers (and admins) use the Worklist Service; performers nothing else.
    assert http(broker, "viewer").get("/dicomweb/workitems").status_code == 403
    assert http(broker, "operator").get(f"/dicomweb/workitems/{uid}").status_code == 403
    assert http(broker, "admin").get(f"/dicomweb/workitems/{uid}").status_code == 200
    anonymous = httpx.get(f"{broker.base}/dicomweb/workitems", timeout=30)
    assert anonymous.status_code == 401
    for url in ("/api/dashboard", "/api/messages", "/api/worklist", "/api/users"):
        assert performer.get(url).status_code == 403, url
    with pytest.raises(InvalidStatus) as refused:
        channel(broker, "AI_APP", role="viewer")
    assert refused.value.response.status_code == 403


def test_embedded_mode_serves_the_worklist_and_its_events(make_broker: Any) -> None:
    """The default one-process broker on SQLite: the same service and event channel."""
    app = make_broker()
    embedded = type("Embedded", (), {})()
    embedded.base = f"http://127.0.0.1:{app.http_port}"
    embedded.tokens = tokens(app.settings.database_url)
    embedded.clients = []
    try:
        [ack] = send(app.mllp_port, sample("09"))
        assert ack.code == "AA"
        performer = http(embedded)
        found = wait_until(lambda: search(performer, PatientID="864209"), what="workitems")
        uid = str(found[0].SOPInstanceUID)
        assert performer.post(f"/dicomweb/workitems/{uid}/subscribers/CT_AI").status_code == 201
        with channel(embedded, "CT_AI") as ws:
            event(ws, uid, EventTypeID=1, ProcedureStepState="SCHEDULED")  # initial report
            claimed = send_json(performer, "PUT", f"/dicomweb/workitems/{uid}/state",
                                state("IN PROGRESS", generate_uid()))
            assert claimed.status_code == 200, claimed.text
            event(ws, uid, EventTypeID=1, ProcedureStepState="IN PROGRESS")
    finally:
        for client in embedded.clients:
            client.close()
