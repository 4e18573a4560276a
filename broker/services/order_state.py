"""The stored orders one order message is applied to, held in memory: read in one
query (the patient the message names, the orders its order numbers find, their
requested procedures and scheduled procedure steps), changed by the rules of
:mod:`broker.services.orders`, then written back with SQLAlchemy Core, one statement
per table and kind of change.

Rows keep their values as read (``stored``), so that only the columns that changed
are written; attribute dicts are replaced on change, never edited in place. Matching
columns come from the attributes through :mod:`broker.services.records`; a step's
Scheduled Station AE Title rows are rewritten when its titles change.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from sqlalchemy import Connection, Select, and_, bindparam, delete, false, literal, or_, select

from broker.domain.types import Attributes, PatientRecord, ProcedureRecord, station_ae_titles
from broker.driver_rows import insert_rows, select_rows
from broker.models import (
    ImagingOrder,
    Patient,
    RequestedProcedure,
    ScheduledProcedureStep,
    SPSStatus,
    StationAETitle,
    StepStatusChange,
)
from broker.services.records import (
    change_status,
    procedure_columns,
    step_columns,
    with_status,
)
from broker.services.rows import SHAPES, changed, table, update_rows

# A lookup key of :func:`load`: ("patient" | "placer" | "filler", identifier, namespace).
Key = tuple[str, str, str]

PATIENTS = table(Patient)
ORDERS = table(ImagingOrder)
PROCEDURES = table(RequestedProcedure)
STEPS = table(ScheduledProcedureStep)
STATION_AE_TITLES = table(StationAETitle)
HISTORY = table(StepStatusChange)

_ORDER_COLUMNS = ("id", "patient_pk", "placer_order_number", "placer_issuer",
                  "filler_order_number", "filler_issuer", "sending_application",
                  "sending_facility", "profile", "last_message_pk")
_PROCEDURE_MATCHING = tuple(procedure_columns({}))
_PROCEDURE_COLUMNS = ("id", "order_pk", "attributes", *_PROCEDURE_MATCHING)
_STEP_MATCHING = tuple(step_columns({}))
_STEP_COLUMNS = ("id", "procedure_pk", "placer_step_key", "status", "station_rule",
                 "attributes", *_STEP_MATCHING)
_CLEARING_TITLES = delete(STATION_AE_TITLES).where(
    STATION_AE_TITLES.c.sps_pk.in_(bindparam("steps", expanding=True)))


@dataclass(eq=False)
class Step:
    """A scheduled procedure step row; ``columns`` are its matching columns."""

    id: int
    procedure_pk: int
    placer_step_key: str
    status: str
    station_rule: str
    attributes: Attributes
    columns: dict[str, str]
    stored: dict[str, Any] | None = None  # the row as read; None: new

    @classmethod
    def new(cls, pk: int, procedure_pk: int, placer_step_key: str, station_rule: str,
            attributes: Attributes) -> Step:
        """A new step, without a status until it is given one (:meth:`OrderState.set_status`)."""
        step = cls(pk, procedure_pk, placer_step_key, "", station_rule, attributes, {})
        step.sync()
        return step

    @property
    def sps_id(self) -> str:
        return self.columns["sps_id"]

    def sync(self) -> None:
        """The status column is the truth and goes into the attributes; the matching
        columns come from them."""
        self.attributes = with_status(self.attributes, self.status)
        self.columns = step_columns(self.attributes)

    def row(self) -> dict[str, Any]:
        return {"id": self.id, "procedure_pk": self.procedure_pk,
                "placer_step_key": self.placer_step_key, "status": self.status,
                "station_rule": self.station_rule, "attributes": self.attributes,
                **self.columns}


@dataclass(eq=False)
class Procedure:
    """A requested procedure row with its steps (in id order)."""

    id: int
    order_pk: int
    attributes: Attributes
    columns: dict[str, str]
    steps: list[Step] = field(default_factory=list)
    stored: dict[str, Any] | None = None

    @classmethod
    def new(cls, pk: int, order_pk: int, attributes: Attributes) -> Procedure:
        return cls(pk, order_pk, attributes, procedure_columns(attributes))

    @property
    def requested_procedure_id(self) -> str:
        return self.columns["requested_procedure_id"]

    @property
    def accession_number(self) -> str:
        return self.columns["accession_number"]

    def sync(self) -> None:
        self.columns = procedure_columns(self.attributes)

    def row(self) -> dict[str, Any]:
        return {"id": self.id, "order_pk": self.order_pk, "attributes": self.attributes,
                **self.columns}


@dataclass(eq=False)
class Order:
    """An imaging order row with its requested procedures (in id order)."""

    id: int
    patient_pk: int
    placer_order_number: str | None
    placer_issuer: str
    filler_order_number: str | None
    filler_issuer: str
    sending_application: str
    sending_facility: str
    profile: str
    last_message_pk: int | None
    procedures: list[Procedure] = field(default_factory=list)
    stored: dict[str, Any] | None = None

    def row(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in _ORDER_COLUMNS}


@dataclass
class OrderState:
    """What an order message is applied to: the patient it names (primary key and
    merge link, None when unknown) and the orders it may change, new ones included."""

    patient: tuple[int, int | None] | None
    orders: list[Order]
    # The patient row to insert, when the message names an unknown patient.
    new_patient: dict[str, Any] | None = None
    # Step history rows to write, in the order the changes were made.
    history: list[dict[str, Any]] = field(default_factory=list)

    def set_status(self, step: Step, status: SPSStatus, *, cause: str) -> bool:
        """:func:`broker.services.records.change_status`, the history row kept to
        write; True when the status changed."""
        return change_status(step, status, cause=cause,
                             history=lambda change: self.history.append(
                                 {"sps_pk": step.id, **change}))

    def find_order(self, procedure: ProcedureRecord) -> Order | None:
        """The order with the procedure's placer order number, else the one with its
        filler order number (each with its namespace)."""
        if procedure.placer_order_number:
            key = (procedure.placer_order_number, procedure.placer_issuer)
            found = next((o for o in self.orders
                          if (o.placer_order_number, o.placer_issuer) == key), None)
            if found is not None:
                return found
        if procedure.filler_order_number:
            key = (procedure.filler_order_number, procedure.filler_issuer)
            return next((o for o in self.orders
                         if (o.filler_order_number, o.filler_issuer) == key), None)
        return None


@lru_cache(maxsize=SHAPES)
def _reading(kinds: tuple[str, ...]) -> Select[Any]:
    """The state query for order keys of these kinds (``placer``, ``filler``), bound
    as ``number_<n>`` and ``issuer_<n>``."""
    keys = [and_(ORDERS.c[f"{kind}_order_number"] == bindparam(f"number_{n}"),
                 ORDERS.c[f"{kind}_issuer"] == bindparam(f"issuer_{n}"))
            for n, kind in enumerate(kinds)]
    anchor = select(literal(1).label("one")).subquery("anchor")
    return select(
        PATIENTS.c.id.label("patient"), PATIENTS.c.merged_into_id.label("merged_into"),
        *[ORDERS.c[name].label(f"o_{name}") for name in _ORDER_COLUMNS],
        *[PROCEDURES.c[name].label(f"p_{name}") for name in _PROCEDURE_COLUMNS],
        *[STEPS.c[name].label(f"s_{name}") for name in _STEP_COLUMNS],
    ).select_from(
        anchor.outerjoin(PATIENTS, and_(PATIENTS.c.patient_id == bindparam("patient_id"),
                                        PATIENTS.c.issuer == bindparam("issuer")))
        .outerjoin(ORDERS, or_(*keys) if keys else false())
        .outerjoin(PROCEDURES, PROCEDURES.c.order_pk == ORDERS.c.id)
        .outerjoin(STEPS, STEPS.c.procedure_pk == PROCEDURES.c.id)
    ).order_by(ORDERS.c.id, PROCEDURES.c.id, STEPS.c.id)


def load(connection: Connection, patient: PatientRecord,
         procedures: list[ProcedureRecord]) -> OrderState:
    """Read the patient and the orders the message's order numbers find, with their
    procedures and steps, in one query: one row per step, the patient's columns on
    every row (a row of NULLs when nothing is found)."""
    keys: list[tuple[str, str, str]] = []
    for p in procedures:
        for key in (("placer", p.placer_order_number, p.placer_issuer),
                    ("filler", p.filler_order_number, p.filler_issuer)):
            if key[1] and key not in keys:
                keys.append(key)
    params = {"patient_id": patient.patient_id, "issuer": patient.issuer}
    for n, (_kind, number, issuer) in enumerate(keys):
        params[f"number_{n}"], params[f"issuer_{n}"] = number, issuer
    reading = _reading(tuple(k[0] for k in keys))
    names = [c.key for c in reading.selected_columns]
    rows = [dict(zip(names, row, strict=True))
            for row in select_rows(connection, reading, params)]
    orders: dict[int, Order] = {}
    found: dict[int, Procedure] = {}
    for row in rows:
        if row["o_id"] is None:
            continue
        order = orders.get(row["o_id"])
        if order is None:
            stored = {name: row[f"o_{name}"] for name in _ORDER_COLUMNS}
            order = orders[row["o_id"]] = Order(**stored, stored=stored)
        if row["p_id"] is None:
            continue
        procedure = found.get(row["p_id"])
        if procedure is None:
            stored = {name: row[f"p_{name}"] for name in _PROCEDURE_COLUMNS}
            procedure = found[row["p_id"]] = Procedure(
                stored["id"], stored["order_pk"], stored["attributes"],
                {name: stored[name] for name in _PROCEDURE_MATCHING}, stored=stored)
            order.procedures.append(procedure)
        if row["s_id"] is not None:
            stored = {name: row[f"s_{name}"] for name in _STEP_COLUMNS}
            procedure.steps.append(Step(
                stored["id"], stored["procedure_pk"], stored["placer_step_key"],
                stored["status"], stored["station_rule"], stored["attributes"],
                {name: stored[name] for name in _STEP_MATCHING}, stored=stored))
    first = rows[0]
    return OrderState(None if first["patient"] is None
                      else (first["patient"], first["merged_into"]), list(orders.values()))


def lookup_keys(patient: PatientRecord, procedures: list[ProcedureRecord]) -> set[Key]:
    """What :func:`load` looks rows up by for a message: the patient's identifier and
    the order numbers (each with its namespace)."""
    keys: set[Key] = {("patient", patient.patient_id, patient.issuer)}
    for p in procedures:
        if p.placer_order_number:
            keys.add(("placer", p.placer_order_number, p.placer_issuer))
        if p.filler_order_number:
            keys.add(("filler", p.filler_order_number, p.filler_issuer))
    return keys


def written_keys(patient: PatientRecord, state: OrderState) -> set[Key]:
    """The lookup keys (:func:`lookup_keys`) of the rows :func:`write` writes for
    ``state``: a message that looks up none of them reads the same rows before and
    after that write."""
    keys: set[Key] = {("patient", patient.patient_id, patient.issuer)}
    for o in state.orders:
        if o.placer_order_number:
            keys.add(("placer", o.placer_order_number, o.placer_issuer))
        if o.filler_order_number:
            keys.add(("filler", o.filler_order_number, o.filler_issuer))
    return keys


def write(connection: Connection, states: list[OrderState]) -> None:
    """Insert the new rows and update the changed ones of ``states`` (disjoint: no row
    in two of them): one statement per table and kind (new rows, each set of changed
    columns), parents before children."""
    patients = [s.new_patient for s in states if s.new_patient is not None]
    if patients:
        insert_rows(connection, PATIENTS, patients)
    orders = [o for s in states for o in s.orders]
    procedures = [p for o in orders for p in o.procedures]
    steps = [s for p in procedures for s in p.steps]
    for target, rows in ((ORDERS, orders), (PROCEDURES, procedures), (STEPS, steps)):
        new = [r.row() for r in rows if r.stored is None]
        if new:
            insert_rows(connection, target, new)
        update_rows(connection, target, [(r.id, changed(r.stored, r.row()))
                                     for r in rows if r.stored is not None])
    retitled = [s for s in steps if s.stored is None or station_ae_titles(s.attributes)
                != station_ae_titles(s.stored["attributes"])]
    stale = [s.id for s in retitled if s.stored is not None]
    if stale:
        connection.execute(_CLEARING_TITLES, {"steps": stale})
    titles = [{"sps_pk": s.id, "position": position, "ae_title": title}
              for s in retitled for position, title in enumerate(station_ae_titles(s.attributes))]
    if titles:
        insert_rows(connection, STATION_AE_TITLES, titles)
    history = [change for s in states for change in s.history]
    if history:
        insert_rows(connection, HISTORY, history)
