"""Alembic migrations; run with :func:`broker.migrations.upgrade` or ``mwl-broker db upgrade``.

Every process runs the upgrade at start (``serve``, ``worker``), so several may start
together on an empty database: two nodes behind a virtual IP, a worker beside serve in
docker-compose. Alembic itself takes no lock, and two upgrades racing both create
``alembic_version`` and the tables (the loser died with a unique violation). The
upgrade therefore runs under a database-wide lock: a PostgreSQL session advisory lock
(held on a connection of its own for the duration), or for a SQLite file an exclusive
``flock`` on a lock file beside it (SQLite's own locks are per transaction, and
Alembic's version check happens before its transaction). Whoever comes second waits,
then finds the schema at head and has nothing to do.
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

HERE = Path(__file__).parent
# pg_advisory_lock key of the schema upgrade: any 64-bit number no other lock uses
# (the processor's per-patient keys are hashes, see broker.services.processing).
MIGRATION_LOCK_KEY = 0x6D776C62_6D696772  # "mwlbmigr"


def alembic_config(database_url: str) -> Config:
    """An Alembic config pointing at this package, with no alembic.ini needed."""
    cfg = Config()
    cfg.set_main_option("script_location", str(HERE))
    cfg.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return cfg


def upgrade(database_url: str, revision: str = "head") -> None:
    """Bring the schema at ``database_url`` up to ``revision`` (idempotent; safe to
    run from any number of processes at once, see the module doc)."""
    with migration_lock(database_url):
        command.upgrade(alembic_config(database_url), revision)


@contextmanager
def migration_lock(database_url: str) -> Iterator[None]:
    """Hold the schema-upgrade lock of the database at ``database_url``."""
    url = make_url(database_url)
    backend = url.get_backend_name()
    if backend == "postgresql":
        engine = create_engine(url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT pg_advisory_lock(:key)"),
                             {"key": MIGRATION_LOCK_KEY})
                try:
                    yield
                finally:
                    conn.execute(text("SELECT pg_advisory_unlock(:key)"),
                                 {"key": MIGRATION_LOCK_KEY})
        finally:
            engine.dispose()
    elif backend == "sqlite" and url.database and url.database != ":memory:" \
            and not url.database.startswith("file:"):
        path = Path(url.database)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.with_name(path.name + ".migrate-lock"), "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
    else:
        yield
