"""What every ``mwl-broker`` command shares: consoles, the --config option, settings
loading (its failures said by :mod:`broker.cli_errors`), logging set-up, a session
factory and the address a client command connects to."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from sqlalchemy.orm import Session, sessionmaker

from broker.cli_errors import ConfigurationError, first_line
from broker.config import Settings, load_settings, user_settings

console = Console()
# Messages on standard error are not wrapped at 80 columns when piped: one is one line.
err_console = Console(stderr=True, soft_wrap=True, highlight=False)

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="TOML settings file (keys as in the table below).",
                 exists=True, dir_okay=False),
]


def settings_help() -> str:
    lines = ["Settings (environment variable, default, meaning):"]
    for name, field in user_settings().items():
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
    """The settings of a command given ``--config``. A file that cannot be read, is
    not TOML or has unknown keys is a ConfigurationError naming it; refused values
    propagate as pydantic's errors, which :mod:`broker.cli_errors` names setting by
    setting."""
    from pydantic import ValidationError
    from pydantic_settings import SettingsError

    try:
        return load_settings(config)
    except (ValidationError, SettingsError):
        raise
    except (OSError, ValueError) as exc:
        message = first_line(exc)
        raise ConfigurationError(message if str(config) in message
                                 else f"{config}: {message}") from exc


def client_host(bind_host: str) -> str:
    """Where a client command on this machine reaches a listener bound to
    ``bind_host`` (``MWLB_MLLP_HOST``, ``MWLB_DICOM_HOST``): that address, or
    localhost when it binds every address."""
    return "localhost" if bind_host in ("", "0.0.0.0", "::") else bind_host


def session_factory(config: Path | None) -> sessionmaker[Session]:
    from broker.bootstrap import Role, build

    return build(settings_from(config), Role.COMMAND).runtime.session_factory


def safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)
