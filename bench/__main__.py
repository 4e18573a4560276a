"""``make bench``: the broker measured against DCMTK ``wlmscpfs`` and against this
machine's own floors, one markdown table per part, medians and (min-max) over
BENCH_RUNS runs (3), and the machine it ran on.

Parts: the floors (a findscu against an empty wlmscpfs; a bare psycopg insert + commit
loop on the message table); Modality Worklist C-FIND at BENCH_SIZES steps, broker and
wlmscpfs side by side; HL7 ingest on SQLite (embedded) and PostgreSQL (Celery), both
ACK modes, 1 and 8 connections; order to worklist latency; processing throughput of
one worker process; MPPS pairs and C-STORE instances per second.

The broker runs as its own processes (``mwl-broker serve`` / ``worker``), as in
production. Sizes can be cut for a quick look, e.g. ``BENCH_SIZES=1000 BENCH_RUNS=3``.
``BENCH_FAST_PATH=false`` measures C-FIND with the broker's MWLB_DICOM_FAST_PATH off.
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import date
from pathlib import Path

import psycopg
from sqlalchemy.orm import Session

from bench import cfind, loader
from bench.ingest import ingest
from bench.latency import order_to_worklist
from bench.processes import Broker, free_port, new_database
from bench.processing import drain_rate
from broker.db import make_engine
from broker.hl7.client import MLLPClient
from broker.migrations import upgrade
from tests.builders import order

RUNS = int(os.environ.get("BENCH_RUNS", "3"))
SIZES = [int(n) for n in os.environ.get("BENCH_SIZES", "1000,10000,100000").split(",")]
MESSAGES = int(os.environ.get("BENCH_MESSAGES", "500"))
BACKLOG = int(os.environ.get("BENCH_BACKLOG", "10000"))
# One drain of 10,000 takes minutes here (processing is the slow part): one run.
PROCESSING_RUNS = int(os.environ.get("BENCH_PROCESSING_RUNS", "1"))
LATENCY_ORDERS = int(os.environ.get("BENCH_LATENCY_ORDERS", "200"))
CONCURRENT_SECONDS = float(os.environ.get("BENCH_CONCURRENT_SECONDS", "10"))
WORK_ITEMS = int(os.environ.get("BENCH_WORK_ITEMS", "100"))
RESULT_CAP = 10_000
FAST_PATH = os.environ.get("BENCH_FAST_PATH", "true")


def fmt(values: Sequence[float], unit: str = "", digits: int = 1) -> str:
    if not values:
        return "-"
    return (f"{statistics.median(values):.{digits}f}{unit} "
            f"({min(values):.{digits}f}-{max(values):.{digits}f})")


def table(title: str, header: list[str], rows: list[list[str]]) -> None:
    print(f"\n### {title}\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")


def repeat(runs: int, measure: Callable[[int], float]) -> list[float]:
    return [measure(run) for run in range(runs)]


# -- floors ------------------------------------------------------------------------


def floors(workdir: Path) -> None:
    empty = workdir / "empty" / cfind.Wlmscpfs.AE_TITLE
    empty.mkdir(parents=True)
    (empty / "lockfile").touch()
    server = cfind.Wlmscpfs(empty, free_port())
    try:
        nothing = cfind.Query("empty", ["PatientID=NONE"], 0)
        findscu = repeat(RUNS * 3, lambda _: cfind.findscu(server.port, server.AE_TITLE,
                                                           nothing))
    finally:
        server.stop()
    url = new_database("postgres", workdir)
    upgrade(url)
    with psycopg.connect(url.replace("postgresql+psycopg", "postgresql")) as conn:
        def commits(run: int) -> float:
            began = time.perf_counter()
            for n in range(MESSAGES):
                conn.execute(
                    "INSERT INTO inbound_message (raw, peer, status, attempts, received_at,"
                    " updated_at, sending_application, sending_facility, control_id,"
                    " message_type, version, message_datetime, ordering_key) VALUES"
                    " (%s, 'bench', 'received', 0, now(), now(), 'FLOOR', 'F', %s, 'ORM^O01',"
                    " '2.3.1', '', '') RETURNING id", (order(n), f"F{run}-{n}")).fetchone()
                conn.commit()
            return MESSAGES / (time.perf_counter() - began)
        rates = repeat(RUNS, commits)
    table("Floors of this machine (no broker)", ["what", "median (min-max)"], [
        ["DCMTK findscu -W against an empty wlmscpfs (process start, dictionary, "
         "association)", fmt(findscu, " ms")],
        ["PostgreSQL: one INSERT into the message table + COMMIT per message, bare "
         "psycopg, one connection", fmt(rates, " msg/s", 0)],
    ])


# -- C-FIND ------------------------------------------------------------------------


def cfind_part(workdir: Path) -> None:
    today = date.today()
    rows = []
    for size in SIZES:
        url = f"sqlite:///{workdir}/worklist-{size}.db"
        wl_dir = workdir / f"wl-{size}" / cfind.Wlmscpfs.AE_TITLE
        with Broker(url, worklist_max_results=str(RESULT_CAP),
                    dicom_fast_path=FAST_PATH) as broker:
            with MLLPClient("127.0.0.1", broker.mllp_port) as mllp:
                assert b"MSA|AA|" in mllp.send(order(1))  # the template order
            engine = make_engine(url)
            with Session(engine) as session:
                loader.load(session, size, today)
                loader.write_wl_files(session, wl_dir, "UTC")
            engine.dispose()
            peer = cfind.Wlmscpfs(wl_dir, free_port())
            try:
                servers = [("mwl-broker", broker.dicom_port, "MWL_BROKER"),
                           ("wlmscpfs", peer.port, peer.AE_TITLE)]
                for name, port, aet in servers:
                    cap = RESULT_CAP if name == "mwl-broker" else 0
                    queries = cfind.queries(size, today, cap)
                    runs = RUNS if name == "mwl-broker" or size <= 10_000 else min(RUNS, 3)
                    cells = [str(size), name]
                    for query in queries:
                        cfind.findscu(port, aet, query, check=True)
                        times = [cfind.findscu(port, aet, query) for _ in range(runs)]
                        cells.append(fmt(times, " ms"))
                    rate = cfind.concurrent_rate(port, aet, queries[1], 8, CONCURRENT_SECONDS)
                    cells.append(f"{rate:.1f}")
                    cells.insert(4, str(queries[1].expected))
                    cells.insert(6, str(queries[2].expected))
                    rows.append(cells)
            finally:
                peer.stop()
    table("Modality Worklist C-FIND (DCMTK findscu -W, one association per query)",
          ["steps", "server", "(a) one Patient ID", "(b) station + today", "(b) items",
           "(c) universal", "(c) items", "8 clients on (b), queries/s"], rows)
    print(f"\n(c) on the broker is cut at MWLB_WORKLIST_MAX_RESULTS={RESULT_CAP} "
          "(final status 0xA700); wlmscpfs has no cap and returns every item. The broker "
          f"database is SQLite (the embedded default); MWLB_DICOM_FAST_PATH={FAST_PATH}.")


# -- HL7 ingest, latency, processing -------------------------------------------------


def ingest_part(workdir: Path) -> None:
    rows = []
    configs = [
        ("SQLite, embedded", "sqlite", "store", False, True),
        ("SQLite, embedded", "sqlite", "application", False, True),
        ("PostgreSQL, Celery worker", "postgres", "store", True, True),
        ("PostgreSQL, Celery worker", "postgres", "application", True, True),
        ("PostgreSQL, no worker running (ingest alone)", "postgres", "store", True, False),
    ]
    for label, kind, mode, celery, worker in configs:
        with Broker(new_database(kind, workdir), ack_mode=mode, celery=celery,
                    start_worker=worker) as broker:
            ingest(broker.mllp_port, 1, 100, 1)  # warm up
            for connections in (1, 8):
                first = [(run + 1) * 1_000_000 + connections * 100_000 for run in range(RUNS)]
                results = [ingest(broker.mllp_port, n, MESSAGES, connections) for n in first]
                rows.append([label, mode, str(connections),
                             fmt([r.rate for r in results], "", 0),
                             fmt([r.p50_ms for r in results], " ms"),
                             fmt([r.p99_ms for r in results], " ms")])
    table(f"HL7 ingest over MLLP ({MESSAGES} ORM^O01 per run, each connection waits for "
          "its ACK)", ["database, processing", "ACK mode", "connections", "messages/s",
                       "ACK p50", "ACK p99"], rows)


def latency_part(workdir: Path) -> None:
    rows = []
    for label, kind, celery in (("SQLite, embedded", "sqlite", False),
                                ("PostgreSQL, Celery worker", "postgres", True)):
        with Broker(new_database(kind, workdir), celery=celery) as broker:
            order_to_worklist(broker.mllp_port, broker.dicom_port, 1, 20)  # warm up
            p50s, p99s = [], []
            for run in range(RUNS):
                p50, p99 = order_to_worklist(broker.mllp_port, broker.dicom_port,
                                             (run + 1) * 10_000, LATENCY_ORDERS)
                p50s.append(p50)
                p99s.append(p99)
            rows.append([label, fmt(p50s, " ms"), fmt(p99s, " ms")])
    table(f"Order to worklist ({LATENCY_ORDERS} orders per run: ORM sent -> C-FIND on an open "
          "association returns the step; application ACK mode)", ["database, processing",
                                                                  "p50", "p99"], rows)


def processing_part(workdir: Path) -> None:
    runs = PROCESSING_RUNS
    rates = [drain_rate(new_database("postgres", workdir), (run + 1) * 1_000_000, BACKLOG)
             for run in range(runs)]
    table(f"Processing: a backlog of {BACKLOG} stored ORM^O01 drained by one worker "
          f"process on PostgreSQL ({runs} runs)", ["orders applied/s"], [[fmt(rates, "", 0)]])


def performed_part(workdir: Path) -> None:
    """MPPS pairs and C-STORE instances per second, in-process broker."""
    from bench.workflow import cstore, mpps_pairs
    from broker.app import BrokerApp
    from broker.config import Settings

    rows = []
    for label, kind in (("SQLite", "sqlite"), ("PostgreSQL", "postgres")):
        settings = Settings(database_url=new_database(kind, workdir), mllp_host="127.0.0.1",
                            mllp_port=0, dicom_host="127.0.0.1", dicom_port=0, http_port=-1,
                            mappings_dir=loader_repo() / "mappings", timezone="UTC")
        app = BrokerApp(settings, sweep_interval=3600)
        app.start()
        try:
            pairs, linked, nagle, stored, reconciled = [], [], [], [], []
            instances = WORK_ITEMS * 2
            for run in range(1, RUNS + 1):
                sent, done = mpps_pairs(app, run * WORK_ITEMS, WORK_ITEMS)
                pairs.append(sent)
                linked.append(done)
                sent, _ = cstore(app, instances, (2 * run - 2) * instances, nodelay=False)
                nagle.append(sent)
                sent, done = cstore(app, instances, (2 * run - 1) * instances, nodelay=True)
                stored.append(sent)
                reconciled.append(done)
        finally:
            app.stop()
        rows.append([label, fmt(pairs), fmt(linked), fmt(nagle), fmt(stored), fmt(reconciled)])
    table(f"Performed work ({WORK_ITEMS} MPPS N-CREATE + N-SET pairs per run, each message "
          f"on its own association; {WORK_ITEMS * 2} C-STORE instances per run, DCMTK storescu, "
          "one association, storage mode discard)",
          ["database", "MPPS pairs/s", "MPPS pairs/s until linked",
           "C-STORE inst/s (storescu default, Nagle on)", "C-STORE inst/s (TCP_NODELAY=1)",
           "C-STORE inst/s until reconciled"], rows)


def loader_repo() -> Path:
    return Path(__file__).resolve().parents[1]


def machine() -> str:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    dcmtk = subprocess.run(["findscu", "--version"], capture_output=True, text=True
                           ).stdout.splitlines()[0:1]
    return (f"{platform.node()}: {cpu}, {os.cpu_count()} cores, "
            f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB, "
            f"{platform.system()} {platform.release()}, Python {platform.python_version()}, "
            f"{' '.join(dcmtk)}; {RUNS} runs per figure")


PARTS: dict[str, Callable[[Path], None]] = {
    "floors": floors, "cfind": cfind_part, "ingest": ingest_part, "latency": latency_part,
    "processing": processing_part, "performed": performed_part,
}


def main() -> None:
    wanted = os.environ.get("BENCH_PARTS", ",".join(PARTS)).split(",")
    print(f"## mwl-broker benchmark, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(f"\nmachine: {machine()}")
    with tempfile.TemporaryDirectory(prefix="mwlb-bench-") as tmp:
        for name in wanted:
            began = time.monotonic()
            PARTS[name](Path(tmp))
            print(f"\n({name}: {time.monotonic() - began:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
