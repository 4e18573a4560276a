"""Small helpers for integration tests: send HL7 over real MLLP, read ACKs, edit
sample messages (field-level, so a test says exactly what it changed)."""

from __future__ import annotations

from dataclasses import dataclass

from broker.hl7.client import MLLPClient


@dataclass
class Ack:
    """The parts of an ACK a test looks at."""

    raw: bytes
    code: str
    control_id: str
    err: str  # the ERR segment as text ('' when none)

    @classmethod
    def parse(cls, raw: bytes) -> Ack:
        assert b"\n" not in raw, "ACK segments end with CR only (A3)"
        segments = raw.decode("utf-8", "replace").split("\r")
        msa = next(s for s in segments if s.startswith("MSA")).split("|")
        err = next((s for s in segments if s.startswith("ERR")), "")
        return cls(raw, msa[1], msa[2] if len(msa) > 2 else "", err)


def send(port: int, *messages: bytes) -> list[Ack]:
    """Send messages on one MLLP connection; one ACK each."""
    with MLLPClient("127.0.0.1", port, timeout=20) as client:
        return [Ack.parse(client.send(m)) for m in messages]


def set_field(message: bytes, segment: str, field: int, value: str, occurrence: int = 0,
              component: int = 0) -> bytes:
    """Replace field (or component) ``field`` of the n-th ``segment`` (HL7 numbering)."""
    lines = message.decode("utf-8").split("\r")
    seen = 0
    for i, line in enumerate(lines):
        if not line.startswith(segment + "|"):
            continue
        if seen == occurrence:
            parts = line.split("|")
            index = field if segment != "MSH" else field - 1
            while len(parts) <= index:
                parts.append("")
            if component:
                comps = parts[index].split("^")
                while len(comps) < component:
                    comps.append("")
                comps[component - 1] = value
                parts[index] = "^".join(comps)
            else:
                parts[index] = value
            lines[i] = "|".join(parts)
            break
        seen += 1
    else:
        raise AssertionError(f"no {segment} #{occurrence}")
    return "\r".join(lines).encode("utf-8")


def set_all(message: bytes, segment: str, field: int, value: str) -> bytes:
    """Replace a field in every occurrence of ``segment``."""
    count = message.decode("utf-8").count("\r" + segment + "|") + (
        1 if message.startswith(segment.encode() + b"|") else 0)
    for n in range(count):
        message = set_field(message, segment, field, value, occurrence=n)
    return message


def drop_segments(message: bytes, segment: str) -> bytes:
    lines = message.decode("utf-8").split("\r")
    return "\r".join(line for line in lines if not line.startswith(segment + "|")).encode()
