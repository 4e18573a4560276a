"""The broker as the benchmarks run it: ``mwl-broker serve`` (and ``mwl-broker worker``)
as separate processes on loopback, as in production, so that the load generators in
the bench process do not share the broker's interpreter."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from types import TracebackType

from sqlalchemy import create_engine, text

REPO = Path(__file__).resolve().parents[1]
CLI = str(Path(sys.executable).with_name("mwl-broker"))
PG_ADMIN = os.environ.get("MWLB_TEST_PG_ADMIN_URL",
                          "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("MWLB_BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def new_database(kind: str, workdir: Path) -> str:
    """A fresh, empty database URL: a SQLite file, or a new PostgreSQL database."""
    if kind == "sqlite":
        return f"sqlite:///{workdir}/bench-{uuid.uuid4().hex[:8]}.db"
    name = f"mwlb_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"


class Broker:
    """``mwl-broker serve`` (+ ``worker`` when ``celery``) on fresh ports."""

    def __init__(self, database_url: str, *, ack_mode: str = "application",
                 celery: bool = False, start_worker: bool = True, **settings: str) -> None:
        self.mllp_port, self.dicom_port = free_port(), free_port()
        self.database_url = database_url
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("MWLB_")},
            "MWLB_DATABASE_URL": database_url, "MWLB_ACK_MODE": ack_mode,
            "MWLB_MLLP_HOST": "127.0.0.1", "MWLB_MLLP_PORT": str(self.mllp_port),
            "MWLB_DICOM_HOST": "127.0.0.1", "MWLB_DICOM_PORT": str(self.dicom_port),
            "MWLB_HTTP_PORT": "-1", "MWLB_MAPPINGS_DIR": str(REPO / "mappings"),
            "MWLB_TIMEZONE": "UTC", "MWLB_ALLOW_OPEN_ACCESS": "true",
            "MWLB_CELERY_BROKER_URL": REDIS_URL if celery else "",
            **{f"MWLB_{k.upper()}": v for k, v in settings.items()},
        }
        self.celery, self.start_worker = celery, start_worker
        self._logs = Path(tempfile.mkdtemp(prefix="mwlb-bench-logs-"))
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def __enter__(self) -> Broker:
        if self.celery:
            import redis

            redis.Redis.from_url(REDIS_URL).flushdb()
            if self.start_worker:
                self.start("worker", "--concurrency", "1")
        self.start("serve")
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def start(self, name: str, *args: str) -> None:
        log = self._logs / f"{name}.log"
        with log.open("ab") as out:
            self.procs[name] = subprocess.Popen([CLI, name, *args], env=self.env,
                                                stdout=out, stderr=subprocess.STDOUT)
        ready = r"ready\." if name == "worker" else r"mwl-broker listening"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if re.search(ready, log.read_text(errors="replace")):
                return
            if self.procs[name].poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(f"mwl-broker {name} did not start:\n{log.read_text()[-3000:]}")

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.procs.clear()
