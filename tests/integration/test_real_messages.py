"""Real HL7 v2 messages published by other projects (tests/data/real, see its
PROVENANCE.md), each sent over MLLP to an in-process broker in the default
application-ACK mode, so that AA means the message was applied.

Contract checked per file, against tests/data/real/expected.yaml:

* MSA-1 is the expected acknowledgment code (HL7 v2.5.1 2.9.2, original mode with
  application acknowledgment: AA applied, AE error, AR reject).
* MSA-2 echoes MSH-10 whenever MSH-10 can be read (HL7 v2.5.1 2.14.8.2).
* On refusal the ERR segment names the offending field as segment^sequence^field
  (ERR-2 from v2.5, HL7 v2.5.1 2.14.5.2; the location part of ERR-1 before v2.5).
* An order that should reach the worklist is served to a modality as the expected
  number of scheduled procedure steps (one per ORC/OBR pair of ORM^O01, one per IPC
  of OMI^O23; IHE RAD TF-2 4.5 / DICOM PS3.4 K.6), queried by PatientID (and
  AccessionNumber when the order has one) over a real C-FIND association.

The ``warnings`` key of expected.yaml is informational: the ACK has no place for
warnings before v2.5, so they are not asserted here.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pynetdicom import AE

from broker.hl7.client import MLLPClient

REAL = Path(__file__).resolve().parents[1] / "data" / "real"
EXPECTED: dict[str, dict[str, Any]] = yaml.safe_load(
    (REAL / "expected.yaml").read_text(encoding="utf-8"))
MWL_FIND = "1.2.840.10008.5.1.4.31"  # Modality Worklist Information Model - FIND
MIN_CORPUS = 30


def control_id(raw: bytes) -> str | None:
    """MSH-10 read with the message's own field separator, or None when the header
    cannot be read (no MSH, or too few fields)."""
    text = raw.removeprefix(b"\xef\xbb\xbf").decode("latin-1")
    if not text.startswith("MSH") or len(text) < 4:
        return None
    header = re.split(r"\r|\n", text, maxsplit=1)[0]
    fields = header.split(text[3])
    return fields[9] if len(fields) > 9 and fields[9] else None


class Reply:
    """The parts of an ACK the test looks at, read with the ACK's own delimiters."""

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        text = raw.decode("latin-1")
        segments = [s for s in text.split("\r") if s]
        assert segments and segments[0].startswith("MSH"), f"not an ACK: {text!r}"
        self.field_sep, self.component_sep = text[3], text[4]
        self.subcomponent_sep = text[7] if len(text) > 7 else "&"
        by_name = {s[:3]: s.split(self.field_sep) for s in segments}
        msa = by_name.get("MSA", [])
        self.code = msa[1] if len(msa) > 1 else ""
        self.control_id = msa[2] if len(msa) > 2 else ""
        self.err = by_name.get("ERR", [])

    def error_location(self) -> str:
        """segment^sequence^field[^component] from ERR-2 (v2.5+) or ERR-1 (v2.3.x),
        with '^' as the component separator whatever the ACK uses."""
        if len(self.err) > 2 and self.err[2]:
            parts = self.err[2].split(self.component_sep)
        elif len(self.err) > 1:
            parts = [p for p in self.err[1].split(self.component_sep)
                     if self.subcomponent_sep not in p]
        else:
            return ""
        return "^".join(p for p in parts if p)


def send_raw(port: int, message: bytes) -> Reply:
    with MLLPClient("127.0.0.1", port, timeout=20) as client:
        return Reply(client.send(message))


def worklist(port: int, **keys: str) -> list[Dataset]:
    """C-FIND the worklist like a modality; the pending identifiers."""
    ds = Dataset()
    ds.PatientID = ""
    ds.AccessionNumber = ""
    ds.PatientName = ""
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    step = Dataset()
    step.Modality = ""
    step.ScheduledProcedureStepID = ""
    step.ScheduledStationAETitle = ""
    step.ScheduledProcedureStepStartDate = ""
    ds.ScheduledProcedureStepSequence = Sequence([step])
    ae = AE(ae_title="MODALITY1")
    ae.add_requested_context(MWL_FIND)
    assoc = ae.associate("127.0.0.1", port, ae_title="MWL_BROKER")
    assert assoc.is_established, "association with the broker refused"
    try:
        found = []
        for status, identifier in assoc.send_c_find(ds, MWL_FIND):
            assert status is not None and "Status" in status, "no C-FIND response"
            if status.Status in (0xFF00, 0xFF01) and identifier is not None:
                found.append(identifier)
        return found
    finally:
        assoc.release()


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_real_message(make_broker: Any, name: str) -> None:
    expected = EXPECTED[name]
    raw = (REAL / name).read_bytes()
    broker = make_broker()
    reply = send_raw(broker.mllp_port, raw)

    sent_id = control_id(raw)
    if sent_id is not None:
        assert reply.control_id == sent_id, "MSA-2 must echo MSH-10"
    err_text = reply.field_sep.join(reply.err)
    assert reply.code == expected["ack"], f"{name}: ACK {reply.code}, ERR {err_text!r}"

    if expected["ack"] != "AA":
        want = expected["error_field"]
        where = reply.error_location()
        assert where == want or where.startswith(want + "^"), (
            f"{name}: ERR names {where!r}, expected {want!r} ({err_text!r})")
        return

    items = expected.get("worklist_items")
    if items is None:
        return
    keys = {"PatientID": str(expected["patient_id"])}
    if "accession" in expected:
        keys["AccessionNumber"] = str(expected["accession"])
    found = worklist(broker.dicom_port, **keys)
    assert len(found) == items, f"{name}: {len(found)} worklist items, expected {items}"
    for ds in found:
        if "accession" in expected:
            assert ds.AccessionNumber == str(expected["accession"])
        if "modality" in expected:
            assert ds.ScheduledProcedureStepSequence[0].Modality == expected["modality"]


def test_corpus_is_complete() -> None:
    """Every message has an expectation and a provenance entry (repository, path,
    40-hex commit, licence), and the corpus keeps its size."""
    files = sorted(p.name for p in REAL.glob("*.hl7"))
    assert len(files) >= MIN_CORPUS
    assert sorted(EXPECTED) == files
    provenance = (REAL / "PROVENANCE.md").read_text(encoding="utf-8")
    rows = {line.split("|")[1].strip().strip("`"): line for line in provenance.splitlines()
            if line.startswith("| ") and ".hl7" in line.split("|")[1]}
    for name in files:
        assert name in rows, f"{name} missing from PROVENANCE.md"
        cells = [c.strip() for c in rows[name].split("|")[1:-1]]
        assert len(cells) >= 6 and all(cells[:5]), f"{name}: incomplete provenance row"
        assert re.fullmatch(r"`?[0-9a-f]{40}`?", cells[3]), f"{name}: commit is not 40 hex"
    for name, exp in EXPECTED.items():
        assert exp["ack"] in {"AA", "AE", "AR"}, name
        if exp["ack"] != "AA":
            assert exp.get("error_field"), f"{name}: a refusal names its field"
        if "worklist_items" in exp:
            assert exp["ack"] == "AA" and exp.get("patient_id"), name
