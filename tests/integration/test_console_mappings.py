"""The console's mapping versions over real HTTP on a running broker: the versions and
the directory's state, a diff, the impact of a deploy, deploy and rollback (admins
only, audited), a refused set changing nothing, the profile and version on the
message page and the timeline, and a bulk replay (operators) followed to its summary."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from broker.mapping import versions
from broker.mapping.profile import read_sources
from broker.models import AuditEvent
from tests.builders import order
from tests.console import add_users, client, csrf
from tests.integration.hl7util import send
from tests.site_profiles import DX_STATION as STATION
from tests.workflow import wait_until

BROKEN = STATION.replace("{{modality: DX}}", "{{modality: 7}}")


def site_dir(tmp_path: Path, ae: str = "DX_OLD") -> Path:
    directory = tmp_path / "mappings"
    directory.mkdir(exist_ok=True)
    (directory / "site.yaml").write_text(STATION.format(ae=ae), encoding="utf-8")
    return directory


def edit(directory: Path, text: str) -> None:
    (directory / "site.yaml").write_text(text, encoding="utf-8")


@pytest.fixture
def broker(make_broker: Any, tmp_path: Path) -> Any:
    """A broker mapping with a site profile (DX steps to DX_OLD): its first start
    deployed it as version 1."""
    app = make_broker(mappings_dir=site_dir(tmp_path))
    add_users(app)
    return app


def processed(viewer: Any, control_id: str) -> dict[str, Any]:
    def found() -> dict[str, Any] | None:
        rows = viewer.get("/api/messages", params={"control_id": control_id}).json()
        if rows and rows[0]["status"] in ("processed", "failed"):
            return dict(viewer.get(f"/api/messages/{rows[0]['id']}").json())
        return None
    return dict(wait_until(found, what=f"{control_id} processed"))


def configuration_audits(app: Any) -> list[tuple[str, str]]:
    """The audit events of mapping changes: Security Alert (110113) with event type
    Software Configuration (110131, PS3.15 A.5.3.13), by user and what they say."""
    with app.runtime.session_factory() as session:
        rows = list(session.scalars(
            select(AuditEvent).where(AuditEvent.event_name == "Software Configuration")
            .where(AuditEvent.detail.like("mapping profiles%")).order_by(AuditEvent.id)))
    for row in rows:
        assert row.event_id == "110113"
        assert 'EventTypeCode csd-code="110131"' in row.message
        assert f'UserID="{row.user}" UserIsRequestor="true"' in row.message
    return [(row.user, row.detail) for row in rows]


def test_versions_diff_impact_deploy_and_rollback_by_role(broker: Any) -> None:
    directory = broker.runtime.settings.mappings_dir
    viewer, operator, admin = (client(broker, r) for r in ("viewer", "operator", "admin"))
    assert [a.code for a in send(broker.mllp_port, order(1))] == ["AA"]
    first = processed(viewer, "B1")
    assert (first["profile"], first["profile_version"]) == ("site", 1)

    listed = viewer.get("/api/mappings/versions").json()
    assert [(v["version"], v["active"]) for v in listed["versions"]] == [(1, True)]
    assert [d["action"] for d in listed["deployments"]] == ["initial"]
    assert listed["directory"]["differs"] is False

    edit(directory, STATION.format(ae="DX_NEW"))  # editing alone changes nothing
    listed = viewer.get("/api/mappings/versions").json()
    assert listed["directory"]["differs"] is True and listed["active"]["version"] == 1
    diff = viewer.get("/api/mappings/diff", params={"old": "1", "new": "dir"}).json()
    assert [f["file"] for f in diff["files"]] == [f"directory {directory}/site.yaml"]
    lines = [(line["kind"], line["text"]) for line in diff["files"][0]["lines"]]
    assert ("removed", "-    ae_title: DX_OLD") in lines
    assert ("added", "+    ae_title: DX_NEW") in lines
    assert viewer.get("/api/mappings/diff", params={"old": "7"}).status_code == 404

    # Only an admin sees the impact, deploys, rolls back.
    for user in (viewer, operator):
        assert user.get("/api/mappings/impact").status_code == 403
        assert user.post("/api/mappings/deploy", json={}).status_code == 403
        assert user.post("/api/mappings/rollback", json={"version": 1}).status_code == 403
        assert user.get("/mappings/deploy").status_code == 403
        assert user.post("/mappings/deploy", data={"csrf_token": csrf(user),
                                                   "digest": ""}).status_code == 403
        assert user.post("/mappings/rollback", data={"csrf_token": csrf(user),
                                                     "version": "1"}).status_code == 403
    assert admin.post("/mappings/deploy", data={"digest": ""}).status_code == 403  # no token
    assert viewer.get("/api/mappings/versions").json()["active"]["version"] == 1

    preview = admin.get("/api/mappings/impact").json()
    assert preview["errors"] == [] and preview["active"]["version"] == 1
    impact = preview["impact"]
    assert impact["compared"] == 1 and impact["now_failing"] == []
    assert {(c["id"], c["keyword"], c["old"], c["new"]) for c in impact["attributes_changed"]
            } >= {(first["id"], "ScheduledProcedureStepSequence.ScheduledStationAETitle",
                   "DX_OLD", "DX_NEW")}
    stale = admin.post("/api/mappings/deploy", json={"digest": "0" * 64})
    assert stale.status_code == 422 and "changed since" in str(stale.json())
    deployed = admin.post("/api/mappings/deploy",
                          json={"digest": preview["digest"], "comment": "DX moved"})
    assert deployed.status_code == 200, deployed.text
    assert (deployed.json()["version"], deployed.json()["active"]) == (2, True)
    assert configuration_audits(broker) == [
        ("admin", "mapping profiles deployed: version 2 in force (DX moved)")]

    assert [a.code for a in send(broker.mllp_port, order(2))] == ["AA"]
    second = processed(viewer, "B2")
    assert (second["profile"], second["profile_version"]) == ("site", 2)

    # A set that does not validate is refused with every error; nothing changes.
    edit(directory, BROKEN.format(ae="DX_NEW"))
    refused = admin.post("/api/mappings/deploy", json={})
    assert refused.status_code == 422
    assert any(e.startswith(f"{directory / 'site.yaml'}: stations[0].when.modality")
               for e in refused.json()["detail"]["errors"]), refused.text
    assert admin.get("/api/mappings/impact").json()["errors"]
    after = viewer.get("/api/mappings/versions").json()
    assert [v["version"] for v in after["versions"]] == [2, 1]
    assert after["active"]["version"] == 2 and len(configuration_audits(broker)) == 1

    assert admin.post("/api/mappings/rollback", json={"version": 9}).status_code == 404
    back = admin.post("/api/mappings/rollback", json={"version": 1, "comment": "undo"})
    assert back.status_code == 200 and back.json()["active"] is True
    listed = viewer.get("/api/mappings/versions").json()
    assert listed["active"]["version"] == 1
    assert [(d["version"], d["action"]) for d in listed["deployments"]] == [
        (1, "rollback"), (2, "deploy"), (1, "initial")]
    assert configuration_audits(broker)[-1] == (
        "admin", "mapping profiles rolled back: version 1 in force (undo)")
    assert viewer.get("/api/mappings/versions/2").json()["sources"]["site.yaml"] == \
        STATION.format(ae="DX_NEW")


def test_deploy_and_rollback_pages(broker: Any) -> None:
    """The admin's forms: the impact page carries the digest of the files it showed;
    the deploy then the rollback land on the mappings page with a notice."""
    directory = broker.runtime.settings.mappings_dir
    admin = client(broker, "admin")
    edit(directory, STATION.format(ae="DX_NEW"))
    page = admin.get("/mappings/deploy")
    assert page.status_code == 200 and "Deploy these profiles" in page.text
    digest = versions.digest(read_sources(directory))
    assert f'name="digest" value="{digest}"' in page.text
    done = admin.post("/mappings/deploy", data={"csrf_token": csrf(admin), "digest": digest,
                                                "comment": "new room"})
    assert done.status_code == 303 and "version%202%20deployed" in done.headers["location"]
    assert "are version 2, in force: nothing to deploy" in admin.get("/mappings/deploy").text
    version = admin.get("/mappings/versions/1")
    assert "Roll back to version 1" in version.text and "DX_OLD" in version.text
    rolled = admin.post("/mappings/rollback", data={"csrf_token": csrf(admin), "version": "1"})
    assert rolled.status_code == 303 and "version%201%20in%20force" in rolled.headers["location"]
    edit(directory, STATION.format(ae="DX_THIRD"))
    stale = admin.post("/mappings/deploy", data={"csrf_token": csrf(admin), "digest": digest})
    assert stale.status_code == 422 and "changed since their impact was shown" in stale.text
    edit(directory, BROKEN.format(ae="X"))
    refused = admin.post("/mappings/deploy", data={
        "csrf_token": csrf(admin), "digest": versions.digest(read_sources(directory))})
    assert refused.status_code == 422 and "site.yaml: stations[0].when.modality" in refused.text
    assert "Refused" in admin.get("/mappings/deploy").text
    with broker.runtime.session_factory() as session:
        in_force = versions.active(session)
    assert in_force is not None and in_force.version == 1


def test_message_page_and_timeline_name_profile_and_version(broker: Any) -> None:
    assert [a.code for a in send(broker.mllp_port, order(5))] == ["AA"]
    viewer = client(broker, "viewer")
    message = processed(viewer, "B5")
    page = viewer.get(f"/messages/{message['id']}").text
    assert 'Mapped by profile site, <a href="/mappings/versions/1">version 1</a>' in page
    timeline = viewer.get("/timeline/ACC5").text
    assert 'profile site, <a href="/mappings/versions/1">version 1</a>' in timeline
    events = viewer.get("/api/timeline/ACC5").json()["events"]
    assert [(e["profile"], e["profile_version"]) for e in events if e["kind"] == "HL7 in"
            ] == [("site", 1)]


def test_replay_by_operator_reaches_its_summary(broker: Any) -> None:
    """Two updates arrive before their orders and fail (204: unknown order); one order
    then arrives. A replay of the failed messages passes that update and keeps the
    other failing, with its reason. Viewers may watch a replay, not start one."""
    early = [order(n).replace(b"ORC|NW", b"ORC|XO").replace(f"|B{n}|".encode(),
                                                            f"|XO{n}|".encode())
             for n in (3, 4)]
    assert [a.code for a in send(broker.mllp_port, *early)] == ["AE", "AE"]
    assert [a.code for a in send(broker.mllp_port, order(3))] == ["AA"]
    viewer, operator = client(broker, "viewer"), client(broker, "operator")
    processed(viewer, "B3")
    assert viewer.post("/api/replays", json={"status": "failed"}).status_code == 403
    assert viewer.post("/replays", data={"csrf_token": csrf(viewer),
                                         "status": "failed"}).status_code == 403
    assert operator.post("/replays", data={"status": "failed"}).status_code == 403  # no token
    assert operator.post("/api/replays", json={"status": "pending"}).status_code == 422

    started = operator.post("/api/replays", json={"status": "failed", "sender": "EHR/HOSP"})
    assert started.status_code == 201, started.text
    run = wait_until(lambda: (lambda r: r if r["finished"] else None)(
        viewer.get(f"/api/replays/{started.json()['id']}").json()), what="replay finished")
    assert (run["total"], run["done"], run["passed"], run["failing"], run["waiting"]) == (
        2, 2, 1, 1, 0)
    assert [(r["code"], r["count"]) for r in run["reasons"]] == [(204, 1)]
    assert run["created_by"] == "operator" and run["version"] == 1
    assert run["criteria"]["sender"] == "EHR/HOSP"

    page = operator.post("/replays", data={"csrf_token": csrf(operator), "status": "failed"})
    assert page.status_code == 303 and page.headers["location"].startswith("/replays/")
    shown = viewer.get(page.headers["location"])
    assert shown.status_code == 200 and 'id="replay-progress"' in shown.text
    assert viewer.get("/api/replays/999").status_code == 404
    refused = operator.post("/replays", data={"csrf_token": csrf(operator),
                                              "status": "rejected"})
    assert "no%20replay" in refused.headers["location"]  # rejected at the door: not mapped
    none = operator.post("/replays", data={"csrf_token": csrf(operator), "status": "failed",
                                           "sender": "NOBODY"})
    assert "No stored message matched" in viewer.get(none.headers["location"]).text
