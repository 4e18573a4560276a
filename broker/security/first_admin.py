"""The first console administrator, from the deployment's settings.

A container deployment has no terminal in which to run ``mwl-broker users add`` before
its console is wanted, so ``serve`` and ``web`` call :func:`ensure_first_admin` at
start: when ``admin_user`` (MWLB_ADMIN_USER) is set and no user of that name exists,
it is created with role admin and the password held in ``admin_password_file``
(MWLB_ADMIN_PASSWORD_FILE, typically a Docker secret under /run/secrets). The file's
trailing line break is not part of the password.

An existing user of that name is left exactly as it is, whatever its role, state or
password: the file is then not even read, so a password changed in the console
survives every restart. The password must pass the same policy as any other (NIST SP
800-63B 5.1.1.2, :func:`broker.security.accounts.check_password`); it is never logged
or put in an error. The creation is audited as ``users add`` is (Security Alert, User
Security Attributes Changed, DICOM PS3.15 A.5.3.13). Two processes starting at once
create the user once: the loser of the race finds it made.
"""

from __future__ import annotations

import logging
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from broker.config import Settings
from broker.db import unit_of_work
from broker.models import Role, User
from broker.security.accounts import add_user

log = logging.getLogger(__name__)

ACTOR = "startup:MWLB_ADMIN_USER"  # who the audit record says created the account


class FirstAdminError(RuntimeError):
    """MWLB_ADMIN_USER cannot be created as configured (the message names the setting)."""


def read_password(path: Path) -> str:
    """The password in ``path`` without its trailing line break."""
    try:
        password = path.read_text(encoding="utf-8").rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise FirstAdminError(f"MWLB_ADMIN_PASSWORD_FILE {path}: cannot read it "
                              f"({reason})") from None
    if not password:
        raise FirstAdminError(f"MWLB_ADMIN_PASSWORD_FILE {path} is empty")
    return password


def ensure_first_admin(factory: sessionmaker[Session], settings: Settings) -> bool:
    """Create ``settings.admin_user`` as described in the module docstring; True when
    this call created it. Raises :class:`FirstAdminError` when it must be created but
    cannot be (no password file, unreadable, empty, or refused by the policy)."""
    name = settings.admin_user
    if not name:
        return False
    if settings.admin_password_file is None:
        raise FirstAdminError("MWLB_ADMIN_USER is set but MWLB_ADMIN_PASSWORD_FILE is not: "
                              "name the file (a Docker secret) that holds its first password")
    try:
        with unit_of_work(factory) as session:
            if session.scalar(select(User.id).where(User.name == name)) is not None:
                log.info("console user %s exists: left as it is (MWLB_ADMIN_USER)", name)
                return False
            password = read_password(settings.admin_password_file)
            try:
                add_user(session, settings, ACTOR, "", name, password, Role.ADMIN)
            except ValueError as exc:
                raise FirstAdminError(f"MWLB_ADMIN_USER {name} not created: {exc} "
                                      "(MWLB_ADMIN_PASSWORD_FILE)") from None
    except IntegrityError:
        log.info("console user %s was created by another process (MWLB_ADMIN_USER)", name)
        return False
    log.info("console user %s created with role admin (MWLB_ADMIN_USER)", name)
    return True
