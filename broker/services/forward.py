"""Forward spooled instances to the PACS by C-STORE (storage_mode ``forward``).

Instances are sent as they were received (same transfer syntax, no transcoding), a
batch per association, oldest first. A sent instance's spool file is deleted; a
failed attempt is retried with exponential back-off until ``forward_max_attempts``,
then the instance is ``failed`` (its file kept, visible in the index).
"""

from __future__ import annotations

import logging
import socket
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pynetdicom import AE
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from broker.config import Settings
from broker.db import unit_of_work
from broker.models import StoredInstance

log = logging.getLogger(__name__)

BATCH = 100
MAX_CONTEXTS = 120  # PS3.8: at most 128 presentation contexts per association


def forward_pending(factory: sessionmaker[Session], settings: Settings) -> float | None:
    """Send pending instances; returns seconds until a retry is due, or None."""
    with factory() as session:
        rows = list(session.execute(
            select(StoredInstance.id, StoredInstance.file_path, StoredInstance.sop_class_uid,
                   StoredInstance.transfer_syntax_uid, StoredInstance.forward_attempts)
            .where(StoredInstance.forward_state == "pending",
                   StoredInstance.forward_due_at <= datetime.now(UTC))
            .order_by(StoredInstance.id).limit(BATCH)))
    if not rows:
        return None
    try:  # reachable? (pynetdicom leaks its socket when the connect is refused)
        socket.create_connection((settings.forward_host, settings.forward_port),
                                 timeout=10).close()
    except OSError as exc:
        return _record(factory, settings, rows, {}, f"PACS not reachable: {type(exc).__name__}")
    contexts = sorted({(r.sop_class_uid, r.transfer_syntax_uid) for r in rows})[:MAX_CONTEXTS]
    ae = AE(ae_title=settings.ae_title)
    for sop_class, syntax in contexts:
        ae.add_requested_context(sop_class, syntax)
    results: dict[int, str] = {}
    assoc = ae.associate(settings.forward_host, settings.forward_port,
                         ae_title=settings.forward_ae_title)
    if assoc.is_established:
        try:
            for row in rows:
                if (row.sop_class_uid, row.transfer_syntax_uid) not in contexts:
                    continue
                status = assoc.send_c_store(dcmread(row.file_path))
                code = getattr(status, "Status", None)
                results[row.id] = "" if code in (0x0000, 0xB000, 0xB007, 0xB006) else (
                    f"C-STORE status 0x{code:04X}" if code is not None else "no response")
        finally:
            assoc.release()
    error = "" if assoc.is_established or results else "association to the PACS failed"
    return _record(factory, settings, rows, results, error)


def _record(factory: sessionmaker[Session], settings: Settings, rows: list[Any],
            results: dict[int, str], error: str) -> float | None:
    retry_in: float | None = None
    with unit_of_work(factory) as session:
        for r in rows:
            row = session.get(StoredInstance, r.id)
            if row is None:
                continue
            outcome = results.get(r.id, error or "not sent")
            row.forward_attempts += 1
            if outcome == "":
                Path(row.file_path).unlink(missing_ok=True)
                row.file_path, row.forward_state, row.forward_error = "", "forwarded", ""
                continue
            row.forward_error = outcome[:400]
            if row.forward_attempts >= settings.forward_max_attempts:
                row.forward_state = "failed"
                log.warning("instance %s: forward failed for good (%s)", row.id, outcome)
            else:
                delay = min(2.0 ** row.forward_attempts, 300.0)
                row.forward_due_at = datetime.now(UTC) + timedelta(seconds=delay)
                retry_in = delay if retry_in is None else min(retry_in, delay)
    if retry_in is None and len(rows) == BATCH:
        return 0.01  # more waiting behind this batch
    return retry_in
