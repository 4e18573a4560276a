"""The console's JSON API over real HTTP (issue 4): every endpoint, and role checks."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import generate_uid

from tests.conftest import sample
from tests.console import add_users, client
from tests.dcmtk import findscu
from tests.ehr import EHREndpoint
from tests.integration.hl7util import send, set_field
from tests.modality import MPPS, final, in_progress, n_create, n_set, step_item, storescu
from tests.modality import write_images as images
from tests.workflow import destination, outbox_statuses, step_statuses, wait_until

pytestmark = [pytest.mark.dcmtk]


@pytest.fixture
def broker(make_broker: Any, ehr: EHREndpoint) -> Any:
    app = make_broker(outbound_destinations=destination(ehr.port))
    add_users(app)
    return app


def test_login_logout_and_no_anonymous_access(broker: Any) -> None:
    anonymous = client(broker)
    assert anonymous.get("/api/dashboard").status_code == 401
    assert anonymous.get("/").headers["location"] == "/login"
    wrong = anonymous.post("/login", data={"name": "admin", "password": "nope nope"})
    assert wrong.status_code == 200 and "Wrong name or password" in wrong.text
    viewer = client(broker, "viewer")
    assert viewer.get("/api/dashboard").status_code == 200
    viewer.post("/logout")
    assert viewer.get("/api/dashboard").status_code == 401


def test_session_idle_timeout(make_broker: Any) -> None:
    app = make_broker(session_idle_minutes=0.01)  # 0.6 s
    add_users(app)
    viewer = client(app, "viewer")
    assert viewer.get("/api/dashboard").status_code == 200
    time.sleep(1.0)
    assert viewer.get("/api/dashboard").status_code == 401


def test_only_admins_list_users(broker: Any) -> None:
    assert client(broker, "operator").get("/api/users").status_code == 403
    users = client(broker, "admin").get("/api/users").json()
    assert {(u["name"], u["role"]) for u in users} == {
        ("viewer", "viewer"), ("operator", "operator"), ("admin", "admin")}
    assert all("password" not in str(u) for u in users)


def test_api_token_for_scripts(broker: Any) -> None:
    token = client(broker, "operator").post("/api/tokens", json={"name": "nightly"}).json()
    assert token["token"].startswith("mwlb_") and token["role"] == "operator"
    script = client(broker)
    headers = {"Authorization": f"Bearer {token['token']}"}
    assert script.get("/api/messages", headers=headers).status_code == 200
    bad = {"Authorization": "Bearer mwlb_forged"}
    assert script.get("/api/messages", headers=bad).status_code == 401


def test_messages_search_detail_and_reprocess_with_roles(broker: Any) -> None:
    xo = set_field(sample("06"), "MSH", 10, "XO-EARLY")
    assert [a.code for a in send(broker.mllp_port, xo)] == ["AE"]  # no order yet: 204
    assert [a.code for a in send(broker.mllp_port, sample("05"))] == ["AA"]
    viewer, operator = client(broker, "viewer"), client(broker, "operator")
    failed = viewer.get("/api/messages", params={"status": "failed"}).json()
    assert [m["control_id"] for m in failed] == ["XO-EARLY"]
    assert "204" in failed[0]["error"]
    by_accession = viewer.get("/api/messages", params={"accession": "ACC0001"}).json()
    assert {m["control_id"] for m in by_accession} == {"ORM0005", "XO-EARLY"}
    assert viewer.get("/api/messages", params={"patient_id": "135790"}).json()
    detail = viewer.get(f"/api/messages/{failed[0]['id']}").json()
    pid = next(s for s in detail["segments"] if s["name"] == "PID")
    assert {"n": 5, "name": "Patient name", "value": "Doe^Jane^Marie^^^^L"} in pid["fields"]
    assert "MSA|AE|XO-EARLY" in detail["ack"]

    assert viewer.post(f"/api/messages/{failed[0]['id']}/reprocess").status_code == 403
    assert viewer.post("/api/messages/reprocess", json={"ids": [failed[0]["id"]]}
                       ).status_code == 403
    done = operator.post(f"/api/messages/{failed[0]['id']}/reprocess")
    assert done.status_code == 200 and done.json()["queued"]
    wait_until(lambda: viewer.get(f"/api/messages/{failed[0]['id']}").json()["status"]
               == "processed", what="reprocessed")
    assert viewer.get("/api/messages/99999").status_code == 404


def test_worklist_item_why_and_timeline(broker: Any, ehr: EHREndpoint, tmp_path: Path) -> None:
    assert [a.code for a in send(broker.mllp_port, sample("01"), sample("09"))] == ["AA", "AA"]
    viewer = client(broker, "viewer")
    items = viewer.get("/api/worklist", params={"ae_title": "CT01_AE"}).json()
    assert sorted(i["sps_id"] for i in items) == ["SPS0003", "SPS0004"]
    item = viewer.get(f"/api/worklist/items/{items[0]['sps_pk']}").json()
    assert item["accession"] == "ACC0002" and item["attributes"]["PatientID"] == "864209"
    # The CT asks for MR by mistake: the replay names the key that excluded the item.
    findscu(broker.dicom_port, ["ScheduledProcedureStepSequence[0].Modality=MR",
                                "ScheduledProcedureStepSequence[0].ScheduledStationAETitle"
                                "=CT01_AE"], aet="CT01_AE")
    why = wait_until(lambda: viewer.get(f"/api/worklist/items/{items[0]['sps_pk']}/why",
                                        params={"ae_title": "CT01_AE"}).json()
                     if viewer.get(f"/api/worklist/items/{items[0]['sps_pk']}/why",
                                   params={"ae_title": "CT01_AE"}).json()["query"] else None,
                     what="the query recorded")
    assert why["excluded_by"] == ["Modality"]
    assert why["query"]["keys"]["SPS>Modality"] == "MR"
    findscu(broker.dicom_port, ["ScheduledProcedureStepSequence[0].ScheduledStationAETitle"
                                "=CT01_AE"], aet="CT01_AE")
    wait_until(lambda: viewer.get(f"/api/worklist/items/{items[0]['sps_pk']}/why",
                                  params={"ae_title": "CT01_AE"}).json()["excluded_by"] == [],
               what="now matched")

    uid = generate_uid()
    ds = in_progress([step_item(accession="ACC0002", rp_id="RP0002", sps_id="SPS0003")],
                     patient_id="864209", patient_name="O'Brien^Sean^Patrick", modality="CT")
    assert n_create(broker.dicom_port, MPPS, uid, ds).Status == 0
    storescu(broker.dicom_port, images(tmp_path, 2, accession="ACC0002",
                                       study_uid=generate_uid(), patient_id="864209",
                                       patient_name="O'Brien^Sean^Patrick"))
    assert n_set(broker.dicom_port, uid, final()).Status == 0
    wait_until(lambda: step_statuses(broker)["SPS0003"] == "COMPLETED", what="COMPLETED")
    wait_until(lambda: outbox_statuses(broker) == {"sent"} and len(ehr.messages()) >= 2,
               what="sent")
    timeline = viewer.get("/api/timeline/ACC0002").json()
    kinds = [e["kind"] for e in timeline["events"]]
    for kind in ("HL7 in", "step", "C-FIND", "MPPS", "series", "HL7 out"):
        assert kind in kinds, (kind, kinds)
    assert kinds.index("HL7 in") < kinds.index("C-FIND") < kinds.index("MPPS")
    steps = {s["sps_id"]: s["status"] for s in timeline["procedures"][0]["steps"]}
    assert steps["SPS0003"] == "COMPLETED"
    assert viewer.get("/api/timeline/NOPE").status_code == 404


def test_reconciliation_outbound_and_roles(broker: Any, ehr: EHREndpoint) -> None:
    assert [a.code for a in send(broker.mllp_port, sample("01"), sample("09"))] == ["AA", "AA"]
    ds = in_progress([step_item()], patient_id="864209", patient_name="O'Brien^Sean^Patrick",
                     modality="CT", start=("20250310", "140500"))
    assert n_create(broker.dicom_port, MPPS, generate_uid(), ds).Status == 0
    viewer, operator = client(broker, "viewer"), client(broker, "operator")
    items = wait_until(lambda: viewer.get("/api/reconciliation").json(), what="an item")
    item = items[0]
    assert item["kind"] == "unscheduled_mpps" and item["candidates"][0]["accession"] == "ACC0002"
    assert viewer.post(f"/api/reconciliation/{item['id']}/link",
                       json={"order": "ACC0002"}).status_code == 403
    linked = operator.post(f"/api/reconciliation/{item['id']}/link", json={"order": "ACC0002"})
    assert linked.status_code == 200 and "ACC0002" in linked.json()["outcome"]
    again = operator.post(f"/api/reconciliation/{item['id']}/dismiss")
    assert again.status_code == 409 and "already linked" in again.json()["detail"]
    assert viewer.get("/api/reconciliation", params={"state": "linked"}).json()[0]["resolved_by"] \
        == "operator"
    sent = wait_until(lambda: viewer.get("/api/outbound", params={"status": "sent"}).json(),
                      what="IP sent")
    assert sent[0]["status_sent"] == "IP"
    assert viewer.post(f"/api/outbound/{sent[0]['id']}/resend").status_code == 403
    assert operator.post(f"/api/outbound/{sent[0]['id']}/resend").json()["queued"]
    wait_until(lambda: len(ehr.messages()) == 2, what="resent")
    assert operator.post("/api/outbound/9999/resend").status_code == 404


def test_mappings_and_dry_run_diff(broker: Any) -> None:
    viewer = client(broker, "viewer")
    profiles = viewer.get("/api/mappings").json()
    assert "default.yaml" in profiles["files"] and profiles["errors"] == []
    assert [a.code for a in send(broker.mllp_port, sample("05"))] == ["AA"]
    reschedule = sample("06").decode("utf-8").replace("\r", "\n")
    result = viewer.post("/api/mappings/dry-run", json={"message": reschedule}).json()
    assert result["profile"] == "default" and len(result["items"]) == 2
    first = result["items"][0]
    assert first["stored"]
    changed = {d["attribute"]: (d["stored"], d["new"]) for d in first["diff"]}
    start = "ScheduledProcedureStepSequence[1]>ScheduledProcedureStepStartTime"
    assert start in changed and changed[start][0] != changed[start][1]
    bad = viewer.post("/api/mappings/dry-run", json={"message": "MSH|^~\\&|X"}).json()
    assert bad["error"] and bad["items"] == []
    assert viewer.get("/api/messages", params={"control_id": "ORM0006"}).json() == []


def test_metrics_health_and_readiness(broker: Any) -> None:
    assert [a.code for a in send(broker.mllp_port, sample("05"))] == ["AA"]
    findscu(broker.dicom_port, ["AccessionNumber=ACC0001"])
    anonymous = client(broker)
    assert anonymous.get("/healthz").json() == {"status": "ok"}
    ready = anonymous.get("/readyz")
    assert ready.status_code == 200 and ready.json()["database"] == "ok"
    text = wait_until(lambda: (lambda t: t if "mwlb_cfind_duration_seconds_count 1.0" in t
                               else None)(anonymous.get("/metrics").text), what="C-FIND counted")
    assert 'mwlb_hl7_messages_total{status="processed",type="ORM^O01"} 1.0' in text
    assert 'mwlb_hl7_acks_total{code="AA"} 1.0' in text
    assert "mwlb_hl7_queue_depth 0.0" in text
    assert "Doe" not in text  # counts only, no patient data
    dashboard = client(broker, "viewer").get("/api/dashboard").json()
    assert dashboard["hl7_inbound"]["processed"] == 1
    assert dashboard["last_activity"][0]["activity"] == "worklist query"
    assert dashboard["health"]["redis"] == "not used (embedded)"
    assert "/api/worklist" in anonymous.get("/openapi.json").json()["paths"]
