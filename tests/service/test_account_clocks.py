"""The clocks of console sessions and API tokens, on SQLite and PostgreSQL: a request
rewrites ``last_seen_at`` / ``last_used_at`` only when it is older than a minute (a
quarter of the idle time when that is shorter), so an API call is no write; the idle
timeout still ends a session."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from broker.models import ApiToken, Role, WebSession
from broker.security.accounts import (
    create_api_token,
    create_user,
    session_user,
    start_session,
    token_user,
)

PASSWORD = "correct horse battery"


def aware(at: datetime) -> datetime:
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def test_token_and_session_clocks_are_written_once_a_minute(database_url: str) -> None:
    engine = create_engine(database_url)
    try:
        with Session(engine) as db, db.begin():
            user = create_user(db, "clock-user", PASSWORD, Role.PERFORMER)
            token = create_api_token(db, user, "test")
            cookie = start_session(db, user)
        with Session(engine) as db, db.begin():
            assert token_user(db, token) is not None  # never used: written
            assert db.dirty
        with Session(engine) as db, db.begin():
            assert token_user(db, token) is not None  # used just now: no write
            assert session_user(db, cookie, idle_minutes=30) is not None
            assert not db.dirty
        two_minutes_ago = datetime.now(UTC) - timedelta(minutes=2)
        with Session(engine) as db, db.begin():
            db.scalars(select(ApiToken)).one().last_used_at = two_minutes_ago
            db.scalars(select(WebSession)).one().last_seen_at = two_minutes_ago
        with Session(engine) as db, db.begin():
            assert token_user(db, token) is not None
            assert session_user(db, cookie, idle_minutes=30) is not None
        with Session(engine) as db, db.begin():  # both clocks older than a minute: written
            used = db.scalars(select(ApiToken)).one().last_used_at
            seen = db.scalars(select(WebSession)).one().last_seen_at
            assert used is not None and aware(used) > two_minutes_ago + timedelta(minutes=1)
            assert aware(seen) > two_minutes_ago + timedelta(minutes=1)
            db.scalars(select(WebSession)).one().last_seen_at = two_minutes_ago
        with Session(engine) as db, db.begin():
            assert session_user(db, cookie, idle_minutes=1) is None  # idle: ended
        with Session(engine) as db:
            assert db.scalars(select(WebSession)).first() is None
    finally:
        engine.dispose()
