"""What every ``mwl-broker`` command shares: consoles, the --config option, settings
loading with a readable error, logging set-up and a session factory."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from sqlalchemy.orm import Session, sessionmaker

from broker.config import Settings, load_settings

console = Console()
err_console = Console(stderr=True)

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="TOML settings file (keys as in the table below).",
                 exists=True, dir_okay=False),
]


def settings_help() -> str:
    lines = ["Settings (environment variable, default, meaning):"]
    for name, field in Settings.model_fields.items():
        default = field.default
        shown = ",".join(default) if isinstance(default, list) else str(default)
        lines.append(f"MWLB_{name.upper()} [{shown or 'empty'}]: {field.description}")
    return "\n\n".join(lines)


def configure_logging(level: str = "INFO") -> None:
    logging.basicConfig(level=level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # pynetdicom narrates every PDU at INFO; keep association-level warnings only.
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)


def settings_from(config: Path | None) -> Settings:
    try:
        return load_settings(config)
    except ValueError as exc:
        err_console.print(f"[red]configuration error:[/red] {exc}")
        raise typer.Exit(2) from None


def session_factory(config: Path | None) -> sessionmaker[Session]:
    from broker.db import make_engine, make_session_factory

    return make_session_factory(make_engine(settings_from(config).database_url))


def safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)
