"""Shared fixtures: real services, real sockets, synthetic data.

PostgreSQL and Redis must be running (``make test`` runs scripts/test-services.sh,
which installs or starts them); each PostgreSQL test gets a database of its own.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from broker.config import Settings

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "tests" / "data" / "samples"
# The packaged profiles (the default one): tests copy and edit default.yaml from here.
MAPPINGS = REPO / "broker" / "mapping" / "profiles"
PG_ADMIN_URL = os.environ.get(
    "MWLB_TEST_PG_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("MWLB_TEST_REDIS_URL", "redis://127.0.0.1:6379/9")
FAST_PATH = {"true": True, "false": False}.get(
    os.environ.get("MWLB_TEST_DICOM_FAST_PATH", "").lower())


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer's MWLB_* variables must not leak into tests."""
    for name in list(os.environ):
        if name.startswith("MWLB_") and not name.startswith("MWLB_TEST_"):
            monkeypatch.delenv(name)


@pytest.fixture(autouse=True)
def _close_console_clients() -> Iterator[None]:
    yield
    from tests.console import close_clients

    close_clients()


def sample(name: str) -> bytes:
    """A sample message by number or file name prefix (e.g. '05')."""
    matches = sorted(SAMPLES.glob(f"{name}*.hl7"))
    assert matches, f"no sample {name}"
    return matches[0].read_bytes()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database, dropped afterwards."""
    name = f"mwlb_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def broker_settings(tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": f"sqlite:///{tmp_path / 'broker.db'}",
        "mllp_host": "127.0.0.1",
        "mllp_port": 0,
        "dicom_host": "127.0.0.1",
        "dicom_port": 0,
        "http_host": "127.0.0.1",
        "http_port": 0,
        "mappings_dir": MAPPINGS,
        "timezone": "America/Chicago",
        "mllp_idle_timeout": 30.0,
        "application_ack_timeout": 10.0,
    }
    if FAST_PATH is not None:  # MWLB_TEST_DICOM_FAST_PATH=false: run a suite without it
        values["dicom_fast_path"] = FAST_PATH
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def make_broker(tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """Start an in-process broker (MLLP + DICOM on ephemeral loopback ports)."""
    from broker.app import BrokerApp

    started: list[BrokerApp] = []

    def _start(**overrides: Any) -> BrokerApp:
        app = BrokerApp(broker_settings(tmp_path, **overrides))
        app.start()
        started.append(app)
        return app

    yield _start
    for app in started:
        app.stop()
