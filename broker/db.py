"""Engine and session handling: one engine per process, one session per unit of work.

SQLite (the embedded default) is opened in WAL mode with synchronous=FULL so that a
committed message survives a power cut, with a busy timeout so concurrent writers wait
instead of failing, ``BEGIN IMMEDIATE`` so a writer takes its lock up front, and
case-sensitive LIKE so wildcard matching behaves as on PostgreSQL (PS3.4 C.2.2.2.4:
matching is case-sensitive except for PN). Sorts and pages stay in memory (temp_store,
mmap, a larger page cache for readers) because worklist queries sort wide rows.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

SQLITE_BUSY_TIMEOUT_MS = 30_000
SQLITE_MMAP_BYTES = 256 * 1024 * 1024
SQLITE_READER_CACHE_KIB = 64 * 1024


def make_engine(url: str, *, readonly: bool = False, **kwargs: Any) -> Engine:
    """Create an engine for ``url`` (creating ./var for SQLite files).

    ``readonly`` engines (the worklist SCP's) start SQLite transactions DEFERRED so
    that C-FIND readers never queue behind writers; WAL gives them a snapshot.
    """
    parsed = make_url(url)
    # JSON attribute columns are read on every worklist item: orjson decodes them
    # several times faster than the standard library.
    kwargs.setdefault("json_deserializer", orjson.loads)
    # A database error's text would otherwise carry the statement's parameters (raw
    # messages, names): keep them out of every exception, and so out of every log.
    kwargs.setdefault("hide_parameters", True)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url,
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False},
            **kwargs,
        )
        _configure_sqlite(engine, readonly)
        return engine
    kwargs.setdefault("pool_pre_ping", True)
    kwargs.setdefault("pool_size", 10)
    kwargs.setdefault("max_overflow", 20)
    return create_engine(url, **kwargs)


def _configure_sqlite(engine: Engine, readonly: bool) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # pysqlite's own transaction handling is switched off so that we can issue
        # BEGIN IMMEDIATE ourselves (SQLAlchemy docs, "Serializable isolation").
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=FULL")
        cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA case_sensitive_like=ON")
        # Worklist queries sort wide rows: keep the sort and the pages in memory.
        cur.execute("PRAGMA temp_store=MEMORY")
        cur.execute(f"PRAGMA mmap_size={SQLITE_MMAP_BYTES}")
        if readonly:
            cur.execute(f"PRAGMA cache_size=-{SQLITE_READER_CACHE_KIB}")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN" if readonly else "BEGIN IMMEDIATE")


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def unit_of_work(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session whose transaction commits on success and rolls back on error."""
    with factory() as session, session.begin():
        yield session


@contextmanager
def unsynced_transaction(engine: Engine) -> Iterator[Connection]:
    """A transaction whose commit does not wait for the disk: once committed it is
    atomic and visible and survives the broker's process being killed, but an OS crash
    or power cut may lose it until the next durable commit (any other transaction),
    whose flush of the write-ahead log, written in order, carries it too. PostgreSQL:
    ``SET LOCAL synchronous_commit`` off; SQLite: ``synchronous=NORMAL`` for this
    transaction (WAL mode; the level cannot change inside one, so it is lowered before
    and restored after, and a connection that cannot be restored is discarded)."""
    with engine.connect() as conn:
        if not is_sqlite(engine):
            with conn.begin():
                conn.execute(text("SET LOCAL synchronous_commit TO OFF"))
                yield conn
            return
        driver = conn.connection.driver_connection
        assert driver is not None
        driver.execute("PRAGMA synchronous=NORMAL")
        try:
            with conn.begin():
                yield conn
        finally:
            try:
                driver.execute("PRAGMA synchronous=FULL")
            except Exception:
                conn.invalidate()
                raise


def refresh_planner_statistics(engine: Engine) -> bool:
    """SQLite: ANALYZE (sampled, PRAGMA analysis_limit), so that the query planner
    starts a worklist query from the most selective index (a Patient ID, say) instead
    of scanning by status; without statistics one C-FIND on 10,000 steps took 40 ms
    instead of 1 ms. PostgreSQL's autovacuum keeps its own statistics: no-op there.
    Returns whether anything was done."""
    if not is_sqlite(engine):
        return False
    with engine.begin() as conn:
        conn.exec_driver_sql("PRAGMA analysis_limit=1000")
        conn.exec_driver_sql("ANALYZE")
    return True
