"""C-FIND pending responses framed by hand, for the fast path.

pynetdicom sends every DIMSE message through its state machine queue, which costs
far more per response than the identifier itself. The fast path
(:mod:`broker.dicom.fastpath`, which owns the socket writes) frames the pending
C-FIND-RSP messages with these functions and writes them in batches; this module
is pure bytes and touches no pynetdicom object.

Framing, per standard:

* the command set is Little Endian Implicit VR with its group length (PS3.7 6.3.1,
  E.1): Affected SOP Class UID, Command Field 0x8020 (C-FIND-RSP), Message ID Being
  Responded To, Command Data Set Type (not 0x0101: a data set follows) and Status
  (PS3.7 9.3.2.2, Table 9.3-4);
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


def _element(group_element: int, value: bytes) -> bytes:
    return struct.pack("<HHI", 0x0000, group_element, len(value)) + value


def command_set(sop_class_uid: str, message_id: int, status: int) -> bytes:
    """An encoded C-FIND-RSP command set (Implicit VR Little Endian)."""
    uid = sop_class_uid.encode("ascii")
    if len(uid) % 2:
        uid += b"\0"
    body = b"".join((
        _element(0x0002, uid),
        _element(0x0100, struct.pack("<H", C_FIND_RSP)),
        _element(0x0120, struct.pack("<H", message_id)),
        _element(0x0800, struct.pack("<H", DATASET_PRESENT)),
        _element(0x0900, struct.pack("<H", status)),
    ))
    return _element(0x0000, struct.pack("<I", len(body))) + body


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
