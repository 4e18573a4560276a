"""The modern worklist end to end (IHE AIW-I over UPS-RS, PS3.18 chapter 11): an order
arrives over MLLP, its step becomes a UPS workitem, ``examples/ups_performer.py`` (run
as a user runs it, a process of its own with an API token of the performer role)
learns of it over the event channel, claims it, reports progress and completes it;
the EHR (a real MLLP listener) receives ORM^O01 with order status CM, the step has
left the Modality Worklist, and the order's timeline shows the UPS events. On a real
``mwl-broker serve``: the embedded default (SQLite, in-process tasks), and PostgreSQL
with a Celery worker."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom.dataset import Dataset

from tests.builders import order
from tests.conftest import MAPPINGS, REPO
from tests.dcmtk import findscu, sps
from tests.ehr import EHREndpoint, field
from tests.integration.conftest import Processes, free_port
from tests.integration.hl7util import send
from tests.integration.test_upsrs import tokens
from tests.workflow import destination, wait_until

pytestmark = [pytest.mark.dcmtk]

PERFORMER = REPO / "examples" / "ups_performer.py"
DICOM_JSON = "application/dicom+json"
AI_CODE = "AICXR"  # the Scheduled Workitem Code the application performs
STATION = "MWL_DEFAULT"  # the default profile's station for DX (its Station Name code)


def ai_order(n: int) -> bytes:
    """Order ``n`` (one step, DX) for the AI chest X-ray triage protocol: its Scheduled
    Protocol Code, hence the workitem's Scheduled Workitem Code, is AICXR."""
    message = order(n).replace(b"^XRCHPA^Chest PA^99HOSP", b"^AICXR^AI chest triage^99HOSP")
    assert message != order(n)
    return message


@pytest.fixture(params=[
    "embedded",
    pytest.param("celery", marks=[pytest.mark.postgres, pytest.mark.redis]),
])
def broker(request: pytest.FixtureRequest, tmp_path: Path, ehr: EHREndpoint
           ) -> Iterator[Any]:
    """``mwl-broker serve`` reporting order status to ``ehr``: alone on SQLite, or on
    PostgreSQL + Redis with ``mwl-broker worker``; with API tokens by role."""
    outbound = json.dumps(destination(ehr.port))
    if request.param == "celery":
        start = request.getfixturevalue("start_distributed")
        procs = start(outbound_destinations=outbound)
    else:
        procs = _start_embedded(tmp_path, outbound)
    procs.tokens = tokens(procs.database_url)
    procs.base = f"http://127.0.0.1:{procs.env['MWLB_HTTP_PORT']}"
    try:
        yield procs
    finally:
        procs.stop()


def _start_embedded(tmp_path: Path, outbound: str) -> Any:
    mllp_port, dicom_port = free_port(), free_port()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("MWLB_")},
           "MWLB_DATABASE_URL": f"sqlite:///{tmp_path / 'broker.db'}",
           "MWLB_MLLP_HOST": "127.0.0.1", "MWLB_MLLP_PORT": str(mllp_port),
           "MWLB_DICOM_HOST": "127.0.0.1", "MWLB_DICOM_PORT": str(dicom_port),
           "MWLB_HTTP_HOST": "127.0.0.1", "MWLB_HTTP_PORT": str(free_port()),
           "MWLB_MAPPINGS_DIR": str(MAPPINGS), "MWLB_TIMEZONE": "America/Chicago",
           "MWLB_OUTBOUND_DESTINATIONS": outbound}
    procs = Processes(env, tmp_path)
    procs.start("serve")
    procs.wait_for("serve", r"mwl-broker listening")
    procs.mllp_port, procs.dicom_port = mllp_port, dicom_port  # type: ignore[attr-defined]
    procs.database_url = env["MWLB_DATABASE_URL"]  # type: ignore[attr-defined]
    return procs


def start_performer(broker: Any, log: Path, work_seconds: float = 0.2
                    ) -> subprocess.Popen[bytes]:
    """``python examples/ups_performer.py`` for AI_CXR, code AICXR at MWL_DEFAULT, its
    output in ``log``; returns once it waits for workitems on its event channel."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, str(PERFORMER), "--url", broker.base, "--ae-title", "AI_CXR",
             "--code", AI_CODE, "--station", STATION, "--wait", "90",
             "--work-seconds", str(work_seconds)],
            env={**os.environ, "UPS_TOKEN": broker.tokens["performer"]},
            stdout=out, stderr=subprocess.STDOUT)
    wait_until(lambda: "waiting for workitems" in log.read_text() or proc.poll() is not None,
               timeout=60, what="the performer waiting")
    assert proc.poll() is None, log.read_text()
    return proc


def worklist(broker: Any, accession: str, status: str = "") -> list[Dataset]:
    """What a modality's findscu -W gets for ``accession`` (the default statuses, or
    those of ``status``)."""
    keys = [f"AccessionNumber={accession}",
            "ScheduledProcedureStepSequence[0].ScheduledProcedureStepID",
            f"ScheduledProcedureStepSequence[0].ScheduledProcedureStepStatus={status}"]
    return findscu(broker.dicom_port, keys)


def test_an_ai_application_performs_an_ordered_workitem(broker: Any, ehr: EHREndpoint,
                                                        tmp_path: Path) -> None:
    log = tmp_path / "performer.log"
    performer = start_performer(broker, log)
    try:
        # An order the application does not perform (plain chest PA), then its own.
        assert [a.code for a in send(broker.mllp_port, order(41), ai_order(42))] == [
            "AA", "AA"]
        performer.wait(120)
    finally:
        if performer.poll() is None:
            performer.kill()
            performer.wait(10)
    output = log.read_text()
    assert performer.returncode == 0, output
    [uid] = re.findall(r"completed workitem (\S+)", output)
    assert f"claimed workitem {uid}" in output
    assert re.search(rf"event State Report for workitem {re.escape(uid)}: SCHEDULED", output)
    assert "Bench" not in output and "BP4" not in output  # no patient name or id logged

    # The EHR hears the order is complete (after IP when the claim started the step).
    received = ehr.wait_for(2, timeout=60)
    mine = [m for m in received if field(m, "OBR", 18) == "ACC42"]
    assert [field(m, "ORC", 5) for m in mine] == ["IP", "CM"], received
    cm = mine[-1]
    assert field(cm, "MSH", 9) == "ORM^O01"
    assert field(cm, "ORC", 2) == "PLC-42^EHR"
    assert field(cm, "OBR", 19) == "RP42"
    assert all(field(m, "OBR", 18) != "ACC41" for m in received)

    # The workitem as the Worklist Service now has it.
    with client(broker, "performer") as http:
        check_workitem(http, uid)

    # The step has left the Modality Worklist; the other order's is still on it.
    assert worklist(broker, "ACC42") == []
    assert [sps(ds).ScheduledProcedureStepID for ds in worklist(broker, "ACC42", "COMPLETED")
            ] == ["SPS42"]
    assert [sps(ds).ScheduledProcedureStepStatus for ds in worklist(broker, "ACC41")] == [
        "SCHEDULED"]

    # The order's timeline (console API) shows the UPS events among the rest.
    with client(broker, "viewer") as viewer:
        timeline = viewer.get("/api/timeline/ACC42")
    assert timeline.status_code == 200, timeline.text
    lines = [(e["kind"], e["text"]) for e in timeline.json()["events"]]
    ups = [text for kind, text in lines if kind == "UPS"]
    assert [t.split(" (")[0] for t in ups] == [
        "SPS42 workitem: State Report SCHEDULED", "SPS42 workitem: State Report IN PROGRESS",
        "SPS42 workitem: Progress Report", "SPS42 workitem: Progress Report",
        "SPS42 workitem: State Report COMPLETED"], lines
    kinds = [kind for kind, _ in lines]
    assert kinds.index("HL7 in") < kinds.index("UPS")
    assert any(kind == "HL7 out" and "ORC-5 CM" in text for kind, text in lines), lines
    steps = timeline.json()["procedures"][0]["steps"]
    assert [(s["sps_id"], s["status"]) for s in steps] == [("SPS42", "COMPLETED")]


@pytest.mark.parametrize("broker", ["embedded"], indirect=True)
def test_the_application_cancels_when_asked_to(broker: Any, ehr: EHREndpoint,
                                               tmp_path: Path) -> None:
    """A Request Cancellation of the claimed workitem reaches the performer as a Cancel
    Requested event (PS3.4 CC.2.4.2): it cancels the workitem, and the EHR hears the
    order was discontinued."""
    # Imported, nothing to perform yet: it gives up after its wait.
    assert performer_module().perform_one(broker.base, broker.tokens["performer"], "AI_CXR",
                                          workitem_code=AI_CODE, wait=1) is None
    log = tmp_path / "performer.log"
    performer = start_performer(broker, log, work_seconds=4)
    try:
        assert [a.code for a in send(broker.mllp_port, ai_order(43))] == ["AA"]
        uid = wait_until(lambda: re.findall(r"claimed workitem (\S+)", log.read_text()),
                         timeout=60, what="the claim")[0]
        reason = Dataset()
        reason.ReasonForCancellation = "ordered in error"
        with client(broker, "admin") as admin:
            asked = admin.post(f"/dicomweb/workitems/{uid}/cancelrequest",
                               content=json.dumps(reason.to_json_dict()),
                               headers={"Content-Type": DICOM_JSON})
        assert asked.status_code == 202, asked.text
        performer.wait(60)
    finally:
        if performer.poll() is None:
            performer.kill()
            performer.wait(10)
    output = log.read_text()
    assert performer.returncode == 0, output
    assert f"event Cancel Requested for workitem {uid}" in output
    assert f"cancelled workitem {uid}" in output and "completed workitem" not in output
    received = ehr.wait_for(2, timeout=60)
    assert [field(m, "ORC", 5) for m in received] == ["IP", "DC"], received
    assert {field(m, "OBR", 18) for m in received} == {"ACC43"}
    with client(broker, "performer") as http:
        item = Dataset.from_json(http.get(f"/dicomweb/workitems/{uid}").json()[0])
    assert item.ProcedureStepState == "CANCELED"
    assert worklist(broker, "ACC43") == []


def test_the_performer_script_explains_itself() -> None:
    shown = subprocess.run([sys.executable, str(PERFORMER), "--help"], capture_output=True,
                           text=True, timeout=60)
    assert shown.returncode == 0 and "--token" in shown.stdout and "UPS_TOKEN" in shown.stdout
    env = {k: v for k, v in os.environ.items() if k != "UPS_TOKEN"}
    refused = subprocess.run([sys.executable, str(PERFORMER)], capture_output=True, text=True,
                             timeout=60, env=env)
    assert refused.returncode == 2 and "give --token or set UPS_TOKEN" in refused.stderr


def performer_module() -> Any:
    """examples/ups_performer.py imported (it is a script, not a package module)."""
    spec = importlib.util.spec_from_file_location("ups_performer", PERFORMER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def client(broker: Any, role: str) -> httpx.Client:
    return httpx.Client(base_url=broker.base, timeout=30, headers={
        "Authorization": f"Bearer {broker.tokens[role]}", "Accept": DICOM_JSON})


def check_workitem(http: httpx.Client, uid: str) -> None:
    """The completed workitem holds what the performer reported; the other order's
    workitem is still SCHEDULED."""
    answer = http.get(f"/dicomweb/workitems/{uid}")
    assert answer.status_code == 200, answer.text
    item = Dataset.from_json(answer.json()[0])
    assert item.ProcedureStepState == "COMPLETED"
    assert item.ScheduledWorkitemCodeSequence[0].CodeValue == AI_CODE
    assert item.ReferencedRequestSequence[0].AccessionNumber == "ACC42"
    [performed] = item.UnifiedProcedureStepPerformedProcedureSequence
    assert performed.PerformedStationNameCodeSequence[0].CodeValue == "AI_CXR"
    [output_ref] = performed.OutputInformationSequence
    assert output_ref.TypeOfInstances == "DICOM"
    assert output_ref.StudyInstanceUID == item.ReferencedRequestSequence[0].StudyInstanceUID
    assert output_ref.ReferencedSOPSequence[0].ReferencedSOPClassUID == (
        "1.2.840.10008.5.1.4.1.1.88.33")
    others = http.get("/dicomweb/workitems", params={
        "ProcedureStepState": "SCHEDULED", "ReferencedRequestSequence.AccessionNumber": "ACC41"})
    assert others.status_code == 200 and len(others.json()) == 1

