"""First benchmark: HL7 ingest over MLLP and MWL C-FIND latency (``make bench``).

Runs the broker in-process on SQLite (embedded) and on PostgreSQL, sends synthetic
ORM^O01 messages over one MLLP connection waiting for each ACK, and times DCMTK
``findscu -W`` (one association per query). Prints a markdown table of medians and
min-max over several runs, and the machine it ran on.
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from sqlalchemy import create_engine, text

from bench.orders import order
from broker.app import BrokerApp
from broker.config import Settings
from broker.hl7.client import MLLPClient

REPO = Path(__file__).resolve().parents[1]
RUNS = int(os.environ.get("BENCH_RUNS", "5"))
MESSAGES = int(os.environ.get("BENCH_MESSAGES", "500"))
WORK_ITEMS = int(os.environ.get("BENCH_WORK_ITEMS", "100"))
PG_ADMIN = os.environ.get("MWLB_TEST_PG_ADMIN_URL",
                          "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


def start(database_url: str, ack_mode: str) -> BrokerApp:
    settings = Settings(database_url=database_url, mllp_host="127.0.0.1", mllp_port=0,
                        dicom_host="127.0.0.1", dicom_port=0, http_port=-1,
                        mappings_dir=REPO / "mappings",
                        timezone="UTC", ack_mode=ack_mode)
    app = BrokerApp(settings, sweep_interval=3600)
    app.start()
    return app


def ingest(app: BrokerApp, first: int, count: int) -> tuple[float, float, float]:
    """Messages/s and p50/p99 ACK latency (ms) over one connection."""
    latencies = []
    with MLLPClient("127.0.0.1", app.mllp_port, timeout=30) as client:
        began = time.perf_counter()
        for n in range(first, first + count):
            t0 = time.perf_counter()
            ack = client.send(order(n))
            latencies.append((time.perf_counter() - t0) * 1000)
            assert b"MSA|AA|" in ack, ack
        elapsed = time.perf_counter() - began
    latencies.sort()
    return count / elapsed, latencies[len(latencies) // 2], latencies[int(len(latencies) * .99)]


def cfind_ms(app: BrokerApp, keys: list[str]) -> float:
    args = ["findscu", "-W", "-aec", "MWL_BROKER"]
    for k in keys:
        args += ["-k", k]
    t0 = time.perf_counter()
    subprocess.run([*args, "127.0.0.1", str(app.dicom_port)], check=True,
                   capture_output=True)
    return (time.perf_counter() - t0) * 1000


def fmt(values: list[float], unit: str) -> str:
    return (f"{statistics.median(values):.1f} {unit} "
            f"({min(values):.1f}-{max(values):.1f})")


def databases() -> list[tuple[str, str]]:
    tmp = tempfile.mkdtemp(prefix="mwlb-bench-")
    out = [("SQLite (embedded)", f"sqlite:///{tmp}/bench.db")]
    try:
        name = f"mwlb_bench_{uuid.uuid4().hex[:8]}"
        admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        out.append(("PostgreSQL", PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"))
    except Exception as exc:  # benchmark what we can
        print(f"PostgreSQL unavailable ({type(exc).__name__}); SQLite only")
    return out


def performed_work(label: str, url: str) -> tuple[str, ...]:
    """MPPS pairs/s and C-STORE instances/s on a fresh database (embedded processing)."""
    from bench.workflow import cstore, mpps_pairs

    db_url = url if "sqlite" not in url else url.replace(".db", "-work.db")
    app = start(db_url, "application")
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
    return (label, fmt(pairs, "pairs/s"), fmt(linked, "pairs/s"), fmt(nagle, "inst/s"),
            fmt(stored, "inst/s"), fmt(reconciled, "inst/s"))


def main() -> None:
    rows, work_rows = [], []
    for label, url in databases():
        for mode in ("store", "application"):
            db_url = url if "sqlite" not in url else url.replace(".db", f"-{mode}.db")
            app = start(db_url, mode)
            try:
                rates, p50s, p99s = [], [], []
                for run in range(RUNS):
                    rate, p50, p99 = ingest(app, (run + 1) * 100_000 + (mode == "store") *
                                            10_000_000, MESSAGES)
                    rates.append(rate)
                    p50s.append(p50)
                    p99s.append(p99)
                time.sleep(1)  # let store-mode processing drain before querying
                one = [cfind_ms(app, ["PatientID=BP7", "AccessionNumber"]) for _ in range(RUNS)]
                broad = [cfind_ms(app, ["ScheduledProcedureStepSequence[0].Modality=DX",
                                        "ScheduledProcedureStepSequence[0]"
                                        ".ScheduledProcedureStepStartTime=0800-0810",
                                        "PatientName"]) for _ in range(RUNS)]
            finally:
                app.stop()
            rows.append((label, mode, fmt(rates, "msg/s"), fmt(p50s, "ms"), fmt(p99s, "ms"),
                         fmt(one, "ms"), fmt(broad, "ms")))
        work_rows.append(performed_work(label, url))
    print(f"\nmachine: {platform.node()} {platform.machine()} {os.cpu_count()} cores, "
          f"Python {platform.python_version()}; {RUNS} runs x {MESSAGES} ORM^O01, "
          f"one MLLP connection; C-FIND = DCMTK findscu -W, one association per query "
          f"({RUNS * MESSAGES} items loaded)\n")
    print("| database | ACK mode | ingest | ACK p50 | ACK p99 | C-FIND 1 patient | "
          "C-FIND modality+time range |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print(f"\nPerformed work: {RUNS} runs x {WORK_ITEMS} MPPS N-CREATE + N-SET pairs (each "
          f"message on its own association) and {WORK_ITEMS * 2} C-STORE instances "
          "(DCMTK storescu, one association, storage_mode discard), with storescu's default "
          "(Nagle on) and TCP_NODELAY=1; 'until linked' and 'until reconciled' run to the "
          "moment the broker has applied them\n")
    print("| database | MPPS pairs | MPPS until linked | C-STORE (storescu default) | "
          "C-STORE (TCP_NODELAY=1) | C-STORE until reconciled |")
    print("|---|---|---|---|---|---|")
    for row in work_rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
