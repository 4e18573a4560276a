"""Modality Worklist C-FIND (PS3.4 Annex K): query keys -> SQL -> responses.

The identifier is turned into SQL by :mod:`broker.services.worklist_query` (shared
with the console; it lists the matching keys supported); matching runs in SQL on the
indexed columns (never by loading the worklist); rows are streamed. Any key we do not
match on that carries a value is returned as a return key; pending responses then
carry 0xFF01 (K.2.2.1.1.2, Table K.4-1).

Status policy: an SPS Sequence key with more than one item is refused with 0xA900
(identifier does not match SOP class, Table K.4-1); an identifier we cannot read gets
0xC000. When more steps match than MWLB_WORKLIST_MAX_RESULTS (or the calling
modality profile's ``max_results``), the first that many (by start time) are returned
and the query ends with 0xA700 "out of resources", the status Table K.4-1 gives for a
query the SCP will not complete, so the modality knows the list is cut and can narrow
its query.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cached_property, lru_cache
from io import BytesIO
from typing import TYPE_CHECKING, Any

import orjson
from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom.dsutils import decode
from sqlalchemy.orm import Session

from broker.config import Settings
from broker.dicom.items import build_response
from broker.domain.types import station_ae_titles
from broker.services.worklist_query import IDENTIFIER_MISMATCH as IDENTIFIER_MISMATCH
from broker.services.worklist_query import QueryError, build_query

if TYPE_CHECKING:
    from broker.dicom.modality_rules import ModalityRules

log = logging.getLogger(__name__)

PENDING, PENDING_WARNING, SUCCESS, CANCELLED = 0xFF00, 0xFF01, 0x0000, 0xFE00
OUT_OF_RESOURCES, UNABLE_TO_PROCESS = 0xA700, 0xC000

BATCH = 500
QUERY_CACHE_SIZE = 1024

Select = tuple[Any, bool]  # the SELECT of an identifier, and whether a key is unsupported


@lru_cache(maxsize=32768)
def decode_attributes(text: str | None) -> dict[str, Any]:
    """Stored attributes JSON -> dict, memoised on the text itself (so an update,
    which changes the text, is never served stale). Modalities ask for the same
    items again and again; decoding them was the largest cost of a C-FIND. The dict
    is shared: callers must copy it before changing anything."""
    return orjson.loads(text) if text else {}


@dataclass(frozen=True)
class WorklistItem:
    """One matching step as stored: its status, start and the JSON text of its step,
    requested procedure and patient attributes. ``step`` (the SPS item attributes with
    the authoritative status and station AE titles) and ``merged`` (patient and
    procedure attributes) are decoded when first asked for."""

    sps_pk: int
    status: str
    start_datetime: str
    patient_charset: str
    step_text: str
    procedure_text: str
    patient_text: str

    @cached_property
    def step(self) -> dict[str, Any]:
        step = dict(decode_attributes(self.step_text))
        step["ScheduledProcedureStepStatus"] = self.status
        step["ScheduledStationAETitle"] = station_ae_titles(step)
        return step

    @cached_property
    def merged(self) -> dict[str, Any]:
        return {**decode_attributes(self.patient_text),
                **decode_attributes(self.procedure_text)}

    def dataset(self, query: Dataset, zone: str) -> Dataset:
        return build_response(query, self.merged, self.step,
                              patient_charset=self.patient_charset, zone=zone,
                              start_datetime=self.start_datetime)


class QueryCache:
    """The SELECT of each identifier a server is sent, memoised (least recently used
    out) on the identifier's encoded bytes and transfer syntax. Modalities send the same
    query again and again, and building the SQL expression cost more CPU than running
    it for one Patient ID on 100,000 steps. One per server, as the SELECT depends on
    its settings, and keyed also on the calling modality's profile (name, version and
    content: its station restriction changes the SELECT); an identifier refused
    (:class:`QueryError`) is not kept."""

    def __init__(self, settings: Settings, size: int = QUERY_CACHE_SIZE) -> None:
        self._settings = settings
        self.select: Callable[..., Select] = lru_cache(maxsize=size)(self._build)

    def _build(self, encoded: bytes, transfer_syntax: str,
               rules: ModalityRules | None = None) -> Select:
        syntax = UID(transfer_syntax)
        identifier = decode(BytesIO(encoded), syntax.is_implicit_VR, syntax.is_little_endian,
                            syntax.is_deflated)
        return build_query(identifier, self._settings,
                           restriction=rules.restriction if rules is not None else None)


def find_worklist(session: Session, identifier: Dataset, settings: Settings, *,
                  is_cancelled: Any = None, returned: list[int] | None = None,
                  select: Callable[[], Select] | None = None, cap: int | None = None,
                  ) -> Iterator[tuple[int, WorklistItem | None]]:
    """Yield (status, item) pairs: pending statuses with their item, then at most one
    final status without (cancel, out of resources, or a refusal); the ids of the
    steps yielded are appended to ``returned`` when given. ``select`` gives the
    identifier's SELECT (a :class:`QueryCache` lookup); without it it is built.
    ``cap``: the most items answered (None: MWLB_WORKLIST_MAX_RESULTS; 0: no cap)."""
    try:
        query, unsupported = select() if select else build_query(identifier, settings)
    except QueryError as exc:
        log.info("C-FIND refused: 0x%04X %s", exc.status, exc)
        yield exc.status, None
        return
    except Exception as exc:  # an identifier we cannot read
        log.info("C-FIND identifier not processed: %s", type(exc).__name__)
        yield UNABLE_TO_PROCESS, None
        return
    if cap is None:
        cap = settings.worklist_max_results
    if cap:
        query = query.limit(cap + 1)
    rows = _stream(session, query, unsupported, is_cancelled,
                   returned if returned is not None else [])
    for sent, (status, item) in enumerate(rows):
        if status == CANCELLED:
            yield status, None
            return
        if cap and sent >= cap:
            log.info("C-FIND result cap %d reached: 0xA700", cap)
            yield OUT_OF_RESOURCES, None
            return
        yield status, item


def _stream(session: Session, query: Any, unsupported: bool, is_cancelled: Any,
            returned: list[int]) -> Iterator[tuple[int, WorklistItem | None]]:
    pending = PENDING_WARNING if unsupported else PENDING
    rows = session.connection().execute(query.execution_options(yield_per=BATCH))
    for row in rows:
        if is_cancelled is not None and is_cancelled():
            yield CANCELLED, None
            return
        returned.append(row.id)
        yield pending, WorklistItem(row.id, row.status, row.start_datetime, row.charset,
                                    row.step_attributes or "", row.procedure_attributes or "",
                                    row.patient_attributes or "")

