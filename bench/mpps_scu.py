"""A blocking MPPS SCU for the bench: one association per N-CREATE or N-SET, as a
modality sends them, in the calling thread with blocking reads.

pynetdicom's requestor hands every step between its own threads, which poll their
queues every millisecond, and waits 10 ms in its release; that was about half of
each association's time, so the bench measured its own SCU as much as the broker.
The association PDUs (PS3.8 9.3.2, 9.3.6) are framed here; the DIMSE messages
(PS3.7 10.1.2, 10.1.3) are encoded and decoded by pynetdicom.
"""

from __future__ import annotations

import socket
import struct
from io import BytesIO

from pydicom.dataset import Dataset
from pydicom.uid import ImplicitVRLittleEndian
from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID
from pynetdicom.dimse_messages import N_CREATE_RQ, N_SET_RQ, DIMSEMessage
from pynetdicom.dimse_primitives import N_CREATE, N_SET
from pynetdicom.dsutils import encode
from pynetdicom.pdu import P_DATA_TF

MPPS = "1.2.840.10008.3.1.2.3.3"
APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
CONTEXT_ID = 1
MAX_PDU = 16384
RELEASE_RQ = bytes([0x05, 0]) + struct.pack(">I", 4) + bytes(4)


def _item(kind: int, value: bytes) -> bytes:
    return struct.pack(">BBH", kind, 0, len(value)) + value


def _associate_rq(calling: str, called: str) -> bytes:
    """A-ASSOCIATE-RQ (PS3.8 9.3.2) proposing MPPS in Implicit VR Little Endian."""
    context = _item(0x20, bytes([CONTEXT_ID, 0, 0, 0]) + _item(0x30, MPPS.encode())
                    + _item(0x40, ImplicitVRLittleEndian.encode()))
    user = _item(0x50, _item(0x51, struct.pack(">I", MAX_PDU))
                 + _item(0x52, PYNETDICOM_IMPLEMENTATION_UID.encode()))
    body = (struct.pack(">HH", 1, 0) + called.ljust(16).encode() + calling.ljust(16).encode()
            + bytes(32) + _item(0x10, APPLICATION_CONTEXT.encode()) + context + user)
    return struct.pack(">BBI", 0x01, 0, len(body)) + body


def _read_pdu(sock: socket.socket) -> tuple[int, bytes]:
    """One PDU: (type, the whole PDU)."""
    header = _read(sock, 6)
    return header[0], header + _read(sock, struct.unpack(">I", header[2:])[0])


def _read(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("the broker closed the connection")
        data += chunk
    return bytes(data)


def _exchange(port: int, aet: str, message: DIMSEMessage) -> int:
    """Associate, send ``message``, read its response, release; the response status."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(_associate_rq(aet, "MWL_BROKER"))
        kind, _ = _read_pdu(sock)
        if kind != 0x02:
            raise ConnectionError(f"association refused (PDU type {kind:#04x})")
        out = []
        for primitive in message.encode_msg(CONTEXT_ID, MAX_PDU):
            pdu = P_DATA_TF()
            pdu.from_primitive(primitive)
            out.append(pdu.encode())
        sock.sendall(b"".join(out))
        response = DIMSEMessage()
        while True:
            kind, data = _read_pdu(sock)
            if kind != 0x04:
                raise ConnectionError(f"no response (PDU type {kind:#04x})")
            pdu = P_DATA_TF()
            pdu.decode(data)
            if response.decode_msg(pdu.to_primitive()):
                break
        sock.sendall(RELEASE_RQ)
        kind, _ = _read_pdu(sock)
        if kind != 0x06:
            raise ConnectionError(f"release not answered (PDU type {kind:#04x})")
    return int(response.command_set.Status)


def _attributes(ds: Dataset) -> BytesIO:
    encoded = encode(ds, is_implicit_vr=True, is_little_endian=True)
    if encoded is None:
        raise ValueError("the attribute list could not be encoded")
    return BytesIO(encoded)


def n_create(port: int, uid: str, ds: Dataset, aet: str = "CT01_AE") -> int:
    """MPPS N-CREATE on an association of its own; the response status."""
    primitive = N_CREATE()
    primitive.MessageID = 1
    primitive.AffectedSOPClassUID = MPPS
    primitive.AffectedSOPInstanceUID = uid
    primitive.AttributeList = _attributes(ds)
    message = N_CREATE_RQ()
    message.primitive_to_message(primitive)
    return _exchange(port, aet, message)


def n_set(port: int, uid: str, ds: Dataset, aet: str = "CT01_AE") -> int:
    """MPPS N-SET on an association of its own; the response status."""
    primitive = N_SET()
    primitive.MessageID = 1
    primitive.RequestedSOPClassUID = MPPS
    primitive.RequestedSOPInstanceUID = uid
    primitive.ModificationList = _attributes(ds)
    message = N_SET_RQ()
    message.primitive_to_message(primitive)
    return _exchange(port, aet, message)
