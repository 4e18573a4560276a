"""The composition root: the one place a process's objects are built and wired.

settings -> :class:`~broker.runtime.Runtime` (engines, session factories, profiles,
reader, mapper) -> dispatcher -> :class:`~broker.application.UseCases`. Each process
builds one :class:`Root` (``serve``, a Celery worker at its start, ``web``, each
command) with :func:`build`. Whether jobs run in this process (embedded: no Celery
broker configured) or go to Celery workers (distributed) is decided here, and only
here, from the settings and the process's :class:`Role`; so is whether the MLLP
listener's message store applies each message in the commit that stores it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from functools import cached_property

from broker.application import UseCases
from broker.config import AckMode, Settings
from broker.dispatch import (
    BackgroundDispatcher,
    CeleryDispatcher,
    CommandDispatcher,
    DeferredDispatcher,
    Dispatcher,
    InProcessDispatcher,
    JobRunner,
    celery_publisher,
)
from broker.outage import Outage
from broker.presence import Presence
from broker.runtime import Runtime
from broker.services.apply_at_receipt import ApplyAtReceipt
from broker.services.message_store import MessageStoreWriter

log = logging.getLogger(__name__)


class Role(Enum):
    """What the process is, which decides where its jobs go."""

    # ``mwl-broker serve``: jobs run in-process (embedded), or are published from a
    # thread of their own, coalesced (distributed).
    SERVE = "serve"
    # A Celery worker: follow-up jobs are published to the workers.
    WORKER = "worker"
    # ``mwl-broker web`` alone: jobs are published (distributed), or left committed for
    # the running broker's sweeper (embedded).
    CONSOLE = "console"
    # A one-shot command: an inbound message is applied in the command itself (it
    # reports the outcome); other jobs as for CONSOLE.
    COMMAND = "command"


@dataclass
class Root:
    """One process's object graph; the use cases (and their dispatcher) are built on
    first use, so a command that only reads never starts one."""

    settings: Settings
    role: Role
    runtime: Runtime = field(init=False)

    def __post_init__(self) -> None:
        self.runtime = Runtime(self.settings, pre_ping=self.role is not Role.WORKER)

    @cached_property
    def use_cases(self) -> UseCases:
        return UseCases(self.runtime, self._dispatcher)

    @property
    def dispatcher(self) -> Dispatcher:
        return self.use_cases.dispatcher

    def _dispatcher(self, runner: JobRunner, health: Outage) -> Dispatcher:
        settings, role = self.settings, self.role
        if settings.embedded:
            if role is Role.SERVE:
                return InProcessDispatcher(runner, health)
            later: Dispatcher = DeferredDispatcher()
        else:
            publisher = CeleryDispatcher(celery_publisher(settings),
                                         self.runtime.session_factory)
            if role is Role.SERVE:
                return BackgroundDispatcher(publisher)
            later = publisher
        if role is Role.COMMAND:
            return CommandDispatcher(runner, health, later)
        return later

    def message_store(self) -> MessageStoreWriter:
        """The MLLP listener's group-commit writer. In embedded mode with application
        ACKs it also applies each message in the commit that stores it, so the ACK
        carries the outcome after one commit (:mod:`broker.services.apply_at_receipt`);
        otherwise it stores, and the dispatcher hands the message to the processor."""
        runtime, settings = self.runtime, self.settings
        apply = None
        if settings.embedded and settings.ack_mode is AckMode.APPLICATION:
            apply = ApplyAtReceipt(runtime.mappings, read=runtime.read)
        return MessageStoreWriter(runtime.engine, apply)

    def start_presence(self, name: str,
                       on_recovery: Callable[[str], None] | None = None) -> Presence | None:
        """Distributed mode: announce this process in Redis (see
        :mod:`broker.presence`) and call ``on_recovery`` (the sweeper's wake) when
        queued work was lost, publishing included. Embedded mode: None."""
        if self.settings.embedded:
            return None
        dispatcher = self.dispatcher
        if isinstance(dispatcher, BackgroundDispatcher) and on_recovery is not None:
            dispatcher.on_recovered = on_recovery
        presence = Presence(self.settings.celery_broker_url, name, on_recovery=on_recovery)
        presence.start()
        return presence

    def close(self) -> None:
        """Flush the dispatcher (when one was built) and drop pooled connections."""
        if "use_cases" in self.__dict__:
            self.dispatcher.close()
        self.runtime.dispose()


def build(settings: Settings, role: Role) -> Root:
    """The composition root of a process in ``role``."""
    return Root(settings, role)
