"""Audit trail and IHE ATNA export: every kind of event reaches a syslog
receiver started by the test as RFC 5424 messages carrying DICOM audit XML, in order,
and events wait in the database while the receiver is down."""

from __future__ import annotations

import base64
import socket
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

import httpx
import pytest
from pydicom.uid import generate_uid
from pynetdicom import AE
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from broker.app import BrokerApp
from broker.models import AuditEvent, Role
from broker.security.accounts import create_api_token, create_user
from tests.conftest import broker_settings, sample
from tests.console import PASSWORD, add_users
from tests.dcmtk import findscu
from tests.integration.hl7util import send
from tests.modality import MPPS, in_progress, n_create, step_item, storescu, write_images
from tests.syslog import SyslogReceiver, codes
from tests.workflow import STUDY_05

pytestmark = [pytest.mark.dcmtk]

DICOM_JSON = "application/dicom+json"
ALLOWED = [{"ae_title": "CT01_AE"}, {"ae_title": "MODALITY1"}]


def test_every_kind_of_event_reaches_the_audit_repository(make_broker: Any,
                                                          tmp_path: Path) -> None:
    receiver = SyslogReceiver().start()
    try:
        app = make_broker(audit_syslog_url=f"tcp://127.0.0.1:{receiver.port}",
                          dicom_allowed_calling=ALLOWED)
        add_users(app)
        assert [a.code for a in send(app.mllp_port, sample("01"), sample("05"))] == ["AA", "AA"]
        findscu(app.dicom_port, ["AccessionNumber=ACC0001", "PatientName"])
        ds = in_progress([step_item(accession="ACC0001", rp_id="RP0001", sps_id="SPS0001",
                                    study_uid=STUDY_05)])
        assert n_create(app.dicom_port, MPPS, generate_uid(), ds).Status == 0
        storescu(app.dicom_port, write_images(tmp_path, 1, accession="ACC0001",
                                              study_uid=STUDY_05))
        base = f"http://127.0.0.1:{app.http_port}"
        with httpx.Client(base_url=base) as http:
            assert http.post("/login", data={"name": "admin", "password": "wrong-one"}
                             ).status_code == 200
            assert http.post("/login", data={"name": "admin", "password": PASSWORD}
                             ).status_code == 303
        intruder = AE(ae_title="INTRUDER")
        intruder.add_requested_context("1.2.840.10008.1.1")
        assert intruder.associate("127.0.0.1", app.dicom_port, ae_title="MWL_BROKER"
                                  ).is_rejected
        wanted = {"110100/110120", "110110", "110109", "110112", "110111", "110104",
                  "110114/110122", "110113/110126"}
        events = receiver.wait_for(lambda evs: wanted <= set(codes(evs)))
    finally:
        receiver.stop()
    got = codes(events)
    assert got[0] == "110100/110120"  # application start comes first
    logins = [e for e in events if codes([e])[0] == "110114/110122"]
    outcomes = sorted(e.find("EventIdentification").get("EventOutcomeIndicator")  # type: ignore[union-attr]
                      for e in logins)
    assert outcomes == ["0", "4"]  # the refused and the accepted login
    query = next(e for e in events if codes([e])[0] == "110112")
    participant = query.find("ParticipantObjectIdentification")
    assert participant is not None
    assert participant.get("ParticipantObjectID") == "1.2.840.10008.5.1.4.31"
    encoded = participant.findtext("ParticipantObjectQuery") or ""
    assert b"ACC0001" in base64.b64decode(encoded)  # the C-FIND identifier itself
    order = next(e for e in events if codes([e])[0] == "110109")
    ids = {p.get("ParticipantObjectID") for p in order.iter("ParticipantObjectIdentification")}
    assert "135790" in ids  # the patient the order is for
    raw = receiver.messages[0]
    assert raw.startswith(b"<85>1 ") and b" mwl-broker - IHE+RFC-3881 - \xef\xbb\xbf<" in raw


def test_events_wait_while_the_receiver_is_down(tmp_path: Path) -> None:
    reserved = socket.socket()
    reserved.bind(("127.0.0.1", 0))
    port = reserved.getsockname()[1]
    app = BrokerApp(broker_settings(tmp_path, audit_syslog_url=f"tcp://127.0.0.1:{port}"))
    app.start()
    stopped = False
    try:
        assert [a.code for a in send(app.mllp_port, sample("01"), sample("05"))] == ["AA", "AA"]
        with app.runtime.session_factory() as session:
            waiting = list(session.scalars(select(AuditEvent.event_id).where(
                AuditEvent.exported.is_(False)).order_by(AuditEvent.id)))
        assert waiting[:3] == ["110100", "110110", "110109"]
        reserved.close()
        receiver = SyslogReceiver(port=port).start()
        try:
            receiver.wait_for(lambda evs: len(evs) >= 3)
            app.stop()
            stopped = True
            events = receiver.wait_for(lambda evs: "110100/110121" in codes(evs))
        finally:
            receiver.stop()
        assert codes(events)[:3] == ["110100/110120", "110110", "110109"]  # in order
        assert codes(events)[-1] == "110100/110121"  # application stop, sent at shutdown
    finally:
        if not stopped:
            app.stop()


def test_udp_export(make_broker: Any) -> None:
    receiver = SyslogReceiver(udp=True).start()
    try:
        app = make_broker(audit_syslog_url=f"udp://127.0.0.1:{receiver.port}")
        assert [a.code for a in send(app.mllp_port, sample("01"))] == ["AA"]
        events = receiver.wait_for(lambda evs: "110110" in codes(evs))
    finally:
        receiver.stop()
    assert "110100/110120" in codes(events)


def test_workitem_changes_are_procedure_records(make_broker: Any) -> None:
    """UPS-RS create, claim, cancellation request and cancel are Procedure Record
    events (PS3.15 A.5.3.11: C for a created workitem, U for a
    state change or a cancellation request) naming the performer, its address and the
    workitem's patient and study; a refused change writes none."""
    app = make_broker()
    [ack] = send(app.mllp_port, sample("05"))
    assert ack.code == "AA"
    with Session(create_engine(app.settings.database_url)) as session, session.begin():
        user = create_user(session, "ai-performer", PASSWORD, Role.PERFORMER)
        user.ae_titles = ["AI_APP"]  # a performer claims as its AE title
        token = create_api_token(session, user, "test")
    headers = {"Authorization": f"Bearer {token}", "Accept": DICOM_JSON,
               "Content-Type": DICOM_JSON}
    pushed = {"00100010": {"vr": "PN", "Value": [{"Alphabetic": "Doe^John"}]},
              "00100020": {"vr": "LO", "Value": ["P-UPS-1"]},
              "0020000D": {"vr": "UI", "Value": ["1.2.826.0.1.3680043.8.498.77"]},
              "00741204": {"vr": "LO", "Value": ["Lung nodule AI"]},
              "00404005": {"vr": "DT", "Value": ["20250310093200"]},
              "00741000": {"vr": "CS", "Value": ["SCHEDULED"]}}
    uid = generate_uid()
    transaction = generate_uid()
    with httpx.Client(base_url=f"http://127.0.0.1:{app.http_port}", headers=headers,
                      timeout=30) as http:
        assert http.post(f"/dicomweb/workitems?{uid}", json=[pushed]).status_code == 201
        assert http.post(f"/dicomweb/workitems?{uid}", json=[pushed]).status_code == 409
        claim = [{"00741000": {"vr": "CS", "Value": ["IN PROGRESS"]},
                  "00081195": {"vr": "UI", "Value": [transaction]}}]
        assert http.put(f"/dicomweb/workitems/{uid}/state", json=claim).status_code == 200
        assert http.post(f"/dicomweb/workitems/{uid}/cancelrequest").status_code == 202
        cancel = [{"00741000": {"vr": "CS", "Value": ["CANCELED"]},
                   "00081195": {"vr": "UI", "Value": [transaction]}}]
        canceled = http.put(f"/dicomweb/workitems/{uid}/state", json=cancel)
        assert canceled.status_code == 200, canceled.headers
    with app.runtime.session_factory() as session:
        rows = list(session.scalars(select(AuditEvent).where(
            AuditEvent.event_id == "110111").order_by(AuditEvent.id)))
    records = [(r.action, r.user, r.address, r.detail) for r in rows]
    assert records == [
        ("C", "ai-performer", "127.0.0.1", f"UPS {uid} created"),
        ("U", "ai-performer", "127.0.0.1", f"UPS {uid} state IN PROGRESS"),
        ("U", "ai-performer", "127.0.0.1", f"UPS {uid} cancellation requested"),
        ("U", "ai-performer", "127.0.0.1", f"UPS {uid} state CANCELED")]
    message = ET.fromstring(rows[0].message)
    ident = message.find("EventIdentification")
    assert ident is not None and ident.get("EventActionCode") == "C"
    ids = {p.get("ParticipantObjectID"): p.get("ParticipantObjectTypeCodeRole")
           for p in message.iter("ParticipantObjectIdentification")}
    assert ids == {"P-UPS-1": "1", "1.2.826.0.1.3680043.8.498.77": "3"}
