"""A process's start with the deployed profiles, and how the serve process follows them.

* :func:`start_deployed`, at the start of ``serve``, a worker and ``web``: on a
  database with no deployed version yet, the mappings directory (MWLB_MAPPINGS_DIR,
  with the packaged profiles) is deployed as version 1 (``initial``; a directory that
  does not validate stops the start, as a broken profile always did). When the
  directory's files differ from the version in force, one warning says so: editing
  the files changes nothing until ``mwl-broker mapping deploy``.
* :class:`MappingsFollower`, in ``serve``: reads the version in force at least every
  ``interval`` seconds (between the reads processing makes), so that the listener's
  reading of messages (charset aliases) follows a deploy made by another process.
  With the opt-in file watch (MWLB_MAPPINGS_WATCH) it also deploys the directory
  itself when its files change after the start and validate (user ``file watch``); a
  changed directory that does not validate is logged and never deployed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from broker.db import unit_of_work
from broker.mapping import versions
from broker.mapping.deployed import DeployedMappings
from broker.mapping.profile import ProfileError, read_sources

log = logging.getLogger(__name__)

WATCH_USER = "file watch"

# Puts profile files in force: (sources, user, comment) -> the version now in force (the
# deploy use case, audited: :meth:`broker.application.mapping.MappingUseCases.deploy`).
Deploy = Callable[[dict[str, str], str, str], versions.VersionInfo]


def directory_digest(directory: Path) -> str | None:
    """The digest of ``directory``'s files as a version would store them (None: not a
    readable directory)."""
    try:
        return versions.digest(read_sources(directory))
    except (ProfileError, OSError):
        return None


def start_deployed(factory: sessionmaker[Session], mappings: DeployedMappings,
                   directory: Path, *, user: str = "system") -> versions.VersionInfo:
    """Deploy ``directory`` as version 1 when nothing is deployed yet, load the version
    in force into ``mappings``, and warn when the directory differs from it. Raises
    :class:`broker.mapping.versions.DeployRefused` for a first directory that does not
    validate."""
    with unit_of_work(factory) as session:
        info = versions.ensure_initial(session, directory, user=user)
    with factory() as session:  # once committed: a version is cached only when it is
        mappings.current(session.connection())
    if directory_digest(directory) != info.digest:
        log.warning("mapping profiles: %s differs from deployed version %d, which stays in "
                    "force; run `mwl-broker mapping deploy` to use the files (editing them "
                    "changes nothing until deployed)", directory, info.version)
    else:
        log.info("mapping profiles: version %d in force (%s)", info.version, directory)
    return info


class MappingsFollower(threading.Thread):
    """Keeps ``mappings`` read at least every ``interval`` seconds; with ``watch``,
    deploys ``directory`` when its files change and validate (see the module doc)."""

    def __init__(self, reader: sessionmaker[Session], mappings: DeployedMappings,
                 directory: Path, *, deploy: Deploy, interval: float = 2.0,
                 watch: bool = False) -> None:
        super().__init__(name="mwl-mappings", daemon=True)
        self.reader = reader
        self.mappings, self.directory = mappings, directory
        self.interval, self.watch = interval, watch
        self.deploy = deploy
        self._stop_event = threading.Event()
        self._seen = directory_digest(directory) if watch else None
        self._failing = False

    def run(self) -> None:
        while not self._stop_event.wait(self.interval / 4):
            try:
                if self.watch:
                    self.check_directory()
                if time.monotonic() - self.mappings.read_at >= self.interval:
                    with self.reader() as session:
                        self.mappings.current(session.connection())
                if self._failing:
                    log.info("mapping profiles: the version in force is read again")
                self._failing = False
            except Exception as exc:  # the database may be away: try again later
                if not self._failing:
                    log.warning("mapping profiles: the version in force could not be read "
                                "(%s); mapping goes on with version %s", type(exc).__name__,
                                self.mappings.latest().version)
                self._failing = True

    def check_directory(self) -> versions.VersionInfo | None:
        """Deploy the directory when its files changed since last seen and validate;
        returns the version deployed (None: unchanged, or refused)."""
        try:
            sources = read_sources(self.directory)
        except (ProfileError, OSError) as exc:
            log.warning("mapping profiles: %s", exc)
            return None
        seen = versions.digest(sources)
        if seen == self._seen:
            return None
        self._seen = seen
        try:
            versions.validate(sources, directory=self.directory)
        except versions.DeployRefused as refused:
            log.warning("mapping profiles: %s changed but does not validate; not deployed "
                        "(%d problem(s)): %s", self.directory, len(refused.errors),
                        "; ".join(refused.errors))
            return None
        info = self.deploy(sources, WATCH_USER, f"files changed in {self.directory}")
        with self.reader() as session:
            self.mappings.current(session.connection())
        log.info("mapping profiles: %s changed; deployed as version %d", self.directory,
                 info.version)
        return info

    def stop(self) -> None:
        self._stop_event.set()
        if self.is_alive():
            self.join(5)
