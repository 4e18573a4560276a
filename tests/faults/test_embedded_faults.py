"""Never lose an order on the embedded default: `mwl-broker serve` alone on SQLite,
application ACKs, each message stored and applied in one commit. Four MLLP clients
send distinct orders and resend whatever did not get AA while the process is killed
(SIGKILL at a random point; or the failpoint that ends it right after a commit, before
the ACK) and started again. After each: every order once on the worklist, none twice,
every AA'd message applied."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import MAPPINGS
from tests.faults.cluster import Burst, report
from tests.integration.conftest import CLI, free_port

pytestmark = [pytest.mark.faults, pytest.mark.timeout(420)]

ORDERS = 600


class EmbeddedServe:
    """`mwl-broker serve` on a SQLite file, in its own process group."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.database = root / "broker.db"
        self.mllp_port = free_port()
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("MWLB_")},
            "MWLB_DATABASE_URL": f"sqlite:///{self.database}",
            "MWLB_MLLP_HOST": "127.0.0.1", "MWLB_MLLP_PORT": str(self.mllp_port),
            "MWLB_DICOM_HOST": "127.0.0.1", "MWLB_DICOM_PORT": str(free_port()),
            "MWLB_HTTP_PORT": "-1", "MWLB_MAPPINGS_DIR": str(MAPPINGS),
            "MWLB_TIMEZONE": "UTC", "MWLB_ALLOW_OPEN_ACCESS": "true",
            "MWLB_ACK_MODE": "application", "MWLB_SWEEP_INTERVAL": "1",
            "MWLB_SWEEP_GRACE": "5",
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.runs = 0

    def start(self, **env: str) -> None:
        self.runs += 1
        log_path = self.root / f"serve-{self.runs}.log"
        with log_path.open("wb") as log:
            self.proc = subprocess.Popen([CLI, "serve"], env={**self.env, **env}, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        while "mwl-broker listening" not in log_path.read_text(errors="replace"):
            assert self.proc.poll() is None, self.output()
            assert time.monotonic() < deadline, self.output()
            time.sleep(0.1)

    def kill(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(20)

    def wait_exit(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(30)

    def query(self, sql: str) -> list[tuple[object, ...]]:
        with sqlite3.connect(self.database, timeout=30) as conn:
            return conn.execute(sql).fetchall()

    def output(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
                         for p in sorted(self.root.glob("serve-*.log")))


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[EmbeddedServe]:
    broker = EmbeddedServe(tmp_path)
    try:
        yield broker
    finally:
        broker.stop()


def until(burst: Burst, count: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while len(burst.acked) < count:
        assert time.monotonic() < deadline, "the burst does not progress"
        time.sleep(0.02)


def check(name: str, serve: EmbeddedServe, burst: Burst) -> None:
    burst.join(300)
    [(steps,)] = serve.query("SELECT count(*) FROM scheduled_procedure_step")
    [(distinct,)] = serve.query("SELECT count(DISTINCT placer_order_number) FROM imaging_order")
    [(pending,)] = serve.query("SELECT count(*) FROM inbound_message WHERE status='received'")
    applied = {int(str(r[0])[1:]) for r in serve.query(
        "SELECT control_id FROM inbound_message WHERE status='processed'")}
    figures = {"sent": ORDERS, "attempts": burst.attempts, "aa": len(burst.acked),
               "burst_seconds": round(burst.finished - burst.started, 1), "steps": steps,
               "duplicated": steps - distinct, "lost": len(set(burst.acked) - applied),
               "pending_after_burst": pending, "process_restarts": serve.runs - 1}
    report(name, figures)
    assert burst.errors == [], serve.output()
    assert figures["aa"] == ORDERS, figures
    assert (steps, distinct) == (ORDERS, ORDERS), (figures, serve.output())
    assert figures["lost"] == 0, figures
    assert burst.attempts > ORDERS  # the clients did have to resend


def test_embedded_serve_killed_mid_burst(serve: EmbeddedServe) -> None:
    serve.start()
    burst = Burst(serve.mllp_port, range(700_000, 700_000 + ORDERS)).start()
    until(burst, ORDERS // 3)
    serve.kill()
    time.sleep(1)  # the clients' connections fail meanwhile: they resend later
    serve.start()
    check("embedded serve killed (SIGKILL) mid-burst", serve, burst)


def test_embedded_serve_ended_between_commit_and_ack(serve: EmbeddedServe) -> None:
    """The failpoint ends the process right after a commit that stored and applied a
    message, before its ACK: the resend is a duplicate, answered with the stored AA."""
    serve.start(MWLB_FAILPOINT=f"crash-after-commit:{ORDERS // 2}")
    burst = Burst(serve.mllp_port, range(800_000, 800_000 + ORDERS)).start()
    assert serve.wait_exit(120) == 137
    [(committed,)] = serve.query("SELECT count(*) FROM inbound_message")
    assert int(str(committed)) > len(burst.acked)  # committed, applied, not answered
    serve.start()
    check("embedded serve ended between commit and ACK", serve, burst)
