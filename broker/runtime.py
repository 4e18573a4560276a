"""Process-wide resources: settings, the engines and session factories, the deployed
mapping profiles (:attr:`Runtime.mappings`) and the reader/mapper built from them.
Built once per process by the composition root (:mod:`broker.bootstrap`), and nowhere
else."""

from __future__ import annotations

import logging
from datetime import datetime
from functools import cached_property
from typing import TYPE_CHECKING

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from broker.config import Settings
from broker.db import make_engine, make_session_factory
from broker.domain.types import AdtMessage, OrderMessage
from broker.hl7.message import Message, ReadOptions, parse
from broker.mapping.deployed import Deployed, DeployedMappings
from broker.mapping.profile import ProfileSet, load_profiles

if TYPE_CHECKING:
    from broker.outage import Outage

log = logging.getLogger(__name__)


def local_zone_name() -> str:
    """IANA name of the host's zone (used when MWLB_TIMEZONE is empty)."""
    from tzlocal import get_localzone_name

    return get_localzone_name() or "UTC"


class Runtime:
    """What a broker or worker process needs, built lazily; one per process (a forked
    worker child forgets the parent's connections, :meth:`dispose`)."""

    def __init__(self, settings: Settings, *, pre_ping: bool = True) -> None:
        self.settings = settings
        # A Celery worker's engine does not ping a pooled connection before each use (a
        # round trip per transaction): a connection dropped meanwhile fails its task,
        # the pool is invalidated, and the task's retry takes a fresh one.
        self.pre_ping = pre_ping
        self.timezone = settings.timezone or local_zone_name()
        # Whether the serve process's message store can commit (set by serve; /readyz).
        self.store_health: Outage | None = None
        self._read_options: tuple[Deployed, ReadOptions] | None = None

    @cached_property
    def engine(self) -> Engine:
        if self.pre_ping:
            return make_engine(self.settings.database_url)
        return make_engine(self.settings.database_url, pool_pre_ping=False)

    @cached_property
    def session_factory(self) -> sessionmaker[Session]:
        return make_session_factory(self.engine)

    @cached_property
    def reader_factory(self) -> sessionmaker[Session]:
        """Sessions for reading only (worklist queries, the console): on SQLite their
        transactions never take the write lock, so they never wait for writers."""
        return make_session_factory(make_engine(self.settings.database_url, readonly=True))

    @cached_property
    def follower_factory(self) -> sessionmaker[Session]:
        """Sessions of the serve process's mappings follower
        (:class:`broker.mapping.follow.MappingsFollower`), on a connection of its own:
        taking one of the worklist readers' pool every 2 s put C-FINDs on pooled
        connections whose SQLite page cache was cold (one Patient ID at 10,000 steps,
        a findscu process each: 49 -> 85 ms)."""
        return make_session_factory(make_engine(self.settings.database_url, readonly=True,
                                                pool_size=1, max_overflow=0))

    @cached_property
    def profiles(self) -> ProfileSet:
        """The profiles of the mappings directory (MWLB_MAPPINGS_DIR) as they are on
        disk now: what ``mapping deploy`` deploys, and what maps before any version is
        deployed. Processing maps with :attr:`mappings`."""
        profiles = load_profiles(self.settings.mappings_dir)
        log.info("mapping profiles for %s: %s", self.settings.mappings_dir,
                 ", ".join(f"{name} ({path})" for name, path in profiles.files.items()))
        return profiles

    @cached_property
    def mappings(self) -> DeployedMappings:
        """The deployed versions of the profiles this process maps with: the version in
        force read once per transaction (:mod:`broker.mapping.deployed`)."""
        return DeployedMappings(lambda: self.profiles, timezone=self.timezone)

    @property
    def read_options(self) -> ReadOptions:
        """How messages are read, at receipt and at processing alike: with the union of
        the ``charset_aliases`` of the profiles in force (the latest read,
        :meth:`DeployedMappings.latest`) and the reading caps of the settings."""
        deployed = self.mappings.latest()
        cached = self._read_options
        if cached is not None and cached[0] is deployed:
            return cached[1]
        settings = self.settings
        options = ReadOptions(charset_aliases=deployed.profiles.charset_aliases,
                              max_segments=settings.hl7_max_segments,
                              max_repetitions=settings.hl7_max_repetitions,
                              max_components=settings.hl7_max_components)
        self._read_options = (deployed, options)
        return options

    def read(self, raw: bytes) -> Message:
        """Parse a stored or received message with :attr:`read_options`."""
        return parse(raw, self.read_options)

    def map(self, msg: Message, *,
            received_at: datetime | None = None) -> OrderMessage | AdtMessage:
        """Map a parsed message with the profiles last read in force
        (:meth:`DeployedMappings.latest`); ``received_at`` is the message's receipt
        time (None: now). Transactions that map use :attr:`mappings` instead."""
        return self.mappings.latest().map(msg, received_at=received_at)

    def dispose(self, *, close: bool = True) -> None:
        """Drop pooled connections: at shutdown ``close`` them; after a fork
        (``close=False``) only forget the parent's without touching its sockets."""
        engines = [self.engine] if "engine" in self.__dict__ else []
        for name in ("reader_factory", "follower_factory"):
            if name in self.__dict__:
                engines.append(self.__dict__[name].kw["bind"])
        for engine in engines:
            engine.dispose(close=close)

