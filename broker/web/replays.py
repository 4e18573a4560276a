"""A bulk replay (reprocessing) of stored messages in the console: what it was asked
for and how far it got (:func:`broker.services.replay.progress` counts the outcomes),
as the replay page and its JSON endpoint show it. The page polls the endpoint until
every message has an outcome, then shows the summary: passed, and still failing
grouped by reason (the HL7 error recorded: Table 0357 code, location, text)."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from broker.services import replay
from broker.web.queries import iso


def status(session: Session, run_id: int) -> dict[str, Any] | None:
    """The run's criteria and progress, None for an unknown run. ``finished``: every
    message it queued has an outcome (``waiting`` is 0)."""
    try:
        found = replay.progress(session, run_id)
    except KeyError:
        return None
    return {"id": found.run_id, "created_at": iso(found.created_at),
            "created_by": found.created_by, "criteria": found.criteria,
            "version": found.version, "total": found.total, "done": found.done,
            "passed": found.passed, "failing": found.failing, "waiting": found.waiting,
            "percent": 100 if found.total == 0 else round(100 * found.done / found.total),
            "finished": found.finished,
            "reasons": [{"reason": str(r), "code": r.code, "location": r.location,
                         "text": r.text, "count": r.count} for r in found.reasons]}
