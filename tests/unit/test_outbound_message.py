"""Order status messages, checked against hl7apy's parser with groups."""

from __future__ import annotations

import pytest
from hl7apy.parser import parse_message

from broker.hl7.outbound import StatusFacts, build_status_message, xpn_from_pn

FACTS = StatusFacts(
    patient_id="135790", issuer="HOSP", patient_name="Müller^Jürgen^Karl^Dr^Jr PhD",
    birth_date="19900214", sex="F", placer_order_number="PLC-1001", placer_issuer="EHR",
    filler_order_number="FIL-5001", filler_issuer="RIS", accession_number="ACC0001",
    requested_procedure_id="RP0001", study_instance_uid="1.2.3", sps_id="SPS0001",
    modality="DX", procedure_code=("71046", "XR CHEST 2 VIEWS", "C4"),
    start_datetime="20250310093000")


def build(message_type: str, status: str = "IP") -> bytes:
    return build_status_message(FACTS, status=status, message_type=message_type,
                                control_id="OUT1", sending=("MWL_BROKER", "RAD"),
                                receiving=("EHR", "HOSP"))


@pytest.mark.parametrize(("message_type", "version", "structure"), [
    ("ORM^O01", "2.3.1", "ORM_O01"), ("OMG^O19", "2.5.1", "OMG_O19"),
    ("OMI^O23", "2.5.1", "OMI_O23")])
def test_status_message_parses_with_its_structure(message_type: str, version: str,
                                                  structure: str) -> None:
    raw = build(message_type, "CM")
    assert raw.endswith(b"\r") and b"\n" not in raw
    parsed = parse_message(raw.decode("utf-8"), find_groups=True)
    assert parsed.name == structure
    assert parsed.msh.msh_12.value == version
    assert parsed.msh.msh_10.value == "OUT1"
    assert parsed.msh.msh_18.value == "UNICODE UTF-8"  # the name is not ASCII
    text = raw.decode("utf-8")
    assert "\rORC|SC|PLC-1001^EHR|FIL-5001^RIS||CM|" in text
    assert "\rPID|1||135790^^^HOSP||Müller^Jürgen^Karl^Jr PhD^Dr||19900214|F" in text


def test_ids_in_obr_and_ipc() -> None:
    orm = build("ORM^O01").decode().split("\r")
    obr = next(s for s in orm if s.startswith("OBR")).split("|")
    assert (obr[18], obr[19], obr[20], obr[24]) == ("ACC0001", "RP0001", "SPS0001", "DX")
    assert "ZDS|1.2.3^^Application^DICOM" in orm
    omi = build("OMI^O23").decode().split("\r")
    assert "IPC|ACC0001|RP0001|1.2.3|SPS0001|DX" in omi
    assert any(s.startswith("TQ1|1||||||20250310093000") for s in omi)


def test_pn_to_xpn_escapes_delimiters() -> None:
    assert xpn_from_pn("O|Brien^Sean") == "O\\F\\Brien^Sean"
    assert xpn_from_pn("Yamada^Tarou=山田^太郎") == "Yamada^Tarou"
