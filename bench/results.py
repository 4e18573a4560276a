"""The figures a ``make bench`` run measured, by name, for the summary table.

Each part records the values it measured (one per run) under the names it owns; the
summary (:mod:`bench.summary`) reads their medians at the end, so it can be printed
whatever parts ``BENCH_PARTS`` selected: a figure no part recorded reads as None.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from enum import StrEnum


class Name(StrEnum):
    """Every figure the summary reads, and what it is."""

    # floors (no broker)
    FLOOR_SQLITE_COMMITS = "SQLite: INSERT + COMMIT per message, 1 connection, msg/s"
    FLOOR_POSTGRES_COMMITS = "PostgreSQL: INSERT + COMMIT per message, 1 connection, msg/s"
    FLOOR_POSTGRES_COMMITS_8 = "PostgreSQL: INSERT + COMMIT per message, 8 connections, msg/s"
    FLOOR_SQLITE_COMMIT_MS = "SQLite: one INSERT + COMMIT, ms"
    FLOOR_POSTGRES_COMMIT_MS = "PostgreSQL: one INSERT + COMMIT, ms"
    FLOOR_FINDSCU_EMPTY = "findscu -W against an empty wlmscpfs, ms"
    FLOOR_OPEN_EMPTY_P50 = "C-FIND on an open association to an empty wlmscpfs, p50 ms"
    FLOOR_OPEN_EMPTY_RATE = "8 open associations to an empty wlmscpfs, queries/s"
    FLOOR_STORESCP = "storescu to DCMTK storescp --ignore, inst/s"
    # HL7 ingest, application ACK mode
    ACK_SQLITE_RATE = "application ACK, SQLite embedded, 1 connection, msg/s"
    ACK_SQLITE_P50 = "application ACK, SQLite embedded, 1 connection, ACK p50 ms"
    ACK_POSTGRES_RATE = "application ACK, PostgreSQL + Celery, 1 connection, msg/s"
    ACK_POSTGRES_P50 = "application ACK, PostgreSQL + Celery, 1 connection, ACK p50 ms"
    ACK_POSTGRES_RATE_8 = "application ACK, PostgreSQL + Celery, 8 connections, msg/s"
    # processing, latency
    DRAIN_POSTGRES = "backlog drained by one worker process, PostgreSQL, orders/s"
    LATENCY_SQLITE_P50 = "order to worklist, SQLite embedded, p50 ms"
    LATENCY_SQLITE_P99 = "order to worklist, SQLite embedded, p99 ms"
    LATENCY_POSTGRES_P50 = "order to worklist, PostgreSQL + Celery, p50 ms"
    LATENCY_POSTGRES_P99 = "order to worklist, PostgreSQL + Celery, p99 ms"
    # performed work (SQLite, the embedded default)
    MPPS_PAIRS = "MPPS N-CREATE + N-SET pairs/s, SQLite"
    CSTORE = "C-STORE storescu inst/s, TCP_NODELAY=1, SQLite"
    CSTORE_TO_STORESCP = "C-STORE inst/s, broker / storescp in the same run"
    # C-FIND on open associations
    OPEN_PATIENT_P50_100K = "C-FIND one Patient ID on an open association, 100,000 steps, p50 ms"
    OPEN_STATION_RATE_10K = "8 open associations, station + today, 10,000 steps, queries/s"
    # UPS-RS Search Workitems next to MWL C-FIND, 10,000 workitems, the same run
    UPS_PATIENT_P50 = "UPS-RS search, one Patient ID, 10,000 workitems, p50 ms"
    UPS_STATION_P50 = "UPS-RS search, station + today, 10,000 workitems, p50 ms"
    UPS_MWL_PATIENT_P50 = "MWL C-FIND beside UPS-RS, one Patient ID, 10,000 steps, p50 ms"
    UPS_MWL_STATION_P50 = "MWL C-FIND beside UPS-RS, station + today, 10,000 steps, p50 ms"


class Results:
    """Values by :class:`Name`; recording a name again replaces its values."""

    def __init__(self) -> None:
        self._values: dict[Name, list[float]] = {}

    def record(self, name: Name, values: Sequence[float]) -> None:
        self._values[name] = list(values)

    def median(self, name: Name) -> float | None:
        values = self._values.get(name)
        return statistics.median(values) if values else None
