"""The record of every Modality Worklist C-FIND (PS3.4 K.4.1.3): its keys, who asked,
how many items it got and which steps (for the console's "why is it not on the
worklist?" and the order timeline), the modality profile that shaped the answer and
the version of the profiles in force, with its audit message (Query, IHE ATNA /
PS3.15 A.5.3.12).

Off the response path, in one thread, with group commit: the thread lets the records
of up to :data:`LINGER` seconds gather, takes every record waiting and writes them in
one transaction, so one durable commit (one fsync) carries all the queries answered
meanwhile instead of one commit each; the query rows go in with one multi-row INSERT
and their result rows with one more. A batch the
database refuses is written again one record at a time, so one bad record loses only
itself. Each record keeps the time its query was answered (the thread may lag under
load).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from typing import cast

from pydicom.dataset import Dataset
from sqlalchemy import Table, insert
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from broker.audit import hooks as audit
from broker.db import unit_of_work
from broker.models import WorklistQuery, WorklistQueryResult

log = logging.getLogger(__name__)

# Records written per transaction at most (a backlog goes out in several).
MAX_BATCH = 500
# How long the first record of a batch waits for others: a modality asking one query
# after another gets several into one commit; the console sees them this much later.
LINGER = 0.05
_RESULTS = insert(cast(Table, WorklistQueryResult.__table__))


@dataclass(frozen=True)
class QueryRecord:
    """One answered C-FIND, as the handler saw it."""

    calling_ae_title: str
    address: str
    port: int
    identifier: Dataset
    status: int
    returned: list[int]
    duration_ms: float
    answered_at: datetime
    modality_profile: str = ""  # "" when none applied
    profile_version: int | None = None  # the deployed version in force (None: not deployed)


class QueryRecorder:
    """Writes :class:`QueryRecord` s in batches from a thread of its own."""

    def __init__(self, writer: sessionmaker[Session]) -> None:
        self._writer = writer
        self._queue: queue.SimpleQueue[QueryRecord | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def submit(self, record: QueryRecord) -> None:
        """Queue ``record`` (the thread starts with the first one)."""
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="mwl-cfind-log",
                                                    daemon=True)
                    self._thread.start()
        self._queue.put(record)

    def stop(self) -> None:
        """Write what is queued, then end the thread."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(None)
            thread.join()

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            batch = [] if first is None else [first]
            ended = first is None
            if not ended:
                time.sleep(LINGER)
            while len(batch) < MAX_BATCH:
                try:
                    record = self._queue.get_nowait()
                except queue.Empty:
                    break
                if record is None:
                    ended = True
                    continue
                batch.append(record)
            if batch:
                self._write(batch)
            if ended and self._queue.empty():
                return

    def _write(self, batch: list[QueryRecord]) -> None:
        try:
            with unit_of_work(self._writer) as session:
                _insert(session, batch)
            return
        except SQLAlchemyError as exc:
            if len(batch) == 1:
                log.warning("C-FIND record not stored: %s", type(exc).__name__)
                return
        for record in batch:  # one at a time: a bad record loses only itself
            self._write([record])


def _keys(identifier: Dataset) -> dict[str, object]:
    try:
        return identifier.to_json_dict()
    except Exception:  # an identifier pydicom cannot write as JSON: keep what we can
        return {}


def _insert(session: Session, batch: list[QueryRecord]) -> None:
    rows = [{"at": r.answered_at, "calling_ae_title": r.calling_ae_title[:16],
             "peer": f"{r.address}:{r.port}"[:100], "identifier": _keys(r.identifier),
             "status": r.status, "result_count": len(r.returned),
             "duration_ms": round(r.duration_ms, 2),
             "modality_profile": r.modality_profile[:64],
             "profile_version": r.profile_version} for r in batch]
    ids = session.scalars(insert(WorklistQuery).returning(
        WorklistQuery.id, sort_by_parameter_order=True), rows).all()
    results = [{"query_pk": pk, "sps_pk": sps}
               for pk, record in zip(ids, batch, strict=True)
               for sps in dict.fromkeys(record.returned)]
    if results:
        session.execute(_RESULTS, results)  # a Core INSERT: no ORM bulk bookkeeping
    for record in batch:
        audit.worklist_query(session, record.calling_ae_title[:16], record.address,
                             record.identifier, record.status)
