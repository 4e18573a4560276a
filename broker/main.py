"""The ``mwl-broker`` process commands that host the adapters: ``serve`` (the MLLP
listener, the DICOM server, the sweeper and the console in one process,
:mod:`broker.app`) and ``web`` (the console alone), added to the command line of
:mod:`broker.cli`. Kept apart so that the command line never imports another adapter;
:mod:`workers.cli` adds ``worker`` and is the installed entry point."""

from __future__ import annotations

import signal
import threading

from broker.cli import app
from broker.cli_common import (
    ConfigOption,
    configure_logging,
    safe_url,
    settings_from,
    settings_help,
)
from broker.cli_errors import starting
from broker.config import Settings

__all__ = ["app"]


@app.command(epilog=settings_help())
def serve(config: ConfigOption = None) -> None:
    """Run the MLLP listener and the DICOM worklist server (and, with no Celery broker
    configured, process messages in-process on the embedded database)."""
    from broker.app import BrokerApp

    settings = settings_from(config)
    configure_logging(json_lines=settings.log_format == "json")
    broker = BrokerApp(settings)
    with starting():
        broker.start()
    ports = broker.ports()
    _print_banner(settings, ports["mllp"], ports["dicom"], broker.http_port,
                  ports["mllp_tls"], ports["dicom_tls"])
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    broker.stop()


def _print_banner(settings: Settings, mllp_port: int | None, dicom_port: int | None,
                  http_port: int | None, mllp_tls_port: int | None = None,
                  dicom_tls_port: int | None = None) -> None:
    """The start banner; a listener that is off (port -1, or plaintext under
    MWLB_TLS_ONLY) shows as "off" and its sample command is left out."""
    mode = "embedded (in-process tasks)" if settings.embedded else "Celery workers"
    sample = "tests/data/samples/05_orm_o01_nw_two_sps.hl7"
    web = (f"  web console      http://localhost:{http_port}/  (first admin: "
           f".venv/bin/mwl-broker users add admin --role admin)\n" if http_port else "")

    def where(host: str, port: int | None) -> str:
        return f"{host}:{port}" if port is not None else "off"

    tls = "".join(f"  {name:<17}{where(host, port)}\n" for name, host, port in (
        ("HL7 MLLP TLS", settings.mllp_host, mllp_tls_port),
        ("DICOM TLS", settings.dicom_host, dicom_tls_port)) if port is not None)
    hints = ""
    if mllp_port is not None:
        hints += (f"Send a first order:\n"
                  f"  .venv/bin/mwl-broker send-hl7 --port {mllp_port} {sample}\n")
    if dicom_port is not None:
        hints += (f"Query the worklist like a modality:\n"
                  f"  findscu -W -aec {settings.ae_title}"
                  f" -k 'ScheduledProcedureStepSequence[0].Modality=DX'"
                  f" -k PatientName -k PatientID -k AccessionNumber"
                  f" -k 'ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartTime'"
                  f" localhost {dicom_port}\n")
    print(
        f"mwl-broker listening\n"
        f"  HL7 MLLP         {where(settings.mllp_host, mllp_port)}\n"
        f"  DICOM            {where(settings.dicom_host, dicom_port)}  AE title "
        f"{settings.ae_title} (MWL, MPPS, C-STORE, IAN, UPS, echo)\n"
        f"{tls}"
        f"  database         {safe_url(settings.database_url)}   processing: {mode}\n"
        f"{web}"
        f"{hints}",
        flush=True,
    )


@app.command("web")
def web(config: ConfigOption = None) -> None:
    """Run the web console and JSON API alone (MWLB_HTTP_HOST / MWLB_HTTP_PORT)."""
    from broker.bootstrap import Role, build
    from broker.mapping.follow import start_deployed
    from broker.migrations import upgrade
    from broker.security.first_admin import ensure_first_admin
    from broker.web.server import WebServer

    settings = settings_from(config)
    configure_logging(json_lines=settings.log_format == "json")
    upgrade(settings.database_url)
    root = build(settings, Role.CONSOLE)
    start_deployed(root.runtime.session_factory, root.runtime.mappings,
                   settings.mappings_dir)
    ensure_first_admin(root.runtime.session_factory, settings)
    server = WebServer(root.runtime, root.use_cases)
    with starting():
        server.start()
    print(f"mwl-broker console on http://localhost:{server.port}/", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    server.stop()
    root.close()
