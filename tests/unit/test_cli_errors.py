"""The command line's failure handling where no broker is needed: a bug's one line and
its traceback under --debug, and the SPS Start Date key built from typed dates."""

from __future__ import annotations

from typing import Annotated

import pytest
import typer
from typer.testing import CliRunner

from broker.cli_dicom import sps_start_date
from broker.cli_errors import CommandError, CommandGroup


def _app() -> typer.Typer:
    """A command line with the broker's root group and a command with a bug."""
    app = typer.Typer(cls=CommandGroup)

    @app.callback()
    def main(debug: Annotated[bool, typer.Option("--debug", envvar="MWLB_DEBUG")] = False
             ) -> None:
        """Root."""

    @app.command()
    def divide(by: int) -> None:
        print(1 / by)

    return app


def test_a_bug_is_one_line_and_its_traceback_needs_debug() -> None:
    runner = CliRunner()
    result = runner.invoke(_app(), ["divide", "0"])
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        "unexpected error: ZeroDivisionError: division by zero (run `mwl-broker --debug "
        "...` or set MWLB_DEBUG=1 for the traceback)"]
    for args, env in ((["--debug", "divide", "0"], {}), (["divide", "0"], {"MWLB_DEBUG": "1"})):
        result = runner.invoke(_app(), args, env=env)
        assert isinstance(result.exception, ZeroDivisionError)


@pytest.mark.parametrize(("typed", "key"), [
    ("", ""),
    ("2025-03-10", "20250310"),
    ("20250310", "20250310"),
    ("2025-03-10-2025-03-12", "20250310-20250312"),
    ("20250310-20250312", "20250310-20250312"),
    ("2025-03-10/2025-03-12", "20250310-20250312"),
    ("2025-03-10..20250312", "20250310-20250312"),
    ("2025-03-10-", "20250310-"),
    ("-20250312", "-20250312"),
    ("/2025-03-12", "-20250312"),
    ("2024-02-29", "20240229"),
])
def test_dates_become_a_da_key_or_range(typed: str, key: str) -> None:
    """PS3.4 C.2.2.2.5: a DA range is FROM-TO with either end left out."""
    assert sps_start_date(typed) == key


@pytest.mark.parametrize("typed", ["2025-02-29", "2025-3-10", "10/03/2025", "2025031",
                                   "20250312-20250310", "-", "today"])
def test_other_dates_are_refused(typed: str) -> None:
    with pytest.raises(CommandError, match="give a date as YYYY-MM-DD or YYYYMMDD") as caught:
        sps_start_date(typed)
    assert caught.value.exit_code == 2
