"""MWLB_LOG_FORMAT=json: one JSON object per line."""

from __future__ import annotations

import json
import logging

from broker.cli_common import JsonLines


def test_json_lines_formatter() -> None:
    record = logging.LogRecord("broker.x", logging.INFO, __file__, 1, "message %s processed",
                               (42,), None)
    line = JsonLines().format(record)
    entry = json.loads(line)
    assert "\n" not in line
    assert entry["level"] == "INFO" and entry["logger"] == "broker.x"
    assert entry["message"] == "message 42 processed" and entry["time"]
