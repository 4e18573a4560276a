"""The console's JSON API over real HTTP: every endpoint, and role checks."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom.uid import generate_uid
from sqlalchemy import select

from broker.models import AuditEvent, LoginThrottle
from tests.conftest import sample
from tests.console import PASSWORD, add_users, client, csrf, origin
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
    assert viewer.post("/logout").status_code == 403  # a form without its CSRF token
    assert viewer.post("/logout", data={"csrf_token": csrf(viewer)}).status_code == 303
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
        ("viewer", "viewer"), ("operator", "operator"), ("admin", "admin"),
        ("performer", "performer")}
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


# --- console protections (OWASP CSRF prevention, NIST SP 800-63B, PS3.15 A.5.3) ------

def audit_rows(app: Any) -> list[tuple[str, str, int, str]]:
    """(event name, user, outcome, detail) of every audit record, oldest first."""
    with app.runtime.session_factory() as session:
        return [(e.event_name, e.user, e.outcome, e.detail) for e in session.scalars(
            select(AuditEvent).order_by(AuditEvent.id))]


def login(app: Any, name: str, password: str = PASSWORD) -> httpx.Response:
    return client(app).post("/login", data={"name": name, "password": password})


def test_cross_site_requests_are_refused(broker: Any) -> None:
    assert [a.code for a in send(broker.mllp_port, set_field(sample("06"), "MSH", 10,
                                                              "XO-CSRF"))] == ["AE"]
    assert [a.code for a in send(broker.mllp_port, sample("05"))] == ["AA"]  # its order
    failed = client(broker, "viewer").get("/api/messages", params={"status": "failed"}).json()
    pk = failed[0]["id"]
    operator = client(broker, "operator")
    evil = {"Origin": "https://evil.example"}
    # The attack: the operator's browser, on another site, posts with the cookie.
    for path, body in ((f"/api/messages/{pk}/reprocess", None),
                       ("/api/messages/reprocess", {"ids": [pk]}), ("/api/tokens", {})):
        refused = operator.post(path, json=body, headers=evil)
        assert refused.status_code == 403, (path, refused.text)
        assert "cross-site" in refused.json()["detail"]
    assert operator.post("/api/tokens", json={}, headers={"Origin": "null"}).status_code == 403
    # Neither Origin nor Referer on a cookie request: refused too.
    bare = client(broker, "operator", browser_origin=False)
    assert bare.post("/api/tokens", json={}).status_code == 403
    # A Referer from the console stands in for a missing Origin.
    console_referer = {"Referer": f"{origin(broker)}/messages/{pk}"}
    assert bare.post("/api/tokens", json={}, headers=console_referer).status_code == 200
    assert bare.post("/api/tokens", json={}, headers={
        "Referer": "https://evil.example/page"}).status_code == 403
    # Page forms also need the session's CSRF token.
    form = {"ids": str(pk)}
    assert operator.post("/messages/reprocess", data=form, headers=evil).status_code == 403
    assert operator.post("/messages/reprocess", data=form).status_code == 403
    assert operator.post("/messages/reprocess", data={**form, "csrf_token": "0" * 64}
                         ).status_code == 403
    assert client(broker, "viewer").get("/api/messages", params={"status": "failed"}).json()
    # The same requests from the console's own origin work.
    token = operator.post("/api/tokens", json={"name": "ok"})
    assert token.status_code == 200
    done = operator.post("/messages/reprocess", data={**form, "csrf_token": csrf(operator)})
    assert done.status_code == 303 and "queued" in done.headers["location"]
    wait_until(lambda: operator.get(f"/api/messages/{pk}").json()["status"] == "processed",
               what="reprocessed")
    # An API token is not a cookie: a script needs no Origin (and a foreign one is moot).
    script = client(broker, browser_origin=False)
    bearer = {"Authorization": f"Bearer {token.json()['token']}"}
    assert script.post(f"/api/messages/{pk}/reprocess", headers=bearer).status_code == 200
    assert script.post(f"/api/messages/{pk}/reprocess",
                       headers={**bearer, **evil}).status_code == 200
    # Login CSRF: a login posted from another site is refused.
    assert client(broker).post("/login", data={"name": "viewer", "password": PASSWORD},
                               headers=evil).status_code == 403


def test_trusted_origin_behind_a_proxy(make_broker: Any) -> None:
    app = make_broker(http_trusted_origins=["https://console.example.org"])
    add_users(app)
    operator = client(app, "operator")
    proxied = {"Origin": "https://console.example.org"}
    assert operator.post("/api/tokens", json={}, headers=proxied).status_code == 200
    assert operator.post("/api/tokens", json={}, headers={
        "Origin": "https://other.example.org"}).status_code == 403


def test_security_headers(broker: Any) -> None:
    viewer = client(broker, "viewer")
    for path in ("/login", "/", "/messages", "/api/dashboard", "/static/style.css",
                 "/healthz", "/api/nope"):
        headers = (viewer if path != "/login" else client(broker)).get(path).headers
        assert headers["x-frame-options"] == "DENY", path
        assert headers["x-content-type-options"] == "nosniff", path
        assert headers["referrer-policy"] == "same-origin", path
        csp = headers["content-security-policy"]
        assert "frame-ancestors 'none'" in csp and "script-src 'self';" in csp, path
        assert "unsafe-inline" not in csp, path
    refused = viewer.post("/api/tokens", json={}, headers={"Origin": "https://evil.example"})
    assert refused.headers["x-frame-options"] == "DENY"
    docs = viewer.get("/docs").headers["content-security-policy"]
    assert "frame-ancestors 'none'" in docs and "cdn.jsdelivr.net" in docs


def test_brute_force_locks_the_account(make_broker: Any) -> None:
    app = make_broker(login_lockout_failures=3, login_lockout_minutes=0.03,  # 1.8 s
                      login_delay_after_failures=10)
    add_users(app)
    for _ in range(3):
        assert login(app, "operator", "wrong password!").status_code == 200
    locked = login(app, "operator")  # the right password, during the lockout
    assert locked.status_code == 429 and "try again" in locked.text
    assert int(locked.headers["retry-after"]) >= 1
    assert login(app, "viewer").status_code == 303  # other accounts are not affected
    time.sleep(2.0)
    assert login(app, "operator").status_code == 303
    rows = audit_rows(app)
    refused = [r for r in rows if r[0] == "Login" and r[1] == "operator" and r[2] == 4]
    assert len(refused) == 4
    assert sum("wrong name or password" in r[3] for r in refused) == 3
    assert "locked out" in refused[-1][3]
    alerts = [r for r in rows if r[0] == "User Security Attributes Changed"]
    assert len(alerts) == 1 and "account locked" in alerts[0][3] and alerts[0][2] == 4
    assert [r for r in rows if r[0] == "Login" and r[1] == "operator"][-1][2] == 0


def test_repeated_failures_wait_exponentially(make_broker: Any) -> None:
    """Defaults: a wait after 5 failures, doubling with each further failure (a guess
    during a wait is refused unchecked and not counted), lockout after 10."""
    app = make_broker()
    add_users(app)
    codes: list[int] = []
    waits: list[int] = []
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and max(waits, default=0) < 4:
        response = login(app, "admin", f"guess number {len(codes)}")
        codes.append(response.status_code)
        if response.status_code == 429:
            waits.append(int(response.headers["retry-after"]))
        time.sleep(0.1)
    assert codes[:5] == [200] * 5 and set(codes[5:]) <= {200, 429}
    assert max(waits) >= 4 and min(waits) >= 1  # the waits grow: 1, 2, 4 s
    assert login(app, "admin").status_code == 429  # the right one, within the wait
    with app.runtime.session_factory() as session:
        row = session.get(LoginThrottle, "user:admin")
        assert row is not None and 5 <= row.failures < 10  # refused attempts don't count


def test_many_accounts_from_one_address_are_throttled(make_broker: Any) -> None:
    app = make_broker(login_address_lockout_failures=4, login_address_delay_after_failures=10)
    add_users(app)
    for name in ("alice", "bob", "carol", "dave"):  # password spraying
        assert login(app, name, "Winter2025!!").status_code == 200
    assert login(app, "viewer").status_code == 429
    assert any("address 127.0.0.1 locked" in r[3] for r in audit_rows(app))


def test_password_policy_in_the_api(broker: Any) -> None:
    admin = client(broker, "admin")
    for name, password, reason in (("bob", "password", "at least 12"),
                                   ("bob", "12345678", "at least 12"),
                                   ("bob", "password1234", "common"),
                                   ("bob", "qwerty123456", "common"),
                                   ("radiographer", "radiographer", "user name"),
                                   ("radiographer", "Radiographer-2", "user name"),
                                   ("bob", "kkkkkkkkkkkkk", "repetitive"),
                                   ("bob", "345678901234", "repetitive or sequential")):
        refused = admin.post("/api/users", json={"name": name, "password": password})
        assert refused.status_code == 409 and reason in refused.json()["detail"], password
    assert admin.post("/api/users", json={"name": "bad/name", "password": "x" * 20}
                      ).status_code == 409
    made = admin.post("/api/users", json={"name": "bob", "password": "tulip kettle 42",
                                          "role": "operator"})
    assert made.status_code == 201 and made.json() == {
        "name": "bob", "role": "operator", "disabled": False, "ae_titles": []}
    assert login(broker, "bob", "tulip kettle 42").status_code == 303
    assert client(broker, "operator").post("/api/users", json={
        "name": "eve", "password": "tulip kettle 43"}).status_code == 403
    assert any(r[0] == "User Security Attributes Changed" and r[1] == "admin"
               and "user bob created" in r[3] for r in audit_rows(broker))


def test_revoked_token_is_refused(broker: Any) -> None:
    operator, viewer, admin = (client(broker, r) for r in ("operator", "viewer", "admin"))
    mine = operator.post("/api/tokens", json={"name": "nightly"}).json()["token"]
    theirs = viewer.post("/api/tokens", json={"name": "viewer-script"}).json()["token"]
    script = client(broker, browser_origin=False)

    def status(token: str) -> int:
        return script.get("/api/messages", headers={"Authorization": f"Bearer {token}"}
                          ).status_code

    assert status(mine) == 200 and status(theirs) == 200
    listed = {t["name"]: t for t in admin.get("/api/tokens").json()}
    assert set(listed) == {"nightly", "viewer-script"} and "token" not in str(listed)
    assert [t["name"] for t in operator.get("/api/tokens").json()] == ["nightly"]
    # Someone else's token: not visible, not revocable, except by an admin.
    assert operator.post(f"/api/tokens/{listed['viewer-script']['id']}/revoke"
                         ).status_code == 404
    assert operator.post(f"/api/tokens/{listed['nightly']['id']}/revoke").json()["revoked"]
    assert status(mine) == 401
    assert admin.post(f"/api/tokens/{listed['viewer-script']['id']}/revoke").status_code == 200
    assert status(theirs) == 401
    assert admin.post("/api/tokens/999/revoke").status_code == 404
    assert all(t["revoked"] for t in admin.get("/api/tokens").json())
    revoked = [r for r in audit_rows(broker) if "revoked" in r[3]]
    assert [r[1] for r in revoked] == ["operator", "admin"]


def test_disabled_user_is_out_at_once(broker: Any) -> None:
    admin, viewer = client(broker, "admin"), client(broker, "viewer")
    token = viewer.post("/api/tokens", json={}).json()["token"]
    bearer = {"Authorization": f"Bearer {token}"}
    script = client(broker, browser_origin=False)
    assert admin.post("/api/users/viewer/disable").json()["disabled"] is True
    assert viewer.get("/api/dashboard").status_code == 401  # the open session
    assert script.get("/api/dashboard", headers=bearer).status_code == 401
    assert login(broker, "viewer").status_code == 200  # "Wrong name or password."
    assert client(broker, "operator").post("/api/users/viewer/enable").status_code == 403
    assert admin.post("/api/users/viewer/enable").json()["disabled"] is False
    assert script.get("/api/dashboard", headers=bearer).status_code == 200
    assert viewer.get("/api/dashboard").status_code == 401  # that session was ended
    assert admin.post("/api/users/nobody/disable").status_code == 404
    details = [r[3] for r in audit_rows(broker) if r[0] == "User Security Attributes Changed"]
    assert "user viewer disabled" in details and "user viewer enabled" in details


def test_role_change_and_delete(broker: Any) -> None:
    admin, operator = client(broker, "admin"), client(broker, "operator")
    assert operator.post("/api/outbound/9999/resend").status_code == 404  # may repair
    changed = admin.post("/api/users/operator/role", json={"role": "viewer"})
    assert changed.json() == {"name": "operator", "role": "viewer", "disabled": False,
                              "ae_titles": []}
    assert operator.post("/api/outbound/9999/resend").status_code == 403  # at once
    token = client(broker, "viewer").post("/api/tokens", json={}).json()["token"]
    assert admin.delete("/api/users/viewer").json() == {"name": "viewer", "deleted": True}
    assert login(broker, "viewer").status_code == 200
    assert client(broker, browser_origin=False).get(
        "/api/dashboard", headers={"Authorization": f"Bearer {token}"}).status_code == 401
    assert admin.delete("/api/users/viewer").status_code == 404
    # The last enabled admin cannot be demoted, disabled or deleted.
    for refused in (admin.post("/api/users/admin/role", json={"role": "operator"}),
                    admin.post("/api/users/admin/disable"), admin.delete("/api/users/admin")):
        assert refused.status_code == 409 and "last enabled admin" in refused.json()["detail"]
    assert {u["name"]: u["role"] for u in admin.get("/api/users").json()} == {
        "admin": "admin", "operator": "viewer", "performer": "performer"}
    rows = audit_rows(broker)
    assert ("Security Roles Changed", "admin", 0, "user operator role operator -> viewer") \
        in rows
    assert ("User Security Attributes Changed", "admin", 0, "user viewer deleted") in rows


def test_users_and_tokens_page(broker: Any) -> None:
    admin = client(broker, "admin")
    client(broker, "viewer").post("/api/tokens", json={"name": "viewer-script"})
    page = admin.get("/users")
    assert page.status_code == 200 and "Users &amp; tokens" in page.text
    assert "viewer-script" in page.text and f'value="{csrf(admin)}"' in page.text
    assert client(broker, "operator").get("/users").status_code == 403
    token = csrf(admin)
    assert admin.post("/users/viewer/disable", data={}).status_code == 403  # no token
    done = admin.post("/users/viewer/disable", data={"csrf_token": token})
    assert done.status_code == 303 and "viewer%20disabled" in done.headers["location"]
    admin.post("/users/viewer/role", data={"csrf_token": token, "role": "operator"})
    added = admin.post("/users", data={"csrf_token": token, "name": "carol",
                                       "password": "carol", "role": "viewer"})
    assert "not%20done" in added.headers["location"]
    admin.post("/users", data={"csrf_token": token, "name": "carol",
                               "password": "marble otter 77", "role": "viewer"})
    admin.post("/tokens/1/revoke", data={"csrf_token": token})
    admin.post("/users/carol/delete", data={"csrf_token": token})
    users = {u["name"]: u for u in admin.get("/api/users").json()}
    assert users["viewer"]["disabled"] and users["viewer"]["role"] == "operator"
    assert "carol" not in users
    assert admin.get("/api/tokens").json()[0]["revoked"]
