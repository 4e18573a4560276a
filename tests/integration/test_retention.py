"""Message-store retention: `mwl-broker db prune` deletes what is past
retention and keeps what someone still needs (failed messages, an order's last message,
undelivered outbound messages)."""

from __future__ import annotations

from typing import Any

import pytest
from pydicom.uid import generate_uid
from sqlalchemy import create_engine, func, select, text

from broker.models import DicomRequest, InboundMessage, OutboundMessage, WorklistQuery
from tests.conftest import sample
from tests.dcmtk import findscu
from tests.ehr import EHREndpoint
from tests.integration.hl7util import send, set_field
from tests.modality import MPPS, in_progress, n_create, step_item
from tests.workflow import STUDY_05, cli, destination, outbox_statuses, wait_until

pytestmark = [pytest.mark.dcmtk]


def counts(app: Any) -> dict[str, int]:
    with app.runtime.session_factory() as session:
        return {model.__tablename__: session.scalar(select(func.count()).select_from(model))
                or 0 for model in (InboundMessage, WorklistQuery, DicomRequest,
                                   OutboundMessage)}


def test_prune_keeps_what_is_still_needed(make_broker: Any, ehr: EHREndpoint) -> None:
    app = make_broker(outbound_destinations=destination(ehr.port))
    unknown = set_field(sample("06"), "MSH", 10, "XO-UNKNOWN")
    acks = send(app.mllp_port, unknown, sample("01"), sample("05"))
    assert [a.code for a in acks] == ["AE", "AA", "AA"]
    findscu(app.dicom_port, ["AccessionNumber=ACC0001"])
    ds = in_progress([step_item(accession="ACC0001", rp_id="RP0001", sps_id="SPS0001",
                                study_uid=STUDY_05)])
    assert n_create(app.dicom_port, MPPS, generate_uid(), ds).Status == 0
    wait_until(lambda: outbox_statuses(app) == {"sent"}, what="IP sent")
    wait_until(lambda: counts(app)["worklist_query"] == 1, what="query recorded")
    before = counts(app)
    assert before == {"inbound_message": 3, "worklist_query": 1, "dicom_request": 1,
                      "outbound_message": 1}

    engine = create_engine(app.settings.database_url)
    with engine.begin() as conn:  # everything happened 100 days ago
        for table, column in (("inbound_message", "received_at"), ("worklist_query", "at"),
                              ("dicom_request", "received_at"),
                              ("outbound_message", "created_at")):
            conn.execute(text(f"UPDATE {table} SET {column} = '2020-01-01 00:00:00.000000'"))
    engine.dispose()

    dry = cli(app, "db", "prune", "--days", "30", "--dry-run")
    assert "would prune" in dry and "1 inbound messages" in dry
    assert counts(app) == before
    done = cli(app, "db", "prune", "--days", "30")
    assert "pruned" in done
    with app.runtime.session_factory() as session:
        left = {m.control_id: m.status for m in session.scalars(select(InboundMessage))}
    # The failed XO waits for a person; ORM0005 is the order's last message; the ADT goes.
    assert left == {"XO-UNKNOWN": "failed", "ORM0005": "processed"}
    assert counts(app) == {"inbound_message": 2, "worklist_query": 0, "dicom_request": 0,
                           "outbound_message": 0}
