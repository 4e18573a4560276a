"""The database floor: one bare INSERT into the message table and one COMMIT per
message, no broker, no parsing, no network to speak of: the most messages per second
a write path that commits each message before its ACK can reach on this machine.

SQLite through the broker's own engine settings (WAL, ``synchronous=FULL``, ``BEGIN
IMMEDIATE``: :mod:`broker.db`), PostgreSQL through bare psycopg, each connection in a
thread of its own."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, cast

import psycopg
from sqlalchemy import Table
from sqlalchemy.sql.schema import ScalarElementColumnDefault

from broker.db import make_engine
from broker.models import InboundMessage
from tests.builders import order


def _insert(mark: str) -> tuple[str, tuple[Any, ...]]:
    """The INSERT (parameters ``mark``) and its fixed values: every column with a scalar
    default in the model (so that a NOT NULL column added later is filled), the
    sender's identity, and the time in SQL; the message and its control ID follow."""
    table = cast(Table, InboundMessage.__table__)
    fixed: dict[str, Any] = {
        column.name: column.default.arg for column in table.columns
        if isinstance(column.default, ScalarElementColumnDefault)}
    fixed.update(peer="bench", sending_application="FLOOR", sending_facility="F",
                 message_type="ORM^O01", version="2.3.1")
    names = [*fixed, "received_at", "updated_at", "raw", "control_id"]
    marks = [mark] * len(fixed) + ["CURRENT_TIMESTAMP"] * 2 + [mark] * 2
    return (f"INSERT INTO inbound_message ({', '.join(names)}) VALUES ({', '.join(marks)})"
            " RETURNING id", tuple(fixed.values()))


def _sqlite_writer(url: str) -> Callable[[bytes, str], None]:
    raw = make_engine(url).raw_connection()  # isolation_level None: we BEGIN ourselves
    statement, fixed = _insert("?")

    def write(message: bytes, control_id: str) -> None:
        cursor = raw.cursor()
        cursor.execute("BEGIN IMMEDIATE")
        cursor.execute(statement, (*fixed, message, control_id))
        cursor.fetchone()
        cursor.execute("COMMIT")
        cursor.close()

    return write


def _postgres_writer(url: str) -> Callable[[bytes, str], None]:
    conn = psycopg.connect(url.replace("postgresql+psycopg", "postgresql"))
    statement, fixed = _insert("%s")

    def write(message: bytes, control_id: str) -> None:
        conn.execute(statement, (*fixed, message, control_id)).fetchone()
        conn.commit()

    return write


def commit_rate(url: str, first: int, count: int, connections: int = 1) -> float:
    """Messages per second for ``count`` messages spread over ``connections`` on a
    migrated database; control IDs ``first`` onwards."""
    make = _sqlite_writer if url.startswith("sqlite") else _postgres_writer
    writers = [make(url) for _ in range(connections)]
    messages = [order(n) for n in range(first, first + count)]

    errors: list[BaseException] = []

    def loop(k: int) -> None:
        try:
            for n in range(k, count, connections):
                writers[k](messages[n], f"F{first + n}")
        except BaseException as exc:  # reported below, in the calling thread
            errors.append(exc)

    threads = [threading.Thread(target=loop, args=(k,)) for k in range(connections)]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return count / (time.perf_counter() - began)
