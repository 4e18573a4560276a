"""What the console's dashboard and order timeline count, on real rows in SQLite and
PostgreSQL: HL7 messages per minute bucket (received, failed, sent), worklist queries
per station, the adjustments messages were accepted with, the store's counts adding up,
and repeated C-FIND hits of one step to one station grouped on the timeline."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from broker.models import (
    InboundMessage,
    RequestedProcedure,
    StepStatusChange,
    WorklistQuery,
    WorklistQueryResult,
)
from broker.services import outbox
from broker.web import queries, traffic
from tests.builders import order
from tests.conftest import sample
from tests.integration.hl7util import set_field
from tests.service.conftest import Services
from tests.service.messages import edited

NOW = datetime(2025, 3, 10, 15, 30, 20, tzinfo=UTC)  # 09:30 in the tests' Chicago


def at(hh: int, mm: int, ss: float = 0) -> datetime:
    return datetime(2025, 3, 10, hh, mm, tzinfo=UTC) + timedelta(seconds=ss)


def received_at(services: Services, pk: int, when: datetime) -> None:
    with services.factory.begin() as session:
        row = session.get(InboundMessage, pk)
        assert row is not None
        row.received_at = when


def test_window_has_one_minute_buckets_up_to_three_hours() -> None:
    one = traffic.Window.last(1, NOW)
    assert (one.width, one.buckets) == (60, 60)
    assert (one.since, one.until) == (at(14, 31), at(15, 31))
    assert (traffic.Window.last(3, NOW).width, traffic.Window.last(24, NOW).width) == (60, 480)
    assert traffic.Window.last(24, NOW).buckets == 180
    assert traffic.Window.last(7, NOW).hours == traffic.DEFAULT_HOURS  # not offered


def test_hl7_counts_per_minute_bucket(services: Services) -> None:
    """A message counts in the minute it arrived (59.9999 s is still that minute),
    failed and rejected ones also as failures, outbound ones where the EHR took them;
    whatever is outside the window is not counted."""
    placed = {
        services.process(order(1)).id: at(15, 1, 10),
        services.process(order(2)).id: at(15, 1, 59.9999),
        services.process(order(3)).id: at(15, 2),
        services.process(set_field(sample("06"), "MSH", 10, "XO-EARLY")).id: at(15, 2, 30),
        services.store(set_field(sample("03"), "MSH", 9, "XYZ^A01")): at(15, 2, 40),
        services.store(order(4)): at(15, 29),
        services.process(order(5)).id: at(14, 20),  # before the window
    }
    for pk, when in placed.items():
        received_at(services, pk, when)
    statuses = [services.message(pk).status for pk in placed]
    assert statuses == ["processed"] * 3 + ["failed", "rejected", "received", "processed"]

    def sent(session: Session) -> None:
        rp = session.scalars(select(RequestedProcedure)
                             .where(RequestedProcedure.accession_number == "ACC1")).one()
        rows = [*outbox.enqueue(session, services.settings, rp, "IP"),
                *outbox.enqueue(session, services.settings, rp, "CM")]
        assert len(rows) == 2
        for row, when in zip(rows, (at(15, 2, 5), at(15, 5)), strict=True):
            row.status, row.sent_at = "sent", when

    services.task("outbox", sent)
    with services.factory() as session:
        counted = traffic.hl7(session, traffic.Window.last(1, NOW))
    busy = {b["start"]: (b["received"], b["failed"], b["sent"])
            for b in counted["buckets"] if any((b["received"], b["failed"], b["sent"]))}
    assert busy == {"2025-03-10T15:01:00+00:00": (2, 0, 0),
                    "2025-03-10T15:02:00+00:00": (3, 2, 1),
                    "2025-03-10T15:05:00+00:00": (0, 0, 1),
                    "2025-03-10T15:29:00+00:00": (1, 0, 0)}
    assert len(counted["buckets"]) == 60 and counted["bucket_seconds"] == 60
    totals = counted["totals"]
    assert (totals["received"], totals["failed"], totals["sent"]) == (6, 2, 2)
    assert totals["by_status"] == {"pending": 1, "processed": 3, "failed": 1, "rejected": 1}
    assert sum(totals["by_status"].values()) == totals["received"]


def test_the_store_counts_add_up_with_rejected_shown(services: Services) -> None:
    """received = processed + failed + rejected + pending, since the store began."""
    services.process(order(1))
    services.process(set_field(sample("06"), "MSH", 10, "XO-EARLY"))
    services.store(set_field(sample("03"), "MSH", 9, "XYZ^A01"))
    services.store(order(2))
    with services.factory() as session:
        data = queries.dashboard(session, services.settings, 1)
    inbound = data["hl7_inbound"]
    assert {k: inbound[k] for k in ("received", "processed", "failed", "rejected", "pending")} \
        == {"received": 4, "processed": 1, "failed": 1, "rejected": 1, "pending": 1}
    levels = {a["text"]: a["level"] for a in data["attention"]}
    assert levels["1 HL7 message failed, waiting for an operator"] == "bad"
    assert levels["1 HL7 message rejected in the last 1 h"] == "warn"


def record_query(session: Session, ae: str, when: datetime, *, returned: list[int] = (),
                 items: int | None = None, status: int = 0, millis: float = 2.0) -> None:
    """A C-FIND as the worklist SCP records it: the query row and the steps it returned."""
    row = WorklistQuery(calling_ae_title=ae, peer="127.0.0.1:104", at=when, identifier={},
                        status=status, duration_ms=millis,
                        result_count=len(returned) if items is None else items)
    session.add(row)
    session.flush()
    if returned:
        session.execute(insert(WorklistQueryResult),
                        [{"query_pk": row.id, "sps_pk": pk} for pk in returned])


def test_worklist_queries_per_station(services: Services) -> None:
    with services.factory.begin() as session:
        record_query(session, "CT01_AE", at(15, 10, 5), items=3, millis=4.0)
        record_query(session, "CT01_AE", at(15, 10, 40), items=1, millis=2.0)
        record_query(session, "CT01_AE", at(15, 20), items=0, status=0xA700, millis=0.0)
        record_query(session, "MR01_AE", at(15, 25), items=2)
        record_query(session, "CT01_AE", at(14, 0), items=9)  # before the window
    with services.factory() as session:
        found = traffic.stations(session, traffic.Window.last(1, NOW))
    assert [(s["ae_title"], s["queries"], s["unsuccessful"], s["items_returned"], s["mean_ms"],
             s["last"]) for s in found] == [
        ("CT01_AE", 3, 1, 4, 2.0, "2025-03-10T15:20:00+00:00"),
        ("MR01_AE", 1, 0, 2, 2.0, "2025-03-10T15:25:00+00:00")]
    ct = found[0]["per_bucket"]
    assert len(ct) == 60 and (ct[39], ct[49], sum(ct)) == (2, 1, 3)  # 15:10 and 15:20


def test_adjustments_are_tallied_per_warning(services: Services) -> None:
    """A sender reusing MSH-10 for another message: stored as new, with warning 205."""
    services.process(sample("05"))
    services.process(set_field(sample("03"), "MSH", 10, "ORM0005"))
    with services.factory() as session:
        tally = traffic.warnings(session, traffic.Window.last(1))
    assert tally["messages"] == 1 and tally["complete"]
    [only] = tally["by_warning"]
    assert only["messages"] == 1 and only["warning"].startswith("205 at MSH^1^10^1: ")


def cfind_events(timeline: dict[str, Any]) -> list[tuple[str, str, str, int]]:
    return [(e["text"], e["at"], e["last"], e["count"]) for e in timeline["events"]
            if e["kind"] == "C-FIND"]


def test_timeline_groups_repeated_cfind_hits(services: Services) -> None:
    """Hits of one step to one station form one event until something else happens to
    the order; another station's hits are their own events."""
    first = services.process(order(1)).id
    update = services.process(edited(order(1), "B1-XO", order_control="XO")).id
    received_at(services, first, at(15, 0))
    received_at(services, update, at(15, 20))
    with services.factory.begin() as session:
        changes = session.scalars(select(StepStatusChange).order_by(StepStatusChange.id)).all()
        for n, change in enumerate(changes):  # the order's, then the update's
            change.at = at(15, 0, 1) if n == 0 else at(15, 20, n)
        [sps_pk] = {c.sps_pk for c in changes}
        for ae, when in [("CT01_AE", at(15, 1)), ("CT01_AE", at(15, 5)),
                         ("MR01_AE", at(15, 7)), ("CT01_AE", at(15, 10)),
                         ("CT01_AE", at(15, 30)), ("CT01_AE", at(15, 40))]:
            record_query(session, ae, when, returned=[sps_pk])
    with services.factory() as session:
        timeline = queries.timeline(session, "ACC1")
    assert timeline is not None
    assert cfind_events(timeline) == [
        ("SPS1 returned 3 times to CT01_AE", "2025-03-10T15:01:00+00:00",
         "2025-03-10T15:10:00+00:00", 3),
        ("SPS1 returned to MR01_AE", "2025-03-10T15:07:00+00:00",
         "2025-03-10T15:07:00+00:00", 1),
        ("SPS1 returned 2 times to CT01_AE", "2025-03-10T15:30:00+00:00",
         "2025-03-10T15:40:00+00:00", 2)]
    texts = [e["text"] for e in timeline["events"]]
    update_in = next(i for i, e in enumerate(timeline["events"])
                     if e["ref"] == f"message:{update}")
    assert texts.index("SPS1 returned 3 times to CT01_AE") < update_in \
        < texts.index("SPS1 returned 2 times to CT01_AE")  # the update ended the first run
