"""How the console shows values to people: person names (PS3.5 6.2 PN) as read in a
list, the case kept; moments in the configured zone; DICOM dates; the traffic chart's
geometry and clock labels."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from broker.web import chart, display

CHICAGO = ZoneInfo("America/Chicago")


@pytest.mark.parametrize(("stored", "shown"), [
    ("DOE^JANE^MARIE", "DOE, JANE MARIE"),  # the case as stored, never changed
    ("Doe^Jane^Marie", "Doe, Jane Marie"),
    ("O'Brien^Sean^Patrick", "O'Brien, Sean Patrick"),
    ("Adams^John Robert Quincy^^Rev.^B.A. M.Div.", "Adams, Rev. John Robert Quincy, B.A. M.Div."),
    ("McDONALD^Ann^^^", "McDONALD, Ann"),
    ("DOE", "DOE"),
    ("^Jane", "Jane"),
    ("Yamada^Tarou=山田^太郎=やまだ^たろう", "Yamada, Tarou (山田 太郎)"),
    ("=山田^太郎", "山田 太郎"),
    ("==やまだ^たろう", "やまだ たろう"),
    ("", ""),
    (None, ""),
])
def test_person_names_read_as_in_a_list(stored: str | None, shown: str) -> None:
    assert display.person_name(stored) == shown


def test_moments_are_shown_in_the_configured_zone() -> None:
    winter = datetime(2025, 3, 9, 7, 59, 30, tzinfo=UTC)  # CST, UTC-6
    summer = "2025-03-10T15:01:02+00:00"  # CDT from March 9, UTC-5
    assert display.local(winter, CHICAGO) == "2025-03-09 01:59:30"
    assert display.local(summer, CHICAGO) == "2025-03-10 10:01:02"
    assert display.local(datetime(2025, 3, 10, 15, 1, 2), CHICAGO) == "2025-03-10 10:01:02"
    assert display.local("", CHICAGO) == ""
    assert str(display.time_element(summer, CHICAGO)) == \
        '<time datetime="2025-03-10T15:01:02+00:00">2025-03-10 10:01:02</time>'


def test_a_run_of_hits_gives_clock_times_on_one_day() -> None:
    assert display.between("2025-03-10T14:01:00+00:00", "2025-03-10T14:40:59+00:00",
                           CHICAGO) == "between 09:01 and 09:40"
    assert display.between("2025-03-10T14:01:05+00:00", "2025-03-10T14:01:50+00:00",
                           CHICAGO) == "between 09:01:05 and 09:01:50"
    assert display.between("2025-03-11T04:50:00+00:00", "2025-03-11T05:10:00+00:00",
                           CHICAGO) == "between 2025-03-10 23:50 and 2025-03-11 00:10"
    assert display.between("2025-03-10T14:01:05+00:00", "2025-03-10T14:01:05.4+00:00",
                           CHICAGO) == "at 09:01:05"


@pytest.mark.parametrize(("value", "shown"), [
    ("20250310", "2025-03-10"),
    ("20250310093000", "2025-03-10 09:30"),
    ("20250310093015", "2025-03-10 09:30:15"),
    ("20250310093015.5-0500", "2025-03-10 09:30:15"),
    ("", ""),
    ("soon", "soon"),
])
def test_dicom_dates(value: str, shown: str) -> None:
    assert display.dicom_datetime(value) == shown


def traffic(hours: int, width: int, counts: list[tuple[int, int, int]],
            first: datetime) -> dict:
    start = first.timestamp()
    return {"hours": hours, "bucket_seconds": width,
            "buckets": [{"start": datetime.fromtimestamp(start + i * width, UTC).isoformat(),
                         "received": r, "sent": s, "failed": f}
                        for i, (r, s, f) in enumerate(counts)],
            "totals": {}}


def test_traffic_chart_scales_to_a_round_top_and_labels_local_clock_times() -> None:
    counts = [(0, 0, 0)] * 60
    counts[10], counts[11] = (7, 2, 1), (3, 0, 0)
    drawn = chart.traffic_chart(traffic(1, 60, counts, datetime(2025, 3, 10, 14, 31,
                                                                tzinfo=UTC)), CHICAGO)
    assert [g["label"] for g in drawn["gridlines"]] == ["0", "5", "10"]
    assert [t["label"] for t in drawn["ticks"]] == [
        "09:40", "09:50", "10:00", "10:10", "10:20", "10:30"]
    assert len(drawn["lines"]["received"].split()) == 60 and len(drawn["bars"]) == 1
    assert drawn["columns"][10]["title"] == "09:41 · 7 received, 2 sent, 1 failed"
    assert drawn["unit"] == "per minute"
    quiet = chart.traffic_chart(traffic(24, 480, [(0, 0, 0)] * 180,
                                        datetime(2025, 3, 10, tzinfo=UTC)), CHICAGO)
    assert quiet["unit"] == "per 8 minutes" and [g["label"] for g in quiet["gridlines"]] == [
        "0", "0.5", "1"]


@pytest.mark.parametrize(("value", "top"), [(0, 1), (1, 1), (3, 5), (7, 10), (12, 20),
                                            (50, 50), (51, 100)])
def test_chart_top(value: int, top: int) -> None:
    assert chart.ceiling(value) == top


def test_timeline_keeps_the_order_of_one_second() -> None:
    """An order received at .100 s, queried at .400 s and .700 s, and started (MPPS) at
    .900 s of the same second: the hits come after the order and before the MPPS, as
    one run."""
    from broker.web.queries import with_cfind_hits

    def event(when: str, kind: str) -> dict[str, str]:
        return {"when": f"2026-12-02T09:01:05.{when}+00:00", "kind": kind}

    hits = [(f"2026-12-02T09:01:05.{ms}+00:00", "CT01_AE", "SPS0003")
            for ms in ("400000", "700000")]
    merged = with_cfind_hits([event("100000", "HL7 in"), event("900000", "MPPS")], hits)
    assert [e["kind"] for e in merged] == ["HL7 in", "C-FIND", "MPPS"]
    assert merged[1]["count"] == 2
