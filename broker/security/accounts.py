"""Console users, sessions, API tokens, the password policy and login throttling.

Passwords are hashed with scrypt (RFC 7914; N=2^14, r=8, p=1, 16-byte salt), a
memory-hard function in Python's standard library. Session cookies and API tokens are
256-bit random strings; the database keeps only their SHA-256, so a copy of the
database lets nobody in. A session ends after ``session_idle_minutes`` without a
request. Roles are ordered viewer < operator < admin; the performer role stands apart:
it may use the DICOMweb Worklist Service (UPS-RS, /dicomweb) and its own API tokens, and
nothing of the console (no rank), while an admin may also use the Worklist Service.

Passwords follow NIST SP 800-63B 5.1.1.2 (memorized secret verifiers): at least
``password_min_length`` characters (12 by default, never under 8), at most 256, any
characters, no composition rules, and refused when they are on the bundled list of
common passwords (``common-passwords.txt``, see ``common-passwords.LICENSE``), are
repetitive or sequential (``aaaaaaaaaaaa``, ``123456789012``) or contain the user name
or the product's name (context-specific words).

Logins are throttled per account and per client address (NIST SP 800-63B 5.2.2; OWASP
Authentication Cheat Sheet): after ``login_delay_after_failures`` failures in a row each
further attempt must wait 1, 2, 4 ... seconds, and ``login_lockout_failures`` lock the
account for ``login_lockout_minutes``; attempts during a wait or lockout are refused
without the password being checked, so even the right one does not get in. Every
refusal is audited as a failed User Authentication, every lockout as a Security Alert
(DICOM PS3.15 A.5.3.13-14).

A performer acts as the AE titles an admin binds to it (``ae_titles``): only as those
may it open a UPS event channel, subscribe or unsubscribe (PS3.18 11.10-11.13), and
with none it may neither do those nor claim workitems, and a workitem it claimed (as
its first AE title) only a performer acting as that AE title may change
(:func:`acting_refusal`, :func:`performing_refusal`); an admin may act as any AE title.

Administration (disable, enable, delete, change role, bind AE titles, revoke tokens)
goes through the functions here, each writing its audit record in the caller's
transaction. A disabled user's sessions are deleted and its tokens refused at once; a
revoked token is refused.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from itertools import pairwise
from pathlib import Path
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from broker.audit import hooks as audit
from broker.config import Settings
from broker.models import ApiToken, LoginThrottle, Role, User, WebSession

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
RANK = {Role.VIEWER.value: 0, Role.OPERATOR.value: 1, Role.ADMIN.value: 2}
MIN_PASSWORD, MAX_PASSWORD = 12, 256
PRODUCT_WORDS = ("mwl-broker", "mwlbroker", "mwl_broker")
COMMON_PASSWORDS = Path(__file__).parent / "common-passwords.txt"


class NotFound(LookupError):
    """No such user or token."""


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
    """``user`` holds ``role`` or a higher one (viewer < operator < admin); the
    performer role is checked with :func:`may_perform`."""
    if role is Role.PERFORMER:
        return may_perform(user)
    return RANK.get(user.role, -1) >= RANK[role.value]


def may_perform(user: User) -> bool:
    """``user`` may use the Worklist Service (UPS-RS): a performer or an admin."""
    return user.role in (Role.PERFORMER.value, Role.ADMIN.value)


# --- the AE titles a performer acts as (UPS-RS, PS3.18 11; PS3.4 CC.2) -----------------

AE_TITLE_MAX = 16  # PS3.5 6.2, VR AE
UNBOUND = ("no AE title is bound to performer {name}: an admin must bind one (console "
           "Users page, or `mwl-broker users ae-titles {name} AE_TITLE`)")


def parse_ae_titles(text: str) -> list[str]:
    """AE titles from ``text`` separated by commas, backslashes or line ends, stripped
    (leading and trailing spaces are not significant, PS3.5 6.2), duplicates dropped;
    ValueError when one is not an AE title (1 to 16 printable ASCII characters, no
    backslash)."""
    titles: list[str] = []
    for part in re.split(r"[,\\\r\n]", text):
        title = part.strip()
        if not title:
            continue
        if len(title) > AE_TITLE_MAX or any(not " " <= c <= "~" for c in title):
            raise ValueError(f"{title[:40]!r} is not an AE title (1 to {AE_TITLE_MAX} "
                             "printable ASCII characters)")
        if title not in titles:
            titles.append(title)
    return titles


def ae_titles_of(user: User) -> list[str]:
    """The AE titles bound to ``user`` (empty when none)."""
    return list(user.ae_titles or [])


def acting_refusal(user: User, ae_title: str) -> str:
    """Why ``user`` may not act as ``ae_title`` on the Worklist Service (open its event
    channel, subscribe or unsubscribe it, PS3.18 11.10-11.13), or "" when it may: an
    admin may act as any AE title, a performer only as one bound to it."""
    if user.role == Role.ADMIN.value:
        return ""
    if user.role != Role.PERFORMER.value:
        return "the Worklist Service needs the performer role"
    titles = ae_titles_of(user)
    if not titles:
        return UNBOUND.format(name=user.name)
    if ae_title.strip() not in titles:
        return (f"performer {user.name} may act only as its AE title(s) "
                f"{', '.join(titles)}, not as {ae_title.strip()[:AE_TITLE_MAX]!r}")
    return ""


def claiming_as(user: User) -> str:
    """The AE title ``user`` claims a workitem as over UPS-RS: its first bound one (""
    when none, as for an admin with none)."""
    titles = ae_titles_of(user)
    return titles[0] if titles else ""


def performing_refusal(user: User, claimed_as: str = "") -> str:
    """Why ``user`` may not claim a workitem or change one with its Transaction UID
    (PS3.18 11.6, 11.7), or "" when it may: a performer acts as its bound AE titles
    (PS3.4 CC.2.1, the performing AE's identity), so one with none bound may not, nor
    one of which ``claimed_as`` (the AE title the workitem was claimed as, "" when
    unknown) is not. An admin may."""
    if user.role != Role.PERFORMER.value:
        return ""
    titles = ae_titles_of(user)
    if not titles:
        return UNBOUND.format(name=user.name)
    if claimed_as and claimed_as not in titles:
        return (f"the workitem was claimed as {claimed_as}; performer {user.name} acts "
                f"only as {', '.join(titles)}")
    return ""


def may_hold_tokens(user: User) -> bool:
    """``user`` may create and revoke API tokens of their own: any role."""
    return user.role in RANK or user.role == Role.PERFORMER.value


# --- password policy (NIST SP 800-63B 5.1.1.2) ---------------------------------------

@cache
def common_passwords() -> frozenset[str]:
    """The bundled blocklist, lowercased (one password a line)."""
    return frozenset(line.strip().lower() for line in
                     COMMON_PASSWORDS.read_text(encoding="utf-8").splitlines() if line.strip())


def _monotonous(password: str) -> bool:
    """Repetitive or sequential: one or two characters over and over (``aaaaaaaaaaaa``,
    ``abababababab``), or each character one step from the last (``123456789012``,
    ``abcdefghijkl``, ``987654321098``)."""
    if len(set(password)) <= 2:
        return True
    steps = {(ord(b) - ord(a)) % 10 if a.isdigit() and b.isdigit() else ord(b) - ord(a)
             for a, b in pairwise(password)}
    return steps <= {1} or steps <= {-1, 9}


def check_password(password: str, name: str, min_length: int = MIN_PASSWORD) -> None:
    """Raise ValueError, with a reason for people, when ``password`` may not be used by
    user ``name`` (NIST SP 800-63B 5.1.1.2; the length is counted in characters)."""
    if len(password) < min_length:
        raise ValueError(f"the password needs at least {min_length} characters")
    if len(password) > MAX_PASSWORD:
        raise ValueError(f"the password may have at most {MAX_PASSWORD} characters")
    lowered = password.lower()
    if lowered in common_passwords():
        raise ValueError("this password is on the list of common passwords: choose another")
    if _monotonous(password):
        raise ValueError("the password is repetitive or sequential: choose another")
    if name and (lowered == name.lower() or (len(name) >= 3 and name.lower() in lowered)):
        raise ValueError("the password may not contain the user name")
    if any(word in lowered for word in PRODUCT_WORDS):
        raise ValueError("the password may not contain the product's name")


def _check_name(name: str) -> None:
    if not re.fullmatch(r"[\w.@-]{1,64}", name):
        raise ValueError("a user name has 1 to 64 letters, digits and . _ @ -")


def create_user(session: Session, name: str, password: str, role: Role,
                min_length: int = MIN_PASSWORD) -> User:
    """A new user; raises ValueError when the name is taken or invalid, or the password
    breaks the policy (:func:`check_password`)."""
    _check_name(name)
    if session.scalar(select(User.id).where(User.name == name)) is not None:
        raise ValueError(f"user {name!r} exists")
    check_password(password, name, min_length)
    user = User(name=name, password_hash=hash_password(password), role=role.value)
    session.add(user)
    session.flush()
    return user


# --- login, throttling and lockout ----------------------------------------------------

def authenticate(session: Session, name: str, password: str) -> User | None:
    """The user when the name and password match and the account is enabled. The same
    scrypt work is done for an unknown name, so timing does not reveal which names
    exist."""
    user = session.scalars(select(User).where(User.name == name)).first()
    if user is None or user.disabled:
        hash_password(password)
        return None
    if not verify_password(password, user.password_hash):
        return None
    user.last_login_at = datetime.now(UTC)
    return user


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _throttle_row(session: Session, key: str) -> LoginThrottle:
    """The counter for ``key``, created when missing, locked for this transaction where
    the database can (SELECT ... FOR UPDATE), so parallel attempts count one by one."""
    dialect = session.get_bind().dialect.name
    insert: Any
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    session.execute(insert(LoginThrottle).values(key=key, failures=0)
                    .on_conflict_do_nothing(index_elements=["key"]))
    row = session.scalars(select(LoginThrottle).where(LoginThrottle.key == key)
                          .with_for_update().execution_options(populate_existing=True)).one()
    return row


@dataclass(frozen=True)
class Limits:
    """When a throttle key must wait (``delay_after`` failures) and is locked out."""

    delay_after: int
    lockout_after: int  # 0: never
    lockout: timedelta


def _wait(row: LoginThrottle, limits: Limits, now: datetime) -> float:
    """Seconds ``row``'s key must still wait before its next attempt (0: may try now).
    An ended lockout, or failures older than the lockout period, start the count anew.
    """
    if row.locked_until is not None:
        if now < _aware(row.locked_until):
            return (_aware(row.locked_until) - now).total_seconds()
        row.failures, row.locked_until = 0, None
    if row.last_failure_at is not None and now - _aware(row.last_failure_at) > limits.lockout:
        row.failures = 0
    if row.failures < limits.delay_after or row.last_failure_at is None:
        return 0.0
    delay = min(2.0 ** (row.failures - limits.delay_after), limits.lockout.total_seconds())
    return max(0.0, (_aware(row.last_failure_at) + timedelta(seconds=delay) - now)
               .total_seconds())


def _fail(row: LoginThrottle, limits: Limits, now: datetime) -> bool:
    """Count a failure; True when it locks the key out."""
    row.failures += 1
    row.last_failure_at = now
    if limits.lockout_after and row.failures >= limits.lockout_after:
        row.locked_until = now + limits.lockout
        return True
    return False


@dataclass(frozen=True)
class LoginResult:
    """A login attempt: the user, or why not and for how long to wait (seconds)."""

    user: User | None
    reason: str = ""
    retry_after: float = 0.0


def login(session: Session, settings: Settings, name: str, password: str,
          address: str) -> LoginResult:
    """One console login attempt from ``address``, throttled per account and per
    address (see the module docstring) and audited, in the caller's transaction (which
    must commit even when the login is refused: the failure counts)."""
    now = datetime.now(UTC)
    lockout = timedelta(minutes=settings.login_lockout_minutes)
    by_user = Limits(settings.login_delay_after_failures, settings.login_lockout_failures,
                     lockout)
    by_addr = Limits(settings.login_address_delay_after_failures,
                     settings.login_address_lockout_failures, lockout)
    name = name[:64]
    account = _throttle_row(session, f"user:{name}")
    client = _throttle_row(session, f"addr:{address[:100]}")
    wait = max(_wait(account, by_user, now), _wait(client, by_addr, now))
    if wait > 0:
        locked = any(r.locked_until is not None for r in (account, client))
        reason = "locked out" if locked else "too many failed attempts"
        audit.user_authentication(session, name, address, login=True, ok=False,
                                  why=f"{reason}, {wait:.0f} s to wait")
        return LoginResult(None, reason, wait)
    user = authenticate(session, name, password)
    if user is not None:
        session.delete(account)
        audit.user_authentication(session, name, address, login=True, ok=True)
        return LoginResult(user)
    audit.user_authentication(session, name, address, login=True, ok=False,
                              why="wrong name or password")
    minutes = f"{settings.login_lockout_minutes:g} min"
    if _fail(account, by_user, now):
        audit.login_lockout(session, name, address,
                            f"account locked for {minutes} after {account.failures} "
                            "failed logins")
    if _fail(client, by_addr, now):
        audit.login_lockout(session, name, address,
                            f"address {address} locked for {minutes} after "
                            f"{client.failures} failed logins", by_address=True)
    return LoginResult(None, "wrong name or password")


# --- sessions and tokens --------------------------------------------------------------

def start_session(session: Session, user: User) -> str:
    token = secrets.token_urlsafe(32)
    session.add(WebSession(token_hash=token_hash(token), user_pk=user.id))
    return token


def end_session(session: Session, token: str) -> None:
    session.execute(delete(WebSession).where(WebSession.token_hash == token_hash(token)))


def csrf_token(session_token: str) -> str:
    """The session's anti-CSRF token for HTML forms (OWASP CSRF Prevention Cheat Sheet,
    synchronizer token pattern): an HMAC-SHA256 keyed with the session's secret cookie,
    so it is per session, needs no storage, and reveals nothing about the cookie."""
    return hmac.new(session_token.encode(), b"mwlb-csrf-v1", hashlib.sha256).hexdigest()


# How stale a session's ``last_seen_at`` or a token's ``last_used_at`` may get before a
# request rewrites it: writing it on every request would make each API call a commit
# (an fsync on SQLite) for a clock nobody needs to the second.
TOUCH_INTERVAL = timedelta(seconds=60)


def _touch_due(last: datetime | None, now: datetime, interval: timedelta) -> bool:
    return last is None or now - _aware(last) >= interval


def session_user(session: Session, token: str, idle_minutes: float) -> User | None:
    """The user of a live session (its idle clock restarts), else None.

    The idle clock (``last_seen_at``) is rewritten only when it is older than
    :data:`TOUCH_INTERVAL` (a quarter of the idle time when that is shorter), so a read
    of the console or the API is no write; a session therefore ends between
    ``idle_minutes`` less that interval and ``idle_minutes`` after its last request
    (never later)."""
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
    if _touch_due(row.last_seen_at, now,
                  min(TOUCH_INTERVAL, timedelta(minutes=idle_minutes) / 4)):
        row.last_seen_at = now
    return user


def create_api_token(session: Session, user: User, name: str, address: str = "") -> str:
    """A new API token for ``user`` (returned once; only its hash is kept), audited."""
    token = "mwlb_" + secrets.token_urlsafe(32)
    row = ApiToken(token_hash=token_hash(token), name=name[:64], user_pk=user.id)
    session.add(row)
    session.flush()
    audit.user_security(session, user.name, address, user.name,
                        f"API token {row.id} ({row.name}) created", action="C")
    return token


def token_user(session: Session, token: str) -> User | None:
    """The user of a live API token: not revoked, its user enabled. Its
    ``last_used_at`` is rewritten only when older than :data:`TOUCH_INTERVAL` (it
    tells an administrator whether a token is in use, to the minute)."""
    row = session.scalars(select(ApiToken).where(ApiToken.token_hash == token_hash(token))).first()
    if row is None or row.revoked_at is not None:
        return None
    user = session.get(User, row.user_pk)
    if user is None or user.disabled:
        return None
    now = datetime.now(UTC)
    if _touch_due(row.last_used_at, now, TOUCH_INTERVAL):
        row.last_used_at = now
    return user


# --- administration -------------------------------------------------------------------

def _iso(value: datetime | None) -> str:
    return _aware(value).isoformat(timespec="seconds") if value else ""


def get_user(session: Session, name: str) -> User:
    user = session.scalars(select(User).where(User.name == name)).first()
    if user is None:
        raise NotFound(f"no user {name!r}")
    return user


def _enabled_admins(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(User).where(
        User.role == Role.ADMIN.value, User.disabled.is_(False))) or 0


def _keep_an_admin(session: Session, user: User) -> None:
    if user.role == Role.ADMIN.value and not user.disabled and _enabled_admins(session) <= 1:
        raise ValueError(f"{user.name} is the last enabled admin: the console would have "
                         "no administrator")


def add_user(session: Session, settings: Settings, actor: str, address: str, name: str,
             password: str, role: Role) -> User:
    """:func:`create_user` under the configured length, audited."""
    user = create_user(session, name, password, role, settings.password_min_length)
    audit.user_security(session, actor, address, name, f"user {name} created, role "
                        f"{role.value}", action="C")
    return user


def set_disabled(session: Session, actor: str, address: str, name: str,
                 disabled: bool) -> User:
    """Disable (its sessions end now, its tokens stop working) or enable a user."""
    user = get_user(session, name)
    if disabled:
        _keep_an_admin(session, user)
        session.execute(delete(WebSession).where(WebSession.user_pk == user.id))
    if user.disabled != disabled:
        user.disabled = disabled
        audit.user_security(session, actor, address, name,
                            f"user {name} {'disabled' if disabled else 'enabled'}")
    return user


def delete_user(session: Session, actor: str, address: str, name: str) -> None:
    """Delete a user with its sessions and API tokens (the audit trail keeps the name)."""
    user = get_user(session, name)
    _keep_an_admin(session, user)
    session.execute(delete(WebSession).where(WebSession.user_pk == user.id))
    session.execute(delete(ApiToken).where(ApiToken.user_pk == user.id))
    session.delete(user)
    audit.user_security(session, actor, address, name, f"user {name} deleted", action="D")


def set_role(session: Session, actor: str, address: str, name: str, role: Role) -> User:
    """Give a user another role (refused when it would leave no enabled admin)."""
    user = get_user(session, name)
    if user.role != role.value:
        if role != Role.ADMIN:
            _keep_an_admin(session, user)
        old, user.role = user.role, role.value
        audit.user_security(session, actor, address, name,
                            f"user {name} role {old} -> {role.value}", roles=True)
    return user


def set_ae_titles(session: Session, actor: str, address: str, name: str,
                  titles: list[str]) -> User:
    """Bind ``name`` to the AE titles it acts as on the Worklist Service (an empty list
    unbinds it), audited. ``titles`` are read like :func:`parse_ae_titles` (a comma
    separates two)."""
    user = get_user(session, name)
    checked = parse_ae_titles(",".join(titles))
    if ae_titles_of(user) != checked:
        old, user.ae_titles = ae_titles_of(user), checked
        audit.user_security(session, actor, address, name,
                            f"user {name} AE titles {', '.join(old) or '(none)'} -> "
                            f"{', '.join(checked) or '(none)'}", roles=True)
    return user


def list_tokens(session: Session, owner: User | None = None) -> list[dict[str, Any]]:
    """API tokens (never their value): all of them, or ``owner``'s."""
    query = select(ApiToken, User.name).join(User, User.id == ApiToken.user_pk)
    if owner is not None:
        query = query.where(ApiToken.user_pk == owner.id)
    return [{"id": t.id, "name": t.name, "user": user, "created_at": _iso(t.created_at),
             "last_used_at": _iso(t.last_used_at), "revoked_at": _iso(t.revoked_at),
             "revoked": t.revoked_at is not None}
            for t, user in session.execute(query.order_by(ApiToken.id))]


def revoke_token(session: Session, actor: str, address: str, token_id: int,
                 owner: User | None = None) -> ApiToken:
    """Revoke a token (``owner``: only if it is theirs); from now on it gets 401."""
    row = session.get(ApiToken, token_id)
    if row is None or (owner is not None and row.user_pk != owner.id):
        raise NotFound(f"no API token {token_id}")
    if row.revoked_at is None:
        row.revoked_at = datetime.now(UTC)
        user = session.get(User, row.user_pk)
        audit.user_security(session, actor, address, user.name if user else "",
                            f"API token {row.id} ({row.name}) revoked")
    return row
