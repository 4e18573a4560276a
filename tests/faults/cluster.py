"""A production-shaped broker of our own for fault tests: a PostgreSQL instance and a
Redis instance started for the test (so they can be stopped and restarted without
touching the machine's services), `mwl-broker serve` and `mwl-broker worker` processes,
and MLLP clients that resend whatever did not get AA."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from broker.hl7.client import MLLPClient
from tests.builders import order
from tests.conftest import MAPPINGS
from tests.integration.conftest import CLI, free_port

PG_BIN = sorted(Path("/usr/lib/postgresql").glob("*/bin"))[-1]


def _as_postgres(*args: str) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else list(args)


class Postgres:
    """initdb + pg_ctl in a temporary directory, trust auth on 127.0.0.1."""

    def __init__(self) -> None:
        # Outside pytest's private (0700) tmp tree: the postgres user must reach it.
        self.dir = Path(tempfile.mkdtemp(prefix="mwlb-faults-pg-"))
        self.dir.chmod(0o755)
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
        self.port = free_port()
        subprocess.run(_as_postgres(str(PG_BIN / "initdb"), "-D", str(self.dir / "data"),
                                    "-A", "trust", "-U", "postgres", "--no-sync"),
                       check=True, capture_output=True)
        self.start()
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            conn.execute("CREATE DATABASE mwlb")

    @property
    def admin_dsn(self) -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres"

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/mwlb"

    def start(self) -> None:
        subprocess.run(_as_postgres(
            str(PG_BIN / "pg_ctl"), "-D", str(self.dir / "data"), "-w", "-l",
            str(self.dir / "log"), "-o",
            f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=on "
            "-c max_connections=200", "start"), check=True, capture_output=True)

    def stop(self, mode: str = "fast") -> None:
        subprocess.run(_as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(self.dir / "data"),
                                    "-m", mode, "-w", "stop"), check=False, capture_output=True)

    def remove(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.dir, ignore_errors=True)

    def query(self, sql: str) -> list[tuple[object, ...]]:
        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=postgres dbname=mwlb") as c:
            return list(c.execute(sql).fetchall())


class Redis:
    def __init__(self, root: Path) -> None:
        self.port = free_port()
        self.dir = root
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(["redis-server", "--port", str(self.port), "--bind",
                                      "127.0.0.1", "--save", "", "--appendonly", "no",
                                      "--dir", str(self.dir)], stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise AssertionError("redis did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()  # its queue is gone, as after a crash
            self.proc.wait(10)
            self.proc = None


class Broker:
    """`serve` and `worker` as child processes, each in its own process group."""

    def __init__(self, root: Path, pg: Postgres, redis: Redis, **settings: str) -> None:
        self.root = root
        self.pg = pg
        self.mllp_port, self.dicom_port = free_port(), free_port()
        # serve processes beyond the first ("serve2", ...) get ports of their own:
        # two nodes on one database, as behind a virtual IP.
        self.ports: dict[str, tuple[int, int]] = {"serve": (self.mllp_port, self.dicom_port)}
        self._lock = threading.Lock()
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("MWLB_")},
            "MWLB_DATABASE_URL": pg.url, "MWLB_CELERY_BROKER_URL": redis.url,
            "MWLB_MLLP_HOST": "127.0.0.1", "MWLB_MLLP_PORT": str(self.mllp_port),
            "MWLB_DICOM_HOST": "127.0.0.1", "MWLB_DICOM_PORT": str(self.dicom_port),
            "MWLB_HTTP_PORT": "-1", "MWLB_MAPPINGS_DIR": str(MAPPINGS),
            "MWLB_TIMEZONE": "UTC", "MWLB_ALLOW_OPEN_ACCESS": "true",
            "MWLB_SWEEP_INTERVAL": "1", "MWLB_SWEEP_GRACE": "5",
            "MWLB_APPLICATION_ACK_TIMEOUT": "5",
            # AA on commit: an AA does not mean "applied", so the test checks that every
            # AA'd message gets applied, and the drain after the burst is real work.
            "MWLB_ACK_MODE": "store",
            **{f"MWLB_{k.upper()}": v for k, v in settings.items()},
        }
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.runs = 0
        # Like `restart: unless-stopped` in docker-compose.yml: a process that exits by
        # itself (not killed by the test) is started again.
        self.supervised: set[str] = set()
        self.restarts: list[str] = []
        self._progress: tuple[int, float] = (-1, time.monotonic())
        self._supervisor = threading.Thread(target=self._supervise, daemon=True)
        self._stopping = False
        self._supervisor.start()

    def _supervise(self) -> None:
        """Restart a supervised process that exited, and (a liveness probe) a worker that
        is alive but has applied nothing for 30 s while work waits and the database is up:
        kombu can leave the consumer dead after a Redis restart ("Unrecoverable error:
        AttributeError ... hostname", README notes)."""
        while not self._stopping:
            for name in list(self.supervised):
                proc = self.procs.get(name)
                if proc is None or self._stopping:
                    continue
                if proc.poll() is not None:
                    self.restarts.append(f"{name} exited with {proc.returncode}")
                    self.start(name)
                elif name == "worker" and self._stuck():
                    self.restarts.append("worker alive but not consuming: restarted")
                    self.kill(name)
                    self.start(name)
                    self.supervise(name)
            time.sleep(0.5)

    def _stuck(self) -> bool:
        """Work is waiting and nothing has been applied for 30 s."""
        try:
            [(pending, done)] = self.pg.query(
                "SELECT count(*) FILTER (WHERE status = 'received'), "
                "count(*) FILTER (WHERE status <> 'received') FROM inbound_message")
        except psycopg.Error:
            return False  # the database is down: that is another test's fault
        now = time.monotonic()
        if done != self._progress[0] or not pending:
            self._progress = (int(str(done)), now)
            return False
        if now - self._progress[1] > 30:
            self._progress = (int(str(done)), now)
            return True
        return False

    def port(self, name: str) -> int:
        """The MLLP port of serve process ``name``."""
        return self.ports[name][0]

    def start(self, name: str, **extra_env: str) -> None:
        with self._lock:  # several may start at once (two nodes cold-starting)
            self.runs += 1
            run = self.runs
            if name.startswith("serve") and name not in self.ports:
                self.ports[name] = (free_port(), free_port())
        args = ["worker", "--concurrency", "2", "--loglevel", "INFO"] if name == "worker" \
            else ["serve"]
        if name.startswith("serve"):
            mllp, dicom = self.ports[name]
            extra_env = {"MWLB_MLLP_PORT": str(mllp), "MWLB_DICOM_PORT": str(dicom),
                         **extra_env}
        log_path = self.root / f"{name}-{run}.log"
        with log_path.open("wb") as log:
            self.procs[name] = subprocess.Popen([CLI, *args], env={**self.env, **extra_env},
                                                stdout=log, stderr=subprocess.STDOUT,
                                                start_new_session=True)
        pattern = "ready." if name == "worker" else "mwl-broker listening"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if pattern in log_path.read_text(errors="replace"):
                return
            if self.procs[name].poll() is not None:
                raise AssertionError(f"{name} exited: {self.output()}")
            time.sleep(0.1)
        raise AssertionError(f"{name} did not start: {self.output()}")

    def supervise(self, name: str) -> None:
        self.supervised.add(name)

    def kill(self, name: str) -> None:
        """SIGKILL the process and its children (a worker with its pool)."""
        self.supervised.discard(name)
        proc = self.procs.pop(name)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(20)

    def kill_worker_child(self) -> int:
        proc = self.procs["worker"]
        children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True,
                                  text=True).stdout.split()
        assert children, "the worker has no pool process"
        os.kill(int(children[0]), signal.SIGKILL)
        return int(children[0])

    def wait_exit(self, name: str, timeout: float) -> None:
        self.supervised.discard(name)
        proc = self.procs[name]
        proc.wait(timeout)
        self.procs.pop(name)

    def stop(self) -> None:
        self._stopping = True
        self.supervised.clear()
        for name in list(self.procs):
            proc = self.procs.pop(name)
            with_group = True
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                with_group = False
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                if with_group:
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)

    def output(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
                         for p in sorted(self.root.glob("*.log")))


@dataclass
class Burst:
    """Several MLLP clients sending distinct orders, each resending until AA. With
    several ``ports`` (two nodes), client k starts on port k mod n and moves to the next
    one when a connection fails, as a virtual IP moving to the other node would."""

    port: int
    orders: range
    clients: int = 4
    ports: list[int] = field(default_factory=list)
    acked: dict[int, float] = field(default_factory=dict)
    acked_by: dict[int, int] = field(default_factory=dict)  # port -> AA count
    refused: list[tuple[int, str, float]] = field(default_factory=list)
    attempts: int = 0
    errors: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._client, args=(k,), daemon=True)
                         for k in range(self.clients)]

    def start(self) -> Burst:
        self.started = time.monotonic()
        for thread in self._threads:
            thread.start()
        return self

    def join(self, timeout: float) -> None:
        for thread in self._threads:
            thread.join(max(0.1, timeout - (time.monotonic() - self.started)))
        alive = [t for t in self._threads if t.is_alive()]
        assert not alive, f"burst not finished: {len(self.acked)} AA of {len(self.orders)}"
        self.finished = time.monotonic()

    def _client(self, k: int) -> None:
        mine = [n for n in self.orders if n % self.clients == k]
        ports = self.ports or [self.port]
        at = k % len(ports)
        client: MLLPClient | None = None
        for n in mine:
            while True:
                with self._lock:
                    self.attempts += 1
                sent_at = time.monotonic()
                try:
                    if client is None:
                        client = MLLPClient("127.0.0.1", ports[at], timeout=10)
                        client.connect()
                    ack = client.send(order(n))
                except OSError as exc:
                    if client is not None:
                        client.close()
                    client = None
                    at = (at + 1) % len(ports)
                    with self._lock:
                        self.refused.append((n, type(exc).__name__, sent_at))
                    time.sleep(0.2)
                    continue
                code = ack.split(b"MSA|", 1)[1][:2].decode() if b"MSA|" in ack else "??"
                if code == "AA":
                    with self._lock:
                        self.acked[n] = sent_at
                        self.acked_by[ports[at]] = self.acked_by.get(ports[at], 0) + 1
                    break
                with self._lock:
                    self.refused.append((n, code, sent_at))
                if code == "AE":  # content errors would never succeed: record and stop
                    self.errors.append(f"order {n}: AE")
                    break
                time.sleep(0.2)
        if client is not None:
            client.close()


def outcome(pg: Postgres, burst: Burst, drain_started: float, timeout: float = 180
            ) -> dict[str, object]:
    """Wait until every AA'd message is applied; return the figures for the report."""
    expected = len(burst.orders)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        [(pending,)] = pg.query("SELECT count(*) FROM inbound_message WHERE status='received'")
        [(steps,)] = pg.query("SELECT count(*) FROM scheduled_procedure_step")
        if pending == 0 and steps >= expected:
            break
        time.sleep(0.25)
    drain = time.monotonic() - drain_started
    [(steps,)] = pg.query("SELECT count(*) FROM scheduled_procedure_step")
    [(distinct,)] = pg.query("SELECT count(DISTINCT placer_order_number) FROM imaging_order")
    applied_ids = {int(str(r[0])[1:]) for r in pg.query(
        "SELECT control_id FROM inbound_message WHERE status='processed'")}
    not_applied = sorted(set(burst.acked) - applied_ids)
    return {"sent": expected, "attempts": burst.attempts, "aa": len(burst.acked),
            "burst_seconds": round(burst.finished - burst.started, 1),
            "applied": len(applied_ids), "steps": steps, "duplicated": steps - distinct,
            "lost": len(not_applied), "lost_ids": not_applied[:10],
            "drain_seconds": round(drain, 1)}


def recovery(pg: Postgres, back_at: float, timeout: float = 180) -> dict[str, object]:
    """How fast work stranded by a fault is picked up, from ``back_at`` (the monotonic
    time the transport was back: Redis restarted, a worker replaced, a node gone):
    ``resume_seconds`` until a message is applied again, ``stranded`` how many stored
    messages were then unapplied, ``stranded_cleared_seconds`` until all of those are
    applied (that includes draining whatever backlog was queued before them)."""
    [(last, stranded, done0)] = pg.query(
        "SELECT coalesce(max(id), 0), count(*) FILTER (WHERE status = 'received'), "
        "count(*) FILTER (WHERE status <> 'received') FROM inbound_message")
    resume: float | None = None
    cleared: float | None = None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            [(left, done)] = pg.query(
                "SELECT count(*) FILTER (WHERE status = 'received' AND id <= "
                f"{int(str(last))}), count(*) FILTER (WHERE status <> 'received') "
                "FROM inbound_message")
        except psycopg.Error:
            time.sleep(0.1)
            continue
        now = time.monotonic()
        if resume is None and (done != done0 or not left):
            resume = now - back_at
        if not left:
            cleared = now - back_at
            break
        time.sleep(0.1)
    return {"stranded": stranded,
            "resume_seconds": None if resume is None else round(resume, 1),
            "stranded_cleared_seconds": None if cleared is None else round(cleared, 1)}


def logged_after(root: Path, text: str, since: float) -> float | None:
    """Seconds from wall-clock time ``since`` to the first log line (of any process)
    containing ``text`` at or after it, from the line's own timestamp."""
    from datetime import datetime

    found: list[float] = []
    for path in root.glob("*.log"):
        for line in path.read_text(errors="replace").splitlines():
            if text in line:
                try:
                    at = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
                except ValueError:
                    continue
                if at >= since - 0.5:
                    found.append(at - since)
    return round(min(found), 1) if found else None


def logged_within(root: Path, text: str, since: float, timeout: float) -> float | None:
    """:func:`logged_after`, waiting up to ``timeout`` seconds from ``since`` for the
    line (the work it announces may be finished before it is logged: another task
    took the messages ahead)."""
    while (found := logged_after(root, text, since)) is None and time.time() < since + timeout:
        time.sleep(0.2)
    return found


def report(name: str, figures: dict[str, object]) -> None:
    """Append one row to test-artifacts/faults.jsonl (the closing note's table)."""
    out = Path(__file__).resolve().parents[2] / "test-artifacts"
    out.mkdir(exist_ok=True)
    with (out / "faults.jsonl").open("a") as fh:
        fh.write(json.dumps({"fault": name, **figures}) + "\n")
