"""Process-wide resources: settings, the engines and session factories, the loaded
mapping profiles and the reader/mapper built from them. Built once per process by
the composition root (:mod:`broker.bootstrap`), and nowhere else."""

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
from broker.mapping.apply import map_message
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
    def profiles(self) -> ProfileSet:
        profiles = load_profiles(self.settings.mappings_dir)
        log.info("mapping profiles for %s: %s", self.settings.mappings_dir,
                 ", ".join(f"{name} ({path})" for name, path in profiles.files.items()))
        return profiles

    @cached_property
    def read_options(self) -> ReadOptions:
        """How messages are read, at receipt and at processing alike: with the union of
        the profiles' ``charset_aliases`` and the reading caps of the settings."""
        settings = self.settings
        return ReadOptions(charset_aliases=self.profiles.charset_aliases,
                           max_segments=settings.hl7_max_segments,
                           max_repetitions=settings.hl7_max_repetitions,
                           max_components=settings.hl7_max_components)

    def read(self, raw: bytes) -> Message:
        """Parse a stored or received message with :attr:`read_options`."""
        return parse(raw, self.read_options)

    def map(self, msg: Message, *,
            received_at: datetime | None = None) -> OrderMessage | AdtMessage:
        """Map a parsed message with the loaded profiles (the processor's mapper);
        ``received_at`` is the message's receipt time (None: now)."""
        return map_message(msg, self.profiles, timezone=self.timezone,
                           received_at=received_at)

    def dispose(self, *, close: bool = True) -> None:
        """Drop pooled connections: at shutdown ``close`` them; after a fork
        (``close=False``) only forget the parent's without touching its sockets."""
        engines = [self.engine] if "engine" in self.__dict__ else []
        if "reader_factory" in self.__dict__:
            engines.append(self.reader_factory.kw["bind"])
        for engine in engines:
            engine.dispose(close=close)

