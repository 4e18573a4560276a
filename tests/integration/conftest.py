"""Fixtures for integration tests that run the broker as real processes: ``mwl-broker
worker`` and ``mwl-broker serve`` on PostgreSQL + Redis (the production path)."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.conftest import MAPPINGS, REDIS_URL
from tests.ehr import EHREndpoint

CLI = str(Path(sys.executable).with_name("mwl-broker"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Processes:
    """The broker and worker as child processes, with their output kept for failures."""

    def __init__(self, env: dict[str, str], tmp_path: Path) -> None:
        self.env = env
        self.tmp_path = tmp_path
        self.children: list[tuple[subprocess.Popen[bytes], Path]] = []

    def start(self, *args: str) -> subprocess.Popen[bytes]:
        log = self.tmp_path / f"{args[0]}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen([CLI, *args], env=self.env, stdout=out,
                                    stderr=subprocess.STDOUT)
        self.children.append((proc, log))
        return proc

    def wait_for(self, name: str, pattern: str, timeout: float = 60) -> None:
        log = self.tmp_path / f"{name}.log"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if log.exists() and re.search(pattern, log.read_text(errors="replace")):
                return
            for proc, _ in self.children:
                if proc.poll() is not None:
                    raise AssertionError(f"{proc.args} exited:\n{self.output()}")
            time.sleep(0.1)
        raise AssertionError(f"{name}: no {pattern!r} within {timeout}s:\n{self.output()}")

    def output(self) -> str:
        return "\n".join(f"--- {log.name}\n{log.read_text(errors='replace')[-4000:]}"
                         for _, log in self.children if log.exists())

    def stop(self) -> None:
        for proc, _ in self.children:
            proc.terminate()
        for proc, _ in self.children:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()


@pytest.fixture
def start_distributed(postgres_url: str, tmp_path: Path) -> Iterator[Any]:
    """Start worker + serve against a fresh database; extra MWLB_* settings as kwargs."""
    started: list[Processes] = []

    def _start(**settings: str) -> Processes:
        redis.Redis.from_url(REDIS_URL).flushdb()
        mllp_port, dicom_port = free_port(), free_port()
        env = {
            **os.environ,
            "MWLB_DATABASE_URL": postgres_url,
            "MWLB_CELERY_BROKER_URL": REDIS_URL,
            "MWLB_MLLP_HOST": "127.0.0.1",
            "MWLB_MLLP_PORT": str(mllp_port),
            "MWLB_DICOM_HOST": "127.0.0.1",
            "MWLB_DICOM_PORT": str(dicom_port),
            "MWLB_HTTP_HOST": "127.0.0.1",
            "MWLB_ALLOW_OPEN_ACCESS": "true",
            "MWLB_HTTP_PORT": str(free_port()),
            "MWLB_MAPPINGS_DIR": str(MAPPINGS),
            "MWLB_TIMEZONE": "America/Chicago",
            **{f"MWLB_{k.upper()}": v for k, v in settings.items()},
        }
        procs = Processes(env, tmp_path)
        started.append(procs)
        procs.start("worker", "--concurrency", "2")
        procs.wait_for("worker", r"ready\.")
        procs.start("serve")
        procs.wait_for("serve", r"mwl-broker listening")
        procs.mllp_port, procs.dicom_port = mllp_port, dicom_port  # type: ignore[attr-defined]
        procs.database_url = postgres_url  # type: ignore[attr-defined]
        return procs

    yield _start
    for procs in started:
        procs.stop()


@pytest.fixture
def ehr() -> Iterator[EHREndpoint]:
    """A running stand-in EHR (MLLP listener answering AA)."""
    endpoint = EHREndpoint().start()
    yield endpoint
    endpoint.stop()
