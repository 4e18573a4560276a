"""Console users, sessions and API tokens (issue 4 §2).

Passwords are hashed with scrypt (RFC 7914; N=2^14, r=8, p=1, 16-byte salt), a
memory-hard function in Python's standard library. Session cookies and API tokens are
256-bit random strings; the database keeps only their SHA-256, so a copy of the
database lets nobody in. A session ends after ``session_idle_minutes`` without a
request. Roles are ordered viewer < operator < admin.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from broker.models import ApiToken, Role, User, WebSession

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
RANK = {Role.VIEWER.value: 0, Role.OPERATOR.value: 1, Role.ADMIN.value: 2}


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P)
    b64 = base64.b64encode
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${b64(salt).decode()}${b64(digest).decode()}"


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
    except ValueError:
        return False
    if scheme != "scrypt":
        return False
    got = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r),
                         p=int(p))
    return hmac.compare_digest(got, base64.b64decode(digest))


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def has_role(user: User, role: Role) -> bool:
    return RANK.get(user.role, -1) >= RANK[role.value]


def create_user(session: Session, name: str, password: str, role: Role) -> User:
    """A new user; raises ValueError when the name is taken or the password too short."""
    if len(password) < 8:
        raise ValueError("the password needs at least 8 characters")
    if session.scalar(select(User.id).where(User.name == name)) is not None:
        raise ValueError(f"user {name!r} exists")
    user = User(name=name, password_hash=hash_password(password), role=role.value)
    session.add(user)
    session.flush()
    return user


def authenticate(session: Session, name: str, password: str) -> User | None:
    user = session.scalars(select(User).where(User.name == name)).first()
    if user is None or user.disabled:
        hash_password(password)  # same work whether or not the user exists
        return None
    if not verify_password(password, user.password_hash):
        return None
    user.last_login_at = datetime.now(UTC)
    return user


def start_session(session: Session, user: User) -> str:
    token = secrets.token_urlsafe(32)
    session.add(WebSession(token_hash=token_hash(token), user_pk=user.id))
    return token


def end_session(session: Session, token: str) -> None:
    session.execute(delete(WebSession).where(WebSession.token_hash == token_hash(token)))


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def session_user(session: Session, token: str, idle_minutes: float) -> User | None:
    """The user of a live session (its idle clock restarts), else None."""
    row = session.get(WebSession, token_hash(token))
    if row is None:
        return None
    now = datetime.now(UTC)
    if now - _aware(row.last_seen_at) > timedelta(minutes=idle_minutes):
        session.delete(row)
        return None
    user = session.get(User, row.user_pk)
    if user is None or user.disabled:
        return None
    row.last_seen_at = now
    return user


def create_api_token(session: Session, user: User, name: str) -> str:
    token = "mwlb_" + secrets.token_urlsafe(32)
    session.add(ApiToken(token_hash=token_hash(token), name=name[:64], user_pk=user.id))
    return token


def token_user(session: Session, token: str) -> User | None:
    row = session.scalars(select(ApiToken).where(ApiToken.token_hash == token_hash(token))).first()
    if row is None:
        return None
    user = session.get(User, row.user_pk)
    if user is None or user.disabled:
        return None
    row.last_used_at = datetime.now(UTC)
    return user
