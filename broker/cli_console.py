"""``mwl-broker users``, ``tokens``, ``echo`` and ``worklist query``. User
and token administration here is audited like the console's (DICOM PS3.15 A.5.3.13
Security Alert), with ``cli:<login name>`` as the acting user."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer
from rich.table import Table

from broker.cli_common import (
    ConfigOption,
    client_host,
    console,
    settings_from,
)
from broker.cli_errors import USAGE_ERROR, CommandError
from broker.models import Role

users_app = typer.Typer(help="Console users (roles viewer, operator, admin; performer: "
                             "the UPS-RS Worklist Service, as its bound AE titles, and "
                             "API tokens only).",
                        no_args_is_help=True)
tokens_app = typer.Typer(help="Console API tokens: list and revoke.", no_args_is_help=True)
worklist_app = typer.Typer(help="Ask a worklist like a modality does.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(users_app, name="users")
    app.add_typer(tokens_app, name="tokens")
    app.add_typer(worklist_app, name="worklist")
    app.command("echo")(echo)


@users_app.command("add")
def users_add(
    name: str,
    role: Annotated[Role, typer.Option(help="viewer | operator | admin | performer")] = Role.VIEWER,
    password_stdin: Annotated[bool, typer.Option(
        "--password-stdin", help="Read the password from standard input.")] = False,
    ae_title: Annotated[list[str] | None, typer.Option(
        "--ae-title", help="An AE title the performer acts as on the Worklist Service "
                           "(repeat for more; see `users ae-titles`).")] = None,
    config: ConfigOption = None,
) -> None:
    """Create a user. There is no default account: create the first admin here. The
    password needs MWLB_PASSWORD_MIN_LENGTH characters (12) and may not be a common
    password, repetitive or sequential, or contain the user name."""
    from broker.bootstrap import Role, build
    from broker.db import unit_of_work
    from broker.migrations import upgrade
    from broker.security.accounts import add_user, set_ae_titles

    settings = settings_from(config)
    upgrade(settings.database_url)
    if password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    try:
        with unit_of_work(build(settings, Role.COMMAND).runtime.session_factory) as session:
            add_user(session, settings, _actor(), "", name, password, role)
            if ae_title:
                set_ae_titles(session, _actor(), "", name, ae_title)
    except ValueError as exc:
        raise CommandError(str(exc)) from exc
    console.print(f"user {name} created with role {role.value}")


@users_app.command("list")
def users_list(config: ConfigOption = None) -> None:
    from sqlalchemy import select

    from broker.bootstrap import Role, build
    from broker.models import User

    table = Table("name", "role", "AE titles", "created", "last login", "disabled")
    with build(settings_from(config), Role.COMMAND).runtime.session_factory() as session:
        for user in session.scalars(select(User).order_by(User.name)):
            table.add_row(user.name, user.role, ", ".join(user.ae_titles or []) or "-",
                          user.created_at.strftime("%Y-%m-%d"),
                          user.last_login_at.strftime("%Y-%m-%d %H:%M")
                          if user.last_login_at else "-", "yes" if user.disabled else "")
    console.print(table)


def _actor() -> str:
    import getpass

    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


def _administer(config: Any, what: Any) -> Any:
    """Run ``what(session, actor)`` in one transaction; a refusal exits 1 with its
    reason."""
    from broker.bootstrap import Role, build
    from broker.db import unit_of_work
    from broker.migrations import upgrade
    from broker.security.accounts import NotFound

    settings = settings_from(config)
    upgrade(settings.database_url)
    try:
        with unit_of_work(build(settings, Role.COMMAND).runtime.session_factory) as session:
            return what(session, _actor())
    except (NotFound, ValueError) as exc:
        raise CommandError(str(exc)) from exc


@users_app.command("disable")
def users_disable(name: str, config: ConfigOption = None) -> None:
    """Disable a user: its console sessions end and its API tokens stop working now."""
    from broker.security.accounts import set_disabled

    _administer(config, lambda s, actor: set_disabled(s, actor, "", name, True))
    console.print(f"user {name} disabled")


@users_app.command("enable")
def users_enable(name: str, config: ConfigOption = None) -> None:
    """Enable a disabled user again."""
    from broker.security.accounts import set_disabled

    _administer(config, lambda s, actor: set_disabled(s, actor, "", name, False))
    console.print(f"user {name} enabled")


@users_app.command("delete")
def users_delete(name: str, config: ConfigOption = None) -> None:
    """Delete a user with its sessions and API tokens (the audit trail keeps the name)."""
    from broker.security.accounts import delete_user

    _administer(config, lambda s, actor: delete_user(s, actor, "", name))
    console.print(f"user {name} deleted")


@users_app.command("role")
def users_role(
    name: str,
    role: Annotated[Role, typer.Argument(help="viewer | operator | admin | performer")],
    config: ConfigOption = None,
) -> None:
    """Give a user another role (the last enabled admin keeps theirs)."""
    from broker.security.accounts import set_role

    _administer(config, lambda s, actor: set_role(s, actor, "", name, role))
    console.print(f"user {name} has role {role.value}")


@users_app.command("ae-titles")
def users_ae_titles(
    name: str,
    ae_titles: Annotated[list[str] | None, typer.Argument(
        help="The AE titles (commas separate them too); none with --none.")] = None,
    none: Annotated[bool, typer.Option("--none", help="Unbind every AE title.")] = False,
    config: ConfigOption = None,
) -> None:
    """Bind a performer to the AE titles it acts as on the Worklist Service (UPS-RS):
    only as those may it open an event channel, subscribe and unsubscribe, and without
    one it may not claim workitems (DICOM PS3.18 11; PS3.4 CC.2). Replaces the ones
    bound before."""
    from broker.security.accounts import set_ae_titles

    if bool(ae_titles) == none:
        raise CommandError("give the AE titles, or --none to unbind them all", USAGE_ERROR)
    bound = _administer(config, lambda s, actor: list(set_ae_titles(
        s, actor, "", name, ae_titles or []).ae_titles))
    titles = ", ".join(bound) if bound else "no AE title"
    console.print(f"user {name} acts as {titles}")


@tokens_app.command("list")
def tokens_list(config: ConfigOption = None) -> None:
    """API tokens of all users (never their values)."""
    from broker.security.accounts import list_tokens

    rows = _administer(config, lambda s, actor: list_tokens(s))
    table = Table("id", "name", "user", "created", "last used", "revoked")
    for t in rows:
        table.add_row(str(t["id"]), t["name"], t["user"], t["created_at"],
                      t["last_used_at"] or "-", t["revoked_at"])
    console.print(table)


@tokens_app.command("revoke")
def tokens_revoke(token_id: int, config: ConfigOption = None) -> None:
    """Revoke an API token (by its id from `tokens list`): refused with 401 from now on."""
    from broker.security.accounts import revoke_token

    _administer(config, lambda s, actor: revoke_token(s, actor, "", token_id))
    console.print(f"API token {token_id} revoked")


HostOption = Annotated[str | None, typer.Option(
    help="DICOM host. Default: MWLB_DICOM_HOST, or localhost when it binds every address.")]
PortOption = Annotated[int | None, typer.Option(help="Default: MWLB_DICOM_PORT.")]
TimeoutOption = Annotated[float, typer.Option(
    help="Seconds to wait for the connection and for each answer.")]


def _peer(host: str | None, port: int | None, config: Any) -> tuple[str, int, str]:
    """Host, port and AE title of the broker a DICOM command talks to: the options,
    else the settings."""
    settings = settings_from(config)
    if port is None:
        port = settings.dicom_port
        if port <= 0:
            raise CommandError(f"MWLB_DICOM_PORT is {port} (no fixed port to call): give "
                               "--port", USAGE_ERROR)
    return host or client_host(settings.dicom_host), port, settings.ae_title


def echo(
    host: HostOption = None,
    port: PortOption = None,
    aec: Annotated[str | None, typer.Option(help="Called AE title (default MWLB_AE_TITLE).")]
    = None,
    aet: Annotated[str, typer.Option(help="Our (calling) AE title.")] = "MWLB_ECHO",
    timeout: TimeoutOption = 10.0,
    config: ConfigOption = None,
) -> None:
    """C-ECHO (DICOM Verification, PS3.4 Annex A): is the AE there and does it accept
    us? A refusal says why (nothing listening, or the A-ASSOCIATE-RJ reason)."""
    from pynetdicom import AE

    from broker.cli_dicom import associate

    host, port_, title = _peer(host, port, config)
    called = aec or title
    ae = AE(ae_title=aet)
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = associate(ae, host, port_, called, timeout)
    try:
        status = assoc.send_c_echo()
    finally:
        assoc.release()
    code = getattr(status, "Status", None)
    if code is None:
        raise CommandError(f"no C-ECHO response from {called} at {host}:{port_}")
    if code != 0x0000:
        raise CommandError(f"C-ECHO {called} at {host}:{port_}: status 0x{code:04X}")
    console.print(f"C-ECHO {called} at {host}:{port_}: success")


@worklist_app.command("query")
def worklist_query(
    station: Annotated[str, typer.Option(help="Scheduled Station AE Title key.")] = "",
    date: Annotated[str, typer.Option(
        help="SPS Start Date: YYYY-MM-DD or YYYYMMDD, or a range FROM-TO (FROM/TO, "
             "FROM..TO; either end may be left out).")] = "",
    modality: Annotated[str, typer.Option(help="Modality key.")] = "",
    patient_id: Annotated[str, typer.Option(help="Patient ID key.")] = "",
    accession: Annotated[str, typer.Option(help="Accession Number key.")] = "",
    host: HostOption = None,
    port: PortOption = None,
    aet: Annotated[str, typer.Option(help="Our (calling) AE title.")] = "MWLB_QUERY",
    timeout: TimeoutOption = 30.0,
    config: ConfigOption = None,
) -> None:
    """Modality Worklist C-FIND (PS3.4 K.4) with readable output (like `findscu -W`,
    but friendly)."""
    from pydicom.dataset import Dataset
    from pynetdicom import AE

    from broker.cli_dicom import associate, sps_start_date

    start_date = sps_start_date(date)
    host, port_, title = _peer(host, port, config)
    ds = Dataset()
    for keyword, value in (("PatientName", ""), ("PatientID", patient_id),
                           ("AccessionNumber", accession), ("RequestedProcedureID", ""),
                           ("StudyInstanceUID", "")):
        setattr(ds, keyword, value)
    item = Dataset()
    for keyword, value in (("ScheduledStationAETitle", station),
                           ("ScheduledProcedureStepStartDate", start_date),
                           ("ScheduledProcedureStepStartTime", ""), ("Modality", modality),
                           ("ScheduledProcedureStepID", ""),
                           ("ScheduledProcedureStepDescription", ""),
                           ("ScheduledProcedureStepStatus", "")):
        setattr(item, keyword, value)
    ds.ScheduledProcedureStepSequence = [item]
    ae = AE(ae_title=aet)
    ae.add_requested_context("1.2.840.10008.5.1.4.31")
    assoc = associate(ae, host, port_, title, timeout)
    table = Table("start", "SPS ID", "modality", "station", "patient", "patient ID",
                  "accession", "description", "status")
    final: int | None = None
    try:
        for status, found in assoc.send_c_find(ds, "1.2.840.10008.5.1.4.31"):
            code = getattr(status, "Status", None)
            if code is None:
                raise CommandError(f"no C-FIND response from {title} at {host}:{port_} "
                                   f"within {timeout:g} s (or the association was aborted)")
            if found is not None and code in (0xFF00, 0xFF01):
                step = found.ScheduledProcedureStepSequence[0]
                table.add_row(f"{step.get('ScheduledProcedureStepStartDate', '')} "
                              f"{step.get('ScheduledProcedureStepStartTime', '')}",
                              str(step.get("ScheduledProcedureStepID", "")),
                              str(step.get("Modality", "")),
                              str(step.get("ScheduledStationAETitle", "")),
                              str(found.get("PatientName", "")), str(found.get("PatientID", "")),
                              str(found.get("AccessionNumber", "")),
                              str(step.get("ScheduledProcedureStepDescription", "")),
                              str(step.get("ScheduledProcedureStepStatus", "")))
            else:
                final = code
    finally:
        assoc.release()
    console.print(table)
    console.print(f"{table.row_count} item(s); final status 0x{(final or 0):04X}")
    if final not in (0x0000, None):
        raise typer.Exit(1)
