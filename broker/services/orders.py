"""Apply a mapped ORM^O01 / OMI^O23 to orders, requested procedures and steps.

IHE RAD-2/RAD-3 (new orders) and RAD-4/RAD-13 (changes); the ORC-1/ORC-5 semantics
are decided in :mod:`broker.domain.lifecycle`. Rules this module enforces:

* ADT is authoritative for demographics (IHE RAD-13 forbids updating the patient
  from an order's PID/PV1; applied to every order): an order only creates an
  unknown patient; it never changes a known one.
* Orders are found by placer order number (ORC-2, with its namespace), else by filler
  order number (ORC-3); procedures by Requested Procedure ID; steps by SPS ID or,
  when the placer sent none, by their position in the message.
* Identifiers the placer did not send are generated once and kept (the DSS/Order
  Filler assigns them, IHE RAD TF-2 4.4 (RAD-4)): accession ``MWB`` + order number
  (shared by all procedures of the order), RP ID ``RP`` + number, SPS ID ``SPS`` +
  number, Study Instance UID ``2.25.`` + UUID.
* NW for a step that exists -> AE 205; XO/CA/DC/SC for an unknown order, procedure or
  step -> AE 204 (nothing is created; the sender resends in order); changes to a
  final step -> AE 206.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from sqlalchemy import Connection, Table

from broker.domain import lifecycle
from broker.domain.errors import OrderRule, OrderRuleError
from broker.domain.lifecycle import Decision, OrderAction
from broker.domain.types import OrderMessage, PatientRecord, ProcedureRecord, StepRecord
from broker.hl7.errors import ErrorCode, ErrorLocation, HL7Error, field_error
from broker.hl7.warnings import TABLE_VALUE, warn
from broker.models import InboundMessage, SPSStatus
from broker.services import order_state
from broker.services.order_state import (
    ORDERS,
    PATIENTS,
    PROCEDURES,
    STEPS,
    Order,
    OrderState,
    Procedure,
    Step,
)
from broker.services.patients import patient_values, survivor
from broker.services.records import merge_attributes
from broker.services.rows import KeyPool
from broker.services.ups.from_orders import workitems_for_steps

GENERATED_ACCESSION_PREFIX = "MWB"


def generate_study_uid() -> str:
    """A Study Instance UID under the UUID-derived root 2.25 (PS3.5 B.2)."""
    return f"2.25.{uuid.uuid4().int}"


@dataclass
class _Unit:
    """What every step of one message is applied with."""

    state: OrderState
    keys: KeyPool
    patient_pk: int
    inbound: InboundMessage
    profile: str
    outcome: list[str] = field(default_factory=list)

    @property
    def cause(self) -> str:
        return step_cause(self.inbound)


def step_cause(inbound: InboundMessage) -> str:
    """How the step history (and the UPS events) name the message that changed them."""
    return f"HL7 message {inbound.id}, MSH-10 {inbound.control_id}"


def apply_order(connection: Connection, message: OrderMessage,
                inbound: InboundMessage) -> list[str]:
    """Apply every procedure and step of ``message``; returns outcome lines (ids only).

    The stored state is read in one query and changed in memory (:func:`prepare_order`);
    the changes are written when every step has been applied, then the steps' UPS
    workitems (:func:`~broker.services.ups.from_orders.workitems_for_steps`). Raises
    HL7Error for the whole message, before anything is written, so a message is applied
    completely or not at all.
    """
    state, outcome = prepare_order(connection, message, inbound)
    order_state.write(connection, [state])
    return outcome + workitems_for_steps(connection, state, message.workitems,
                                         cause=step_cause(inbound))


def prepare_order(connection: Connection, message: OrderMessage, inbound: InboundMessage,
                  *, handed_out: dict[Table, int] | None = None
                  ) -> tuple[OrderState, list[str]]:
    """:func:`apply_order` up to the write: the state with the message applied, to
    write with :func:`broker.services.order_state.write`, and the outcome lines. Reads
    only; raises HL7Error when the message is refused. ``handed_out`` carries the
    last primary keys taken between messages whose rows are written together
    (:class:`~broker.services.rows.KeyPool`)."""
    outcome: list[str] = []
    state = order_state.load(connection, message.patient, message.procedures)
    keys = KeyPool(connection, _rows_to_create(state, message), handed_out=handed_out)
    patient_pk = _patient_for_order(connection, state, keys, message.patient, outcome)
    unit = _Unit(state, keys, patient_pk, inbound, message.profile, outcome)
    sequence = 0
    for procedure in message.procedures:
        decisions = []
        for step in procedure.steps:
            sequence += 1
            decisions.append((step, decide(step, sequence), sequence))
        order = _find_order(state, procedure)
        for step, decision, seq in decisions:
            order = _apply_step(unit, order, procedure, step, decision, seq)
    return state, outcome


def _rows_to_create(state: OrderState, message: OrderMessage) -> dict[Table, int]:
    """How many orders, procedures and steps the message is expected to create: those
    of its records not stored yet. New rows get their keys before they are written
    (one statement for all), so that generated identifiers go in with the row."""
    orders: set[tuple[str, str, str, str]] = set()
    procedures = steps = 0
    for procedure in message.procedures:
        order = state.find_order(procedure)
        rp = None if order is None else _find_procedure(order, procedure)
        if order is None:
            orders.add((procedure.placer_order_number, procedure.placer_issuer,
                        procedure.filler_order_number, procedure.filler_issuer))
        procedures += rp is None
        steps += sum(rp is None or _find_step(rp, step) is None for step in procedure.steps)
    return {PATIENTS: int(state.patient is None), ORDERS: len(orders),
            PROCEDURES: procedures, STEPS: steps}


def order_rule_error(err: OrderRuleError) -> HL7Error:
    """The HL7 error a lifecycle refusal is answered with (HL7 v2.5.1 2.9.2, ERR with
    its Table 0357 code), located at ORC-1 of the group: 101 for no order control,
    103 for a control/status pair outside the order control table (4.5.1, Tables
    0119/0038), 206 for a change to a final step."""
    if err.rule is OrderRule.MISSING_CONTROL:
        return field_error(ErrorCode.REQUIRED_FIELD_MISSING, "ORC", 1,
                           "ORC-1 order control is required", sequence=err.sequence)
    if err.rule is OrderRule.UNSUPPORTED_CONTROL:
        return field_error(
            ErrorCode.TABLE_VALUE_NOT_FOUND, "ORC", 1,
            f"order control {err.control} with order status {err.status or '(empty)'} "
            "is not supported", sequence=err.sequence)
    return field_error(ErrorCode.APPLICATION_RECORD_LOCKED, "ORC", 1,
                       f"step is {err.current} and can no longer be changed",
                       sequence=err.sequence)


def _warn_order_status_ignored(sequence: int) -> None:
    warn(TABLE_VALUE, "ORC-5 is not an HL7 Table 0038 order status: ignored",
         ErrorLocation("ORC", 5, sequence=sequence))


def decide(step: StepRecord, sequence: int) -> Decision:
    """The lifecycle's decision for one ORC group (:func:`broker.domain.lifecycle.decide`)
    in HL7 terms: a refusal raises HL7Error at ORC-1 (:func:`order_rule_error`); an
    ORC-5 that is no Table 0038 value adds a warning (code 103 at ORC-5, HL7 v2.5.1
    2.9.2 severity W) and the order control alone decides."""
    try:
        decision = lifecycle.decide(step.order_control, step.order_status, sequence=sequence)
    except OrderRuleError as err:
        if err.order_status_ignored:
            _warn_order_status_ignored(sequence)
        raise order_rule_error(err) from err
    if decision.order_status_ignored:
        _warn_order_status_ignored(sequence)
    return decision


def _patient_for_order(connection: Connection, state: OrderState, keys: KeyPool,
                       record: PatientRecord, outcome: list[str]) -> int:
    if state.patient is None:  # written with the orders (:func:`order_state.write`)
        created = keys.take(PATIENTS)
        state.new_patient = {"id": created, **patient_values(record)}
        outcome.append(f"patient {created} created from order")
        return created
    patient_pk, merged_into = state.patient
    current = survivor(connection, patient_pk, merged_into)
    if current != patient_pk:
        outcome.append(f"patient {patient_pk} was merged into {current}: order applied there")
    return current


def _find_order(state: OrderState, procedure: ProcedureRecord) -> Order | None:
    if not (procedure.placer_order_number or procedure.filler_order_number):
        raise field_error(ErrorCode.REQUIRED_FIELD_MISSING, "ORC", 2,
                          "placer (ORC-2) or filler (ORC-3) order number is required")
    return state.find_order(procedure)


def _apply_step(unit: _Unit, order: Order | None, procedure: ProcedureRecord,
                step: StepRecord, decision: Decision, sequence: int) -> Order:
    outcome = unit.outcome
    if decision.action is OrderAction.CREATE:
        return _create_step(unit, order, procedure, step, decision, sequence)
    if order is None:
        raise field_error(ErrorCode.UNKNOWN_KEY_IDENTIFIER, "ORC", 2,
                          "no order with this placer/filler order number", sequence=sequence)
    rp = _find_procedure(order, procedure)
    if rp is None:
        raise field_error(ErrorCode.UNKNOWN_KEY_IDENTIFIER, "OBR", 19,
                          "no requested procedure with this ID in the order", sequence=sequence)
    order.last_message_pk = unit.inbound.id
    if decision.action is OrderAction.CANCEL:
        _cancel(unit, rp, sequence)
    elif decision.action is OrderAction.DISCONTINUE:
        for sps in rp.steps:
            new = lifecycle.discontinue_outcome(SPSStatus(sps.status))
            if unit.state.set_status(sps, new, cause=unit.cause):
                outcome.append(f"step {sps.sps_id} {new.value}")
    else:
        found = _find_step(rp, step)
        if found is None:
            raise field_error(ErrorCode.UNKNOWN_KEY_IDENTIFIER, "OBR", 20,
                              "no scheduled procedure step with this ID", sequence=sequence)
        sps = found
        if decision.action is OrderAction.UPDATE:
            try:
                lifecycle.require_updatable(SPSStatus(sps.status), sequence=sequence)
            except OrderRuleError as err:
                raise order_rule_error(err) from err
            _update(rp, sps, procedure, step)
            outcome.append(f"step {sps.sps_id} updated")
        else:
            assert decision.status is not None
            current = SPSStatus(sps.status)
            if not lifecycle.can_transition(current, decision.status):
                raise field_error(ErrorCode.APPLICATION_RECORD_LOCKED, "ORC", 5,
                                  f"step is {current.value}; cannot become "
                                  f"{decision.status.value}", sequence=sequence)
            if unit.state.set_status(sps, decision.status, cause=unit.cause):
                outcome.append(f"step {sps.sps_id} {decision.status.value}")
    return order


def _create_step(unit: _Unit, order: Order | None, procedure: ProcedureRecord,
                 step: StepRecord, decision: Decision, sequence: int) -> Order:
    inbound, outcome = unit.inbound, unit.outcome
    if order is None:
        order = Order(
            id=unit.keys.take(ORDERS),
            patient_pk=unit.patient_pk,
            placer_order_number=procedure.placer_order_number or None,
            placer_issuer=procedure.placer_issuer,
            filler_order_number=procedure.filler_order_number or None,
            filler_issuer=procedure.filler_issuer,
            sending_application=inbound.sending_application or "",
            sending_facility=inbound.sending_facility or "",
            profile=unit.profile,
            last_message_pk=inbound.id,
        )
        unit.state.orders.append(order)
        outcome.append(f"order {order.id} created")
    elif order.patient_pk != unit.patient_pk:
        raise field_error(ErrorCode.DUPLICATE_KEY_IDENTIFIER, "ORC", 2,
                          "order number already belongs to another patient", sequence=sequence)
    order.last_message_pk = inbound.id
    rp = _find_procedure(order, procedure)
    if rp is None:
        rp = _create_procedure(unit.keys, order, procedure)
        outcome.append(f"procedure {rp.requested_procedure_id} created")
    if _find_step(rp, step) is not None:
        raise field_error(ErrorCode.DUPLICATE_KEY_IDENTIFIER, "OBR", 20,
                          "scheduled procedure step already exists", sequence=sequence)
    assert decision.status is not None
    pk = unit.keys.take(STEPS)
    attributes = dict(step.attributes)
    if not attributes.get("ScheduledProcedureStepID"):
        attributes = {**attributes, "ScheduledProcedureStepID": f"SPS{pk:07d}"}
    sps = Step.new(pk, rp.id, step.placer_step_key, step.station_rule, attributes)
    rp.steps.append(sps)
    # A new step has no status yet: its history starts with the one decided.
    unit.state.set_status(sps, decision.status, cause=unit.cause)
    outcome.append(f"step {sps.sps_id} {decision.status.value}")
    return order


def _create_procedure(keys: KeyPool, order: Order, procedure: ProcedureRecord) -> Procedure:
    attributes = dict(procedure.attributes)
    if not attributes.get("AccessionNumber"):
        # Procedures of one order share the accession number.
        shared = next((p.accession_number for p in order.procedures if p.accession_number), "")
        attributes["AccessionNumber"] = shared or f"{GENERATED_ACCESSION_PREFIX}{order.id:07d}"
    if not attributes.get("StudyInstanceUID"):
        attributes["StudyInstanceUID"] = generate_study_uid()
    pk = keys.take(PROCEDURES)
    if not attributes.get("RequestedProcedureID"):
        attributes = {**attributes, "RequestedProcedureID": f"RP{pk:07d}"}
    rp = Procedure.new(pk, order.id, attributes)
    order.procedures.append(rp)
    return rp


def _procedure_code(attributes: dict[str, object]) -> str:
    codes = attributes.get("RequestedProcedureCodeSequence")
    if isinstance(codes, list) and codes and isinstance(codes[0], dict):
        return str(codes[0].get("CodeValue", ""))
    return ""


def _find_procedure(order: Order, procedure: ProcedureRecord) -> Procedure | None:
    rp_id = procedure.attributes.get("RequestedProcedureID")
    if rp_id:
        return next((p for p in order.procedures if p.requested_procedure_id == rp_id), None)
    # Placer sent no RP ID (the broker generated it): the order's only procedure,
    # else the one with the same requested procedure code.
    if len(order.procedures) == 1:
        return order.procedures[0]
    code = _procedure_code(procedure.attributes)
    matches = [p for p in order.procedures if code and _procedure_code(p.attributes) == code]
    return matches[0] if len(matches) == 1 else None


def _find_step(rp: Procedure, step: StepRecord) -> Step | None:
    sps_id = step.attributes.get("ScheduledProcedureStepID")
    if sps_id:
        return next((s for s in rp.steps if s.sps_id == sps_id), None)
    if step.placer_step_key:
        return next((s for s in rp.steps if s.placer_step_key == step.placer_step_key), None)
    return None


def _update(rp: Procedure, sps: Step, procedure: ProcedureRecord, step: StepRecord) -> None:
    """XO: replace what the message sends, keep what it leaves empty (HL7 null
    semantics: only ``""`` clears); identifiers the broker generated stay as they are."""
    keep = {"AccessionNumber", "RequestedProcedureID", "StudyInstanceUID"}
    rp_update = {k: v for k, v in procedure.attributes.items() if not (k in keep and not v)}
    rp.attributes = merge_attributes(rp.attributes, rp_update)
    rp.sync()
    sps_update = {k: v for k, v in step.attributes.items()
                  if not (k == "ScheduledProcedureStepID" and not v)}
    sps.attributes = merge_attributes(sps.attributes, sps_update)
    if step.station_rule:
        sps.station_rule = step.station_rule
    sps.sync()


def _cancel(unit: _Unit, rp: Procedure, sequence: int) -> None:
    statuses = [SPSStatus(s.status) for s in rp.steps]
    if statuses and all(s == SPSStatus.COMPLETED for s in statuses):
        raise field_error(ErrorCode.APPLICATION_RECORD_LOCKED, "ORC", 1,
                          "procedure is completed and cannot be cancelled", sequence=sequence)
    for sps, new in zip(rp.steps, lifecycle.cancel_outcomes(statuses), strict=True):
        if unit.state.set_status(sps, new, cause=unit.cause):
            unit.outcome.append(f"step {sps.sps_id} {new.value}")
