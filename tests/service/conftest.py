"""Service-level fixtures: the broker's services called in-process, without sockets or
workers, on a real database migrated by the project's own entry point
(:func:`broker.migrations.upgrade`, what ``mwl-broker db upgrade`` runs).

Every test using :func:`services` runs twice, on SQLite and on PostgreSQL. The schema
is migrated once per session: each SQLite test gets a copy of the migrated file, and
PostgreSQL tests share one migrated database (dropped at the end of the session) whose
tables are emptied before each test. Creating a database per test, even from a
template, costs most of a second on a busy machine; emptying the tables a test filled
costs a few milliseconds.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest
from sqlalchemy import Engine, create_engine, delete, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from broker.application import UseCases
from broker.bootstrap import Role, build
from broker.config import AckMode, Settings
from broker.db import make_engine, unit_of_work
from broker.domain.types import AdtMessage, OrderMessage
from broker.hl7.message import Message
from broker.mapping.apply import map_message
from broker.mapping.profile import ProfileSet, load_profiles
from broker.migrations import upgrade
from broker.models import (
    Base,
    InboundMessage,
    OutboundMessage,
    Patient,
    ReconciliationItem,
    RequestedProcedure,
    ScheduledProcedureStep,
)
from broker.services.inbound import Inbox
from broker.services.message_store import MessageStoreWriter
from broker.services.processing import lock_key
from tests.conftest import MAPPINGS, PG_ADMIN_URL, broker_settings
from tests.workflow import destination

T = TypeVar("T")

TIMEZONE = "America/Chicago"
PEER = "127.0.0.1:40000"
# Outbox rows name this destination; a test that delivers points it at its own EHR.
CLOSED_PORT = 9


class Schemas:
    """The migrated schema, made once per session on each database."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._sqlite: Path | None = None
        self._postgres: str | None = None
        self._admin: Engine | None = None

    def sqlite(self) -> Path:
        """A migrated SQLite file, to be copied."""
        if self._sqlite is None:
            path = self.directory / "migrated.db"
            upgrade(f"sqlite:///{path}")
            self._sqlite = path
        return self._sqlite

    def postgres(self) -> str:
        """The URL of the session's migrated PostgreSQL database."""
        if self._postgres is None:
            self._admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
            name = f"mwlb_svc_{uuid.uuid4().hex[:12]}"
            with self._admin.connect() as conn:
                conn.execute(text(f'CREATE DATABASE "{name}"'))
            self._postgres = name
            upgrade(_pg_url(name))
        return _pg_url(self._postgres)

    def close(self) -> None:
        if self._admin is None:
            return
        with self._admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{self._postgres}" WITH (FORCE)'))
        self._admin.dispose()


def _pg_url(name: str) -> str:
    return make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)


def _empty(url: str) -> None:
    """Delete every row of every broker table, children first (the schema and its
    Alembic version stay)."""
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            for table in reversed(Base.metadata.sorted_tables):
                conn.execute(delete(table))
    finally:
        engine.dispose()


@pytest.fixture(scope="session")
def schemas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Schemas]:
    made = Schemas(tmp_path_factory.mktemp("schema"))
    yield made
    made.close()


@pytest.fixture(params=[
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres),
])
def database_url(request: pytest.FixtureRequest, tmp_path: Path, schemas: Schemas) -> str:
    """An empty database with the migrated schema, SQLite or PostgreSQL."""
    if request.param == "sqlite":
        path = tmp_path / "broker.db"
        shutil.copyfile(schemas.sqlite(), path)
        return f"sqlite:///{path}"
    url = schemas.postgres()
    _empty(url)
    return url


@pytest.fixture(scope="session")
def profiles() -> ProfileSet:
    """The packaged default profile, as the broker loads it."""
    return load_profiles(MAPPINGS)


@dataclass
class Services:
    """One broker's worth of services on one database: the message store as the MLLP
    listener writes it, the processor's mapper, the settings the tasks read, and the
    use cases of a one-shot command (jobs they start are not run: there is no broker)."""

    factory: sessionmaker[Session]
    settings: Settings
    profiles: ProfileSet
    inbox: Inbox
    use_cases: UseCases

    def map(self, msg: Message, *,
            received_at: datetime | None = None) -> OrderMessage | AdtMessage:
        """The processor's mapper (:meth:`broker.runtime.Runtime.map`)."""
        return map_message(msg, self.profiles, timezone=TIMEZONE, received_at=received_at)

    # -- inbound -------------------------------------------------------------------

    def store(self, raw: bytes) -> int:
        """Store ``raw`` as the listener does (header checks, dedup key, group commit);
        returns the message row id."""
        _msg, pending = self.inbox.prepare(raw, PEER)
        stored = self.inbox.writer.store(pending).result(30)
        assert stored is not None, "the message store refused the message"
        return stored[0]

    def process(self, raw: bytes) -> InboundMessage:
        """Store and apply one message (the apply-message use case); its row after."""
        pk = self.store(raw)
        self.use_cases.apply_message(pk)
        return self.message(pk)

    def message(self, pk: int) -> InboundMessage:
        with self.factory() as session:
            row = session.get(InboundMessage, pk)
            assert row is not None
            return row

    # -- tasks ---------------------------------------------------------------------

    def task(self, key: str, body: Callable[[Session], T]) -> T:
        """Run ``body`` in one transaction under the ordering lock ``key``, as the
        worker's tasks do."""
        with unit_of_work(self.factory) as session:
            lock_key(session, key)
            return body(session)

    # -- what a user looks at ------------------------------------------------------

    def steps(self) -> dict[str, ScheduledProcedureStep]:
        """Every scheduled step by SPS ID."""
        with self.factory() as session:
            rows = session.scalars(select(ScheduledProcedureStep)
                                   .order_by(ScheduledProcedureStep.id)).all()
            for row in rows:  # loaded while the session is open
                _ = row.history
            return {row.sps_id: row for row in rows}

    def statuses(self) -> dict[str, str]:
        return {sps_id: step.status for sps_id, step in self.steps().items()}

    def procedure(self, accession: str) -> RequestedProcedure:
        with self.factory() as session:
            rp = session.scalars(select(RequestedProcedure).where(
                RequestedProcedure.accession_number == accession)).one()
            return rp

    def patient(self, patient_id: str) -> Patient:
        with self.factory() as session:
            patient = session.scalars(select(Patient).where(
                Patient.patient_id == patient_id)).one()
            _ = [order.placer_order_number for order in patient.orders]
            return patient

    def outbox(self) -> list[OutboundMessage]:
        with self.factory() as session:
            return list(session.scalars(select(OutboundMessage)
                                        .order_by(OutboundMessage.sequence)))

    def items(self) -> list[ReconciliationItem]:
        with self.factory() as session:
            return list(session.scalars(select(ReconciliationItem)
                                        .order_by(ReconciliationItem.id)))

    def count(self, model: Any) -> int:
        with self.factory() as session:
            return len(session.scalars(select(model)).all())


@pytest.fixture
def services(database_url: str, tmp_path: Path, profiles: ProfileSet) -> Iterator[Services]:
    """The services on a fresh database (parametrized: SQLite, PostgreSQL); messages
    are acknowledged in application mode, so the processor writes each ACK."""
    settings = broker_settings(tmp_path, database_url=database_url, timezone=TIMEZONE,
                               ack_mode=AckMode.APPLICATION,
                               outbound_destinations=destination(CLOSED_PORT))
    root = build(settings, Role.COMMAND)
    root.runtime.profiles = profiles  # type: ignore[misc]  (loaded once per session)
    writer = MessageStoreWriter(root.runtime.engine)
    try:
        yield Services(root.runtime.session_factory, settings, profiles,
                       Inbox(writer, AckMode.APPLICATION), root.use_cases)
    finally:
        writer.close()
        root.close()
