"""The mapping use cases: what a candidate set of profiles would change (impact), and
the bulk replay of stored messages with the profiles in force (replay, its progress).

A replay resets each message in one transaction (the run recorded with it) and
dispatches them after the commit: in ``serve`` (embedded) they are applied in this
process, with Celery by the workers; a one-shot command applies them itself in
embedded mode (no worker to hand them to) and publishes them otherwise
(:meth:`broker.dispatch.CommandDispatcher.hand_over`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from sqlalchemy.orm import Session

from broker.db import unit_of_work
from broker.mapping.profile import ProfileError, ProfileSet, load_profiles, load_sources
from broker.models import MappingVersion, ReplayRun
from broker.runtime import Runtime
from broker.services import replay as replays
from broker.services.mapping_impact import Impact
from broker.services.mapping_impact import impact as compare
from broker.services.replay import ReplayCriteria, ReplayProgress

__all__ = ["MappingUseCases", "ReplayCriteria"]

log = logging.getLogger(__name__)


class MappingUseCases:
    """Impact and replay on one process's :class:`~broker.runtime.Runtime`;
    ``dispatch`` hands a message queued again to whoever applies it."""

    def __init__(self, runtime: Runtime, dispatch: Callable[[int], None]) -> None:
        self.runtime = runtime
        self._dispatch = dispatch

    # -- impact ---------------------------------------------------------------------

    def in_force(self, session: Session) -> tuple[int | None, ProfileSet]:
        """The version in force and its profiles; before any deployment (None), the
        profiles of the mappings directory."""
        version = replays.version_in_force(session)
        if version is None:
            return None, self.runtime.profiles
        stored = session.get(MappingVersion, version)
        assert stored is not None, "a deployment names a stored version"
        profiles, errors, _files = load_sources(stored.sources)
        if profiles is None:
            raise ProfileError(f"version {version}: " + "; ".join(errors))
        return version, profiles

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
