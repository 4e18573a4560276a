"""The Alembic migrations build exactly the schema the models describe, on SQLite and
on PostgreSQL, and running them twice is harmless."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic import command

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
