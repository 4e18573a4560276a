"""Original-mode ACKs (HL7 v2.5.1 2.9.2; ERR with Table 0357 codes), checked against
hl7apy's parser."""

from __future__ import annotations

import pytest
from hl7apy.parser import parse_message

from broker.hl7.ack import ack_code_of, build_ack, escape
from broker.hl7.errors import HL7Error, field_error
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


@pytest.mark.parametrize(("version", "msh9", "msh12"), [
    ("2.1", "ACK", "2.1"),
    ("2.2", "ACK", "2.2"),
    ("2.3", "ACK^O01", "2.3"),
    ("2.3.1", "ACK^O01", "2.3.1"),
    ("2.4", "ACK^O01", "2.4"),
    ("2.5", "ACK^O01^ACK", "2.5"),
    ("2.6", "ACK^O01^ACK", "2.6"),
    ("2.7.1", "ACK^O01^ACK", "2.7.1"),
    ("2.8", "ACK^O01^ACK", "2.8"),
    ("2.8.2", "ACK^O01^ACK", "2.8.2"),
    ("2.9", "ACK^O01^ACK", "2.5.1"),  # not a version we know: 2.5.1
    ("", "ACK^O01^ACK", "2.5.1"),
    ("banana", "ACK^O01^ACK", "2.5.1"),
])
def test_ack_version_and_message_type_follow_the_inbound(version: str, msh9: str,
                                                         msh12: str) -> None:
    inbound = parse(sample("05").replace(b"|P|2.3.1", f"|P|{version}".encode(), 1))
    ack = build_ack(inbound, "AA")
    msh = ack.split(b"\r")[0].decode().split("|")
    assert (msh[8], msh[11]) == (msh9, msh12)
    if msh12 not in ("2.1", "2.7.1"):  # hl7apy knows the others
        parsed = parse_message(ack.decode(), find_groups=False)
        assert parsed.msa.msa_2.value == "ORM0005"


def test_ack_msh18_only_from_v23() -> None:
    utf8 = sample("01")
    assert b"UNICODE UTF-8" in build_ack(parse(utf8), "AA")
    old = parse(utf8.replace(b"|P|2.3.1", b"|P|2.2", 1))
    assert b"UNICODE UTF-8" not in build_ack(old, "AA")


def test_v22_ack_uses_the_err_1_layout() -> None:
    inbound = parse(sample("05").replace(b"|P|2.3.1", b"|P|2.2", 1))
    ack = build_ack(inbound, "AE", field_error(101, "PID", 3, "PID-3 is required"))
    assert b"\rERR|PID^1^3^101&Required field missing&HL70357\r" in ack


@pytest.mark.parametrize("mutate", [
    lambda m: m.replace(b"MSH|^~\\&|", b"MSH|^~^&|", 1),  # bad encoding characters
    lambda m: m.replace(b"|P|2.3.1", b"|P|2.3.1||||||X-UNKNOWN", 1).replace(b"Doe", b"D\xf6e"),
    lambda m: m.replace(b"|P|2.3.1", b"|P|2.3.1||||||UNICODE UTF-8", 1).replace(b"Doe",
                                                                              b"D\xf6e"),
])
def test_a_refusal_with_a_readable_header_echoes_msh10_and_swaps_routing(mutate) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(HL7Error) as caught:
        parse(mutate(sample("05")))
    error = caught.value
    ack = build_ack(error.partial, error.ack_code, error)
    msh, msa = [s.decode().split("|") for s in ack.split(b"\r")[:2]]
    assert msh[2:6] == ["MWLBROKER", "RADIOLOGY", "EHR", "HOSP"]
    assert msh[8] == "ACK^O01" and msh[11] == "2.3.1"
    assert msa[1:3] == [error.ack_code, "ORM0005"]
    assert "X-UNKNOWN" not in ack.decode("latin-1")  # not claimed as the ACK's charset


def test_warnings_are_err_w_from_25_only() -> None:
    quirky = b"\xef\xbb\xbf" + sample("09").replace(b"\r", b"\n")
    inbound = parse(quirky)
    ack = build_ack(inbound, "AA", warnings=inbound.warnings).split(b"\r")
    errs = [s for s in ack if s.startswith(b"ERR")]
    assert len(errs) == 2 and all(s.split(b"|")[4] == b"W" for s in errs)
    assert errs[0].split(b"|")[2] == b"MSH^1" and b"byte order mark" in errs[0]
    old = parse(b"\xef\xbb\xbf" + sample("05"))
    assert b"ERR" not in build_ack(old, "AA", warnings=old.warnings)


def test_v231_err_1_keeps_its_positions_without_a_field() -> None:
    from broker.hl7.errors import ErrorLocation

    error = HL7Error(100, "too many segments", ErrorLocation("ORC", sequence=2))
    v231 = build_ack(parse(sample("05")), "AR", error)
    assert b"\rERR|ORC^2^^100&Segment sequence error&HL70357\r" in v231
    v251 = build_ack(parse(sample("09")), "AR", error)
    assert b"\rERR||ORC^2|100^Segment sequence error^HL70357|E" in v251
