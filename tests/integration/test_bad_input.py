"""Bad input gets a typed answer and loses nothing (docs/swf-conformance.md B2-B4, A6): the ACK
names the field, nothing is half-written, the raw message stays in the store."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import create_engine, text

from broker.models import InboundMessage, Patient, ScheduledProcedureStep
from tests.conftest import sample
from tests.integration.hl7util import send, set_field
from tests.integration.rows import rows, stored


def count(broker: Any, model: type) -> int:
    return len(rows(broker, model))


@pytest.mark.parametrize(
    ("field", "value", "code", "err"),
    [
        (9, "ADT^A99^ADT_A01", 201, "ERR|MSH^1^9^201&Unsupported event code&HL70357"),
        (9, "XYZ^A01", 200, "ERR|MSH^1^9^200&Unsupported message type&HL70357"),
        (11, "X", 202, "ERR|MSH^1^11^202&Unsupported processing id&HL70357"),
        # The ACK echoes MSH-12, so a 2.9 message gets the 2.5+ ERR layout.
        (12, "2.9", 203, "ERR||MSH^1^12|203^Unsupported version id^HL70357|E"),
    ],
)
def test_unsupported_header_is_rejected_with_ar(make_broker: Any, field: int, value: str,
                                                code: int, err: str) -> None:
    """B3: AR with the Table 0357 code at the MSH field; the raw message is kept."""
    broker = make_broker()
    message = set_field(sample("03"), "MSH", field, value)
    [ack] = send(broker.mllp_port, message)
    assert ack.code == "AR"
    assert ack.control_id == "ADT0003"
    assert ack.err.startswith(err)
    [row] = stored(broker)
    assert row.status == "rejected" and row.raw == message and row.error_code == code
    assert count(broker, Patient) == 0


def test_missing_patient_id_is_ae_101_and_nothing_is_written(make_broker: Any) -> None:
    """B4: #05 with PID-3 emptied -> AE + ERR PID^1^3^101, no patient, no MWL item."""
    broker = make_broker()
    message = set_field(sample("05"), "PID", 3, "")
    [ack] = send(broker.mllp_port, message)
    assert ack.code == "AE"
    assert ack.err == "ERR|PID^1^3^101&Required field missing&HL70357"
    assert count(broker, Patient) == 0
    assert count(broker, ScheduledProcedureStep) == 0
    [row] = stored(broker)
    assert row.status == "failed" and row.error_code == 101 and row.raw == message


def test_v251_error_segment_encoding(make_broker: Any) -> None:
    broker = make_broker()
    [ack] = send(broker.mllp_port, set_field(sample("09"), "PID", 3, ""))
    assert ack.code == "AE"
    assert ack.err.startswith("ERR||PID^1^3|101^Required field missing^HL70357|E")


def test_bad_timestamp_is_ae_102(make_broker: Any) -> None:
    broker = make_broker()
    message = set_field(sample("05"), "ORC", 7, "1^once^^2025031X0930^^A")
    [ack] = send(broker.mllp_port, message)
    assert ack.code == "AE" and "^102&" in ack.err
    assert count(broker, ScheduledProcedureStep) == 0


def test_invalid_utf8_is_refused_without_partial_write(make_broker: Any) -> None:
    """A6: UTF-8 declared, byte 0xFC inside -> ERR 102 at MSH-18, nothing applied."""
    broker = make_broker()
    message = sample("01").replace("Müller".encode(), b"M\xfcller", 1)
    [ack] = send(broker.mllp_port, message)
    assert (ack.code, ack.control_id) == ("AE", "ADT0001")
    assert ack.err.startswith("ERR|MSH^1^18^102&Data type error&HL70357")
    assert count(broker, Patient) == 0
    [row] = stored(broker)
    assert row.raw == message


def test_unsupported_order_control_names_orc_1(make_broker: Any) -> None:
    broker = make_broker()
    [ack] = send(broker.mllp_port, set_field(sample("05"), "ORC", 1, "HD"))
    assert ack.code == "AE" and ack.err.startswith("ERR|ORC^1^1^103&")
    assert count(broker, ScheduledProcedureStep) == 0


def test_too_long_accession_is_refused_not_truncated(make_broker: Any) -> None:
    """D4: identifiers that overflow their VR are AE 102, never silently cut."""
    broker = make_broker()
    message = set_field(sample("05"), "OBR", 18, "A" * 17)
    [ack] = send(broker.mllp_port, message)
    assert ack.code == "AE" and "OBR^1^18^102" in ack.err
    assert count(broker, ScheduledProcedureStep) == 0


def test_database_failure_answers_ar_207_and_a_resend_is_applied_once(
    make_broker: Any,
) -> None:
    """B2: while the message store cannot commit, no AA; after recovery the resend is
    applied exactly once."""
    broker = make_broker()
    engine = create_engine(broker.settings.database_url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TRIGGER injected_failure BEFORE INSERT ON inbound_message "
                          "BEGIN SELECT RAISE(ABORT, 'injected failure'); END"))
    [ack] = send(broker.mllp_port, sample("05"))
    assert ack.code == "AR" and "^207&" in ack.err
    assert stored(broker) == []
    with engine.begin() as conn:
        conn.execute(text("DROP TRIGGER injected_failure"))
    engine.dispose()
    [ack] = send(broker.mllp_port, sample("05"))
    assert ack.code == "AA"
    assert count(broker, ScheduledProcedureStep) == 2


def test_store_ack_mode_acks_on_commit_and_shows_failures(make_broker: Any) -> None:
    """ACK mode `store`: AA once stored; the XO for an unknown order fails later and is
    visible as a failed message with its reason."""
    import time

    broker = make_broker(ack_mode="store")
    [ack] = send(broker.mllp_port, sample("06"))
    assert ack.code == "AA"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        [row] = stored(broker)
        if row.status != "received":
            break
        time.sleep(0.05)
    assert row.status == "failed" and row.error_code == 204
    assert row.ack_code == "AA"  # what was sent stays what a duplicate gets


def test_application_ack_mode_answers_with_the_outcome(make_broker: Any) -> None:
    broker = make_broker(ack_mode="application")
    [ack] = send(broker.mllp_port, sample("06"))
    assert ack.code == "AE" and "204" in ack.err


@pytest.mark.postgres
def test_too_long_order_namespace_is_ae_102(make_broker: Any, postgres_url: str) -> None:
    """Found by hand: ORC-2.2 over 64 characters reached PostgreSQL (DataError)."""
    broker = make_broker(database_url=postgres_url)
    message = sample("05")
    for occurrence in (0, 1):
        message = set_field(message, "ORC", 2, "PLC-1001^" + "E" * 65, occurrence=occurrence)
    [ack] = send(broker.mllp_port, message)
    assert ack.code == "AE" and "ORC^1^2^102" in ack.err  # 2.3.1 ERR-1: no component
    assert count(broker, ScheduledProcedureStep) == 0


def test_data_the_database_refuses_fails_the_message_instead_of_looping(
        make_broker: Any) -> None:
    """A database refusal that would repeat on every retry (an integrity or data error)
    fails the message with 207 and its reason; it does not retry forever."""
    broker = make_broker()
    engine = create_engine(broker.settings.database_url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TRIGGER refuse_orders BEFORE INSERT ON imaging_order "
                          "BEGIN SELECT RAISE(ABORT, 'refused by a trigger'); END"))
    [ack] = send(broker.mllp_port, sample("05"))
    assert ack.code == "AR" and "^207&" in ack.err
    [row] = stored(broker)
    assert (row.status, row.error_code, row.attempts) == ("failed", 207, 1)
    assert "IntegrityError" in (row.error_text or "")
    with engine.begin() as conn:
        conn.execute(text("DROP TRIGGER refuse_orders"))
    engine.dispose()
    from broker.services.processing import process_through, reset_for_reprocess

    with broker.runtime.session_factory() as session, session.begin():
        live = session.get(InboundMessage, row.id)
        assert live is not None and reset_for_reprocess(session, live)
    process_through(broker.runtime.session_factory, row.id, broker.runtime.map)
    assert count(broker, ScheduledProcedureStep) == 2
