"""Batches of stored messages applied in one transaction (``process_batch``, the
apply-messages use case), on SQLite and PostgreSQL: each message keeps its own
outcome (all of it or nothing of it; HL7 v2.5.1 2.9.2 application acknowledgement
with the Table 0357 code of a refusal), and the messages of one patient apply in
arrival order whatever order the batch lists them in."""

from __future__ import annotations

import pytest
from sqlalchemy import select, text

from broker.models import InboundMessage, MessageStatus, Patient, ScheduledProcedureStep
from broker.services.processing import lock_key, process_batch
from tests.builders import order
from tests.conftest import sample
from tests.service.conftest import Services
from tests.service.messages import PATIENT_05, edited
from tests.service.test_orders import assert_failed, assert_processed, starts


def applied_order(services: Services, pks: list[int]) -> list[int]:
    rows = [services.message(pk) for pk in pks]
    return [row.id for row in sorted(rows, key=lambda r: (r.processed_at, r.id))]


def test_a_refused_message_fails_alone_and_the_others_are_applied(
        services: Services) -> None:
    """One message of the batch is refused (a change to an order nobody placed: AE 204
    at ORC-2): it alone is recorded failed with its AE, and nothing of it is kept; the
    messages around it reach the worklist."""
    first = services.store(order(1))
    refused = services.store(edited("06", "XO-UNKNOWN"))
    last = services.store(order(2))
    assert services.use_cases.apply_messages([first, refused, last]) == 3
    assert_processed(services.message(first))
    assert_failed(services.message(refused), 204, "ORC^1^2")
    assert_processed(services.message(last))
    assert sorted(services.steps()) == ["SPS1", "SPS2"]
    assert services.use_cases.apply_messages([first, refused, last]) == 0  # idempotent


def test_one_patients_messages_apply_in_arrival_order_whatever_the_batch_order(
        services: Services) -> None:
    """The batch lists a patient's reschedule (XO) before the order it changes (NW),
    with another patient's order between: the NW is applied first, so the XO finds its
    order and its start time stays."""
    nw = services.store(sample("05"))
    other = services.store(order(7))
    xo = services.store(sample("06"))
    assert process_batch(services.factory, [xo, other, nw], services.map) == 3
    for pk in (nw, other, xo):
        assert_processed(services.message(pk))
    assert starts(services)["SPS0001"] == "20250310110000"
    assert applied_order(services, [nw, other, xo]) == [nw, other, xo]


def test_an_earlier_waiting_message_of_the_patient_is_applied_first(
        services: Services) -> None:
    """A batch holding only the XO still applies the patient's earlier waiting NW
    before it; another patient's waiting message is left to its own task."""
    nw = services.store(sample("05"))
    waiting = services.store(order(8))
    xo = services.store(sample("06"))
    assert process_batch(services.factory, [xo], services.map) == 2
    assert_processed(services.message(nw))
    assert_processed(services.message(xo))
    assert services.message(waiting).status == MessageStatus.RECEIVED.value
    assert starts(services)["SPS0001"] == "20250310110000"
    assert applied_order(services, [nw, xo]) == [nw, xo]


def test_a_long_batch_of_many_patients_applies_each_once_in_order(
        services: Services) -> None:
    """120 orders of 20 patients (6 each), listed newest first, one message already
    applied by an earlier task: applied in several transactions, every order has its
    step, none twice, each patient's in arrival order."""
    numbers = range(100, 220)
    pks = [services.store(order(n, patients=20)) for n in numbers]
    assert services.use_cases.apply_message(pks[5]) == 1
    assert services.use_cases.apply_messages(pks[::-1]) == 119
    assert services.count(ScheduledProcedureStep) == 120
    with services.factory() as session:
        statuses = set(session.scalars(select(InboundMessage.status)))
    assert statuses == {MessageStatus.PROCESSED.value}
    for patient in range(20):
        mine = [pk for n, pk in zip(numbers, pks, strict=True) if n % 20 == patient]
        assert applied_order(services, mine) == mine


REFUSING_SQLITE = ("CREATE TRIGGER refuse_patient BEFORE INSERT ON patient "
                   "WHEN NEW.patient_id = 'BP2' BEGIN SELECT RAISE(ABORT, 'refused'); END")
REFUSING_POSTGRESQL = (
    "CREATE FUNCTION refuse_patient() RETURNS trigger AS $$ BEGIN "
    "IF NEW.patient_id = 'BP2' THEN RAISE EXCEPTION 'refused' USING ERRCODE = '23514'; "
    "END IF; RETURN NEW; END $$ LANGUAGE plpgsql; "
    "CREATE TRIGGER refuse_patient BEFORE INSERT ON patient "
    "FOR EACH ROW EXECUTE FUNCTION refuse_patient()")
DROPPING = {"sqlite": ["DROP TRIGGER refuse_patient"],
            "postgresql": ["DROP TRIGGER refuse_patient ON patient",
                           "DROP FUNCTION refuse_patient()"]}


def test_a_message_the_database_refuses_fails_alone_with_207(services: Services) -> None:
    """The batch's writes are held and made together; when the database refuses one
    message's rows (here a trigger refuses its patient: an integrity error), the batch
    is applied again a savepoint each: that message alone fails with 207 after one
    attempt, the others are applied, and nothing of the refused one is kept."""
    pks = [services.store(order(n)) for n in (1, 2, 3)]
    with services.factory() as session, session.begin():
        dialect = session.get_bind().dialect.name
        session.execute(text(REFUSING_SQLITE if dialect == "sqlite" else REFUSING_POSTGRESQL))
    try:
        assert services.use_cases.apply_messages(pks) == 3
    finally:
        with services.factory() as session, session.begin():
            for statement in DROPPING[dialect]:
                session.execute(text(statement))
    first, refused, last = (services.message(pk) for pk in pks)
    assert_processed(first)
    assert_processed(last)
    assert (refused.status, refused.error_code, refused.attempts) == ("failed", 207, 1)
    assert "IntegrityError" in (refused.error_text or "")
    assert sorted(services.steps()) == ["SPS1", "SPS3"]
    assert services.count(Patient) == 2


def test_a_refused_order_of_a_new_patient_creates_no_patient(services: Services) -> None:
    """A refused message between two new orders (XO of an order nobody placed: AE 204)
    names a patient nobody knows: it is not created; the orders around it are applied."""
    first = services.store(order(1))
    refused = services.store(edited(order(2), "XO-2", order_control="XO"))
    last = services.store(order(3))
    assert services.use_cases.apply_messages([first, refused, last]) == 3
    assert_failed(services.message(refused), 204, "ORC^1^2")
    with services.factory() as session:
        assert sorted(session.scalars(select(Patient.patient_id))) == ["BP1", "BP3"]


def test_an_adt_between_orders_of_its_patient_sees_them(services: Services) -> None:
    """NW for an unknown patient, an A08 for that patient, then an XO of the order, in
    one batch: the A08 updates the patient the NW created (no second patient), the XO
    finds the order."""
    nw = services.store(sample("05"))
    a08 = services.store(edited("03", "A08-05", patient_id=PATIENT_05))
    xo = services.store(sample("06"))
    assert services.use_cases.apply_messages([nw, a08, xo]) == 3
    for pk in (nw, a08, xo):
        assert_processed(services.message(pk))
    assert services.patient(PATIENT_05).patient_name.startswith("Müller-Lüdenscheidt")
    assert services.count(Patient) == 1
    assert starts(services)["SPS0001"] == "20250310110000"


def test_a_task_takes_other_waiting_messages_ahead(services: Services) -> None:
    """A worker's task (``ahead``) applies its message and, in the same transaction,
    the other messages waiting, each patient's in arrival order; their own tasks then
    find nothing left to do."""
    nw = services.store(sample("05"))
    others = [services.store(order(n)) for n in (11, 12, 13)]
    xo = services.store(sample("06"))
    assert services.use_cases.apply_message(others[0], ahead=True) == 5
    for pk in (nw, *others, xo):
        assert_processed(services.message(pk))
    assert starts(services)["SPS0001"] == "20250310110000"
    assert applied_order(services, [nw, xo]) == [nw, xo]
    assert services.use_cases.apply_message(xo, ahead=True) == 0


@pytest.mark.postgres
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_messages_taken_ahead_skip_a_patient_another_transaction_holds(
        services: Services) -> None:
    """While another transaction holds a patient's ordering key (a worker applying
    that patient's messages), a task taking messages ahead leaves that patient's
    waiting message to it instead of waiting for it."""
    mine = services.store(order(21))
    held = services.store(order(22))
    later = services.store(order(23))
    key = services.message(held).ordering_key
    with services.factory() as other, other.begin():
        lock_key(other, key)
        assert services.use_cases.apply_message(mine, ahead=True) == 2
    assert_processed(services.message(later))
    assert services.message(held).status == MessageStatus.RECEIVED.value


FAILING_POSTGRESQL = (
    "CREATE FUNCTION fail_patient() RETURNS trigger AS $$ BEGIN "
    "IF NEW.patient_id = 'BP32' THEN RAISE EXCEPTION 'failing'; END IF; "
    "RETURN NEW; END $$ LANGUAGE plpgsql; "
    "CREATE TRIGGER fail_patient BEFORE INSERT ON patient "
    "FOR EACH ROW EXECUTE FUNCTION fail_patient()")


@pytest.mark.postgres
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_failing_message_taken_ahead_does_not_fail_the_task(services: Services) -> None:
    """A waiting message whose application fails with a database error that is not a
    refusal of its data (it is left waiting, for its own task's retries) does not fail
    the task of another message that took it ahead: that task applies its own."""
    failing = services.store(order(32))
    mine = services.store(order(33))
    with services.factory() as session, session.begin():
        session.execute(text(FAILING_POSTGRESQL))
    try:
        assert services.use_cases.apply_message(mine, ahead=True) == 1
    finally:
        with services.factory() as session, session.begin():
            session.execute(text("DROP TRIGGER fail_patient ON patient"))
            session.execute(text("DROP FUNCTION fail_patient()"))
    assert_processed(services.message(mine))
    assert services.message(failing).status == MessageStatus.RECEIVED.value
