"""Original-mode ACKs (checklist B1, B4), checked against hl7apy's parser."""

from __future__ import annotations

import pytest
from hl7apy.parser import parse_message

from broker.hl7.ack import ack_code_of, build_ack, escape
from broker.hl7.errors import field_error
from broker.hl7.message import Delimiters, parse
from tests.conftest import sample


@pytest.mark.parametrize("name", ["01", "05", "09"])
def test_ack_is_valid_hl7_with_swapped_routing(name: str) -> None:
    inbound = parse(sample(name))
    ack = build_ack(inbound, "AA")
    assert b"\n" not in ack and ack.endswith(b"\r")
    parsed = parse_message(ack.decode(inbound.charset.codec).replace("\r", "\r"),
                           find_groups=False)
    msh = parsed.msh
    assert msh.msh_3.value == inbound.msh.get(5) and msh.msh_5.value == inbound.msh.get(3)
    assert msh.msh_4.value == inbound.msh.get(6) and msh.msh_6.value == inbound.msh.get(4)
    assert parsed.msa.msa_1.value == "AA"
    assert parsed.msa.msa_2.value == inbound.control_id
    assert msh.msh_12.value == inbound.version
    assert msh.msh_10.value != inbound.control_id


def test_message_type_by_version() -> None:
    assert b"|ACK^O01|" in build_ack(parse(sample("05")), "AA")
    assert b"|ACK^O23^ACK|" in build_ack(parse(sample("09")), "AA")


def test_err_segment_v231_and_v251() -> None:
    error = field_error(101, "PID", 3, "PID-3 is required")
    v231 = build_ack(parse(sample("05")), "AE", error).split(b"\r")
    assert b"ERR|PID^1^3^101&Required field missing&HL70357" in v231
    v251 = build_ack(parse(sample("09")), "AE", error).split(b"\r")
    assert any(s.startswith(b"ERR||PID^1^3|101^Required field missing^HL70357|E") for s in v251)
    parsed = parse_message(b"\r".join(v251).decode(), find_groups=False)
    assert parsed.err.err_3.err_3_1.value == "101"


def test_each_ack_has_a_new_control_id() -> None:
    inbound = parse(sample("05"))
    assert build_ack(inbound, "AA").split(b"|")[9] != build_ack(inbound, "AA").split(b"|")[9]


def test_text_is_escaped() -> None:
    d = Delimiters()
    assert escape("a|b^c&d~e\\f", d) == "a\\F\\b\\S\\c\\T\\d\\R\\e\\E\\f"


def test_unreadable_message_gets_a_minimal_ack() -> None:
    ack = build_ack(None, "AR", field_error(100, "MSH", 0, "no MSH"))
    assert ack.startswith(b"MSH|^~\\&|") and b"\rMSA|AR||" in ack
    assert ack_code_of(ack) == "AR"


def test_ack_in_message_charset() -> None:
    inbound = parse(sample("01"))  # UTF-8
    ack = build_ack(inbound, "AE", text="Müller unknown")
    assert "Müller".encode() in ack and b"UNICODE UTF-8" in ack
