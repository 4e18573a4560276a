"""One broker process at a time sends UPS N-EVENT-REPORTs
(:class:`broker.services.ups_delivery.SenderLock`): on PostgreSQL the first to ask
holds the lock until it releases it or its connection ends, then another takes
over; on SQLite (one process) it is always held."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import create_engine

from broker.services.ups_delivery import SenderLock


@pytest.mark.postgres
def test_one_sender_at_a_time_on_postgresql(postgres_url: str) -> None:
    engines = [create_engine(postgres_url), create_engine(postgres_url)]
    first, second = (SenderLock(engine) for engine in engines)
    try:
        assert first.held()
        assert not second.held()
        assert first.held()  # still its own
        first.release()  # the process stops: its session ends
        assert second.held()
        assert not first.held()
    finally:
        first.release()
        second.release()
        for engine in engines:
            engine.dispose()


def test_always_held_on_sqlite(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'one.db'}")
    try:
        assert SenderLock(engine).held() and SenderLock(engine).held()
    finally:
        engine.dispose()
