"""A dry run of the live pipeline: what the broker would answer to a message, and why,
without keeping anything.

The message goes through exactly what live processing runs: reading it (framing,
charset), the checks of receipt (version, event, processing id: HL7 v2.5.1 2.9.2), the
mapping with its warnings, and the order and patient rules applied against the
database's current state (an SC or XO for an order the broker never saw is refused
as it would be live). The rules run in a transaction that is always rolled back, so
nothing is written. Without a database the rules run on an empty schema in memory,
and the result says so: rules that depend on stored orders answer as on a new broker.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from sqlalchemy import Engine, create_engine, inspect
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

from broker.config import Settings
from broker.db import make_engine, make_session_factory
from broker.domain.types import AdtMessage, OrderMessage
from broker.hl7.ack import ack_code_of, build_ack
from broker.hl7.errors import HL7Error
from broker.hl7.message import Message, parse
from broker.hl7.warnings import from_json
from broker.models import Base, InboundMessage
from broker.services.inbound import SUPPORTED_VERSIONS, check_header, row_values
from broker.services.processing import MapperSource, Reader, apply_message, bind_mapper


@dataclass
class DryRun:
    """The answer live processing would give, and what it would do."""

    ack_code: str
    ack: bytes
    error: str = ""  # "code at location: text", "" when accepted
    warnings: list[str] = field(default_factory=list)
    outcome: str = ""
    message: Message | None = None
    mapped: OrderMessage | AdtMessage | None = None

    @property
    def accepted(self) -> bool:
        return self.ack_code == "AA"


def _error_text(code: object, location: object, text: str) -> str:
    return f"{code} at {location or '-'}: {text}"


def dry_run(raw: bytes, factory: sessionmaker[Session], mapper: MapperSource, *,
            read: Reader = parse, versions: Collection[str] = SUPPORTED_VERSIONS,
            accept_any_version: bool = False) -> DryRun:
    """Run ``raw`` through receipt and processing on ``factory``'s database, then roll
    everything back. ``read``, ``versions`` and ``accept_any_version`` are the live
    listener's (:class:`broker.services.inbound.Inbox`). Given the deployed mappings,
    the message is mapped with the version in force in ``factory``'s database (the
    mappings directory's profiles when none is deployed there)."""
    try:
        msg = read(raw)
        check_header(msg, accept_any_version=accept_any_version, versions=versions)
    except HL7Error as exc:
        partial = exc.partial if isinstance(exc.partial, Message) else None
        ack = build_ack(partial, exc.ack_code, exc)
        return DryRun(exc.ack_code, ack, _error_text(exc.code, exc.location, exc.text),
                      message=partial)
    mapped: list[OrderMessage | AdtMessage] = []

    with factory() as session:
        bound = bind_mapper(mapper, session.connection())

        def keeping(msg: Message, *,
                    received_at: datetime | None = None) -> OrderMessage | AdtMessage:
            mapped.append(bound(msg, received_at=received_at))
            return mapped[-1]

        try:
            values = row_values(raw, "dry run", msg)
            # Its own dedup key, so a message already stored can be tried again.
            values["content_hash"] = f"dry run {uuid.uuid4().hex}"
            row = InboundMessage(**values)
            session.add(row)
            session.flush()
            apply_message(session, row, keeping, read=read)
            ack = row.ack or b""
            result = DryRun(ack_code_of(ack), ack, message=msg,
                            mapped=mapped[-1] if mapped else None,
                            warnings=[str(w) for w in from_json(row.warnings)],
                            outcome=row.outcome or "")
            if row.error_code:
                result.error = _error_text(row.error_code, row.error_location,
                                           row.error_text or "")
            return result
        finally:
            session.rollback()


@contextmanager
def dry_run_database(settings: Settings) -> Iterator[tuple[sessionmaker[Session], str]]:
    """Sessions for a dry run, and a line saying which order state they hold: the
    configured database when it exists and has the broker's schema (never created
    by a dry run), else an empty schema in memory."""
    url = make_url(settings.database_url)
    engine: Engine | None = None
    where = "none: checked as on a new, empty broker"
    sqlite_file = url.get_backend_name() == "sqlite" and url.database not in (None, "",
                                                                               ":memory:")
    if not sqlite_file or Path(str(url.database)).exists():
        try:
            engine = make_engine(settings.database_url)
            if "inbound_message" in inspect(engine).get_table_names():
                where = f"checked read-only against {url.render_as_string(hide_password=True)}"
            else:
                engine.dispose()
                engine = None
        except SQLAlchemyError as exc:
            where = f"database unreachable ({type(exc).__name__}): checked as on an empty broker"
            if engine is not None:
                engine.dispose()
            engine = None
    if engine is None:
        engine = create_engine("sqlite://", poolclass=StaticPool)
        Base.metadata.create_all(engine)
    try:
        yield make_session_factory(engine), where
    finally:
        engine.dispose()
