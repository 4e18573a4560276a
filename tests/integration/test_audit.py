"""Audit trail and IHE ATNA export: every kind of event reaches a syslog
receiver started by the test as RFC 5424 messages carrying DICOM audit XML, in order,
and events wait in the database while the receiver is down."""

from __future__ import annotations

import base64
import socket
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom.uid import generate_uid
from pynetdicom import AE
from sqlalchemy import select

from broker.app import BrokerApp
from broker.models import AuditEvent
from tests.conftest import broker_settings, sample
from tests.console import PASSWORD, add_users
from tests.dcmtk import findscu
from tests.integration.hl7util import send
from tests.modality import MPPS, in_progress, n_create, step_item, storescu, write_images
from tests.syslog import SyslogReceiver, codes
from tests.workflow import STUDY_05

pytestmark = [pytest.mark.dcmtk]

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
