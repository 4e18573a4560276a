"""Rows written with SQLAlchemy Core by the processor: primary keys taken before the
INSERT, and UPDATEs of the columns that changed, one statement per table and set of
columns. Statements are built once and reused, so SQLAlchemy compiles each shape once.

Taking the keys first lets a row go in complete with the identifiers derived from its
own key (SPS ID, Requested Procedure ID, accession number: IHE RAD TF-2 4.4) and lets
the rows of several tables be inserted one statement per table, children naming their
parents. PostgreSQL hands the keys out from the column's sequence (``nextval``, never
given twice). SQLite gives a new row of a rowid table without AUTOINCREMENT the
largest key + 1 (SQLite "ROWIDs and the INTEGER PRIMARY KEY"), and the same keys are
taken here: no other writer can insert in between, because the processor's
transaction holds the database's write lock from its start (``BEGIN IMMEDIATE``,
:mod:`broker.db`).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache, lru_cache
from typing import Any

from sqlalchemy import Connection, Insert, Select, Table, func, insert, select

from broker.driver_rows import select_rows, update_by_key
from broker.models import Base


def table(model: type[Base]) -> Table:
    """The Core table of a mapped class."""
    return Base.metadata.tables[model.__tablename__]


@cache
def inserting(target: Table) -> Insert:
    """``INSERT INTO target``, its columns named by the parameters it is run with."""
    return insert(target)


def changed(stored: Mapping[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of ``values`` that differ from the row as read."""
    return {name: value for name, value in values.items() if stored[name] != value}


# Statement shapes kept: far more than the sets of columns and key counts in use.
SHAPES = 256


def update_rows(connection: Connection, target: Table,
                changes: list[tuple[int, dict[str, Any]]]) -> None:
    """Write ``(primary key, changed columns)`` pairs: rows without changes are left
    alone (their ``updated_at`` too); the others are updated with one statement per
    set of columns changed (:func:`broker.driver_rows.update_by_key`)."""
    update_by_key(connection, target, [(pk, values) for pk, values in changes if values])


class KeyPool:
    """Primary keys for the rows one unit of work inserts, handed out in ascending
    order per table (so rows keep the order they were created in). The first key
    needed takes those of every table in ``wanted`` (the rows foreseen) in one
    statement; a table that needs more than foreseen takes one more at a time.

    ``handed_out`` (the last key taken per table) is shared by the pools of messages
    whose rows are written together: on SQLite the keys they took are not in the
    tables yet."""

    def __init__(self, connection: Connection, wanted: dict[Table, int], *,
                 handed_out: dict[Table, int] | None = None) -> None:
        self.connection = connection
        self._wanted = {target: count for target, count in wanted.items() if count}
        self._free: dict[Table, list[int]] = {}
        self._last: dict[Table, int] = {} if handed_out is None else handed_out

    def take(self, target: Table) -> int:
        if not self._free.get(target):
            wanted = {**self._wanted, target: self._wanted.get(target) or 1}
            self._wanted = {}
            self._free.update(self._allocate(tuple(wanted.items())))
        key = self._last[target] = self._free[target].pop(0)
        return key

    def _allocate(self, wanted: tuple[tuple[Table, int], ...]) -> dict[Table, list[int]]:
        postgresql = self.connection.dialect.name == "postgresql"
        row = select_rows(self.connection, _taking(wanted, postgresql))[0]
        if postgresql:
            keys = iter(row)
            return {target: sorted(next(keys) for _ in range(count))
                    for target, count in wanted}
        allocated = {}
        for (target, count), largest in zip(wanted, row, strict=True):
            # Keys handed out before are not in the table yet.
            start = max(largest, self._last.get(target, 0))
            allocated[target] = list(range(start + 1, start + 1 + count))
        return allocated


@lru_cache(maxsize=SHAPES)
def _taking(wanted: tuple[tuple[Table, int], ...], postgresql: bool) -> Select[Any]:
    """PostgreSQL: one ``nextval`` per key; SQLite: each table's largest key."""
    if postgresql:
        return select(*[func.nextval(func.pg_get_serial_sequence(target.name, "id"))
                        for target, count in wanted for _ in range(count)])
    return select(*[select(func.coalesce(func.max(target.c.id), 0)).scalar_subquery()
                    for target, _ in wanted])
