"""``mwl-broker reconcile`` and ``mwl-broker outbound``: the reconciliation inbox and the
outbox to the EHR, for the integration engineer.

Listings show ids, accessions and states, never patient names (they are on screen in
``reconcile show`` only, which a person asks for). A link or resend commits its rows;
delivery then happens in the broker: published to the workers at once in Celery mode,
or picked up by the running broker's sweeper (MWLB_SWEEP_INTERVAL) in embedded mode.
"""

from __future__ import annotations

import getpass
from typing import Annotated

import typer
from rich.table import Table
from sqlalchemy import select

from broker.bootstrap import Role, Root, build
from broker.cli_common import ConfigOption, console, err_console, settings_from
from broker.cli_errors import CommandError

reconcile_app = typer.Typer(help="Performed work that needs a person: the reconciliation "
                            "inbox.", no_args_is_help=True)
outbound_app = typer.Typer(help="Order status messages to the EHR (the outbox).",
                           no_args_is_help=True)


def _root(config: ConfigOption) -> Root:
    return build(settings_from(config), Role.COMMAND)


def _queued(root: Root) -> None:
    """Say where the delivery the use case started goes (wording only: the root's
    dispatcher published it, or left it to the running broker)."""
    settings = root.settings
    if settings.embedded:
        console.print(f"queued; the running broker sends it within "
                      f"{settings.sweep_interval:.0f} s")
    else:
        console.print("queued; delivery published to the workers")


@reconcile_app.command("list")
def reconcile_list(
    config: ConfigOption = None,
    state: Annotated[str, typer.Option(help="open|linked|dismissed|all")] = "open",
    limit: Annotated[int, typer.Option(help="Most recent N.")] = 50,
) -> None:
    """Reconciliation items with their best candidate."""
    from broker.models import ReconciliationItem
    runtime = _root(config).runtime
    query = select(ReconciliationItem).order_by(ReconciliationItem.id.desc()).limit(limit)
    if state != "all":
        query = query.where(ReconciliationItem.state == state)
    table = Table("id", "created", "kind", "state", "accession", "study", "best candidate")
    with runtime.session_factory() as session:
        for item in session.scalars(query):
            best = item.candidates[0] if item.candidates else None
            table.add_row(str(item.id), item.created_at.strftime("%Y-%m-%d %H:%M"), item.kind,
                          item.state, item.accession_number, item.study_instance_uid[-24:],
                          f"{best['accession']} ({best['score']})" if best else "-")
    console.print(table)


@reconcile_app.command("show")
def reconcile_show(item_id: int, config: ConfigOption = None) -> None:
    """One item: what was observed and the ranked candidates with their reasons."""
    from broker.models import ReconciliationItem
    runtime = _root(config).runtime
    with runtime.session_factory() as session:
        item = session.get(ReconciliationItem, item_id)
        if item is None:
            raise CommandError(f"no reconciliation item {item_id}")
        console.print(f"item {item.id}  {item.kind}  {item.state}  {item.detail}")
        console.print(f"observed: patient id {item.patient_id!r}, name {item.patient_name!r}, "
                      f"birth date {item.birth_date!r}, modality {item.modality!r}, station "
                      f"{item.station_ae_title!r}, at {item.performed_datetime!r}, "
                      f"accession {item.accession_number!r}", markup=False)
        table = Table("rank", "accession", "procedure", "score", "why")
        for n, cand in enumerate(item.candidates, start=1):
            table.add_row(str(n), str(cand["accession"]), f"#{cand['procedure_pk']}",
                          str(cand["score"]), ", ".join(cand["reasons"]))
        console.print(table)


@reconcile_app.command("link")
def reconcile_link(
    item_id: int,
    order: Annotated[str, typer.Argument(help="Accession number, or #id of a requested "
                                               "procedure (as `reconcile show` lists).")],
    config: ConfigOption = None,
) -> None:
    """Tie the item to an order: the same status changes and messages as a direct match."""
    from broker.application import ResolveError

    root = _root(config)
    try:
        outcome = root.use_cases.link_item(item_id, order, getpass.getuser())
    except ResolveError as exc:
        raise CommandError(str(exc)) from exc
    console.print(outcome)
    _queued(root)
    root.close()


@reconcile_app.command("dismiss")
def reconcile_dismiss(item_id: int, config: ConfigOption = None) -> None:
    """Close an item without linking it (a test acquisition, say)."""
    from broker.application import ResolveError

    root = _root(config)
    try:
        console.print(root.use_cases.dismiss_item(item_id, getpass.getuser()))
    except ResolveError as exc:
        raise CommandError(str(exc)) from exc


@outbound_app.command("list")
def outbound_list(
    config: ConfigOption = None,
    status: Annotated[str | None, typer.Option(help="pending|sent|failed")] = None,
    limit: Annotated[int, typer.Option(help="Most recent N.")] = 50,
) -> None:
    """Outbox messages, newest first: destination, order, status, attempts, last error."""
    from broker.models import OutboundMessage
    runtime = _root(config).runtime
    query = select(OutboundMessage).order_by(OutboundMessage.id.desc()).limit(limit)
    if status:
        query = query.where(OutboundMessage.status == status)
    table = Table("id", "destination", "seq", "MSH-10", "accession", "ORC-5", "status",
                  "attempts", "ACK", "last error")
    with runtime.session_factory() as session:
        for row in session.scalars(query):
            table.add_row(str(row.id), row.destination, str(row.sequence), row.control_id,
                          row.accession_number, row.trigger, row.status, str(row.attempts),
                          row.ack_code or "", row.last_error)
    console.print(table)


@outbound_app.command("resend")
def outbound_resend(
    message_ids: Annotated[list[int], typer.Argument(help="Outbox message id(s).")],
    config: ConfigOption = None,
) -> None:
    """Send messages again with their original MSH-10 (failed or already sent ones)."""
    root = _root(config)
    found = root.use_cases.resend_outbound(message_ids)
    missing = [pk for pk in message_ids if pk not in found]
    for pk in missing:
        err_console.print(f"no outbound message {pk}")
    if found:
        _queued(root)
    root.close()
    if missing:
        raise typer.Exit(1)
