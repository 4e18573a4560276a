"""Replay runs: which stored messages a replay takes, the run recorded, and its progress
read from the messages' outcomes, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from broker.application import MappingUseCases
from broker.db import unit_of_work
from broker.models import InboundMessage, MappingDeployment, MappingVersion, ReplayRun
from broker.services.replay import (
    Reason,
    ReplayCriteria,
    progress,
    start_replay,
    version_in_force,
)
from broker.services.sweeper import pending_messages
from tests.conftest import sample
from tests.integration.hl7util import set_field
from tests.service.conftest import Services
from tests.service.messages import edited


def received_at(services: Services, pk: int, when: datetime) -> None:
    with services.factory.begin() as session:
        row = session.get(InboundMessage, pk)
        assert row is not None
        row.received_at = when


def unknown_order(control_id: str) -> bytes:
    """An XO for an order the broker never received (AE 204 at ORC-2)."""
    raw = edited("06", control_id)
    for occurrence in (0, 1):
        raw = set_field(raw, "ORC", 2, "PLC-9999^EHR", occurrence=occurrence)
        raw = set_field(raw, "ORC", 3, "FIL-9999^RIS", occurrence=occurrence)
    return raw


def test_a_replay_applies_the_selected_failed_messages_and_reports_why_some_still_fail(
        services: Services) -> None:
    """XOs that arrived before their NW failed (AE 204); once the NW is in, a replay
    of EHR's failures since an hour ago passes them. One for an order that never
    came still fails; another sender's and an older failure are not taken."""
    stale = services.process(edited("06", "XO-0")).id
    received_at(services, stale, datetime.now(UTC) - timedelta(days=2))
    early = services.process(edited("06", "XO-1"))
    unknown = services.process(unknown_order("XO-9")).id
    other = services.process(set_field(edited("06", "XO-2"), "MSH", 3, "OTHER")).id
    assert (early.status, early.ack_code) == ("failed", "AE")
    assert services.process(sample("05")).status == "processed"
    since = datetime.now(UTC) - timedelta(hours=1)

    run_id = services.use_cases.mapping.replay(
        ReplayCriteria("failed", since=since, sender="EHR"), "tester")

    done = services.use_cases.mapping.replay_progress(run_id)
    assert (done.total, done.passed, done.failing, done.waiting, done.missing) == (
        2, 1, 1, 0, 0)
    assert done.finished and done.done == 2
    [reason] = done.reasons
    assert (reason.code, reason.location, reason.count) == (204, "ORC^1^2", 1)
    with services.factory() as session:
        run = session.get(ReplayRun, run_id)
        assert run is not None
        assert (run.message_ids, run.created_by, run.version) == (
            [early.id, unknown], "tester", None)
        assert run.criteria == {"status": "failed", "since": since.isoformat(),
                                "until": None, "sender": "EHR"}
    replayed = services.message(early.id)
    assert (replayed.status, replayed.ack_code, replayed.attempts) == ("processed", "AA", 2)
    assert [services.message(pk).status for pk in (stale, other)] == ["failed", "failed"]
    assert done.as_dict()["reasons"] == [{"code": 204, "location": "ORC^1^2",
                                          "text": reason.text, "count": 1}]


def test_a_started_run_waits_and_records_the_version_in_force(services: Services) -> None:
    """Before dispatch every message of the run waits; the run names the deployed
    version; ``until`` is exclusive and a sender may name its facility."""
    first = services.process(unknown_order("XO-1")).id
    second = services.process(unknown_order("XO-2")).id
    late = services.process(unknown_order("XO-3")).id
    now = datetime.now(UTC)
    received_at(services, first, now - timedelta(minutes=30))
    received_at(services, second, now - timedelta(minutes=20))
    received_at(services, late, now - timedelta(minutes=10))
    with unit_of_work(services.factory) as session:
        session.add(MappingVersion(id=7, digest="0" * 64, sources={}))
        session.flush()
        session.add(MappingDeployment(version=7))
    with unit_of_work(services.factory) as session:
        run = start_replay(session, since=now - timedelta(minutes=30),
                           until=now - timedelta(minutes=10), sender="EHR/HOSP",
                           user="tester", version=7)
        run_id = run.id
    with unit_of_work(services.factory) as session:
        nothing = start_replay(session, sender="EHR/ELSEWHERE", user="tester", version=None)
        assert nothing.message_ids == []
    empty = services.use_cases.mapping.start_replay(ReplayCriteria(sender="NOBODY"), "t")
    assert services.use_cases.mapping.replay_progress(empty).finished

    with services.factory() as session:
        waiting = progress(session, run_id)
        assert session.get(ReplayRun, run_id).version == 7  # type: ignore[union-attr]
    assert (waiting.total, waiting.waiting, waiting.done, waiting.finished) == (2, 2, 0, False)
    assert [services.message(pk).status for pk in (first, second, late)] == [
        "received", "received", "failed"]
    with services.factory() as session:
        assert version_in_force(session) == 7
    with pytest.raises(KeyError):
        services.use_cases.mapping.replay_progress(run_id + 100)


def test_criteria_refuse_what_a_replay_cannot_take() -> None:
    with pytest.raises(ValueError, match="failed or processed"):
        ReplayCriteria("rejected")
    with pytest.raises(ValueError, match="until"):
        ReplayCriteria(since=datetime(2025, 3, 10, tzinfo=UTC),
                       until=datetime(2025, 3, 9, tzinfo=UTC))
    assert str(Reason(204, "ORC^1^2", "unknown order", 2)) == "204 at ORC^1^2: unknown order"


def test_what_a_failed_dispatch_leaves_is_found_by_the_sweeper(services: Services) -> None:
    """Redis away mid-replay: the messages not dispatched stay queued, and the
    sweeper's query finds them."""
    ids = [services.process(unknown_order(f"XO-{n}")).id for n in (1, 2, 3)]
    sent: list[int] = []

    def dispatch(pk: int) -> None:
        if sent:
            raise ConnectionError("the broker's Redis is away")
        sent.append(pk)

    mapping = MappingUseCases(services.use_cases.runtime, dispatch)
    run_id = mapping.start_replay(ReplayCriteria(), "tester")

    assert mapping.dispatch_replay(run_id) == 1
    assert mapping.replay_progress(run_id).waiting == 3
    with services.factory() as session:
        assert pending_messages(session, timedelta(0)) == ids
