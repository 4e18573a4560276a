"""Candidate scoring and order status derivation."""

from __future__ import annotations

from datetime import datetime

from broker.domain.reconcile import (
    Candidate,
    Observed,
    order_status,
    rank,
    report_transitions,
)

WHEN = datetime(2025, 3, 10, 9, 30)


def candidate(pk: int, patient_id: str, name: str, hours_away: float,
              modality: str = "CT") -> Candidate:
    start = datetime(2025, 3, 10, 9, 30).replace(hour=int(9 + hours_away))
    return Candidate(pk, f"ACC{pk}", patient_id, name, "19900214", {modality}, {"CT01_AE"},
                     start)


def test_ranking_prefers_identity_then_time() -> None:
    observed = Observed("135790", "DOE^JANE", "19900214", "CT", "CT01_AE", WHEN)
    ranked = rank(observed, [
        candidate(1, "999999", "DOE^JANE", 0),  # same name, other id
        candidate(2, "135790", "DOE^JANE", 3),  # right patient, later
        candidate(3, "135790", "DOE^JANE", 0),  # right patient, on time
        candidate(4, "555555", "ROE^RICHARD", 0, modality="MR"),
    ], window_hours=12)
    assert [c["accession"] for c in ranked] == ["ACC3", "ACC2", "ACC1", "ACC4"]
    assert ranked[0]["reasons"][:2] == ["patient id", "name"]


def test_nothing_in_common_is_no_candidate() -> None:
    observed = Observed("1", "A^B", "20000101", "US", "US1", None)
    assert rank(observed, [candidate(1, "2", "C^D", 0)], window_hours=12) == []


def test_order_status_from_steps() -> None:
    assert order_status(["SCHEDULED", "SCHEDULED"]) == "SC"
    assert order_status(["STARTED", "SCHEDULED"]) == "IP"
    assert order_status(["COMPLETED", "SCHEDULED"]) == "IP"
    assert order_status(["COMPLETED", "DISCONTINUED"]) == "CM"
    assert order_status(["DISCONTINUED", "CANCELLED"]) == "DC"


def test_reported_transitions() -> None:
    assert report_transitions("SC", "IP") == ["IP"]
    assert report_transitions("SC", "CM") == ["IP", "CM"]
    assert report_transitions("IP", "IP") == []
    assert report_transitions("IP", "SC") == ["SC"]
