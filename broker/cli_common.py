"""What every ``mwl-broker`` command shares: consoles, the --config option, settings
loading with a readable error, logging set-up and a session factory."""

from __future__ import annotations

import json
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
        default = field.get_default(call_default_factory=True)
        shown = ",".join(default) if isinstance(default, list) else str(default)
        lines.append(f"MWLB_{name.upper()} [{shown or 'empty'}]: {field.description}")
    return "\n\n".join(lines)


class JsonLines(logging.Formatter):
    """One JSON object a line (MWLB_LOG_FORMAT=json) for log collectors. Messages carry
    ids only, as everywhere in the broker."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
                 "level": record.levelname, "logger": record.name,
                 "message": record.getMessage(), "thread": record.threadName}
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(level: str = "INFO", *, json_lines: bool = False) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonLines() if json_lines else logging.Formatter(
        "%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler])
    # pynetdicom narrates every PDU at INFO; keep association-level warnings only.
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    # SQLAlchemy logs statements, parameters and result rows at INFO/DEBUG whenever its
    # logger is enabled (echo or not): rows are patient data, so never below WARNING.
    logging.getLogger("sqlalchemy").setLevel(logging.WARNING)


def settings_from(config: Path | None) -> Settings:
    try:
        return load_settings(config)
    except ValueError as exc:
        err_console.print(f"[red]configuration error:[/red] {exc}")
        raise typer.Exit(2) from None


def session_factory(config: Path | None) -> sessionmaker[Session]:
    from broker.bootstrap import Role, build

    return build(settings_from(config), Role.COMMAND).runtime.session_factory


def safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)
