"""Original-mode acknowledgements (HL7 v2.5.1 Chapter 2, 2.9.2).

Built by hand: this runs for every message on the MLLP hot path, where hl7apy would
cost milliseconds. Tests parse our ACKs with hl7apy to keep them structurally valid.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

from broker.hl7.errors import ERROR_TEXT, ErrorLocation, HL7Error
from broker.hl7.message import HL7_VERSIONS, Delimiters, Message, version_at_least
from broker.hl7.warnings import HL7Warning


def escape(text: str, d: Delimiters) -> str:
    """HL7 escaping of the delimiters (HL7 2.7); CR/LF become spaces in ST fields."""
    out = text.replace(d.escape, f"{d.escape}E{d.escape}")
    for char, code in ((d.field, "F"), (d.component, "S"), (d.subcomponent, "T"),
                       (d.repetition, "R")):
        out = out.replace(char, f"{d.escape}{code}{d.escape}")
    return out.replace("\r", " ").replace("\n", " ")


DEFAULT_VERSION = "2.5.1"


def ack_version(inbound: Message | None) -> str:
    """MSH-12 of the ACK: the inbound's version when it is one we know (HL7_VERSIONS),
    else 2.5.1 (an ACK in a version the sender may not speak is still better than one
    in a version that does not exist)."""
    if inbound is not None and inbound.version in HL7_VERSIONS:
        return inbound.version
    return DEFAULT_VERSION


def ack_message_type(version: str, event: str, component: str = "^") -> str:
    """MSH-9 of an ACK (HL7 v2.5.1 2.14.9.9): ``ACK^<event>^ACK`` from 2.5 (message
    structure added), ``ACK^<event>`` in 2.3 and 2.4, plain ``ACK`` before 2.3 (v2.1
    MSH-9 is a single ID; v2.2 allows the event but does not need it) or with no event."""
    if not event or not version_at_least(version, "2.3"):
        return "ACK"
    if version_at_least(version, "2.5"):
        return f"ACK{component}{event}{component}ACK"
    return f"ACK{component}{event}"


def build_ack(inbound: Message | None, ack_code: str, error: HL7Error | None = None, *,
              text: str = "", control_id: str | None = None,
              now: datetime | None = None, warnings: Sequence[HL7Warning] = ()) -> bytes:
    """An ACK for ``inbound`` (MSA-1 ``ack_code``; ERR when ``error`` is given).

    ``warnings`` (adjustments made to accept the message) follow as ERR segments of
    severity W (ERR-4) from v2.5; v2.3.x ERR has no severity, so there they are only
    kept in the message store.

    ``inbound`` may be the best-effort reading of a refused message
    (``HL7Error.partial``): whatever was refused, MSH-3/4 and MSH-5/6 are the
    inbound's swapped and MSA-2 is the inbound MSH-10. MSH-9 follows the ACK's version
    (:func:`ack_message_type`); MSH-10 is new; MSH-11 echoes the inbound; MSH-12 is
    :func:`ack_version`; MSH-18 (from v2.3) echoes the inbound's when the message was
    read in it. The ERR segment uses ERR-1 (before 2.5) or ERR-2/3/4 (2.5+). Segments
    end with CR only. With no readable inbound message a minimal 2.5.1 ACK with an
    empty MSA-2 is returned.
    """
    d = inbound.delimiters if inbound is not None else Delimiters()
    stamp = (now or datetime.now()).strftime("%Y%m%d%H%M%S")
    cid = control_id or uuid.uuid4().hex[:20]
    version = ack_version(inbound)
    if inbound is not None:
        msh = inbound.msh
        event = inbound.trigger_event
        sending = (msh.raw_field(5), msh.raw_field(6))
        receiving = (msh.raw_field(3), msh.raw_field(4))
        processing = msh.raw_field(11) or "P"
        charset = d.repetition.join(inbound.msh18) if any(inbound.msh18) else ""
        inbound_id = msh.raw_field(10)
        codec = inbound.charset.codec
    else:
        event, processing, charset, inbound_id = "", "P", "", ""
        sending = receiving = ("", "")
        codec = "ascii"
    v25 = version_at_least(version, "2.5")
    msg_type = ack_message_type(version, event, d.component)
    msh_fields = ["MSH", d.encoding_characters, sending[0], sending[1], receiving[0],
                  receiving[1], stamp, "", msg_type, cid, processing, version]
    if charset and version_at_least(version, "2.3"):
        msh_fields += ["", "", "", "", "", charset]
    segments = [d.field.join(msh_fields)]
    msa = ["MSA", ack_code, inbound_id]
    if text or error is not None:
        msa.append(escape(text or (error.text if error else ""), d))
    segments.append(d.field.join(msa))
    if error is not None:
        segments.append(_err_segment(error.code, error.text, error.location, d, v25))
    if v25:
        segments += [_err_segment(w.code, w.text, w.location, d, v25, severity="W")
                     for w in warnings]
    body = "\r".join(segments) + "\r"
    return body.encode(codec if codec != "ascii" else "ascii", errors="replace")


def _err_segment(code: int, text: str, loc: ErrorLocation | None, d: Delimiters, v25: bool,
                 severity: str = "E") -> str:
    name = ERROR_TEXT.get(code, "Error")
    c, s = d.component, d.subcomponent
    where = ""
    if loc is not None:
        parts = [loc.segment, str(loc.sequence), str(loc.field) if loc.field else ""]
        if loc.component and v25:  # 2.3.1 ERR-1 has no room for the component
            parts.append(str(loc.component))
        # ERL (2.5+) may end early; 2.3.1 ERR-1 is positional: segment^sequence^field^code.
        where = c.join(parts).rstrip(c) if v25 else c.join(parts)
    if v25:
        coded = c.join([str(code), name, "HL70357"])
        fields = ["ERR", "", where, coded, severity, "", "", "", escape(text, d)]
        return d.field.join(fields)
    location = c.join([where, f"{code}{s}{name}{s}HL70357"]) if where else (
        f"{c}{c}{c}{code}{s}{name}{s}HL70357")
    return d.field.join(["ERR", location])


def ack_code_of(ack: bytes) -> str:
    """MSA-1 of an ACK ('' when absent)."""
    for segment in ack.replace(b"\n", b"\r").split(b"\r"):
        if segment.startswith(b"MSA") and len(segment) > 4:
            return segment[4:].split(segment[3:4])[0].decode("ascii", "replace")
    return ""
