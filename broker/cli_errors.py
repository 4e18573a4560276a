"""How a ``mwl-broker`` command fails: one line on standard error and a non-zero exit.

Every command runs inside :class:`CommandGroup`, the command line's root group, which
turns the failures a person can act on into one line (one paragraph for a
configuration error) and exits with :data:`FAILED` (1) or, for a configuration error,
:data:`USAGE_ERROR` (2, as for a usage error):

* :class:`CommandError`, raised by a command with its own words (cannot connect, an
  empty file, an association rejected, a server that could not start);
* a configuration error, named by its setting (:func:`explain`): a ``MWLB_*`` value
  or ``--config`` file the settings refuse, an unusable mappings directory, a
  distributed deployment left open to anyone;
* the database not answering (the driver's first line, never the SQL or its
  parameters).

Anything else is a bug: one line naming the exception, and its traceback only with
``mwl-broker --debug`` or ``MWLB_DEBUG=1``, which also show the traceback behind an
expected failure.
"""

from __future__ import annotations

import re
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import typer
from click import ClickException
from click.exceptions import Abort, Exit
from typer.core import TyperGroup

FAILED = 1
USAGE_ERROR = 2


class CommandError(Exception):
    """An expected failure, already said in words for the person at the terminal."""

    def __init__(self, message: str, exit_code: int = FAILED) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class ConfigurationError(CommandError):
    """Settings that cannot be used; the message names the setting."""

    def __init__(self, message: str) -> None:
        super().__init__(message, USAGE_ERROR)


def first_line(exc: BaseException) -> str:
    """An exception's own text up to its first line break (a database error's later
    lines quote SQL and its parameters)."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def connection_failure(host: str, port: int, exc: OSError, timeout: float) -> str:
    """Why a TCP connection to ``host:port`` failed, in words."""
    if isinstance(exc, ConnectionRefusedError):
        reason = "connection refused"
    elif isinstance(exc, TimeoutError):
        reason = f"no answer within {timeout:g} s"
    elif isinstance(exc, socket.gaierror):
        unknown = exc.errno in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", None))
        reason = "unknown host" if unknown else f"host name not resolved ({exc.strerror})"
    else:
        reason = (exc.strerror or first_line(exc)).lower()
    return f"cannot connect to {host}:{port}: {reason}"


def settings_problem(exc: Exception) -> str:
    """What is wrong with the settings, naming each setting as its ``MWLB_*``
    variable (a ``--config`` file uses the same name, lower case, without the prefix).
    Values of URL settings are not repeated (they may hold a password)."""
    from pydantic import ValidationError
    from pydantic_settings import SettingsError

    if isinstance(exc, ValidationError):
        problems = []
        for error in exc.errors():
            field, *inner = error["loc"]
            where = f"MWLB_{str(field).upper()}" + "".join(
                f"[{part}]" if isinstance(part, int) else f".{part}" for part in inner)
            text = str(error["msg"]).removeprefix("Value error, ")
            value = error.get("input")
            if (isinstance(value, str | int | float) and not str(field).endswith("_url")
                    and repr(value) not in text):
                text += f" (got {value!r})"
            problems.append(f"{where}: {text}")
        return "; ".join(problems)
    if isinstance(exc, SettingsError):
        named = re.search(r'field "(\w+)"', str(exc))
        name = f"MWLB_{named.group(1).upper()}" if named else "a setting"
        cause = f" ({first_line(exc.__cause__)})" if exc.__cause__ else ""
        return f"{name}: not valid JSON{cause}; lists and tables are given as JSON"
    return first_line(exc)


def explain(exc: Exception) -> tuple[str, int] | None:
    """The one-line (or one-paragraph) message and exit code of an expected failure;
    None for anything else (a bug)."""
    from pydantic import ValidationError
    from pydantic_settings import SettingsError
    from sqlalchemy.exc import InterfaceError, OperationalError

    from broker.mapping.profile import ProfileError
    from broker.security.access import AccessConfigurationError
    from broker.security.first_admin import FirstAdminError

    problem: str | None = None
    if isinstance(exc, ConfigurationError):
        problem = str(exc)
    elif isinstance(exc, CommandError):
        return str(exc), exc.exit_code
    elif isinstance(exc, ValidationError | SettingsError):
        problem = settings_problem(exc)
    elif isinstance(exc, AccessConfigurationError | FirstAdminError):
        problem = str(exc)
    elif isinstance(exc, ProfileError):
        problem = f"MWLB_MAPPINGS_DIR: {exc}"
    elif isinstance(exc, OperationalError | InterfaceError):
        return (f"cannot use the database (MWLB_DATABASE_URL): "
                f"{first_line(exc.orig) if exc.orig else first_line(exc)}", FAILED)
    if problem is None:
        return None
    return (f"configuration error: {problem.rstrip('.')}. Settings come from MWLB_* "
            "environment variables and the --config file; `mwl-broker serve --help` "
            "lists them.", USAGE_ERROR)


def say(message: str) -> None:
    """One message on standard error, unwrapped (the terminal wraps it)."""
    print(message, file=sys.stderr, flush=True)


@contextmanager
def starting() -> Iterator[None]:
    """Around a server's start: what :func:`explain` does not know (a port already in
    use, a certificate that cannot be read, a TLS or audit setting the server refuses)
    becomes "could not start: ..."."""
    try:
        yield
    except Exception as exc:
        if explain(exc) is not None:
            raise
        raise CommandError(f"could not start: {first_line(exc)}") from exc


class CommandGroup(TyperGroup):
    """The root group: runs the command and says how it failed (module docstring)."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, Exit, Abort, ClickException):
            raise
        except Exception as exc:
            if ctx.params.get("debug"):
                raise
            explained = explain(exc)
            if explained is None:
                say(f"unexpected error: {type(exc).__name__}: {first_line(exc)} (run "
                    "`mwl-broker --debug ...` or set MWLB_DEBUG=1 for the traceback)")
                raise typer.Exit(FAILED) from None
            message, code = explained
            say(message)
            raise typer.Exit(code) from None
