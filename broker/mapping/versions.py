"""Deployed versions of the mapping profiles: the store.

A version is one whole set of profile files as text (:func:`broker.mapping.profile.read_sources`
keys: site files by name, packaged ones ``packaged/NAME``), numbered from 1, with its
SHA-256 digest, who made it and when (``mapping_version``); it is never changed once
written. Putting a version in force is a deployment row (``mapping_deployment``:
``initial``, ``deploy`` or ``rollback``); the latest row is the version in force, which
every process reads before mapping a transaction's messages
(:mod:`broker.mapping.deployed`).

Contract (the caller's session, the caller commits):

* :func:`deploy` validates first: a set that does not load is refused
  (:class:`DeployRefused`, every problem naming its file and key) and nothing is
  written. The same content as the version in force is no change (that version is
  returned, nothing written); the same content as an older version puts that version
  in force again (a new deployment row, no new version); anything else is a new
  version and its deployment.
* Deploys, rollbacks and the first start's :func:`ensure_initial` are serialised: on
  PostgreSQL under one transaction advisory lock (two at once: one waits for the
  other's commit, then sees its version); on SQLite every writing transaction already
  holds the database's write lock (``BEGIN IMMEDIATE``, :mod:`broker.db`).
"""

from __future__ import annotations

import difflib
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from broker.mapping.profile import ProfileError, ProfileSet, load_sources, read_sources
from broker.models import MappingDeployment, MappingVersion, utcnow

ACTIONS = ("initial", "deploy", "rollback")

# The advisory lock key serialising deployments (PostgreSQL's 64-bit text hash of it).
DEPLOY_LOCK = "mwl-broker mapping deploy"


@dataclass(frozen=True)
class VersionInfo:
    """One stored version; ``active``: it is the version in force now; ``deployed_at``
    and ``deployed_by``: its latest deployment, if any."""

    version: int
    digest: str
    created_at: datetime
    created_by: str
    comment: str
    active: bool
    deployed_at: datetime | None
    deployed_by: str


@dataclass(frozen=True)
class Deployment:
    """One row of the deployment history."""

    id: int
    version: int
    action: str
    at: datetime
    by: str
    comment: str


class DeployRefused(ProfileError):
    """A set of profiles that does not validate; ``errors`` lists every problem, each
    naming the file and the key path (``site.yaml: stations[0].ae_title: ...``)."""

    def __init__(self, errors: Sequence[str]) -> None:
        self.errors = list(errors)
        super().__init__("; ".join(self.errors))


def digest(sources: dict[str, str]) -> str:
    """SHA-256 (hex) over the files' names and text, independent of their order."""
    canonical = json.dumps(sources, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def validate(sources: dict[str, str], *, directory: Path | None = None) -> ProfileSet:
    """The loaded set, or :class:`DeployRefused` with every problem. ``directory``:
    name files in messages by their path there (default: by key)."""
    profiles, errors, _files = load_sources(sources, directory)
    if profiles is None:
        raise DeployRefused(errors or ["the profile set: no mapping profiles"])
    return profiles


def _serialise(session: Session) -> None:
    if session.get_bind().dialect.name == "postgresql":
        session.execute(select(func.pg_advisory_xact_lock(
            func.hashtextextended(DEPLOY_LOCK, 0))))


def _in_force(session: Session) -> int | None:
    return session.scalar(select(MappingDeployment.version)
                          .order_by(MappingDeployment.id.desc()).limit(1))


def _utc(at: datetime) -> datetime:
    """SQLite gives stored times back naive: they were written in UTC."""
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def _info(session: Session, row: MappingVersion, in_force: int | None) -> VersionInfo:
    last = session.execute(
        select(MappingDeployment.deployed_at, MappingDeployment.deployed_by)
        .where(MappingDeployment.version == row.id)
        .order_by(MappingDeployment.id.desc()).limit(1)).first()
    return VersionInfo(row.id, row.digest, _utc(row.created_at), row.created_by, row.comment,
                       row.id == in_force, _utc(last[0]) if last else None,
                       last[1] if last else "")


def _put_in_force(session: Session, version: int, action: str, user: str,
                  comment: str) -> None:
    session.add(MappingDeployment(version=version, action=action, deployed_at=utcnow(),
                                  deployed_by=user[:64], comment=comment[:500]))
    session.flush()


def deploy(session: Session, sources: dict[str, str], *, user: str, comment: str = "",
           action: str = "deploy", directory: Path | None = None) -> VersionInfo:
    """Validate ``sources`` and put them in force (see the module contract). Raises
    :class:`DeployRefused` (nothing written), naming files by their path in
    ``directory`` when given (default: by key)."""
    if action not in ACTIONS:
        raise ValueError(f"unknown deployment action {action!r}")
    validate(sources, directory=directory)
    wanted = digest(sources)
    _serialise(session)
    in_force = _in_force(session)
    if in_force is not None:
        current = session.get(MappingVersion, in_force)
        if current is not None and current.digest == wanted:
            return _info(session, current, in_force)
    same = session.scalars(select(MappingVersion).where(MappingVersion.digest == wanted)
                           .order_by(MappingVersion.id.desc()).limit(1)).first()
    if same is None:
        number = (session.scalar(select(func.max(MappingVersion.id))) or 0) + 1
        same = MappingVersion(id=number, digest=wanted, sources=dict(sources),
                              created_at=utcnow(), created_by=user[:64],
                              comment=comment[:500])
        session.add(same)
        session.flush()
    _put_in_force(session, same.id, action, user, comment)
    return _info(session, same, same.id)


def rollback(session: Session, version: int, *, user: str, comment: str = "") -> VersionInfo:
    """Put stored ``version`` in force again (a ``rollback`` deployment; none when it
    already is). KeyError if there is no such version."""
    _serialise(session)
    row = session.get(MappingVersion, version)
    if row is None:
        raise KeyError(version)
    in_force = _in_force(session)
    if in_force != version:
        _put_in_force(session, version, "rollback", user, comment)
    return _info(session, row, version)


def active(session: Session) -> VersionInfo | None:
    """The version in force, or None before any deployment."""
    in_force = _in_force(session)
    if in_force is None:
        return None
    row = session.get(MappingVersion, in_force)
    return _info(session, row, in_force) if row is not None else None


def history(session: Session) -> list[VersionInfo]:
    """Every stored version, newest first."""
    in_force = _in_force(session)
    rows = session.scalars(select(MappingVersion).order_by(MappingVersion.id.desc()))
    return [_info(session, row, in_force) for row in rows]


def deployments(session: Session) -> list[Deployment]:
    """Every deployment, newest first: (id, version, action, at, by, comment)."""
    rows = session.scalars(select(MappingDeployment).order_by(MappingDeployment.id.desc()))
    return [Deployment(r.id, r.version, r.action, _utc(r.deployed_at), r.deployed_by,
                       r.comment)
            for r in rows]


def sources_of(session: Session, version: int) -> dict[str, str]:
    """The files of stored ``version`` (key -> text). KeyError if unknown."""
    found = session.scalar(select(MappingVersion.sources).where(MappingVersion.id == version))
    if found is None:
        raise KeyError(version)
    return dict(found)


def diff(old: dict[str, str], new: dict[str, str], *, old_name: str, new_name: str) -> str:
    """A unified diff of two sets, file by file (``old_name/KEY`` -> ``new_name/KEY``;
    a file only in one set is all added or all removed). Empty when they are equal."""
    out: list[str] = []
    for key in sorted(set(old) | set(new)):
        before, after = old.get(key), new.get(key)
        if before == after:
            continue
        out += difflib.unified_diff(
            (before or "").splitlines(keepends=True), (after or "").splitlines(keepends=True),
            fromfile=f"{old_name}/{key}" if before is not None else "/dev/null",
            tofile=f"{new_name}/{key}" if after is not None else "/dev/null")
        if out and not out[-1].endswith("\n"):
            out[-1] += "\n"
    return "".join(out)


def ensure_initial(session: Session, directory: Path, *, user: str = "system") -> VersionInfo:
    """The version in force; before any deployment, ``directory`` (with the packaged
    profiles) deployed as version 1 with action ``initial``. Two nodes starting
    together end with one version 1 (serialised as every deploy). Raises
    :class:`DeployRefused` when there is no version and the directory does not load."""
    _serialise(session)
    found = active(session)
    if found is not None:
        return found
    return deploy(session, read_sources(directory), user=user,
                  comment=f"initial: {directory}", action="initial", directory=directory)
