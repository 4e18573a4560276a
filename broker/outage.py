"""Naming why a dependency failed, and logging an outage once instead of per attempt.

:func:`describe` turns a database or broker error into a short cause an operator can
act on ("disk full", "read-only database", "database down (connection refused)", ...)
followed by the driver's exception class. It reads the driver's message only to
classify it and never returns it: a driver message can quote SQL parameters, which may
hold patient data (HIPAA minimum necessary; the broker's logs carry ids only).

:class:`Outage` tracks one dependency (the message store, the database as seen by a
worker, the task broker): the first failure is logged with its cause, then a reminder
at most every ``remind_every`` seconds while it lasts, and one line when it ends, with
its duration and how many attempts failed meanwhile. A thousand retries during a
database restart make three log lines, not a thousand.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime
from typing import Any

# (substring of the driver's message or SQLSTATE, cause), first match wins. SQLSTATEs
# are PostgreSQL's (Appendix A, "PostgreSQL Error Codes"); messages are SQLite's
# (sqlite3_errstr) and libpq's.
_CAUSES: tuple[tuple[str, str], ...] = (
    ("53100", "disk full"),
    ("database or disk is full", "disk full"),
    ("no space left on device", "disk full"),
    ("disk quota exceeded", "disk full"),
    ("25006", "read-only database"),
    ("readonly database", "read-only database"),
    ("read-only file system", "read-only database (read-only file system)"),
    ("read-only transaction", "read-only database"),
    ("disk i/o error", "disk I/O error"),
    ("unable to open database file", "cannot open the database file"),
    ("database is locked", "database locked by another writer"),
    ("53300", "database has too many connections"),
    ("too many clients", "database has too many connections"),
    ("57p03", "database starting up or shutting down"),
    ("the database system is", "database starting up or shutting down"),
    ("57p01", "database shut down (connection terminated)"),
    ("terminating connection", "database shut down (connection terminated)"),
    ("connection refused", "database down (connection refused)"),
    ("could not translate host name", "database host not found"),
    ("name or service not known", "database host not found"),
    ("password authentication failed", "database refused the login"),
    ("28p01", "database refused the login"),
    ("timeout", "database not answering (timeout)"),
    ("timed out", "database not answering (timeout)"),
    ("server closed the connection", "database connection lost"),
    ("connection is closed", "database connection lost"),
    ("connection is lost", "database connection lost"),
    ("consuming input failed", "database connection lost"),
)


def _driver_error(exc: BaseException) -> BaseException:
    """The driver's own exception under SQLAlchemy's wrapper (``.orig``), if any."""
    orig = getattr(exc, "orig", None)
    return orig if isinstance(orig, BaseException) else exc


def describe(exc: BaseException) -> str:
    """A cause for ``exc`` without any of its message text, e.g. ``"disk full
    (sqlite3.OperationalError)"`` or ``"database down (connection refused)
    (psycopg.OperationalError)"``."""
    error = _driver_error(exc)
    sqlstate = str(getattr(error, "sqlstate", None) or getattr(error, "pgcode", None) or "")
    text = f"{sqlstate} {error}".lower()
    cause = next((c for key, c in _CAUSES if key in text), None)
    if cause is None:
        cause = "database error" if _is_database_error(error) else "unavailable"
    module = type(error).__module__.split(".")[0]
    prefix = "" if module == "builtins" else f"{module}."
    return f"{cause} ({prefix}{type(error).__name__})"


def describe_redis(exc: BaseException) -> str:
    """Like :func:`describe`, for the task broker (Redis)."""
    text = str(exc).lower()
    if "refused" in text:
        cause = "Redis down (connection refused)"
    elif "timeout" in text or "timed out" in text:
        cause = "Redis not answering (timeout)"
    elif "loading" in text:
        cause = "Redis loading its data"
    elif "closed" in text or "reset" in text:
        cause = "Redis connection lost"
    else:
        cause = "Redis unavailable"
    return f"{cause} ({type(exc).__module__.split('.')[0]}.{type(exc).__name__})"


def _is_database_error(error: BaseException) -> bool:
    return any(k.__name__ in ("DatabaseError", "Error", "InterfaceError")
               and k.__module__.split(".")[0] in ("sqlite3", "psycopg", "psycopg2")
               for k in type(error).__mro__)


def refused_by_content(exc: BaseException) -> bool:
    """The database refused this data (a constraint, a value it cannot hold): the
    same statement would fail again, and other statements still work, so this is not
    an outage (PEP 249 IntegrityError / DataError)."""
    return any(k.__name__ in ("IntegrityError", "DataError")
               for k in type(_driver_error(exc)).__mro__)


class Outage:
    """The state of one dependency, with outage logging (see the module doc).
    Thread-safe; ``failed`` and ``ok`` are cheap enough for every attempt."""

    def __init__(self, what: str, logger: logging.Logger, *,
                 remind_every: float = 60.0) -> None:
        self.what = what
        self.log = logger
        self.remind_every = remind_every
        self._lock = threading.Lock()
        self.cause: str | None = None
        self.since: datetime | None = None
        self.recovered_at: datetime | None = None
        self.failures = 0
        self._started = 0.0
        self._reminded = 0.0

    @property
    def down(self) -> bool:
        return self.cause is not None

    def failed(self, exc: BaseException | str) -> str:
        """Record a failed attempt; returns its cause."""
        cause = exc if isinstance(exc, str) else describe(exc)
        now = time.monotonic()
        with self._lock:
            self.failures += 1
            if self.cause is None:
                self.cause, self.since = cause, datetime.now(UTC)
                self._started = self._reminded = now
                self.failures = 1
                self.log.error("%s unavailable: %s", self.what, cause)
            elif cause != self.cause or now - self._reminded >= self.remind_every:
                self.cause, self._reminded = cause, now
                self.log.error("%s still unavailable after %.0f s: %s (%d failed attempts)",
                               self.what, now - self._started, cause, self.failures)
        return cause

    def ok(self) -> None:
        """Record a success; ends an outage."""
        if self.cause is None:
            return
        with self._lock:
            if self.cause is None:
                return
            self.log.warning("%s available again after %.1f s (%d failed attempts; was: %s)",
                             self.what, time.monotonic() - self._started, self.failures,
                             self.cause)
            self.cause, self.since = None, None
            self.recovered_at = datetime.now(UTC)
            self.failures = 0

    def report(self) -> dict[str, Any]:
        """For /readyz: ``ok`` or the cause and since when."""
        with self._lock:
            if self.cause is None:
                return {"status": "ok", "last_recovery": _iso(self.recovered_at)}
            return {"status": f"failing: {self.cause}", "since": _iso(self.since),
                    "failed_attempts": self.failures}


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat(timespec="seconds") if moment is not None else None
