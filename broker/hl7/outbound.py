"""Order status messages to the EHR (IHE RAD TF-2 4.3 "Filler Order Management" status
update; HL7 v2.3.1 ORM^O01, v2.5.1 OMG^O19 / OMI^O23).

ORC-1 is ``SC`` (status changed) and ORC-5 the new order status (HL7 Table 0038: IP in
process, CM completed, DC discontinued, SC scheduled again; ``A`` "some results
available" when the first images arrive). The procedure is identified as the placer
sent it: ORC-2/ORC-3 placer and filler order numbers, OBR-4 the procedure code, and
OBR-18 accession, OBR-19 Requested Procedure ID, OBR-20 SPS ID (2.3.1, IHE RAD), or an
IPC segment for OMI^O23 (accession, RP ID, Study Instance UID, SPS ID, modality).

Messages are built as text with the standard delimiters (the tests parse them with
hl7apy to keep them structurally valid); non-ASCII text is sent as UTF-8 with MSH-18
``UNICODE UTF-8``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from broker.hl7.ack import escape
from broker.hl7.message import Delimiters

D = Delimiters()


@dataclass
class StatusFacts:
    """What a status message says about one requested procedure."""

    patient_id: str
    issuer: str
    patient_name: str  # DICOM PN
    birth_date: str
    sex: str
    placer_order_number: str
    placer_issuer: str
    filler_order_number: str
    filler_issuer: str
    accession_number: str
    requested_procedure_id: str
    study_instance_uid: str
    sps_id: str
    modality: str
    procedure_code: tuple[str, str, str]  # value, meaning, scheme
    start_datetime: str


def _e(value: str) -> str:
    return escape(value, D)


def xpn_from_pn(pn: str) -> str:
    """DICOM PN (alphabetic group) to HL7 XPN: prefix and suffix swap places."""
    parts = [*pn.split("=")[0].split("^"), "", "", "", "", ""][:5]
    family, given, middle, prefix, suffix = parts
    return "^".join(_e(p) for p in (family, given, middle, suffix, prefix)).rstrip("^")


def _ei(number: str, issuer: str) -> str:
    return _e(number) + (f"^{_e(issuer)}" if issuer else "")


def build_status_message(facts: StatusFacts, *, status: str, message_type: str,
                         control_id: str, sending: tuple[str, str],
                         receiving: tuple[str, str], now: datetime | None = None) -> bytes:
    """One order status message (``message_type`` ORM^O01, OMG^O19 or OMI^O23)."""
    stamp = (now or datetime.now()).strftime("%Y%m%d%H%M%S")
    v25 = message_type != "ORM^O01"
    version = "2.5.1" if v25 else "2.3.1"
    code, event = message_type.split("^")
    msh9 = f"{code}^{event}^{code}_{event}" if v25 else message_type
    pid3 = _e(facts.patient_id) + (f"^^^{_e(facts.issuer)}" if facts.issuer else "")
    placer = _ei(facts.placer_order_number, facts.placer_issuer)
    filler = _ei(facts.filler_order_number, facts.filler_issuer)
    value, meaning, scheme = facts.procedure_code
    obr4 = "^".join(_e(x) for x in (value, meaning, scheme)).rstrip("^")
    fields = ["MSH", D.encoding_characters, _e(sending[0]), _e(sending[1]), _e(receiving[0]),
              _e(receiving[1]), stamp, "", msh9, control_id, "P", version]
    body = "".join([facts.patient_name, facts.placer_order_number, facts.accession_number])
    if not body.isascii():
        fields += ["", "", "", "", "", "UNICODE UTF-8"]
    segments = [
        "|".join(fields),
        "|".join(["PID", "1", "", pid3, "", xpn_from_pn(facts.patient_name), "",
                  _e(facts.birth_date), _e(facts.sex)]),
        "|".join(["ORC", "SC", placer, filler, "", status, "", "", "", stamp]),
    ]
    if v25:
        segments.append("|".join(["TQ1", "1", "", "", "", "", "", _e(facts.start_datetime)]))
    obr = ["OBR", "1", placer, filler, obr4] + [""] * 13 + [
        _e(facts.accession_number), _e(facts.requested_procedure_id), _e(facts.sps_id),
        "", "", "", _e(facts.modality)]
    segments.append("|".join(obr).rstrip("|"))
    if message_type == "OMI^O23":
        segments.append("|".join(["IPC", _e(facts.accession_number),
                                  _e(facts.requested_procedure_id),
                                  _e(facts.study_instance_uid), _e(facts.sps_id),
                                  _e(facts.modality)]))
    elif not v25:
        segments.append(f"ZDS|{_e(facts.study_instance_uid)}^^Application^DICOM")
    return ("\r".join(segments) + "\r").encode("utf-8")
