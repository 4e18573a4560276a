"""Naming the cause of a database failure without its text, and logging an outage
once when it starts and once when it ends."""

from __future__ import annotations

import logging
import socket
import sqlite3

import pytest
from sqlalchemy.orm import Session

from broker.config import Settings
from broker.db import make_engine
from broker.outage import Outage, describe, refused_by_content
from broker.web.queries import health


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize(("message", "cause"), [
    ("database or disk is full", "disk full (sqlite3.OperationalError)"),
    ("attempt to write a readonly database", "read-only database (sqlite3.OperationalError)"),
    ("database is locked", "database locked by another writer (sqlite3.OperationalError)"),
    ("no such table: Doe^Jane", "database error (sqlite3.OperationalError)"),
])
def test_sqlite_causes_are_named_without_the_text(message: str, cause: str) -> None:
    assert describe(sqlite3.OperationalError(message)) == cause
    assert not refused_by_content(sqlite3.OperationalError(message))
    assert refused_by_content(sqlite3.IntegrityError("UNIQUE constraint failed"))


def test_a_stopped_postgresql_is_named_and_readiness_says_so() -> None:
    url = f"postgresql+psycopg://postgres@127.0.0.1:{_free_port()}/mwlb"
    engine = make_engine(url, pool_pre_ping=False)
    try:
        with Session(engine) as session:
            report = health(session, Settings(database_url=url))
    finally:
        engine.dispose()
    assert report["database"] == ("down: database down (connection refused) "
                                  "(psycopg.OperationalError)")


def test_an_outage_is_logged_when_it_starts_and_ends(caplog: pytest.LogCaptureFixture) -> None:
    outage = Outage("message store", logging.getLogger("test.outage"))
    with caplog.at_level(logging.INFO, "test.outage"):
        for _ in range(1000):
            outage.failed(sqlite3.OperationalError("database or disk is full"))
        assert outage.report()["status"] == "failing: disk full (sqlite3.OperationalError)"
        outage.ok()
        outage.ok()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines
    assert lines[0] == "message store unavailable: disk full (sqlite3.OperationalError)"
    assert lines[1].startswith("message store available again after")
    assert "1000 failed attempts" in lines[1]
    assert outage.report()["status"] == "ok"
