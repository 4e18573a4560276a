"""Helpers shared by the performed-work integration tests."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import select

from broker.models import OutboundMessage, ScheduledProcedureStep

STUDY_05 = "2.25.310174223949521671785473488595620964685"


def destination(port: int, message_type: str = "ORM^O01") -> list[dict[str, Any]]:
    return [{"name": "ehr", "host": "127.0.0.1", "port": port, "message_type": message_type,
             "receiving_application": "EHR", "receiving_facility": "HOSP"}]


def wait_until(check: Callable[[], Any], timeout: float = 20, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what or check}")


def step_statuses(app: Any) -> dict[str, str]:
    with app.runtime.session_factory() as session:
        return dict(session.execute(select(ScheduledProcedureStep.sps_id,
                                           ScheduledProcedureStep.status)).all())


def outbox_statuses(app: Any) -> set[str]:
    with app.runtime.session_factory() as session:
        return set(session.scalars(select(OutboundMessage.status)))


CLI = str(Path(sys.executable).with_name("mwl-broker"))


def cli(app: Any, *args: str) -> str:
    """Run `mwl-broker ARGS` against ``app``'s database and destinations."""
    dests = [d.model_dump() for d in app.settings.outbound_destinations]
    env = {"MWLB_DATABASE_URL": app.settings.database_url,
           "MWLB_OUTBOUND_DESTINATIONS": json.dumps(dests), "PATH": "/usr/bin:/bin",
           "COLUMNS": "250"}
    proc = subprocess.run([CLI, *args], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout
