"""What a process maps with: the deployed version of the profiles in force.

Contract:

* :class:`Deployed` is one loaded set with its version number (None: loaded from the
  mappings directory, with no database behind it); mapping with it records that
  version on the mapped message (``profile_version``).
* :meth:`DeployedMappings.current` is called once at the start of each transaction
  that maps messages (a processing batch, an apply-at-receipt group, a dry run): one
  read of the version in force (the latest ``mapping_deployment`` row, by primary key)
  in the caller's transaction, then the set of that version from a per-process cache,
  loaded and compiled once per version. Every message of the transaction is mapped
  with it, so a deploy takes effect between transactions, never inside one, and no
  connection is touched.
* Before any version is deployed (a database never started by ``serve``), the
  profiles of the mappings directory are used, with version None.
* :meth:`DeployedMappings.latest` is the last set :meth:`current` returned in this
  process (what the reader's charset aliases follow between those reads).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, bindparam, select

from broker.domain.types import AdtMessage, OrderMessage
from broker.driver_rows import select_rows
from broker.hl7.message import Message
from broker.mapping.apply import map_message
from broker.mapping.profile import ProfileError, ProfileSet, load_sources
from broker.models import MappingDeployment, MappingVersion

log = logging.getLogger(__name__)

# The version in force: the latest deployment (primary key order).
IN_FORCE = (select(MappingDeployment.version)
            .order_by(MappingDeployment.id.desc()).limit(1))
# The files of one version (primary key).
SOURCES = select(MappingVersion.sources).where(MappingVersion.id == bindparam("version"))


@dataclass(frozen=True)
class Deployed:
    """One set of profiles as deployed: its ``version`` (None: the directory's, not
    deployed) and the loaded ``profiles``; maps a message as the processor does.
    Callable like :meth:`map` (a processing ``Mapper``)."""

    version: int | None
    profiles: ProfileSet
    timezone: str = "UTC"

    def map(self, msg: Message, *,
            received_at: datetime | None = None) -> OrderMessage | AdtMessage:
        """Map ``msg`` with these profiles (:func:`broker.mapping.apply.map_message`);
        the result carries this version in ``profile_version``."""
        mapped = map_message(msg, self.profiles, timezone=self.timezone,
                             received_at=received_at)
        mapped.profile_version = self.version
        return mapped

    __call__ = map

    def profile_name(self, msg: Message | None) -> str:
        """The name of the profile serving ``msg``'s sender (MSH-3/MSH-4), "" when
        none does or the header cannot be read: what a failed message records."""
        if msg is None:
            return ""
        try:
            return self.profiles.select(msg.msh.get(3), msg.msh.get(4)).name
        except (ProfileError, AttributeError, IndexError):
            return ""


class DeployedMappings:
    """The deployed versions a process maps with (``runtime.mappings``): see the
    module contract. ``directory`` loads the profiles used before any deployment;
    thread-safe."""

    def __init__(self, directory: Callable[[], ProfileSet], *, timezone: str) -> None:
        self._directory = directory
        self.timezone = timezone
        self._loaded: dict[int, Deployed] = {}
        self._latest: Deployed | None = None
        self._lock = threading.Lock()
        self.read_at = 0.0  # time.monotonic() of the last read of the version in force

    def current(self, connection: Connection) -> Deployed:
        """The version in force, read in ``connection``'s transaction."""
        rows = select_rows(connection, IN_FORCE)
        version = rows[0][0] if rows else None
        deployed = self._version(connection, version)
        with self._lock:
            self._latest = deployed
            self.read_at = time.monotonic()
        return deployed

    def latest(self) -> Deployed:
        """The last version :meth:`current` returned here (before any: the directory's)."""
        latest = self._latest
        if latest is None:
            latest = self._latest = self._unversioned()
        return latest

    def loaded(self, version: int) -> Deployed | None:
        """``version`` if this process has loaded it."""
        return self._loaded.get(version)

    def _unversioned(self) -> Deployed:
        return Deployed(None, self._directory(), self.timezone)

    def _version(self, connection: Connection, version: int | None) -> Deployed:
        if version is None:
            latest = self._latest
            return latest if latest is not None and latest.version is None \
                else self._unversioned()
        found = self._loaded.get(version)
        if found is not None:
            return found
        rows = select_rows(connection, SOURCES, {"version": version})
        sources = dict(rows[0][0]) if rows else {}
        profiles, errors, _files = load_sources(sources)
        if profiles is None:
            # Validated when deployed; a later broker may refuse what an older one took.
            # Keep mapping with what this process had rather than with nothing.
            log.error("deployed mapping version %s does not load (%d problem(s), first: "
                      "%s); the previous set stays in use", version, len(errors),
                      errors[0] if errors else "none")
            return self.latest()
        deployed = Deployed(version, profiles, self.timezone)
        with self._lock:
            deployed = self._loaded.setdefault(version, deployed)
        log.info("mapping profiles version %s loaded: %s", version,
                 ", ".join(f"{name} ({path})" for name, path in profiles.files.items()))
        return deployed
