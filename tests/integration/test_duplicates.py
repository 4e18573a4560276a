"""Duplicates by content, not by key alone (HL7 v2.5.1 2.10.1): a message is a
duplicate only when its (MSH-3, MSH-4, MSH-10) AND its content (everything but MSH-7)
match a stored one; then the stored ACK is replayed and nothing new happens. The same
key with other content is a new message: stored, processed, flagged. An ACK is never
replayed to a message it was not built for."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import sample
from tests.console import add_users, client
from tests.dcmtk import findscu
from tests.integration.hl7util import send, set_field
from tests.integration.rows import stored

pytestmark = pytest.mark.dcmtk


def patients_on_worklist(broker: Any) -> set[str]:
    return {str(ds.PatientID) for ds in findscu(broker.dicom_port, ["PatientID"])}


def another_patients_order(message: bytes, n: int) -> bytes:
    """Sample 09 for another patient, with its own order, step and study ids."""
    for old, new in ((b"864209", b"86420%d" % n), (b"ACC0002", b"ACC009%d" % n),
                     (b"PLC-2002", b"PLC-209%d" % n), (b"FIL-6002", b"FIL-609%d" % n),
                     (b"RP0002", b"RP009%d" % n), (b"SPS0003", b"SPS009%d" % n),
                     (b"SPS0004", b"SPS019%d" % n),
                     (b"2.25.66162651962910795921398064868634157122", b"2.25.9900%d" % n)):
        message = message.replace(old, new)
    return message


def test_same_bytes_twice_replays_the_ack(make_broker: Any) -> None:
    broker = make_broker()
    first, second = send(broker.mllp_port, sample("05"), sample("05"))
    assert first.code == "AA" and first.raw == second.raw
    assert len(stored(broker)) == 1
    assert len(findscu(broker.dicom_port, ["AccessionNumber=ACC0001"])) == 2


def test_same_content_with_a_new_msh7_is_a_duplicate(make_broker: Any) -> None:
    """A resend with a fresh time of sending is the same message."""
    broker = make_broker()
    [first] = send(broker.mllp_port, sample("05"))
    [resent] = send(broker.mllp_port, set_field(sample("05"), "MSH", 7, "20250310090000"))
    assert resent.raw == first.raw
    [row] = stored(broker)
    assert not row.control_id_reused


def test_same_key_with_another_event_is_processed_as_new(make_broker: Any) -> None:
    """A counter reset: an ADT^A08 arrives with the MSH-10 of an earlier order. It gets
    its own ACK (ACK^A08, not the order's), is applied, and the reuse is flagged."""
    broker = make_broker()
    [order_ack] = send(broker.mllp_port, sample("05"))
    update = set_field(sample("03"), "MSH", 10, "ORM0005")
    [ack] = send(broker.mllp_port, update)
    assert ack.code == "AA" and ack.control_id == "ORM0005"
    assert ack.raw != order_ack.raw
    assert b"ACK^A08" in ack.raw
    first, second = stored(broker)
    assert (first.message_type, second.message_type) == ("ORM^O01", "ADT^A08")
    assert second.status == "processed" and second.control_id_reused
    assert [w["code"] for w in second.warnings or []] == [205]
    assert not first.control_id_reused


def test_same_key_with_another_patient_reaches_the_worklist(make_broker: Any) -> None:
    """The v2.5.1 order (OMI) with its MSH-10 reused for another patient: AA with an ERR
    of severity W naming MSH-10, and both patients' steps on the worklist."""
    broker = make_broker()
    assert send(broker.mllp_port, sample("09"))[0].code == "AA"
    [ack] = send(broker.mllp_port, another_patients_order(sample("09"), 1))
    assert ack.code == "AA" and ack.control_id == "OMI0009"
    assert "|W|" in ack.err and "MSH^1^10" in ack.err and "205" in ack.err
    assert patients_on_worklist(broker) == {"864209", "864201"}
    assert [r.control_id_reused for r in stored(broker)] == [False, True]


def test_store_ack_mode_flags_the_reuse_in_the_ack(make_broker: Any) -> None:
    """In store ACK mode the AA is built at receipt; a reused key is known by then."""
    broker = make_broker(ack_mode="store")
    send(broker.mllp_port, sample("09"))
    other = another_patients_order(sample("09"), 2)
    [ack] = send(broker.mllp_port, other)
    assert ack.code == "AA" and "|W|" in ack.err and "205" in ack.err
    [again] = send(broker.mllp_port, other)  # and that message resent is a duplicate
    assert again.raw == ack.raw
    assert len(stored(broker)) == 2


def test_warnings_are_visible_in_the_console_and_metrics(make_broker: Any) -> None:
    broker = make_broker()
    send(broker.mllp_port, sample("05"))
    send(broker.mllp_port, set_field(sample("03"), "MSH", 10, "ORM0005"))
    add_users(broker)
    viewer = client(broker, "viewer")
    flagged = viewer.get("/api/messages", params={"warnings": "true"}).json()
    assert [m["type"] for m in flagged] == ["ADT^A08"]
    assert flagged[0]["control_id_reused"] and "205" in flagged[0]["warnings"][0]
    assert viewer.get("/api/dashboard").json()["hl7_inbound"]["with_warnings"] == 1
    metrics = viewer.get("/metrics").text
    assert "mwlb_hl7_control_id_reused_total 1.0" in metrics
    assert "mwlb_hl7_messages_with_warnings_total 1.0" in metrics
