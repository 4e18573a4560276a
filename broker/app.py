"""``mwl-broker serve``: the MLLP listener, the DICOM server and the web console in one
process, plus in-process processing when no Celery broker is configured (the embedded
default)."""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading

from broker.application import UseCases
from broker.audit import hooks as audit
from broker.audit.syslog import AuditExporter, SyslogSender
from broker.bootstrap import Role, Root, build
from broker.config import Settings
from broker.db import unit_of_work
from broker.dicom.server import DicomServer
from broker.dispatch import Dispatcher
from broker.hl7.listener import HL7Receiver
from broker.hl7.mllp import MLLPServer
from broker.mapping.follow import MappingsFollower, start_deployed
from broker.mapping.versions import VersionInfo
from broker.migrations import upgrade
from broker.presence import Presence
from broker.runtime import Runtime
from broker.security.access import check_startup
from broker.security.first_admin import ensure_first_admin
from broker.security.tls import server_context
from broker.services.inbound import Inbox
from broker.services.sweeper import Sweeper
from broker.web.server import WebServer

log = logging.getLogger(__name__)


class BrokerApp:
    """Owns the servers of one broker process; ``start()`` returns once they listen.
    Its objects come from the process's composition root (:mod:`broker.bootstrap`),
    built by ``start()``."""

    def __init__(self, settings: Settings, *, migrate: bool = True,
                 sweep_interval: float | None = None) -> None:
        for warning in check_startup(settings):  # raises when a deployment is left open
            log.warning("access control: %s", warning)
        self.settings = settings
        self.migrate = migrate
        self.sweep_interval = sweep_interval or settings.sweep_interval
        self.root: Root
        self.runtime: Runtime
        self.use_cases: UseCases
        self._loop = asyncio.new_event_loop()
        self._loop_thread = threading.Thread(target=self._loop.run_forever,
                                             name="mwl-mllp-loop", daemon=True)
        self.dispatcher: Dispatcher
        self.audit_exporter: AuditExporter | None = None
        self.mllp: MLLPServer | None = None
        self.mllp_tls: MLLPServer | None = None
        self.dicom: DicomServer

    def start(self) -> None:
        settings = self.settings
        if self.migrate:
            upgrade(settings.database_url)
        self.root = build(settings, Role.SERVE)
        self.runtime = self.root.runtime
        factory = self.runtime.session_factory
        # The deployed profiles (the directory as version 1 on a first start; a broken
        # first directory stops the start, loudly), then followed while serving.
        start_deployed(factory, self.runtime.mappings, settings.mappings_dir)
        root = self.root

        def deploy(sources: dict[str, str], user: str, comment: str) -> VersionInfo:
            return root.use_cases.mapping.deploy(sources, directory=settings.mappings_dir,
                                                 user=user, comment=comment).info

        self.mappings_follower = MappingsFollower(
            self.runtime.follower_factory, self.runtime.mappings,
            settings.mappings_dir, deploy=deploy, watch=settings.mappings_watch)
        self.mappings_follower.start()
        ensure_first_admin(factory, settings)
        self.use_cases = self.root.use_cases
        self.dispatcher = self.use_cases.dispatcher
        self.store_writer = self.root.message_store()
        self.runtime.store_health = self.store_writer.health
        inbox = Inbox(self.store_writer, settings.ack_mode,
                      accept_any_version=settings.accept_unknown_hl7_version,
                      allowed_senders=settings.hl7_allowed_senders,
                      versions=settings.hl7_versions,
                      read_options=lambda: self.runtime.read_options)
        self.receiver = HL7Receiver(self.use_cases.reception(
            inbox, ack_timeout=settings.application_ack_timeout,
            failpoint=settings.failpoint))
        # The modality profiles of the version in force, read at each worklist query.
        self.dicom = DicomServer(settings, self.runtime.reader_factory, self.use_cases,
                                 writer=factory, profiles=self.runtime.mappings.current)
        tls = server_context(settings)
        self.dicom.start(tls)
        # Plaintext MLLP unless switched off (-1) or TLS only (HL7 MLLP over TLS, PS3.15 B.1).
        if settings.mllp_port >= 0 and not settings.tls_only:
            self.mllp = self._mllp_server(settings.mllp_port, None)
        if tls is not None and settings.mllp_tls_port >= 0:
            self.mllp_tls = self._mllp_server(settings.mllp_tls_port, tls)
        self._loop_thread.start()
        for server in (self.mllp, self.mllp_tls):
            if server is not None:
                asyncio.run_coroutine_threadsafe(server.start(), self._loop).result(30)
        self.sweeper = Sweeper(factory, self.use_cases.sweep, interval=self.sweep_interval,
                               grace=settings.sweep_grace,
                               retention_days=settings.retention_days)
        self.sweeper.start()
        self.presence: Presence | None = self.root.start_presence(
            "serve", on_recovery=self.sweeper.wake)
        self.web: WebServer | None = None
        if settings.http_port >= 0:
            self.web = WebServer(self.runtime, self.use_cases)
            self.web.start()
        with unit_of_work(factory) as session:
            audit.application(session, settings, start=True)
        if settings.audit_syslog_url:
            ca = str(settings.audit_syslog_ca_file) if settings.audit_syslog_ca_file else None
            self.audit_exporter = AuditExporter(
                factory, SyslogSender(settings.audit_syslog_url, ca_file=ca))
            self.audit_exporter.start()
        log.info("broker started: %s (%s mode)", ", ".join(
            f"{name.replace('_', ' ').upper()} port {'off' if port is None else port}"
            for name, port in self.ports().items()),
            "embedded" if settings.embedded else "celery")

    def _mllp_server(self, port: int, tls: ssl.SSLContext | None) -> MLLPServer:
        settings = self.settings
        return MLLPServer(
            self.receiver,
            host=settings.mllp_host,
            port=port,
            max_frame_bytes=settings.mllp_max_frame_bytes,
            idle_timeout=settings.mllp_idle_timeout,
            frame_timeout=settings.mllp_frame_timeout,
            ssl=tls,
            max_connections_per_ip=settings.mllp_max_connections_per_ip,
        )

    def ports(self) -> dict[str, int | None]:
        """Each listener's bound port, None for one that is off."""
        return {"mllp": self.mllp.port if self.mllp is not None else None,
                "dicom": self.dicom.port,
                "mllp_tls": self.mllp_tls.port if self.mllp_tls is not None else None,
                "dicom_tls": self.dicom.tls_port}

    @property
    def mllp_port(self) -> int:
        """The plaintext MLLP port (an error when it is off, see :meth:`ports`)."""
        if self.mllp is None:
            raise RuntimeError("the plaintext MLLP listener is off")
        return self.mllp.port

    @property
    def dicom_port(self) -> int:
        """The plaintext DICOM port (an error when it is off, see :meth:`ports`)."""
        if self.dicom.port is None:
            raise RuntimeError("the plaintext DICOM listener is off")
        return self.dicom.port

    @property
    def http_port(self) -> int | None:
        return self.web.port if self.web is not None else None

    def stop(self) -> None:
        try:
            with unit_of_work(self.runtime.session_factory) as session:
                audit.application(session, self.settings, start=False)
        except Exception as exc:  # the database may be down: still stop
            log.error("application stop not audited: %s", type(exc).__name__)
        if self.audit_exporter is not None:
            self.audit_exporter.stop()
        if self.web is not None:
            self.web.stop()
        self.sweeper.stop()
        self.mappings_follower.stop()
        for server in (self.mllp, self.mllp_tls):
            if server is not None:
                asyncio.run_coroutine_threadsafe(server.close(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._loop_thread.join(10)
        self._loop.close()
        self.receiver.close()
        self.store_writer.close()
        self.dispatcher.close()
        if self.presence is not None:  # after the last publish: a goodbye, not a crash
            self.presence.stop()
        self.dicom.stop()
        self.runtime.dispose()
        log.info("broker stopped")
