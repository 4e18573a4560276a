"""Edits of the sample messages for the service tests: each says what it changes."""

from __future__ import annotations

from tests.conftest import sample
from tests.integration.hl7util import set_all, set_field
from tests.workflow import STUDY_05 as STUDY_05

# Sample 05 (order PLC-1001, patient 135790, study STUDY_05): the ids a test checks.
PATIENT_05 = "135790"
ACCESSION_05 = "ACC0001"
PID_OF = "{}^^^HOSP&2.16.840.1.113883.3.9999.1&ISO^MR"


def keep_group(raw: bytes, number: int) -> bytes:
    """Only the ``number``-th ORC group (1-based) of an ORM^O01, with the segments
    before the first ORC and the message-level Z segments (ZDS)."""
    kept, group = [], 0
    for line in raw.split(b"\r"):
        if line.startswith(b"ORC|"):
            group += 1
        if group in (0, number) or line.startswith(b"Z"):
            kept.append(line)
    return b"\r".join(kept)


def edited(base: str | bytes, control_id: str, *, order_control: str | None = None,
           order_status: str | None = None, only_group: int | None = None,
           patient_id: str | None = None) -> bytes:
    """Sample ``base`` (or a message) with a new MSH-10 and, when given, ORC-1 / ORC-5
    set in every ORC, one ORC group kept, PID-3 changed."""
    raw = sample(base) if isinstance(base, str) else base
    raw = set_field(raw, "MSH", 10, control_id)
    if order_control is not None:
        raw = set_all(raw, "ORC", 1, order_control)
    if order_status is not None:
        raw = set_all(raw, "ORC", 5, order_status)
    if only_group is not None:
        raw = keep_group(raw, only_group)
    if patient_id is not None:
        raw = set_field(raw, "PID", 3, PID_OF.format(patient_id))
    return raw
