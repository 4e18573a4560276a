"""The production path: PostgreSQL + Redis + a real ``mwl-broker worker`` process and a
real ``mwl-broker serve`` process, DCMTK findscu as the modality."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.conftest import sample
from tests.dcmtk import findscu, sps
from tests.integration.hl7util import send, set_field

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.dcmtk]


def test_orders_flow_through_a_real_worker(start_distributed: Any) -> None:
    distributed = start_distributed()
    acks = send(distributed.mllp_port, sample("01"), sample("05"), sample("09"))
    assert [(a.code, a.control_id) for a in acks] == [
        ("AA", "ADT0001"), ("AA", "ORM0005"), ("AA", "OMI0009")]
    items = findscu(distributed.dicom_port, [
        "AccessionNumber=ACC0001", "PatientName", "RequestedProcedurePriority",
        "ScheduledProcedureStepSequence[0].ScheduledProcedureStepID",
        "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartTime"])
    assert sorted(sps(ds).ScheduledProcedureStepID for ds in items) == ["SPS0001", "SPS0002"]
    assert {ds.RequestedProcedurePriority for ds in items} == {"HIGH"}
    # Application ACK mode through the worker: an XO for an unknown order gets AE 204.
    unknown = set_field(sample("06"), "MSH", 10, "XO-UNKNOWN")
    for occurrence in (0, 1):
        unknown = set_field(unknown, "ORC", 2, "PLC-9999^EHR", occurrence=occurrence)
        unknown = set_field(unknown, "ORC", 3, "FIL-9999^RIS", occurrence=occurrence)
    [ack] = send(distributed.mllp_port, unknown)
    assert ack.code == "AE" and "204" in ack.err, distributed.output()
    ct = findscu(distributed.dicom_port, [
        "ScheduledProcedureStepSequence[0].Modality=CT",
        "ScheduledProcedureStepSequence[0].ScheduledStationAETitle",
        "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartTime"])
    assert len(ct) == 2
    assert {sps(ds).ScheduledStationAETitle for ds in ct} == {"CT01_AE"}
    assert {sps(ds).ScheduledProcedureStepStartTime[:4] for ds in ct} == {"1400"}


def test_one_patients_messages_apply_in_arrival_order_with_two_workers(
    start_distributed: Any,
) -> None:
    """Store ACK mode lets 30 reschedules of one order queue up at once; two
    worker processes must still apply them in arrival order, so the last one wins."""
    from sqlalchemy import create_engine, select
    from sqlalchemy.orm import Session

    from broker.models import InboundMessage

    distributed = start_distributed(ack_mode="store")
    messages = [sample("05")]
    for n in range(30):
        xo = set_field(sample("06"), "MSH", 10, f"XO-{n}")
        for occurrence in (0, 1):
            xo = set_field(xo, "ORC", 7, f"1^once^^20250311{10 + n // 6:02d}{(n % 6) * 10:02d}00"
                           f"^^R", occurrence=occurrence)
        messages.append(xo)
    acks = send(distributed.mllp_port, *messages)
    assert {a.code for a in acks} == {"AA"}
    engine = create_engine(distributed.database_url)
    deadline = time.monotonic() + 60
    while True:
        with Session(engine) as session:
            rows = list(session.scalars(select(InboundMessage).order_by(InboundMessage.id)))
        if all(r.status != "received" for r in rows) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    engine.dispose()
    assert [r.status for r in rows] == ["processed"] * 31, distributed.output()
    applied_order = [r.id for r in sorted(rows, key=lambda r: r.processed_at)]
    assert applied_order == [r.id for r in rows]
    items = findscu(distributed.dicom_port, [
        "AccessionNumber=ACC0001",
        "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate=20250311",
        "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartTime"])
    assert {sps(ds).ScheduledProcedureStepStartTime[:4] for ds in items} == {"1450"}
