"""``mwl-broker mapping``: the mapping profiles, from the files to the version in force.

* ``check [DIR]`` and ``test FILE...`` work on the mappings directory's files as they
  are (``test`` maps with them, not with the version in force: try before deploying).
* ``deploy [DIR]`` validates the directory (with the packaged profiles) and puts it in
  force in every running process, between messages, with no restart
  (:mod:`broker.mapping.versions`, :mod:`broker.mapping.deployed`); a set that does
  not validate is refused, each problem on a line ``error <file>: <key path>: <what>``
  (standard error, exit 1) and nothing changes. ``--dry-run`` reports what the set
  would change on the last stored messages of each sender and deploys nothing.
* ``versions``, ``diff A [B]``, ``rollback VERSION`` and ``export VERSION DIR`` list,
  compare, put back in force and write out the stored versions.

Exit codes: 0 done, 1 refused or failed, 2 usage.
"""

from __future__ import annotations

import getpass
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer
from rich.table import Table

from broker.cli_common import ConfigOption, console, err_console, settings_from
from broker.cli_errors import USAGE_ERROR, CommandError

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from broker.bootstrap import Root
    from broker.mapping.profile import ProfileSet

mapping_app = typer.Typer(help="Mapping profiles: check and try the files, deploy them "
                          "without a restart, list, compare and roll back versions.",
                          no_args_is_help=True)

# What ``diff`` takes for the mappings directory's files instead of a version number.
DIRECTORY = "dir"


def _root(config: Path | None) -> Root:
    from broker.bootstrap import Role, build

    return build(settings_from(config), Role.COMMAND)


def _user() -> str:
    """Who runs the command (recorded with the deployment)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no login name (a container without a passwd entry)
        return "cli"


def _refuse(errors: list[str]) -> NoReturn:
    """Every problem on a line of its own (standard error), then exit 1."""
    for error in errors:
        err_console.print(f"error {error}", markup=False, soft_wrap=True)
    raise typer.Exit(1)


@mapping_app.command("check")
def mapping_check(
    directory: Annotated[Path | None, typer.Argument(help="Default: MWLB_MAPPINGS_DIR.")] = None,
    config: ConfigOption = None,
) -> None:
    """Validate every profile, the packaged default included; errors name the file, the
    key and what is wrong."""
    from broker.mapping import PACKAGED_PROFILES
    from broker.mapping.profile import check_directory, profile_files

    path = directory or settings_from(config).mappings_dir
    errors = check_directory(path)
    if errors:
        _refuse(errors)
    console.print(f"{path}: all profiles valid")
    for name, file in profile_files(path).items():
        packaged = " (packaged)" if file.parent == PACKAGED_PROFILES else ""
        console.print(f"  {name}: {file}{packaged}", highlight=False, soft_wrap=True)


@mapping_app.command("test")
def mapping_test(
    files: Annotated[list[Path], typer.Argument(help="HL7 file(s), one or more messages each.",
                                                exists=True, dir_okay=False)],
    config: ConfigOption = None,
) -> None:
    """Dry run of live processing with the mappings directory's profiles: print the
    worklist items each message would produce, its warnings and the ACK the broker
    would send. Order state is checked against the configured database without
    writing to it (exit 1 unless every ACK is AA)."""
    from broker.hl7.client import read_hl7_file
    from broker.mapping.deployed import Deployed
    from broker.mapping.render import describe
    from broker.services.dry_run import dry_run_database

    root = _root(config)
    runtime, use_cases = root.runtime, root.use_cases
    # The files as they are now, not the version in force: what a deploy would map with.
    files_now = Deployed(None, runtime.profiles, runtime.timezone)
    refused = False
    with dry_run_database(root.settings) as (factory, where):
        console.print(f"order state: {where}", markup=False)
        for path in files:
            for raw in read_hl7_file(path):
                result = use_cases.dry_run(raw, factory, mapper=files_now)
                msg = result.message
                console.print(f"== {path.name}: {msg.message_type if msg else '?'} MSH-10 "
                              f"{msg.control_id if msg else '?'}"
                              + (f" (profile {result.mapped.profile})" if result.mapped else ""),
                              markup=False)
                if result.mapped is not None:
                    print("\n".join(describe(result.mapped)))
                for warning in result.warnings:
                    console.print(f"warning {warning}", markup=False)
                console.print(f"ACK {result.ack_code}"
                              + (f": {result.error}" if result.error else ""), markup=False)
                refused |= not result.accepted
    if refused:
        raise typer.Exit(1)


def impact_lines(root: Root, candidate: ProfileSet, directory: Path, *,
                 per_sender: int) -> list[str]:
    """The dry run's report: the last ``per_sender`` stored messages of each sender
    mapped by the version in force and by ``candidate``, compared; nothing written
    (:meth:`broker.application.mapping.MappingUseCases.impact`)."""
    found = root.use_cases.mapping.impact(candidate, per_sender=per_sender,
                                          after=str(directory))
    return list(found.lines())


@mapping_app.command("deploy")
def mapping_deploy(
    directory: Annotated[Path | None, typer.Argument(help="Default: MWLB_MAPPINGS_DIR.")] = None,
    comment: Annotated[str, typer.Option(help="Why (kept with the version).")] = "",
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Report what would change on stored messages; deploy nothing.")
    ] = False,
    last: Annotated[int, typer.Option(
        "--last", min=1, help="Messages per sender compared by --dry-run.")] = 50,
    config: ConfigOption = None,
) -> None:
    """Validate the profiles of DIR (with the packaged ones) and put them in force in
    every running broker and worker process, between messages, without a restart. A
    set that does not validate is refused (every problem named by file and key, exit
    1) and the version in force stays."""
    from broker.mapping import versions
    from broker.mapping.profile import ProfileError, read_sources

    root = _root(config)
    path = directory or root.settings.mappings_dir
    try:
        sources = read_sources(path)
    except (ProfileError, OSError) as exc:
        _refuse([str(exc)])
    try:
        if dry_run:
            candidate = versions.validate(sources, directory=path)
            for line in impact_lines(root, candidate, path, per_sender=last):
                console.print(line, markup=False, highlight=False, soft_wrap=True)
            console.print(f"dry run: {path} validates; nothing deployed", markup=False)
            return
        change = root.use_cases.mapping.deploy(sources, directory=path, user=_user(),
                                               address=socket.gethostname(),
                                               comment=comment)
    except versions.DeployRefused as refused:
        _refuse(refused.errors)
    info = change.info
    if not change.changed:
        console.print(f"version {info.version} already in force: {path} has the same "
                      "files; nothing deployed", markup=False)
        return
    console.print(f"deployed version {info.version} from {path}"
                  + (f" (was version {change.before})" if change.before is not None
                     else ""), markup=False)


@mapping_app.command("versions")
def mapping_versions(config: ConfigOption = None) -> None:
    """The stored versions, newest first: who made each and when, its latest
    deployment, its comment, and which is in force."""
    from broker.mapping import versions

    with _root(config).runtime.session_factory() as session:
        listed = versions.history(session)
    if not listed:
        console.print("no version deployed yet (the first `serve` deploys the mappings "
                      "directory as version 1)")
        return
    table = Table("version", "in force", "created", "by", "last deployed", "by", "comment")
    for info in listed:
        table.add_row(str(info.version), "yes" if info.active else "",
                      f"{info.created_at:%Y-%m-%d %H:%M:%S}", info.created_by,
                      f"{info.deployed_at:%Y-%m-%d %H:%M:%S}" if info.deployed_at else "",
                      info.deployed_by, info.comment)
    console.print(table)


def _named(session: Session, name: str, directory: Path) -> tuple[str, dict[str, str]]:
    """A version number, or ``dir`` for the directory's files: (label, sources)."""
    from broker.mapping import versions
    from broker.mapping.profile import ProfileError, read_sources

    if name == DIRECTORY:
        try:
            return DIRECTORY, read_sources(directory)
        except (ProfileError, OSError) as exc:
            raise CommandError(str(exc)) from exc
    if not name.isdigit():
        raise CommandError(f"{name!r}: a version number or {DIRECTORY!r}", USAGE_ERROR)
    try:
        return f"v{int(name)}", versions.sources_of(session, int(name))
    except KeyError:
        raise CommandError(f"no mapping version {name}") from None


@mapping_app.command("diff")
def mapping_diff(
    old: Annotated[str, typer.Argument(help=f"A version number, or {DIRECTORY!r} for the "
                                       "mappings directory's files.")],
    new: Annotated[str | None, typer.Argument(help="Default: the version in force.")] = None,
    config: ConfigOption = None,
) -> None:
    """The difference between two versions (or a version and the directory's files),
    as a unified diff per file."""
    from broker.mapping import versions

    root = _root(config)
    with root.runtime.session_factory() as session:
        if new is None:
            in_force = versions.active(session)
            if in_force is None:
                raise CommandError("no version deployed yet")
            new = str(in_force.version)
        old_name, old_sources = _named(session, old, root.settings.mappings_dir)
        new_name, new_sources = _named(session, new, root.settings.mappings_dir)
    text = versions.diff(old_sources, new_sources, old_name=old_name, new_name=new_name)
    if not text:
        console.print(f"{old_name} and {new_name} have the same files", markup=False)
        return
    print(text, end="")


@mapping_app.command("rollback")
def mapping_rollback(
    version: Annotated[int, typer.Argument(help="The version to put back in force.")],
    comment: Annotated[str, typer.Option(help="Why (kept with the deployment).")] = "",
    config: ConfigOption = None,
) -> None:
    """Put an earlier version back in force in every running process, as a deploy does."""

    try:
        change = _root(config).use_cases.mapping.rollback(
            version, user=_user(), address=socket.gethostname(), comment=comment)
    except KeyError:
        raise CommandError(f"no mapping version {version}") from None
    if not change.changed:
        console.print(f"version {version} already in force; nothing changed")
        return
    console.print(f"version {version} in force again"
                  + (f" (was version {change.before})" if change.before is not None else ""))


@mapping_app.command("export")
def mapping_export(
    version: Annotated[int, typer.Argument(help="A stored version.")],
    directory: Annotated[Path, typer.Argument(help="A new or empty directory.",
                                              file_okay=False)],
    config: ConfigOption = None,
) -> None:
    """Write the files of a version to DIRECTORY: its site files at the top (deployable
    as they are), the packaged ones it was deployed with under ``packaged/``."""
    from broker.mapping import versions
    from broker.mapping.profile import PACKAGED_KEY

    with _root(config).runtime.session_factory() as session:
        try:
            sources = versions.sources_of(session, version)
        except KeyError:
            raise CommandError(f"no mapping version {version}") from None
    if directory.exists() and any(directory.iterdir()):
        raise CommandError(f"{directory}: not empty; export to a new or empty directory")
    for key, text in sorted(sources.items()):
        name = key[len(PACKAGED_KEY):] if key.startswith(PACKAGED_KEY) else key
        if Path(name).name != name or name in ("", ".", ".."):
            raise CommandError(f"version {version}: file key {key!r} is not a file name")
        target = directory / ("packaged" if key.startswith(PACKAGED_KEY) else "") / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
    console.print(f"version {version}: {len(sources)} file(s) written to {directory}",
                  markup=False)
