"""The Scheduled Workflow loop on the embedded default (SQLite, in-process tasks):
ORM over MLLP -> findscu -W -> MPPS IN PROGRESS -> storescu -> MPPS COMPLETED -> the
EHR (a real MLLP listener) receives the order status messages."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import generate_uid
from sqlalchemy import create_engine, select

from broker.models import (
    ReconciliationItem,
    RequestedProcedure,
    ScheduledProcedureStep,
    StoredInstance,
)
from tests.conftest import sample
from tests.dcmtk import findscu, sps
from tests.ehr import EHREndpoint, field
from tests.integration.hl7util import send
from tests.modality import (
    MPPS,
    final,
    in_progress,
    n_create,
    n_set,
    step_item,
    storescu,
    write_images,
)
from tests.workflow import STUDY_05, destination, outbox_statuses, step_statuses, wait_until

pytestmark = [pytest.mark.dcmtk]

def walk_the_loop(mllp_port: int, dicom_port: int, ehr: EHREndpoint, tmp_path: Path,
                  statuses: Callable[[], dict[str, str]]) -> list[bytes]:
    """The whole loop for sample #05 (one procedure, SPS0001 + SPS0002, performed as a
    grouped procedure); returns what the EHR received."""
    assert [a.code for a in send(mllp_port, sample("05"))] == ["AA"]
    items = findscu(dicom_port, ["AccessionNumber=ACC0001",
                                 "ScheduledProcedureStepSequence[0].ScheduledProcedureStepID"])
    assert sorted(sps(ds).ScheduledProcedureStepID for ds in items) == ["SPS0001", "SPS0002"]

    mpps_uid = generate_uid()
    created = n_create(dicom_port, MPPS, mpps_uid, in_progress([
        step_item(accession="ACC0001", rp_id="RP0001", sps_id="SPS0001", study_uid=STUDY_05),
        step_item(accession="ACC0001", rp_id="RP0001", sps_id="SPS0002", study_uid=STUDY_05)]))
    assert created.Status == 0x0000
    wait_until(lambda: statuses() == {"SPS0001": "STARTED", "SPS0002": "STARTED"},
               what="both steps STARTED")
    # STARTED steps leave the default worklist, and are there when asked for.
    assert findscu(dicom_port, ["AccessionNumber=ACC0001"]) == []
    started = findscu(dicom_port, [
        "AccessionNumber=ACC0001",
        "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStatus=STARTED"])
    assert len(started) == 2

    storescu(dicom_port, write_images(tmp_path / "images", 3, accession="ACC0001",
                                      study_uid=STUDY_05))
    done = n_set(dicom_port, mpps_uid, final("COMPLETED"))
    assert done.Status == 0x0000
    wait_until(lambda: statuses() == {"SPS0001": "COMPLETED", "SPS0002": "COMPLETED"},
               what="both steps COMPLETED")
    return ehr.wait_for(3)


def test_scheduled_workflow_loop_embedded(make_broker: Any, ehr: EHREndpoint,
                                          tmp_path: Path) -> None:
    app = make_broker(outbound_destinations=destination(ehr.port))
    received = walk_the_loop(app.mllp_port, app.dicom_port, ehr, tmp_path,
                             lambda: step_statuses(app))
    assert [field(m, "ORC", 5) for m in received] == ["IP", "A", "CM"]
    for message in received:
        assert field(message, "MSH", 9) == "ORM^O01"
        assert field(message, "MSH", 12) == "2.3.1"
        assert field(message, "MSH", 5) == "EHR"
        assert field(message, "ORC", 1) == "SC"
        assert field(message, "ORC", 2) == "PLC-1001^EHR"
        assert field(message, "ORC", 3) == "FIL-5001^RIS"
        assert field(message, "OBR", 18) == "ACC0001"
        assert field(message, "OBR", 19) == "RP0001"
        assert field(message, "PID", 3).startswith("135790")
    wait_until(lambda: outbox_statuses(app) == {"sent"}, what="outbox all sent")
    with app.runtime.session_factory() as session:
        rp = session.scalars(select(RequestedProcedure)).one()
        assert rp.reported_status == "CM" and rp.images_available_at is not None
        instances = session.scalars(select(StoredInstance)).all()
        assert len(instances) == 3 and all(i.procedure_pk == rp.id for i in instances)
        assert session.scalars(select(ReconciliationItem)).all() == []


@pytest.mark.postgres
@pytest.mark.redis
def test_scheduled_workflow_loop_distributed(start_distributed: Any, ehr: EHREndpoint,
                                             tmp_path: Path) -> None:
    """The same loop through `mwl-broker serve` + `mwl-broker worker` processes."""
    procs = start_distributed(outbound_destinations=json.dumps(destination(ehr.port)))
    engine = create_engine(procs.database_url)

    def statuses() -> dict[str, str]:
        with engine.connect() as conn:
            return dict(conn.execute(select(ScheduledProcedureStep.sps_id,
                                            ScheduledProcedureStep.status)).all())

    try:
        received = walk_the_loop(procs.mllp_port, procs.dicom_port, ehr, tmp_path, statuses)
        assert [field(m, "ORC", 5) for m in received] == ["IP", "A", "CM"]
        assert {field(m, "OBR", 18) for m in received} == {"ACC0001"}
    finally:
        engine.dispose()
