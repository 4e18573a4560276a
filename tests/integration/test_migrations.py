"""The Alembic migrations build exactly the schema the models describe, on SQLite and
on PostgreSQL, and running them twice is harmless."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import create_engine, text

from broker.migrations import alembic_config, upgrade


def _check(url: str) -> None:
    upgrade(url)
    upgrade(url)  # idempotent
    command.check(alembic_config(url))  # raises when models and migrations differ


def test_sqlite_schema_matches_the_models(tmp_path: Path) -> None:
    _check(f"sqlite:///{tmp_path / 'm.db'}")


@pytest.mark.postgres
def test_postgresql_schema_matches_the_models(postgres_url: str) -> None:
    _check(postgres_url)


_RACE = """
import sys, time
from broker.migrations import upgrade
start = float(sys.argv[2])
while time.time() < start:  # all processes call upgrade at the same moment
    time.sleep(0.001)
upgrade(sys.argv[1])
"""


def _start_together(url: str, processes: int) -> list[tuple[int, str]]:
    at = time.time() + 4  # after every interpreter has imported Alembic
    procs = [subprocess.Popen([sys.executable, "-c", _RACE, url, str(at)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for _ in range(processes)]
    results = []
    for proc in procs:
        out, _ = proc.communicate(timeout=120)
        results.append((proc.returncode, out.decode(errors="replace")[-2000:]))
    return results


def test_processes_started_together_on_an_empty_sqlite_file_all_come_up(
        tmp_path: Path) -> None:
    for trial in range(2):
        url = f"sqlite:///{tmp_path / f'race{trial}.db'}"
        results = _start_together(url, 4)
        assert [code for code, _ in results] == [0] * 4, results
        command.check(alembic_config(url))


@pytest.mark.postgres
def test_processes_started_together_on_an_empty_postgresql_database_all_come_up(
        postgres_url: str) -> None:
    """Two nodes (and their workers) started at once on an empty database: the schema
    upgrade runs under an advisory lock, so every process comes up."""
    engine = create_engine(postgres_url)
    try:
        for _trial in range(3):
            with engine.begin() as conn:  # empty again
                conn.execute(text("DROP SCHEMA public CASCADE"))
                conn.execute(text("CREATE SCHEMA public"))
            results = _start_together(postgres_url, 4)
            assert [code for code, _ in results] == [0] * 4, results
            command.check(alembic_config(postgres_url))
    finally:
        engine.dispose()
