"""The summary that ends ``make bench``: one row per performance target, then figures
that have no target but are read side by side (:data:`COMPARISONS`).

Each row gives the figure as measured before the write path work (on 2026-11-30, on
the 2-core machine the targets were set for), this run's median, the target, this
machine's floor where one applies (a bare INSERT + COMMIT loop per database, an empty
``wlmscpfs``, DCMTK ``storescp``), and whether the target is met. A figure this run did
not measure (``BENCH_PARTS``, ``BENCH_SIZES``) shows "-", and so does "met?".
"""

from __future__ import annotations

from dataclasses import dataclass

from bench.results import Name, Results

BEFORE_LABEL = "before (2026-11-30, this machine)"


@dataclass(frozen=True)
class Figure:
    """One measured value of a row, and its bound (``at_least``: >= bound, else <=)."""

    name: Name
    label: str  # printed before the value, e.g. "p50 "
    unit: str
    digits: int = 0
    bound: float | None = None
    at_least: bool = True

    def value(self, results: Results) -> float | None:
        return results.median(self.name)

    def text(self, results: Results) -> str | None:
        value = self.value(results)
        return None if value is None else f"{self.label}{value:,.{self.digits}f}{self.unit}"

    def met(self, results: Results) -> bool | None:
        value = self.value(results)
        if self.bound is None or value is None:
            return None
        return value >= self.bound if self.at_least else value <= self.bound


@dataclass(frozen=True)
class Target:
    figure: str
    before: str
    target: str
    now: tuple[Figure, ...]
    floors: tuple[Figure, ...] = ()

    def cells(self, results: Results) -> list[str]:
        now = [f.text(results) for f in self.now]
        floors = [f.text(results) for f in self.floors]
        checks = [f.met(results) for f in self.now if f.bound is not None]
        met = "-" if None in checks else ("yes" if all(checks) else "no")
        return [self.figure, self.before, "; ".join(t or "-" for t in now), self.target,
                "; ".join(t for t in floors if t) or "-", met]


def _rate(name: Name, unit: str, bound: float | None = None) -> Figure:
    return Figure(name, "", unit, 0, bound)


def _ms(name: Name, label: str, bound: float | None = None, digits: int = 1) -> Figure:
    return Figure(name, label, " ms", digits, bound, at_least=False)


TARGETS = (
    Target("application ACK, 1 connection, SQLite embedded", "33 msg/s, p50 29.7 ms",
           ">= 300 msg/s, p50 <= 3 ms",
           (_rate(Name.ACK_SQLITE_RATE, " msg/s", 300), _ms(Name.ACK_SQLITE_P50, "p50 ", 3)),
           (_rate(Name.FLOOR_SQLITE_COMMITS, " msg/s (SQLite INSERT+COMMIT)"),)),
    Target("application ACK, 1 connection, PostgreSQL + Celery worker",
           "17 msg/s, p50 55 ms", ">= 150 msg/s, p50 <= 6 ms",
           (_rate(Name.ACK_POSTGRES_RATE, " msg/s", 150),
            _ms(Name.ACK_POSTGRES_P50, "p50 ", 6)),
           (_rate(Name.FLOOR_POSTGRES_COMMITS, " msg/s (PostgreSQL INSERT+COMMIT)"),)),
    Target("application ACK, 8 connections, PostgreSQL + Celery", "18 msg/s", ">= 600 msg/s",
           (_rate(Name.ACK_POSTGRES_RATE_8, " msg/s", 600),),
           (_rate(Name.FLOOR_POSTGRES_COMMITS_8,
                  " msg/s (PostgreSQL INSERT+COMMIT, 8 connections)"),)),
    Target("backlog drained by one worker process, PostgreSQL", "25 orders/s",
           ">= 1,000 orders/s", (_rate(Name.DRAIN_POSTGRES, " orders/s", 1000),),
           (_rate(Name.FLOOR_POSTGRES_COMMITS, " msg/s (PostgreSQL INSERT+COMMIT)"),)),
    Target("order -> on the worklist p50 / p99 (embedded; Celery)",
           "57 / 82 ms; 93 / 144 ms", "<= 5 / 20 ms; <= 10 / 30 ms",
           (_ms(Name.LATENCY_SQLITE_P50, "embedded p50 ", 5),
            _ms(Name.LATENCY_SQLITE_P99, "p99 ", 20),
            _ms(Name.LATENCY_POSTGRES_P50, "Celery p50 ", 10),
            _ms(Name.LATENCY_POSTGRES_P99, "p99 ", 30)),
           (_ms(Name.FLOOR_SQLITE_COMMIT_MS, "one commit: SQLite ", digits=2),
            _ms(Name.FLOOR_POSTGRES_COMMIT_MS, "PostgreSQL ", digits=2))),
    Target("MPPS N-CREATE + N-SET pairs/s (own association each)", "8.3", ">= 60",
           (Figure(Name.MPPS_PAIRS, "", " pairs/s", 1, 60),)),
    Target("C-STORE instances/s, storescu, discard", "95",
           ">= 500, and >= 0.5x DCMTK storescp in the same run",
           (_rate(Name.CSTORE, " inst/s", 500),
            Figure(Name.CSTORE_TO_STORESCP, "", "x storescp", 2, 0.5)),
           (_rate(Name.FLOOR_STORESCP, " inst/s (storescp)"),)),
    Target("C-FIND on an open association, one patient @100k, p50", "not measured",
           "<= 3 ms (server time, no process start)",
           (_ms(Name.OPEN_PATIENT_P50_100K, "", 3, 2),),
           (_ms(Name.FLOOR_OPEN_EMPTY_P50, "empty wlmscpfs: ", digits=2),
            _ms(Name.FLOOR_FINDSCU_EMPTY, "findscu process, empty wlmscpfs: "))),
    Target("8 clients on open associations, station + today @10k", "not measured",
           ">= 400 queries/s", (_rate(Name.OPEN_STATION_RATE_10K, " queries/s", 400),),
           (Figure(Name.FLOOR_OPEN_EMPTY_RATE, "empty wlmscpfs: ", " queries/s"),)),
)


def summary_rows(results: Results) -> list[list[str]]:
    return [target.cells(results) for target in TARGETS]


HEADER = ["figure", BEFORE_LABEL, "now (this run, median)", "target", "floor", "met?"]


@dataclass(frozen=True)
class Comparison:
    """Two figures of the same run read side by side (no target): ``figure`` against
    ``reference``, and their ratio."""

    label: str
    figure: Figure
    reference: Figure

    def cells(self, results: Results) -> list[str]:
        value, reference = self.figure.value(results), self.reference.value(results)
        ratio = f"{value / reference:.1f}x" if value and reference else "-"
        return [self.label, self.figure.text(results) or "-",
                self.reference.text(results) or "-", ratio]


COMPARISONS = (
    Comparison("one Patient ID @10k, p50",
               _ms(Name.UPS_PATIENT_P50, "", digits=2),
               _ms(Name.UPS_MWL_PATIENT_P50, "", digits=2)),
    Comparison("station + today @10k (100 items), p50",
               _ms(Name.UPS_STATION_P50, "", digits=2),
               _ms(Name.UPS_MWL_STATION_P50, "", digits=2)),
)
COMPARISON_HEADER = ["query", "UPS-RS search (httpx, kept-alive)",
                     "MWL C-FIND (open association)", "UPS-RS / MWL"]


def comparison_rows(results: Results) -> list[list[str]]:
    """The :data:`COMPARISONS` this run measured (none: no rows)."""
    return [c.cells(results) for c in COMPARISONS
            if c.figure.value(results) is not None]
