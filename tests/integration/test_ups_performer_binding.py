"""A performer acts on the Worklist Service (UPS-RS, PS3.18 11) only as the AE titles an
admin bound to it with ``mwl-broker users ae-titles``: it opens the event channel
(11.13) and subscribes or unsubscribes (11.10-11.11) only those, so it can neither
read nor consume another AE's events; without a bound AE title it can do none of that
nor claim a workitem (11.7). An admin acts as any AE title. On the default embedded
broker (SQLite), over real HTTP and WebSocket, with the CLI run as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
from typing import Any

import httpx
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from websockets.exceptions import InvalidStatus
from websockets.sync.client import ClientConnection, connect

from broker.db import unit_of_work
from broker.models import Role
from broker.security.accounts import create_api_token, create_user
from tests.conftest import sample
from tests.integration.hl7util import send
from tests.workflow import CLI, wait_until

DICOM_JSON = "application/dicom+json"
GLOBAL = "1.2.840.10008.5.1.4.34.5"
PASSWORD = "correct horse battery"


def cli(app: Any, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    """``mwl-broker`` on ``app``'s database, as a user runs it."""
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("MWLB_")},
           "COLUMNS": "250", "MWLB_DATABASE_URL": app.settings.database_url}
    return subprocess.run([CLI, *args], capture_output=True, text=True, env=env, input=stdin,
                          timeout=60)


@pytest.fixture
def broker(make_broker: Any) -> Any:
    """The embedded broker with users p1, p2, unbound (performers), admin, and an API
    token of each (``app.tokens``); nobody bound to an AE title yet."""
    app = make_broker()
    app.tokens = {}
    with unit_of_work(app.runtime.session_factory) as session:
        for name, role in (("p1", Role.PERFORMER), ("p2", Role.PERFORMER),
                           ("unbound", Role.PERFORMER), ("admin", Role.ADMIN)):
            app.tokens[name] = create_api_token(
                session, create_user(session, name, PASSWORD, role), "test")
    app.clients = []
    yield app
    for client in app.clients:
        client.close()


def http(app: Any, user: str) -> httpx.Client:
    client = httpx.Client(base_url=f"http://127.0.0.1:{app.http_port}", timeout=30, headers={
        "Authorization": f"Bearer {app.tokens[user]}", "Accept": DICOM_JSON})
    app.clients.append(client)
    return client


def channel(app: Any, user: str, ae_title: str) -> ClientConnection:
    """Open Event Channel (PS3.18 11.13) of ``ae_title`` with ``user``'s token."""
    return connect(f"ws://127.0.0.1:{app.http_port}/dicomweb/subscribers/{ae_title}",
                   additional_headers={"Authorization": f"Bearer {app.tokens[user]}"},
                   open_timeout=10)


def refused_channel(app: Any, user: str, ae_title: str) -> str:
    """The Warning of the refused handshake (HTTP 403) of ``user`` for ``ae_title``."""
    with pytest.raises(InvalidStatus) as refused:
        channel(app, user, ae_title).close()
    response = refused.value.response
    assert response.status_code == 403
    assert json.loads(response.body)["detail"] in response.headers["Warning"]
    return str(response.headers["Warning"])


def subscribe(client: httpx.Client, ae_title: str) -> httpx.Response:
    return client.post(f"/dicomweb/workitems/{GLOBAL}/subscribers/{ae_title}")


def state_report(ws: ClientConnection, uid: str, state: str) -> None:
    """Wait for the State Report of workitem ``uid`` in ``state`` (others skipped)."""
    while True:
        report = Dataset.from_json(json.loads(ws.recv(timeout=15)))
        if report.AffectedSOPInstanceUID == uid and report.get("ProcedureStepState") == state:
            return


def claim(client: httpx.Client, uid: str, transaction_uid: str = "",
          state: str = "IN PROGRESS") -> httpx.Response:
    """Change Workitem State (PS3.18 11.7): a claim, by default."""
    ds = Dataset()
    ds.ProcedureStepState = state
    ds.TransactionUID = transaction_uid or generate_uid()
    return client.put(f"/dicomweb/workitems/{uid}/state",
                      content=json.dumps(ds.to_json_dict()).encode(),
                      headers={"Content-Type": DICOM_JSON})


def progress(client: httpx.Client, uid: str, transaction_uid: str) -> httpx.Response:
    """Update Workitem (PS3.18 11.6) with the claim's Transaction UID: 50 % done."""
    item = Dataset()
    item.ProcedureStepProgress = 50
    ds = Dataset()
    ds.ProcedureStepProgressInformationSequence = [item]
    return client.post(f"/dicomweb/workitems/{uid}?{transaction_uid}",
                       content=json.dumps(ds.to_json_dict()).encode(),
                       headers={"Content-Type": DICOM_JSON})


def test_the_cli_binds_performers_to_their_ae_titles(broker: Any) -> None:
    bound = cli(broker, "users", "ae-titles", "p1", "AE1")
    assert bound.returncode == 0, bound.stderr
    assert "p1 acts as AE1" in bound.stdout
    two = cli(broker, "users", "ae-titles", "p2", "AE2, AE2B")
    assert two.returncode == 0 and "p2 acts as AE2, AE2B" in two.stdout
    listed = cli(broker, "users", "list").stdout
    assert "AE2, AE2B" in listed and "AE1" in listed
    too_long = cli(broker, "users", "ae-titles", "p1", "A" * 17)
    assert too_long.returncode == 1 and "is not an AE title" in too_long.stderr
    nobody = cli(broker, "users", "ae-titles", "ghost", "AE9")
    assert nobody.returncode == 1 and "no user 'ghost'" in nobody.stderr
    neither = cli(broker, "users", "ae-titles", "p1")
    assert neither.returncode == 2 and "--none" in neither.stderr
    assert "p1 acts as AE1" in cli(broker, "users", "ae-titles", "p1", "AE1").stdout
    added = cli(broker, "users", "add", "p3", "--role", "performer", "--ae-title", "AE3",
                "--password-stdin", stdin=f"{PASSWORD}-3\n")
    assert added.returncode == 0, added.stderr
    assert "| AE3" in cli(broker, "users", "list").stdout.replace("│", "|")


def test_a_performer_acts_only_as_its_ae_titles(broker: Any) -> None:
    assert cli(broker, "users", "ae-titles", "p1", "AE1").returncode == 0
    assert cli(broker, "users", "ae-titles", "p2", "AE2").returncode == 0
    [ack] = send(broker.mllp_port, sample("09"))
    assert ack.code == "AA"
    p1, p2, admin = http(broker, "p1"), http(broker, "p2"), http(broker, "admin")

    def workitems() -> list[Any]:
        found = p1.get("/dicomweb/workitems", params={"PatientID": "864209"})
        return list(found.json()) if found.status_code == 200 else []

    uid = str(Dataset.from_json(wait_until(workitems, what="workitems")[0]).SOPInstanceUID)

    # P1 may not subscribe AE2, nor open its channel: AE2's events are P2's.
    as_other = subscribe(p1, "AE2")
    assert as_other.status_code == 403
    assert "may act only as its AE title(s) AE1, not as 'AE2'" in as_other.headers["warning"]
    assert "not as 'AE2'" in refused_channel(broker, "p1", "AE2")
    assert subscribe(p1, "AE1").status_code == 201
    assert subscribe(p2, "AE2").status_code == 201
    # Nor unsubscribe it: AE2 still hears of the workitem.
    assert p1.delete(f"/dicomweb/workitems/{GLOBAL}/subscribers/AE2").status_code == 403
    suspend = p1.post(f"/dicomweb/workitems/{GLOBAL}/subscribers/AE2/suspend")
    assert suspend.status_code == 403
    assert "not as 'AE1'" in refused_channel(broker, "p2", "AE1")
    with channel(broker, "p1", "AE1") as mine, channel(broker, "p2", "AE2") as theirs:
        state_report(mine, uid, "SCHEDULED")  # the initial State Report
        state_report(theirs, uid, "SCHEDULED")
        transaction = str(generate_uid())
        claimed = claim(p1, uid, transaction)
        assert claimed.status_code == 200, claimed.text
        state_report(mine, uid, "IN PROGRESS")
        state_report(theirs, uid, "IN PROGRESS")
    # P1 claimed it as AE1: P2, even knowing the Transaction UID, may not change it.
    theirs_refused = progress(p2, uid, transaction)
    assert theirs_refused.status_code == 403
    assert "claimed as AE1; performer p2 acts only as AE2" in theirs_refused.headers["warning"]
    assert claim(p2, uid, transaction, "CANCELED").status_code == 403
    assert progress(p1, uid, transaction).status_code == 200
    assert progress(admin, uid, transaction).status_code == 200

    # A performer with no AE title bound may do none of it, and is told why.
    unbound = http(broker, "unbound")
    refused = subscribe(unbound, "AE1")
    assert refused.status_code == 403
    assert "an admin must bind one" in refused.headers["warning"]
    assert "an admin must bind one" in refused_channel(broker, "unbound", "AE1")
    assert claim(unbound, str(generate_uid())).status_code == 403
    assert unbound.get(f"/dicomweb/workitems/{uid}").status_code == 200  # reading is not acting

    # An admin acts as any AE title.
    assert subscribe(admin, "AE2").status_code == 201
    with channel(broker, "admin", "AE9"):
        pass
    assert admin.delete(f"/dicomweb/workitems/{GLOBAL}/subscribers/AE2").status_code == 200

    # Unbound again, P1 loses its channel too.
    assert "p1 acts as no AE title" in cli(broker, "users", "ae-titles", "p1", "--none").stdout
    assert "an admin must bind one" in refused_channel(broker, "p1", "AE1")


def test_admins_bind_ae_titles_over_the_api(broker: Any) -> None:
    admin = http(broker, "admin")
    bound = admin.post("/api/users/p1/ae-titles", json={"ae_titles": ["AE1", " AE1B "]})
    assert bound.status_code == 200, bound.text
    assert bound.json()["ae_titles"] == ["AE1", "AE1B"]
    listed = {u["name"]: u["ae_titles"] for u in admin.get("/api/users").json()}
    assert listed["p1"] == ["AE1", "AE1B"] and listed["p2"] == []
    bad = admin.post("/api/users/p1/ae-titles", json={"ae_titles": ["A" * 17]})
    assert bad.status_code == 409 and "is not an AE title" in bad.json()["detail"]
    p1 = http(broker, "p1")
    assert p1.post("/api/users/p1/ae-titles", json={"ae_titles": ["X"]}).status_code == 403
    assert subscribe(p1, "AE1B").status_code == 201
