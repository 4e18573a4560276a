"""The mapping use cases: putting a set of profiles in force (deploy, rollback, each
audited), what a candidate set would change (impact), and the bulk replay of stored
messages with the profiles in force (replay, its progress).

A replay resets each message in one transaction (the run recorded with it) and
dispatches them after the commit: in ``serve`` (embedded) they are applied in this
process, with Celery by the workers; a one-shot command applies them itself in
embedded mode (no worker to hand them to) and publishes them otherwise
(:meth:`broker.dispatch.CommandDispatcher.hand_over`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.orm import Session

from broker.audit import hooks as audit
from broker.db import unit_of_work
from broker.mapping import versions
from broker.mapping.profile import ProfileSet, load_profiles
from broker.models import ReplayRun
from broker.runtime import Runtime
from broker.services import replay as replays
from broker.services.mapping_impact import Impact
from broker.services.mapping_impact import impact as compare
from broker.services.replay import ReplayCriteria, ReplayProgress

__all__ = ["Change", "MappingUseCases", "ReplayCriteria"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Change:
    """A deploy or rollback done: the version now in force, and the one before (None:
    none yet). ``changed`` is False when it already was in force (nothing written,
    nothing audited)."""

    info: versions.VersionInfo
    before: int | None

    @property
    def changed(self) -> bool:
        return self.before != self.info.version


class MappingUseCases:
    """Impact and replay on one process's :class:`~broker.runtime.Runtime`;
    ``dispatch`` hands a message queued again to whoever applies it."""

    def __init__(self, runtime: Runtime, dispatch: Callable[[int], None]) -> None:
        self.runtime = runtime
        self._dispatch = dispatch

    # -- deploy and rollback --------------------------------------------------------

    def deploy(self, sources: dict[str, str], *, directory: Path | None, user: str,
               address: str = "", comment: str = "", expected_digest: str = "") -> Change:
        """Put the profile files ``sources`` (:func:`broker.mapping.profile.read_sources`
        of ``directory``) in force in every process, in one transaction with its audit
        record (Security Alert, Software Configuration: DICOM PS3.15 A.5.3.13).
        ``expected_digest``: the digest of the files whose impact the user saw; files
        changed since are refused. Raises DeployRefused with every problem (each
        naming file and key) and writes nothing then."""
        if expected_digest and versions.digest(sources) != expected_digest:
            raise versions.DeployRefused([f"{directory}: the files changed since their "
                                          "impact was shown: review the impact again"])
        return self._change(lambda session: versions.deploy(
            session, sources, user=user, comment=comment, directory=directory), "deployed",
            user, address, comment)

    def rollback(self, version: int, *, user: str, address: str = "",
                 comment: str = "") -> Change:
        """Put version ``version`` in force again, as :meth:`deploy` does (audited);
        KeyError if there is no such version."""
        return self._change(lambda session: versions.rollback(
            session, version, user=user, comment=comment), "rolled back", user, address,
            comment)

    def _change(self, put_in_force: Callable[[Session], versions.VersionInfo], done: str,
                user: str, address: str, comment: str) -> Change:
        """Run ``put_in_force`` in a transaction with the audit record of the change
        (none when the version already was in force)."""
        with unit_of_work(self.runtime.session_factory) as session:
            before = versions.active(session)
            info = put_in_force(session)
            change = Change(info, before.version if before is not None else None)
            if change.changed:
                audit.mapping_configuration(
                    session, user, address, f"mapping profiles {done}: version "
                    f"{info.version} in force" + (f" ({comment})" if comment else ""))
        return change

    # -- impact ---------------------------------------------------------------------

    def in_force(self, session: Session) -> tuple[int | None, ProfileSet]:
        """The version in force and its profiles, as processing maps with them
        (:meth:`broker.mapping.deployed.DeployedMappings.current`); None before any
        deployment (the profiles of the mappings directory)."""
        deployed = self.runtime.mappings.current(session.connection())
        return deployed.version, deployed.profiles

    def impact(self, candidate: ProfileSet, *, per_sender: int = 50,
               current: ProfileSet | None = None, before: str | None = None,
               after: str = "the candidate") -> Impact:
        """What ``candidate`` would change against ``current`` (default: the version
        in force) for the last ``per_sender`` messages of each sender; writes nothing
        (:mod:`broker.services.mapping_impact`)."""
        runtime = self.runtime
        with runtime.reader_factory() as session:
            if current is None:
                version, current = self.in_force(session)
                before = before or (f"version {version}" if version is not None
                                    else "the profiles loaded")
            return compare(session, current, candidate, per_sender=per_sender,
                           read=runtime.read, timezone=runtime.timezone,
                           before=before or "the current profiles", after=after)

    def impact_of_directory(self, directory: Path | None = None, *,
                            per_sender: int = 50) -> Impact:
        """:meth:`impact` of the profiles in ``directory`` (default: the mappings
        directory) with the packaged ones; raises ProfileError when they do not load."""
        path = directory or self.runtime.settings.mappings_dir
        return self.impact(load_profiles(path), per_sender=per_sender, after=str(path))

    # -- replay ---------------------------------------------------------------------

    def start_replay(self, criteria: ReplayCriteria, user: str) -> int:
        """Queue the messages ``criteria`` selects again and record the run, in one
        transaction; returns the run id. Nothing is dispatched yet
        (:meth:`dispatch_replay`)."""
        with unit_of_work(self.runtime.session_factory) as session:
            run = replays.start_replay(
                session, status=criteria.status, since=criteria.since,
                until=criteria.until, sender=criteria.sender, user=user,
                version=replays.version_in_force(session))
            return run.id

    def dispatch_replay(self, run_id: int) -> int:
        """Dispatch every message of run ``run_id`` (one that is no longer waiting is
        left alone by the processor); returns how many were. When the dispatcher fails
        (Redis away) the rest is committed as waiting, and the sweeper dispatches it.
        KeyError if the run is unknown."""
        with self.runtime.session_factory() as session:
            run = session.get(ReplayRun, run_id)
            if run is None:
                raise KeyError(run_id)
            ids = list(run.message_ids or [])
        for done, pk in enumerate(ids):
            try:
                self._dispatch(pk)
            except Exception as exc:
                log.warning("replay run %s: %d of %d message(s) dispatched (%s); the rest "
                            "is left for the sweeper", run_id, done, len(ids),
                            type(exc).__name__)
                return done
        return len(ids)

    def replay(self, criteria: ReplayCriteria, user: str) -> int:
        """Reprocess the messages ``criteria`` selects with the profiles in force:
        :meth:`start_replay`, then :meth:`dispatch_replay`; returns the run id (its
        progress: :meth:`replay_progress`)."""
        run_id = self.start_replay(criteria, user)
        self.dispatch_replay(run_id)
        return run_id

    def replay_progress(self, run_id: int) -> ReplayProgress:
        """Where run ``run_id`` is (:func:`broker.services.replay.progress`); KeyError
        if unknown."""
        with self.runtime.reader_factory() as session:
            return replays.progress(session, run_id)
