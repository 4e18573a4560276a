"""Real EHR traffic over real MLLP: a sender's quirk (framing, MSH-18 spelling, an older
or newer version) is accepted and recorded as a warning; what would corrupt data is
refused, and every refusal whose header can be read still names the message (MSA-2)
and is routed back (MSH-5/6 = inbound MSH-3/4)."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path
from typing import Any

import pytest

from broker.models import InboundMessage, Patient, ScheduledProcedureStep
from tests.conftest import MAPPINGS, sample
from tests.dcmtk import findscu
from tests.integration.hl7util import Ack, drop_segments, send, set_field
from tests.integration.rows import rows, stored


def patients(broker: Any) -> list[Patient]:
    return rows(broker, Patient)


def steps(broker: Any) -> int:
    return len(rows(broker, ScheduledProcedureStep))


def ack_fields(ack: Ack) -> list[str]:
    return ack.raw.split(b"\r")[0].decode("utf-8", "replace").split("|")


def warning_texts(row: InboundMessage) -> list[str]:
    return [w["text"] for w in row.warnings or []]


def send_raw(port: int, payload: bytes) -> list[Ack]:
    """Write ``payload`` as is (framing included) and read one ACK per end block."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(payload)
        expected = payload.count(b"\x1c")
        data = b""
        while data.count(b"\x1c") < expected:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    return [Ack.parse(frame.strip(b"\x0b\r")) for frame in data.split(b"\x1c")[:-1]]


def with_version(message: bytes, version: str) -> bytes:
    return set_field(message, "MSH", 12, version)


def with_name(message: bytes, family: str, charset: str, encoding: str) -> bytes:
    """Sample 05 with PID-5.1 and MSH-18 replaced, encoded in ``encoding``."""
    text = set_field(set_field(message, "MSH", 18, charset), "PID", 5, family, component=1)
    return text.decode("utf-8").encode(encoding)


# -- framing ---------------------------------------------------------------------------

def test_bom_and_lf_are_accepted_with_warnings_stored_and_sent(make_broker: Any) -> None:
    broker = make_broker()
    message = b"\xef\xbb\xbf" + sample("09").replace(b"\r", b"\n") + b"\n\n"
    [ack] = send(broker.mllp_port, message)
    assert (ack.code, ack.control_id) == ("AA", "OMI0009")
    errs = [s for s in ack.raw.split(b"\r") if s.startswith(b"ERR")]
    assert len(errs) == 2 and all(s.split(b"|")[4] == b"W" for s in errs)
    [row] = stored(broker)
    assert row.status == "processed" and row.warning_count == 2
    texts = warning_texts(row)
    assert "UTF-8 byte order mark before MSH ignored" in texts
    assert any(t.startswith("segments end with LF") for t in texts)
    assert steps(broker) >= 1


def test_store_mode_keeps_reading_warnings_at_receipt(make_broker: Any) -> None:
    broker = make_broker(ack_mode="store")
    [ack] = send(broker.mllp_port, sample("05").replace(b"\r", b"\r\n"))
    assert ack.code == "AA" and b"ERR" not in ack.raw  # 2.3.1: no ERR severity
    [row] = stored(broker)
    assert any(t.startswith("segments end with CR LF") for t in warning_texts(row))


@pytest.mark.parametrize("tail", [b"\r\r\n\x1c\r", b"\n\x1c\r", b"\x1c", b"\r\x1c\r",
                                  b"   \r\n\x1c\r\n"])
def test_frame_tails_are_accepted(make_broker: Any, tail: bytes) -> None:
    broker = make_broker()
    message = sample("05").rstrip(b"\r")
    second = sample("01").rstrip(b"\r")
    acks = send_raw(broker.mllp_port, b"\x0b" + message + tail + b"\x0b" + second + tail
                    + (b"\r" if tail == b"\x1c" else b""))
    assert [(a.code, a.control_id) for a in acks] == [("AA", "ORM0005"), ("AA", "ADT0001")]
    assert all(r.warning_count == 0 for r in stored(broker))


def test_msh_split_by_a_segment_end_is_ar_and_the_connection_lives(make_broker: Any) -> None:
    broker = make_broker()
    broken = sample("05").replace(b"MSH|", b"MSH\r", 1)
    first, second = send(broker.mllp_port, broken, sample("05"))
    assert (first.code, first.control_id) == ("AR", "")
    assert first.err.startswith("ERR||MSH^1^1|102^Data type error^HL70357|E")
    assert (second.code, second.control_id) == ("AA", "ORM0005")
    rows = stored(broker)
    assert rows[0].status == "rejected" and rows[0].raw == broken


# -- refusals still name the message -------------------------------------------------

def assert_echoed(ack: Ack, control_id: str, version: str) -> None:
    msh = ack_fields(ack)
    assert ack.control_id == control_id
    assert msh[2:6] == ["MWLBROKER", "RADIOLOGY", "EHR", "HOSP"]
    assert msh[11] == version


def test_version_refusal_echoes_and_routes_back(make_broker: Any) -> None:
    broker = make_broker()
    [ack] = send(broker.mllp_port, with_version(sample("05"), "3.0"))
    assert ack.code == "AR" and "|203^" in ack.err
    assert_echoed(ack, "ORM0005", "2.5.1")  # not a version we speak: 2.5.1


def test_narrowed_versions_refuse_the_others(make_broker: Any) -> None:
    broker = make_broker(hl7_versions=["2.5", "2.5.1"])
    [refused, accepted] = send(broker.mllp_port, sample("05"), sample("09"))
    assert refused.code == "AR" and refused.err.startswith("ERR|MSH^1^12^203&")
    assert_echoed(refused, "ORM0005", "2.3.1")  # a version we know: answered in it
    assert accepted.code == "AA"


def test_unknown_version_accepted_by_the_setting_has_a_warning(make_broker: Any) -> None:
    broker = make_broker(accept_unknown_hl7_version=True)
    [ack] = send(broker.mllp_port, with_version(sample("09"), "2.9"))
    assert ack.code == "AA" and "|203^Unsupported version id^HL70357|W" in ack.raw.decode()
    [row] = stored(broker)
    assert row.status == "processed" and row.warning_count == 1


def test_charset_refusal_echoes_and_routes_back(make_broker: Any) -> None:
    broker = make_broker()
    message = with_name(sample("05"), "Müller", "X-MAC-ROMAN", "latin-1")
    [ack] = send(broker.mllp_port, message)
    assert ack.code == "AE" and ack.err.startswith("ERR|MSH^1^18^103&")
    assert_echoed(ack, "ORM0005", "2.3.1")
    assert b"X-MAC-ROMAN" not in ack.raw
    [row] = stored(broker)
    assert row.status == "rejected" and row.control_id == "ORM0005"
    assert row.sending_application == "EHR"
    assert patients(broker) == []


def test_delimiter_refusal_echoes_and_routes_back(make_broker: Any) -> None:
    broker = make_broker()
    [ack] = send(broker.mllp_port, sample("05").replace(b"MSH|^~\\&|", b"MSH|^~^&|", 1))
    assert ack.code == "AR" and ack.err.startswith("ERR|MSH^1^2^102&")
    assert_echoed(ack, "ORM0005", "2.3.1")


def test_structure_refusal_echoes_and_routes_back(make_broker: Any) -> None:
    broker = make_broker()
    [ack] = send(broker.mllp_port, drop_segments(sample("05"), "ORC"))
    assert ack.code == "AE" and "^100&" in ack.err
    assert_echoed(ack, "ORM0005", "2.3.1")


# -- versions --------------------------------------------------------------------------

@pytest.mark.parametrize(("version", "msh9"), [
    ("2.3", "ACK^O01"), ("2.4", "ACK^O01"), ("2.6", "ACK^O01^ACK"), ("2.8", "ACK^O01^ACK"),
])
def test_ack_version_follows_the_message(make_broker: Any, version: str, msh9: str) -> None:
    broker = make_broker()
    [ack] = send(broker.mllp_port, with_version(sample("05"), version))
    assert ack.code == "AA"
    msh = ack_fields(ack)
    assert (msh[8], msh[11]) == (msh9, version)


@pytest.mark.parametrize(("version", "msh9"), [("2.2", "ACK"), ("2.8", "ACK^O01^ACK")])
def test_old_and_new_orders_reach_the_worklist(make_broker: Any, version: str,
                                               msh9: str) -> None:
    broker = make_broker()
    [ack] = send(broker.mllp_port, with_version(sample("05"), version))
    assert ack.code == "AA" and ack_fields(ack)[8] == msh9
    items = findscu(broker.dicom_port, ["AccessionNumber=ACC0001", "PatientName",
                                        "PatientID"])
    assert len(items) == 2
    assert {str(i.PatientName) for i in items} == {"Doe^Jane^Marie"}


# -- character sets --------------------------------------------------------------------

@pytest.mark.parametrize(("charset", "encoding", "family", "stored_set"), [
    ("UTF-8", "utf-8", "Müller", "ISO_IR 192"),
    ("Latin1", "latin-1", "Müller", "ISO_IR 100"),
    ("windows-1252", "cp1252", "Müller", "ISO_IR 100"),
    ("windows-1252", "cp1252", "Œuvre", "ISO_IR 192"),
    ("8859/15", "iso8859_15", "Œuvre€", "ISO_IR 203"),
])
def test_charset_aliases_land_in_dicom(make_broker: Any, charset: str, encoding: str,
                                       family: str, stored_set: str) -> None:
    broker = make_broker()
    [ack] = send(broker.mllp_port, with_name(sample("05"), family, charset, encoding))
    assert ack.code == "AA", ack.err
    [row] = stored(broker)
    alias = charset != "8859/15"
    assert row.warning_count == (1 if alias else 0)
    [patient] = patients(broker)
    assert patient.specific_character_set == stored_set
    items = findscu(broker.dicom_port, ["AccessionNumber=ACC0001", "PatientName",
                                        "SpecificCharacterSet"])
    assert {str(i.PatientName) for i in items} == {f"{family}^Jane^Marie"}


def test_unknown_charset_on_ascii_is_accepted_with_a_warning(make_broker: Any) -> None:
    broker = make_broker()
    [ack] = send(broker.mllp_port, set_field(sample("05"), "MSH", 18, "X-MAC-ROMAN"))
    assert ack.code == "AA"
    [row] = stored(broker)
    assert row.status == "processed"
    assert warning_texts(row) == ["MSH-18 names a character set the broker does not "
                                  "support; the message is 7-bit ASCII and was read as "
                                  "ASCII"]
    assert steps(broker) == 2


def test_profile_charset_aliases_apply_at_receipt_and_processing(
        make_broker: Any, tmp_path: Path) -> None:
    mappings = tmp_path / "mappings"
    shutil.copytree(MAPPINGS, mappings)
    (mappings / "zz_site.yaml").write_text(
        "name: site-charsets\nextends: default\nsenders:\n  - application: OTHER\n"
        "charset_aliases:\n  HOSP-WEST: '8859/1'\n", encoding="utf-8")
    broker = make_broker(mappings_dir=mappings)
    message = with_name(sample("05"), "Müller", "HOSP-WEST", "latin-1")
    [ack] = send(broker.mllp_port, message)
    assert ack.code == "AA", ack.err
    [row] = stored(broker)
    assert warning_texts(row) == ["MSH-18 is not an HL7 Table 0211 value: read as 8859/1"]
    [patient] = patients(broker)
    assert patient.specific_character_set == "ISO_IR 100"
    assert patient.attributes["PatientName"].startswith("Müller")


# -- bounded reading -------------------------------------------------------------------

def test_a_field_with_60000_repetitions_is_refused_at_receipt(make_broker: Any) -> None:
    import time

    broker = make_broker()
    flood = set_field(sample("05"), "PID", 3, "~" * 60000)
    started = time.monotonic()
    [ack, after] = send(broker.mllp_port, flood, sample("09"))
    assert time.monotonic() - started < 15
    assert (ack.code, ack.control_id) == ("AE", "ORM0005")
    assert ack.err == "ERR|PID^1^3^102&Data type error&HL70357"
    assert after.code == "AA"
    rows = stored(broker)
    assert rows[0].status == "rejected" and rows[0].error_location == "PID^1^3"
    assert rows[0].raw == flood
    assert patients(broker)[0].patient_id != "" and steps(broker) >= 1


def test_reading_caps_are_settings(make_broker: Any) -> None:
    broker = make_broker(hl7_max_segments=5)
    [ack] = send(broker.mllp_port, sample("05"))
    assert ack.code == "AR" and ack.err.startswith("ERR|ORC^2^^100&Segment sequence error")
