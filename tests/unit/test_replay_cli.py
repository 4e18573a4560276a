"""The times ``messages reprocess --since/--until`` take."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from broker.cli_errors import USAGE_ERROR, CommandError
from broker.cli_replay import criteria, when


def test_a_time_without_an_offset_is_in_the_broker_timezone() -> None:
    assert when("2025-03-10T09:00", "--since", "America/Chicago") == datetime(
        2025, 3, 10, 14, 0, tzinfo=UTC)  # CDT from 9 March 2025
    assert when("2025-03-10", "--since", "UTC") == datetime(2025, 3, 10, tzinfo=UTC)
    assert when("2025-03-10T09:00+01:00", "--since", "America/Chicago") == datetime(
        2025, 3, 10, 8, 0, tzinfo=UTC)
    assert when(None, "--until", "UTC") is None


def test_what_is_not_a_time_or_a_replayable_status_is_a_usage_error() -> None:
    with pytest.raises(CommandError, match="--since 'yesterday': not an ISO 8601") as bad:
        when("yesterday", "--since", "UTC")
    assert bad.value.exit_code == USAGE_ERROR
    with pytest.raises(CommandError, match="failed or processed") as status:
        criteria("rejected", None, None, None)
    assert status.value.exit_code == USAGE_ERROR
    assert criteria(None, None, None, "").status == "failed"
