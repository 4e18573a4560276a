"""The ``mwl-broker`` command line (typer): the commands that work on the database
and files. The commands that host the adapters (``serve``, ``web``) are added by
:mod:`broker.main`, and ``worker`` by :mod:`workers.cli`, the installed entry point.

Every command takes ``--config FILE.toml``; settings otherwise come from ``MWLB_*``
environment variables (see ``mwl-broker serve --help``). Failures are said in one line
by :mod:`broker.cli_errors`; ``mwl-broker --debug`` (or ``MWLB_DEBUG=1``) shows the
traceback instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.progress import track
from rich.table import Table
from sqlalchemy import select

from broker.cli_common import (
    ConfigOption,
    client_host,
    configure_logging,
    console,
    err_console,
    safe_url,
    session_factory,
    settings_from,
)
from broker.cli_console import register as register_console_commands
from broker.cli_errors import USAGE_ERROR, CommandError, CommandGroup, connection_failure
from broker.cli_mapping import mapping_app
from broker.cli_performed import outbound_app, reconcile_app
from broker.hl7.warnings import from_json

if TYPE_CHECKING:
    from broker.bootstrap import Root

app = typer.Typer(help="Modality worklist and HL7 integration broker.", cls=CommandGroup,
                  no_args_is_help=True, rich_markup_mode=None)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
messages_app = typer.Typer(help="The inbound message store.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(mapping_app, name="mapping")
app.add_typer(messages_app, name="messages")
app.add_typer(reconcile_app, name="reconcile")
app.add_typer(outbound_app, name="outbound")
register_console_commands(app)


def _print_version(wanted: bool) -> None:
    if wanted:
        from importlib.metadata import version

        print(f"mwl-broker {version('mwl-broker')}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[bool, typer.Option(
        "--version", callback=_print_version, is_eager=True,
        help="Print the version and exit.")] = False,
    debug: Annotated[bool, typer.Option(
        "--debug", envvar="MWLB_DEBUG",
        help="Show the traceback of a failure instead of its one-line message.")
    ] = False,
) -> None:
    """Modality worklist and HL7 integration broker."""


@db_app.command("upgrade")
def db_upgrade(config: ConfigOption = None) -> None:
    """Create or migrate the schema to the latest revision."""
    from broker.migrations import upgrade

    settings = settings_from(config)
    upgrade(settings.database_url)
    console.print(f"schema up to date at {safe_url(settings.database_url)}")


@db_app.command("prune")
def db_prune(
    config: ConfigOption = None,
    days: Annotated[float | None, typer.Option(help="Default: MWLB_RETENTION_DAYS.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Count, delete nothing.")] = False,
) -> None:
    """Delete what is past retention (see README, 'Durability'); the sweeper also does
    it hourly when MWLB_RETENTION_DAYS is set."""
    from broker.bootstrap import Role, build
    from broker.db import unit_of_work
    from broker.services.retention import prune

    settings = settings_from(config)
    retention = settings.retention_days if days is None else days
    if retention <= 0:
        raise CommandError("retention is 0 (keep everything): give --days or set "
                           "MWLB_RETENTION_DAYS", USAGE_ERROR)
    with unit_of_work(build(settings, Role.COMMAND).runtime.session_factory) as session:
        counts = prune(session, retention, dry_run=dry_run)
    verb = "would prune" if dry_run else "pruned"
    console.print(f"{verb} (older than {retention:g} days): "
                  + ", ".join(f"{n} {kind}" for kind, n in counts.items()))


@messages_app.command("list")
def messages_list(
    config: ConfigOption = None,
    status: Annotated[str | None, typer.Option(help="received|processed|failed|rejected")] = None,
    warnings: Annotated[bool, typer.Option("--warnings", help="Only messages with warnings.")
                        ] = False,
    limit: Annotated[int, typer.Option(help="Most recent N.")] = 50,
) -> None:
    """List stored messages, newest first (ids, types and outcomes; no patient data)."""
    from broker.models import InboundMessage

    factory = session_factory(config)
    query = select(InboundMessage).order_by(InboundMessage.id.desc()).limit(limit)
    if status:
        query = query.where(InboundMessage.status == status)
    if warnings:
        query = query.where(InboundMessage.warning_count > 0)
    table = Table("id", "received", "type", "MSH-10", "status", "ACK", "warnings", "error")
    with factory() as session:
        for row in session.scalars(query):
            error = f"{row.error_code} {row.error_location or ''} {row.error_text or ''}".strip()
            table.add_row(str(row.id), row.received_at.strftime("%Y-%m-%d %H:%M:%S"),
                          row.message_type, row.control_id or "", row.status,
                          row.ack_code or "", str(row.warning_count or ""),
                          error if row.error_code else "")
    console.print(table)


@messages_app.command("show")
def messages_show(message_id: int, config: ConfigOption = None) -> None:
    """Show one message: raw segments, the ACK sent, and the outcome or error."""
    from broker.models import InboundMessage

    factory = session_factory(config)
    with factory() as session:
        row = session.get(InboundMessage, message_id)
        if row is None:
            raise CommandError(f"no message {message_id}")
        console.print(f"message {row.id}  {row.message_type}  MSH-10 {row.control_id}  "
                      f"from {row.peer}  status {row.status}  attempts {row.attempts}")
        if row.error_code:
            console.print(f"error {row.error_code} at {row.error_location}: {row.error_text}")
        if row.outcome:
            console.print(f"outcome: {row.outcome}")
        for warning in from_json(row.warnings):
            console.print(f"warning {warning}", markup=False)
        console.print("--- message", markup=False)
        print(row.raw.decode("utf-8", "replace").replace("\r", "\n"))
        if row.ack:
            console.print("--- ACK sent", markup=False)
            print(row.ack.decode("utf-8", "replace").replace("\r", "\n"))


@messages_app.command("reprocess")
def messages_reprocess(
    message_ids: Annotated[list[int] | None, typer.Argument(
        help="Message id(s); or select them with --status/--since/--until/--sender.",
        show_default=False)] = None,
    status: Annotated[str | None, typer.Option(
        help="failed|processed: reprocess the messages with this status [failed].",
        show_default=False)] = None,
    since: Annotated[str | None, typer.Option(
        help="Received at or after (ISO 8601; MWLB_TIMEZONE without an offset).")] = None,
    until: Annotated[str | None, typer.Option(help="Received before (ISO 8601).")] = None,
    sender: Annotated[str | None, typer.Option(
        help="APP or APP/FAC: only this sender's messages (MSH-3, MSH-4).")] = None,
    no_wait: Annotated[bool, typer.Option(
        "--no-wait", help="Queue them and exit, without waiting for the outcomes.")] = False,
    config: ConfigOption = None,
) -> None:
    """Apply failed (or processed) messages again with the profiles in force, e.g.
    after fixing a mapping. Given ids: here, in this command, which reports each
    outcome. Given criteria: a replay run (applied in this command in embedded mode, by
    the workers with Celery), with a progress bar until every message has an outcome,
    then a summary: passed, and still failing grouped by error (exit 1 when some
    still fail)."""
    from broker.bootstrap import Role, build

    selecting = any(v is not None for v in (status, since, until, sender))
    if bool(message_ids) == selecting:
        raise CommandError("give message ids, or --status/--since/--until/--sender to "
                           "select them (not both)", USAGE_ERROR)
    configure_logging("WARNING")
    root = build(settings_from(config), Role.COMMAND)
    try:
        if message_ids:
            worst = _reprocess_each(root, message_ids)
        else:
            from broker import cli_replay

            zone = root.runtime.timezone
            wanted = cli_replay.criteria(status, cli_replay.when(since, "--since", zone),
                                         cli_replay.when(until, "--until", zone), sender)
            worst = cli_replay.replay(root.use_cases.mapping, wanted, wait=not no_wait)
    finally:
        root.close()
    raise typer.Exit(worst)


def _reprocess_each(root: Root, message_ids: list[int]) -> int:
    """Reprocess each message here, saying its outcome; 1 if any is not processed."""
    from broker.models import InboundMessage

    factory = root.runtime.session_factory
    worst = 0
    ids = track(message_ids, description="reprocessing", console=err_console,
                transient=True) if len(message_ids) > 1 else message_ids
    for pk in ids:
        if not root.use_cases.reprocess([pk])[0]["queued"]:
            err_console.print(f"message {pk}: not found or rejected at the door")
            worst = 1
            continue
        with factory() as session:
            row = session.get(InboundMessage, pk)
            assert row is not None
            if row.status == "processed":
                console.print(f"message {pk}: processed ({row.outcome})")
            else:
                err_console.print(f"message {pk}: {row.status} {row.error_code} "
                                  f"{row.error_location}: {row.error_text}")
                worst = 1
    return worst


def _messages_in(path: Path) -> list[bytes]:
    """The messages of a file for ``send-hl7``; none is an error."""
    from broker.hl7.client import read_hl7_file

    try:
        messages = read_hl7_file(path)
    except OSError as exc:
        raise CommandError(f"cannot read {path}: {(exc.strerror or str(exc)).lower()}"
                           ) from exc
    if not messages:
        raise CommandError(f"{path}: no HL7 message in the file (a message starts with MSH)")
    return messages


@app.command("send-hl7")
def send_hl7(
    files: Annotated[list[Path], typer.Argument(help="HL7 file(s), one or more messages each.",
                                                exists=True, dir_okay=False)],
    host: Annotated[str | None, typer.Option(
        help="Broker host. Default: MWLB_MLLP_HOST, or localhost when it binds every "
             "address.")] = None,
    port: Annotated[int | None, typer.Option(help="MLLP port. Default: MWLB_MLLP_PORT.")
                    ] = None,
    timeout: Annotated[float, typer.Option(
        help="Seconds to wait for the connection and for each ACK.")] = 30.0,
    config: ConfigOption = None,
) -> None:
    """Send HL7 messages over MLLP on one connection and print each ACK (exit 1 unless
    all are AA). MLLP: HL7 Implementation Guide, Appendix C."""
    from broker.hl7.client import MLLPClient

    settings = settings_from(config)
    host = host or client_host(settings.mllp_host)
    if port is None:
        port = settings.mllp_port
        if port <= 0:
            raise CommandError(f"MWLB_MLLP_PORT is {port} (no fixed port to send to): "
                               "give --port", USAGE_ERROR)
    batches = [(path, _messages_in(path)) for path in files]
    client = MLLPClient(host, port, timeout=timeout)
    try:
        client.connect()
    except OSError as exc:
        raise CommandError(connection_failure(host, port, exc, timeout)) from exc
    all_aa = True
    try:
        for path, messages in batches:
            for number, message in enumerate(messages, start=1):
                where = f"message {number} of {path.name}"
                try:
                    ack = client.send(message)
                except TimeoutError as exc:
                    raise CommandError(f"no ACK from {host}:{port} within {timeout:g} s "
                                       f"for {where}") from exc
                except OSError as exc:
                    raise CommandError(f"{host}:{port} closed the connection before the "
                                       f"ACK of {where}") from exc
                text = ack.decode("utf-8", "replace").replace("\r", "\n").strip()
                print(text + "\n", flush=True)
                all_aa &= "\rMSA|AA|" in "\r" + ack.decode("latin-1").replace("\n", "\r")
    finally:
        client.close()
    if not all_aa:
        raise typer.Exit(1)
