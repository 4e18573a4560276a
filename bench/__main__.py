"""``make bench``: the broker measured against DCMTK and against this machine's own
floors: one markdown table per part (medians and (min-max) over the runs), then the
summary: one row per performance target, with the figure before the write path work,
this run's median, the target, the floor and whether the target is met.

Parts (``BENCH_PARTS``, comma-separated, default all, in this order):

* ``floors``: a findscu against an empty wlmscpfs, and C-FIND on open associations to
  it; a bare INSERT + COMMIT loop on the message table, SQLite and PostgreSQL
  (:mod:`bench.floors`);
* ``cfind``: Modality Worklist C-FIND at each of ``BENCH_SIZES`` steps: one findscu
  process per query, broker and wlmscpfs side by side (:mod:`bench.cfind`); then the
  broker on open associations, server time without a process start
  (:mod:`bench.open_association`);
* ``ingest``: HL7 ingest over MLLP on SQLite (embedded) and PostgreSQL (Celery), both
  ACK modes, 1 and 8 connections (:mod:`bench.ingest`);
* ``latency``: order to worklist (:mod:`bench.latency`);
* ``processing``: a stored backlog drained by one worker process (:mod:`bench.processing`);
* ``performed``: MPPS pairs and C-STORE instances per second (:mod:`bench.workflow`),
  and the same storescu run against DCMTK storescp (:mod:`bench.storescp`);
* ``ups``: UPS-RS Search Workitems at ``BENCH_UPS_WORKITEMS`` workitems next to MWL
  C-FIND on an open association, the same queries in the same run (:mod:`bench.ups`).

Knobs (environment variables):

* ``BENCH_PARTS``: the parts to run (above); the summary shows "-" for the rest;
* ``BENCH_RUNS`` (3): runs per figure;
* ``BENCH_SIZES`` (1000,10000,100000): worklist sizes for ``cfind``; the summary's
  C-FIND rows need 10000 and 100000;
* ``BENCH_CONCURRENT_SECONDS`` (10): length of the 8 findscu loops, per size and server;
* ``BENCH_OPEN_QUERIES`` (500): queries per run for the open-association p50/p99;
* ``BENCH_OPEN_SECONDS`` (5): length of one run of the 8 open associations;
* ``BENCH_FAST_PATH`` (true): the broker's MWLB_DICOM_FAST_PATH during ``cfind``;
* ``BENCH_MESSAGES`` (500): HL7 messages per ingest run, and per floor commit loop;
* ``BENCH_LATENCY_ORDERS`` (200): orders per latency run;
* ``BENCH_BACKLOG`` (10000), ``BENCH_PROCESSING_RUNS`` (1): the processing backlog;
* ``BENCH_WORK_ITEMS`` (100): MPPS pairs per run (and twice as many C-STORE instances);
* ``BENCH_UPS_WORKITEMS`` (10000): steps and workitems loaded for ``ups`` (its queries
  per run: ``BENCH_OPEN_QUERIES`` for one patient, a tenth for station + today);
* ``MWLB_BENCH_REDIS_URL``, ``MWLB_TEST_PG_ADMIN_URL``: the Redis database and the
  PostgreSQL server to use (:mod:`bench.processes`).

The broker runs as its own processes (``mwl-broker serve`` / ``worker``), as in
production, except in ``performed`` (in-process). A quick look:
``BENCH_PARTS=floors,cfind BENCH_SIZES=1000 BENCH_RUNS=1 python -m bench``.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path

from sqlalchemy.orm import Session

from bench import cfind, loader, open_association, ups
from bench.floors import commit_rate
from bench.ingest import ingest, percentile
from bench.latency import order_to_worklist
from bench.processes import Broker, free_port, new_database
from bench.processing import drain_rate
from bench.report import fmt, machine, table
from bench.results import Name, Results
from bench.storescp import Storescp, storescp_rate
from bench.summary import COMPARISON_HEADER, HEADER, comparison_rows, summary_rows
from broker.db import make_engine
from broker.hl7.client import MLLPClient
from broker.migrations import upgrade
from tests.builders import order

RUNS = int(os.environ.get("BENCH_RUNS", "3"))
SIZES = [int(n) for n in os.environ.get("BENCH_SIZES", "1000,10000,100000").split(",")]
MESSAGES = int(os.environ.get("BENCH_MESSAGES", "500"))
BACKLOG = int(os.environ.get("BENCH_BACKLOG", "10000"))
# One drain of 10,000 took minutes here before the write path work: one run.
PROCESSING_RUNS = int(os.environ.get("BENCH_PROCESSING_RUNS", "1"))
LATENCY_ORDERS = int(os.environ.get("BENCH_LATENCY_ORDERS", "200"))
CONCURRENT_SECONDS = float(os.environ.get("BENCH_CONCURRENT_SECONDS", "10"))
OPEN_QUERIES = int(os.environ.get("BENCH_OPEN_QUERIES", "500"))
OPEN_SECONDS = float(os.environ.get("BENCH_OPEN_SECONDS", "5"))
WORK_ITEMS = int(os.environ.get("BENCH_WORK_ITEMS", "100"))
UPS_WORKITEMS = int(os.environ.get("BENCH_UPS_WORKITEMS", "10000"))
FAST_PATH = os.environ.get("BENCH_FAST_PATH", "true")
RESULT_CAP = 10_000
CLIENTS = 8
WLMSCPFS_FULL = 10_000  # wlmscpfs past this many steps: one run, no concurrent loops


def repeat(runs: int, measure: Callable[[int], float]) -> list[float]:
    return [measure(run) for run in range(runs)]


def p50(values: list[float]) -> float:
    return percentile(values, 0.5)


# -- floors ------------------------------------------------------------------------


def floors(workdir: Path, results: Results) -> None:
    empty = workdir / "empty" / cfind.Wlmscpfs.AE_TITLE
    empty.mkdir(parents=True)
    (empty / "lockfile").touch()
    server = cfind.Wlmscpfs(empty, free_port())
    nothing = cfind.Query("empty", cfind.queries(1, date.today(), 0)[0].keys, 0)
    try:
        findscu = repeat(RUNS * 3, lambda _: cfind.findscu(server.port, server.AE_TITLE,
                                                           nothing))
        open_p50 = repeat(RUNS, lambda _: p50(open_association.query_times(
            server.port, server.AE_TITLE, nothing, OPEN_QUERIES)))
        open_rate = repeat(RUNS, lambda _: open_association.concurrent_rate(
            server.port, server.AE_TITLE, nothing, CLIENTS, OPEN_SECONDS))
    finally:
        server.stop()
    commits: dict[tuple[str, int], list[float]] = {}
    for kind, connections in (("sqlite", 1), ("postgres", 1), ("postgres", CLIENTS)):
        url = new_database(kind, workdir)
        upgrade(url)
        commits[kind, connections] = [commit_rate(url, run * MESSAGES, MESSAGES, connections)
                                      for run in range(RUNS)]
    results.record(Name.FLOOR_FINDSCU_EMPTY, findscu)
    results.record(Name.FLOOR_OPEN_EMPTY_P50, open_p50)
    results.record(Name.FLOOR_OPEN_EMPTY_RATE, open_rate)
    results.record(Name.FLOOR_SQLITE_COMMITS, commits["sqlite", 1])
    results.record(Name.FLOOR_POSTGRES_COMMITS, commits["postgres", 1])
    results.record(Name.FLOOR_POSTGRES_COMMITS_8, commits["postgres", CLIENTS])
    results.record(Name.FLOOR_SQLITE_COMMIT_MS, [1000 / r for r in commits["sqlite", 1]])
    results.record(Name.FLOOR_POSTGRES_COMMIT_MS, [1000 / r for r in commits["postgres", 1]])
    table("Floors of this machine (no broker)", ["what", "median (min-max)"], [
        ["DCMTK findscu -W against an empty wlmscpfs (process start, dictionary, "
         "association)", fmt(findscu, " ms")],
        ["C-FIND on one open association to an empty wlmscpfs, p50 of "
         f"{OPEN_QUERIES} queries", fmt(open_p50, " ms", 2)],
        [f"C-FIND on {CLIENTS} open associations to an empty wlmscpfs, queries/s",
         fmt(open_rate, "", 0)],
        ["SQLite: one INSERT into the message table + COMMIT per message (broker's "
         "settings: WAL, synchronous=FULL), one connection", fmt(commits["sqlite", 1],
                                                                " msg/s", 0)],
        ["PostgreSQL: the same, bare psycopg, one connection",
         fmt(commits["postgres", 1], " msg/s", 0)],
        [f"PostgreSQL: the same, {CLIENTS} connections",
         fmt(commits["postgres", CLIENTS], " msg/s", 0)],
    ])


# -- C-FIND ------------------------------------------------------------------------


def _worklist(workdir: Path, size: int, broker: Broker) -> Path:
    """Load ``size`` steps into the broker's database; the same as .wl files."""
    wl_dir = workdir / f"wl-{size}" / cfind.Wlmscpfs.AE_TITLE
    with MLLPClient("127.0.0.1", broker.mllp_port) as mllp:
        assert b"MSA|AA|" in mllp.send(order(1))  # the template order
    engine = make_engine(broker.database_url)
    with Session(engine) as session:
        loader.load(session, size, date.today())
        loader.write_wl_files(session, wl_dir, "UTC")
    engine.dispose()
    return wl_dir


def _findscu_rows(size: int, servers: list[tuple[str, int, str]]) -> list[list[str]]:
    rows = []
    for name, port, aet in servers:
        queries = cfind.queries(size, date.today(), RESULT_CAP if name == "mwl-broker" else 0)
        # wlmscpfs reads every file per query (10 s at 100,000 steps): past 10,000, one
        # run and no concurrent loops (eight such queries would take minutes).
        full = name == "mwl-broker" or size <= WLMSCPFS_FULL
        cells = [str(size), name]
        for query in queries:
            cfind.findscu(port, aet, query, check=True)
            times = [cfind.findscu(port, aet, query) for _ in range(RUNS if full else 1)]
            cells.append(fmt(times, " ms"))
        cells.insert(4, str(queries[1].expected))
        cells.insert(6, str(queries[2].expected))
        rate = (f"{cfind.concurrent_rate(port, aet, queries[1], CLIENTS, CONCURRENT_SECONDS):.1f}"
                if full else "-")
        rows.append([*cells, rate])
    return rows


def _open_row(size: int, port: int, results: Results) -> list[str]:
    patient, station, _ = cfind.queries(size, date.today(), RESULT_CAP)
    a50, a99, b50, rates = [], [], [], []
    for _ in range(RUNS):
        times = open_association.query_times(port, "MWL_BROKER", patient, OPEN_QUERIES)
        a50.append(p50(times))
        a99.append(percentile(times, 0.99))
        b50.append(p50(open_association.query_times(port, "MWL_BROKER", station,
                                                    max(OPEN_QUERIES // 10, 1))))
        rates.append(open_association.concurrent_rate(port, "MWL_BROKER", station, CLIENTS,
                                                      OPEN_SECONDS))
    if size == 100_000:
        results.record(Name.OPEN_PATIENT_P50_100K, a50)
    if size == 10_000:
        results.record(Name.OPEN_STATION_RATE_10K, rates)
    return [str(size), fmt(a50, " ms", 2), fmt(a99, " ms", 2), fmt(b50, " ms", 2),
            str(station.expected), fmt(rates, "", 0)]


def cfind_part(workdir: Path, results: Results) -> None:
    findscu_rows, open_rows = [], []
    for size in SIZES:
        url = f"sqlite:///{workdir}/worklist-{size}.db"
        with Broker(url, worklist_max_results=str(RESULT_CAP),
                    dicom_fast_path=FAST_PATH) as broker:
            wl_dir = _worklist(workdir, size, broker)
            findscu_rows += _findscu_rows(size, [("mwl-broker", broker.dicom_port,
                                                  "MWL_BROKER")])
            open_rows.append(_open_row(size, broker.dicom_port, results))
        # wlmscpfs alone: its per-association processes read every file per query
        peer = cfind.Wlmscpfs(wl_dir, free_port())
        try:
            findscu_rows += _findscu_rows(size, [("wlmscpfs", peer.port, peer.AE_TITLE)])
        finally:
            peer.stop()
    table("Modality Worklist C-FIND (DCMTK findscu -W, one association per query)",
          ["steps", "server", "(a) one Patient ID", "(b) station + today", "(b) items",
           "(c) universal", "(c) items", f"{CLIENTS} clients on (b), queries/s"],
          findscu_rows)
    print(f"\n(c) on the broker is cut at MWLB_WORKLIST_MAX_RESULTS={RESULT_CAP} "
          "(final status 0xA700); wlmscpfs has no cap and returns every item. The broker "
          f"database is SQLite (the embedded default); MWLB_DICOM_FAST_PATH={FAST_PATH}. "
          f"wlmscpfs past {WLMSCPFS_FULL} steps: one run per query, no concurrent loops.")
    table(f"Modality Worklist C-FIND on open associations (mwl-broker; one association "
          f"per client kept open, {OPEN_QUERIES} queries per run for (a), "
          f"{max(OPEN_QUERIES // 10, 1)} for (b); time from the request's first byte to the "
          "final response)",
          ["steps", "(a) one Patient ID, p50", "(a) p99", "(b) station + today, p50",
           "(b) items", f"{CLIENTS} clients on (b), queries/s ({OPEN_SECONDS:.0f} s runs)"],
          open_rows)


# -- HL7 ingest, latency, processing -------------------------------------------------


def ingest_part(workdir: Path, results: Results) -> None:
    rows = []
    configs = [
        ("SQLite, embedded", "sqlite", "store", False, True),
        ("SQLite, embedded", "sqlite", "application", False, True),
        ("PostgreSQL, Celery worker", "postgres", "store", True, True),
        ("PostgreSQL, Celery worker", "postgres", "application", True, True),
        ("PostgreSQL, no worker running (ingest alone)", "postgres", "store", True, False),
    ]
    figures = {("sqlite", "application", 1): (Name.ACK_SQLITE_RATE, Name.ACK_SQLITE_P50),
               ("postgres", "application", 1): (Name.ACK_POSTGRES_RATE,
                                                Name.ACK_POSTGRES_P50)}
    for label, kind, mode, celery, worker in configs:
        with Broker(new_database(kind, workdir), ack_mode=mode, celery=celery,
                    start_worker=worker) as broker:
            ingest(broker.mllp_port, 1, 100, 1)  # warm up
            for connections in (1, CLIENTS):
                first = [(run + 1) * 1_000_000 + connections * 100_000 for run in range(RUNS)]
                runs = [ingest(broker.mllp_port, n, MESSAGES, connections) for n in first]
                rates, p50s = [r.rate for r in runs], [r.p50_ms for r in runs]
                if worker and (kind, mode, connections) in figures:
                    rate_name, p50_name = figures[kind, mode, connections]
                    results.record(rate_name, rates)
                    results.record(p50_name, p50s)
                if worker and (kind, mode, connections) == ("postgres", "application",
                                                             CLIENTS):
                    results.record(Name.ACK_POSTGRES_RATE_8, rates)
                rows.append([label, mode, str(connections), fmt(rates, "", 0),
                             fmt(p50s, " ms"), fmt([r.p99_ms for r in runs], " ms")])
    table(f"HL7 ingest over MLLP ({MESSAGES} ORM^O01 per run, each connection waits for "
          "its ACK)", ["database, processing", "ACK mode", "connections", "messages/s",
                       "ACK p50", "ACK p99"], rows)


def latency_part(workdir: Path, results: Results) -> None:
    rows = []
    for label, kind, celery, names in (
            ("SQLite, embedded", "sqlite", False,
             (Name.LATENCY_SQLITE_P50, Name.LATENCY_SQLITE_P99)),
            ("PostgreSQL, Celery worker", "postgres", True,
             (Name.LATENCY_POSTGRES_P50, Name.LATENCY_POSTGRES_P99))):
        with Broker(new_database(kind, workdir), celery=celery) as broker:
            order_to_worklist(broker.mllp_port, broker.dicom_port, 1, 20)  # warm up
            p50s, p99s = [], []
            for run in range(RUNS):
                p50_ms, p99_ms = order_to_worklist(broker.mllp_port, broker.dicom_port,
                                                   (run + 1) * 10_000, LATENCY_ORDERS)
                p50s.append(p50_ms)
                p99s.append(p99_ms)
            results.record(names[0], p50s)
            results.record(names[1], p99s)
            rows.append([label, fmt(p50s, " ms"), fmt(p99s, " ms")])
    table(f"Order to worklist ({LATENCY_ORDERS} orders per run: ORM sent -> C-FIND on an open "
          "association returns the step; application ACK mode)", ["database, processing",
                                                                  "p50", "p99"], rows)


def processing_part(workdir: Path, results: Results) -> None:
    runs = PROCESSING_RUNS
    rates = [drain_rate(new_database("postgres", workdir), (run + 1) * 1_000_000, BACKLOG)
             for run in range(runs)]
    results.record(Name.DRAIN_POSTGRES, rates)
    table(f"Processing: a backlog of {BACKLOG} stored ORM^O01 drained by one worker "
          f"process on PostgreSQL ({runs} runs)", ["orders applied/s"], [[fmt(rates, "", 0)]])


def performed_part(workdir: Path, results: Results) -> None:
    """MPPS pairs and C-STORE instances per second, in-process broker; the C-STORE runs
    alternate with the same storescu run against DCMTK storescp."""
    from bench.workflow import cstore, mpps_pairs
    from broker.app import BrokerApp
    from broker.config import Settings

    rows = []
    instances = WORK_ITEMS * 2
    for label, kind in (("SQLite", "sqlite"), ("PostgreSQL", "postgres")):
        settings = Settings(database_url=new_database(kind, workdir), mllp_host="127.0.0.1",
                            mllp_port=0, dicom_host="127.0.0.1", dicom_port=0, http_port=-1,
                            mappings_dir=Path(__file__).resolve().parents[1] / "mappings",
                            timezone="UTC")
        app = BrokerApp(settings, sweep_interval=3600)
        app.start()
        try:
            pairs, linked, nagle, stored, reconciled, floor = [], [], [], [], [], []
            with Storescp() as storescp:
                for run in range(1, RUNS + 1):
                    sent, done = mpps_pairs(app, run * WORK_ITEMS, WORK_ITEMS)
                    pairs.append(sent)
                    linked.append(done)
                    sent, _ = cstore(app, instances, (2 * run - 2) * instances, nodelay=False)
                    nagle.append(sent)
                    sent, done = cstore(app, instances, (2 * run - 1) * instances, nodelay=True)
                    stored.append(sent)
                    reconciled.append(done)
                    floor.append(storescp_rate(storescp.port, instances))
        finally:
            app.stop()
        ratios = [broker / dcmtk for broker, dcmtk in zip(stored, floor, strict=True)]
        if kind == "sqlite":
            results.record(Name.MPPS_PAIRS, pairs)
            results.record(Name.CSTORE, stored)
            results.record(Name.FLOOR_STORESCP, floor)
            results.record(Name.CSTORE_TO_STORESCP, ratios)
        rows.append([label, fmt(pairs), fmt(linked), fmt(nagle), fmt(stored), fmt(reconciled),
                     fmt(floor, "", 0), fmt(ratios, "x", 2)])
    table(f"Performed work ({WORK_ITEMS} MPPS N-CREATE + N-SET pairs per run, each message "
          f"on its own association; {instances} C-STORE instances per run, DCMTK storescu, "
          "one association, storage mode discard; DCMTK storescp --ignore receiving the "
          "same storescu run, TCP_NODELAY=1 on both sides)",
          ["database", "MPPS pairs/s", "MPPS pairs/s until linked",
           "C-STORE inst/s (storescu default, Nagle on)", "C-STORE inst/s (TCP_NODELAY=1)",
           "C-STORE inst/s until reconciled", "storescp inst/s (TCP_NODELAY=1)",
           "broker / storescp"], rows)


def ups_part(workdir: Path, results: Results) -> None:
    """UPS-RS search next to MWL C-FIND on the same broker and steps (:mod:`bench.ups`)."""
    count = UPS_WORKITEMS
    figures = ups.measure(f"sqlite:///{workdir}/ups-{count}.db", count, RUNS, OPEN_QUERIES,
                          free_port())
    if count == 10_000:
        results.record(Name.UPS_PATIENT_P50, figures.ups["a"])
        results.record(Name.UPS_STATION_P50, figures.ups["b"])
        results.record(Name.UPS_MWL_PATIENT_P50, figures.mwl["a"])
        results.record(Name.UPS_MWL_STATION_P50, figures.mwl["b"])
    table(f"UPS-RS Search Workitems next to MWL C-FIND ({count} steps, each also a UPS "
          f"workitem; SQLite, embedded; {OPEN_QUERIES} queries per run for (a), "
          f"{max(OPEN_QUERIES // 10, 1)} for (b), MWL then UPS-RS in turn; p50 of each run)",
          ["query", "items", "UPS-RS GET /dicomweb/workitems, one kept-alive httpx "
           "connection", "MWL C-FIND, one open association"],
          [["(a) one Patient ID", "1", fmt(figures.ups["a"], " ms", 2),
            fmt(figures.mwl["a"], " ms", 2)],
           ["(b) station + today", str(count // 100), fmt(figures.ups["b"], " ms", 2),
            fmt(figures.mwl["b"], " ms", 2)],
           ["floor: GET /healthz (no database)", "-", fmt(figures.http_floor, " ms", 2),
            "-"]])
    print("\nUPS-RS times include the HTTP client's (httpx) and the DICOM JSON of each "
          "workitem (patient, request, code and the required return keys); the floor row "
          "is the web server and client alone. MWL C-FIND is timed by the lean SCU of "
          "bench.scu (identifiers counted, not decoded).")


PARTS: dict[str, Callable[[Path, Results], None]] = {
    "floors": floors, "cfind": cfind_part, "ingest": ingest_part, "latency": latency_part,
    "processing": processing_part, "performed": performed_part, "ups": ups_part,
}


def main() -> None:
    wanted = os.environ.get("BENCH_PARTS", ",".join(PARTS)).split(",")
    unknown = set(wanted) - set(PARTS)
    if unknown:
        raise SystemExit(f"BENCH_PARTS: unknown {sorted(unknown)}; parts: {', '.join(PARTS)}")
    print(f"## mwl-broker benchmark, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(f"\nmachine: {machine(RUNS)}")
    results = Results()
    began = time.monotonic()
    try:
        with tempfile.TemporaryDirectory(prefix="mwlb-bench-") as tmp:
            for name in wanted:
                part_began = time.monotonic()
                PARTS[name](Path(tmp), results)
                print(f"\n({name}: {time.monotonic() - part_began:.0f} s)", flush=True)
    finally:
        table("Summary: the performance targets (now: this run's medians)", HEADER,
              summary_rows(results))
        compared = comparison_rows(results)
        if compared:
            table("Side by side (no target): UPS-RS search and MWL C-FIND, this run's "
                  "medians", COMPARISON_HEADER, compared)
        print(f"\n(total: {time.monotonic() - began:.0f} s; parts run: {', '.join(wanted)})")


if __name__ == "__main__":
    main()
