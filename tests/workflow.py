"""Helpers shared by the performed-work integration tests."""

from __future__ import annotations

import time
from collections.abc import Callable
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
