"""DIMSE responses framed by hand, for the fast path.

pynetdicom sends every DIMSE message through its state machine queue, which costs
far more per response than the identifier itself. The fast path
(:mod:`broker.dicom.fastpath`, which owns the socket writes) frames the pending
C-FIND-RSP messages with these functions and writes them in batches, and frames the
responses without a data set (C-ECHO-RSP, C-STORE-RSP, N-CREATE-RSP, N-SET-RSP) that
carry no more than their status; this module is pure bytes and touches no pynetdicom
object.

Framing, per standard:

* the command set is Little Endian Implicit VR with its group length (PS3.7 6.3.1,
  E.1), its elements in tag order: Affected SOP Class UID, Command Field, Message ID
  Being Responded To, Command Data Set Type (0x0101: no data set follows), Status and,
  but for C-ECHO-RSP, Affected SOP Instance UID (PS3.7 9.3.1.2, 9.3.2.2, 9.3.5.2,
  10.3.4.2, 10.3.5.2);
* each message fragment is one PDV with its message control header (bit 0 command,
  bit 1 last fragment), and no P-DATA-TF PDU is longer than the peer's Maximum Length
  (PS3.8 9.3.5, E.2, D.1).
"""

from __future__ import annotations

import struct

PDATA_TF = 4
FLUSH_BYTES = 64 * 1024
C_FIND_RSP = 0x8020
DATASET_PRESENT = 0x0001
NO_DATASET = 0x0101


def _element(group_element: int, value: bytes) -> bytes:
    return struct.pack("<HHI", 0x0000, group_element, len(value)) + value


def _uid(value: str) -> bytes:
    """A UI value padded to even length with NUL (PS3.5 6.2)."""
    data = value.encode("ascii")
    return data + b"\0" if len(data) % 2 else data


def response_command(command_field: int, sop_class_uid: str, message_id: int, status: int,
                     *, dataset_present: bool = False,
                     sop_instance_uid: str | None = None) -> bytes:
    """An encoded response command set (Implicit VR Little Endian) with no elements
    but those listed in the module docstring; ``sop_instance_uid`` None leaves the
    Affected SOP Instance UID out."""
    parts = [
        _element(0x0002, _uid(sop_class_uid)),
        _element(0x0100, struct.pack("<H", command_field)),
        _element(0x0120, struct.pack("<H", message_id)),
        _element(0x0800, struct.pack("<H", DATASET_PRESENT if dataset_present else
                                     NO_DATASET)),
        _element(0x0900, struct.pack("<H", status)),
    ]
    if sop_instance_uid is not None:
        parts.append(_element(0x1000, _uid(sop_instance_uid)))
    body = b"".join(parts)
    return _element(0x0000, struct.pack("<I", len(body))) + body


def command_set(sop_class_uid: str, message_id: int, status: int) -> bytes:
    """An encoded pending C-FIND-RSP command set (an identifier follows)."""
    return response_command(C_FIND_RSP, sop_class_uid, message_id, status,
                            dataset_present=True)


def _pdv(context_id: int, header: int, fragment: bytes) -> bytes:
    return struct.pack(">IBB", len(fragment) + 2, context_id, header) + fragment


def _pdu(pdvs: bytes) -> bytes:
    return struct.pack(">BBI", PDATA_TF, 0, len(pdvs)) + pdvs


def frame_message(context_id: int, command: bytes, dataset: bytes, max_pdu: int) -> bytes:
    """P-DATA-TF PDUs for one message: command and data set in one PDU when they fit
    the peer's maximum length (0 = unlimited), else fragments of at most that size."""
    cmd_pdv, data_pdv = _pdv(context_id, 0x03, command), _pdv(context_id, 0x02, dataset)
    if not max_pdu or len(cmd_pdv) + len(data_pdv) <= max_pdu:
        return _pdu(cmd_pdv + data_pdv)
    step = max_pdu - 6
    if step <= 0 or len(cmd_pdv) > max_pdu:
        raise ValueError(f"peer maximum PDU length {max_pdu} is too small")
    out = [_pdu(cmd_pdv)]
    for start in range(0, len(dataset), step):
        last = start + step >= len(dataset)
        out.append(_pdu(_pdv(context_id, 0x02 if last else 0x00,
                             dataset[start:start + step])))
    return b"".join(out)


def frame_command(context_id: int, command: bytes, max_pdu: int) -> bytes | None:
    """One P-DATA-TF PDU for a message that is a command set alone, or None when it
    would be longer than the peer's maximum length (0 = unlimited)."""
    pdv = _pdv(context_id, 0x03, command)
    if max_pdu and len(pdv) > max_pdu:
        return None
    return _pdu(pdv)
