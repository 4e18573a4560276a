"""A lean Modality Worklist SCU on one open association, to time the server alone.

pynetdicom's own SCU passes every response through its DUL and DIMSE threads (queues
polled every millisecond) and decodes each identifier into a pydicom Dataset: measured
here, 3.8 ms of client CPU for a one-item answer and 68 ms for a hundred items, so it
would time itself rather than the server. This SCU has pynetdicom encode its
A-ASSOCIATE-RQ (PS3.8 9.3.2) and pydicom its identifier (once per query kind), frames
each C-FIND-RQ (PS3.7 9.1.2.1, 9.3.2.1: command set in Implicit VR Little Endian with
its group length, PS3.7 6.3.1, E.1) as one P-DATA-TF PDU (PS3.8 9.3.5, E.2), and reads
the answers as bytes on a blocking socket: PDUs, their PDVs and message control
headers, and the Status (0000,0900) of each command set. Identifiers are counted, not
decoded. The request is framed before the clock starts, so :meth:`WorklistSCU.find`
times the server and the loopback only.
"""

from __future__ import annotations

import socket
import struct
import time
from types import TracebackType

from pydicom.dataset import Dataset
from pydicom.uid import ImplicitVRLittleEndian
from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID
from pynetdicom.dsutils import encode
from pynetdicom.pdu import A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    MaximumLengthNotification,
)
from pynetdicom.presentation import build_context

MWL = "1.2.840.10008.5.1.4.31"
APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"  # PS3.7 A.2.1
CONTEXT_ID = 1
MAX_PDU = 16384  # what we accept (PS3.8 D.1); DCMTK's findscu default
PENDING = (0xFF00, 0xFF01)
A_ASSOCIATE_AC, P_DATA, A_RELEASE_RQ, A_RELEASE_RP = 0x02, 0x04, 0x05, 0x06
STATUS_TAG = (0x0000, 0x0900)
C_FIND_RQ, PRIORITY_MEDIUM, DATASET_PRESENT = 0x0020, 0x0000, 0x0000


class AssociationError(Exception):
    """The SCP rejected, aborted or answered out of turn."""


def _associate_rq(calling: str, called: str) -> bytes:
    primitive = A_ASSOCIATE()
    primitive.application_context_name = APPLICATION_CONTEXT
    primitive.calling_ae_title, primitive.called_ae_title = calling, called
    context = build_context(MWL, [ImplicitVRLittleEndian])
    context.context_id = CONTEXT_ID
    primitive.presentation_context_definition_list = [context]
    max_length = MaximumLengthNotification()
    max_length.maximum_length_received = MAX_PDU
    implementation = ImplementationClassUIDNotification()
    implementation.implementation_class_uid = PYNETDICOM_IMPLEMENTATION_UID
    primitive.user_information = [max_length, implementation]
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(primitive)
    return bytes(pdu.encode())


def encode_identifier(identifier: Dataset) -> bytes:
    """The identifier as the one presentation context (Implicit VR Little Endian) has it."""
    data = encode(identifier, True, True)
    if not data:
        raise ValueError("identifier could not be encoded")
    return bytes(data)


def _element(element: int, value: bytes) -> bytes:
    return struct.pack("<HHI", 0x0000, element, len(value)) + value


def _pdv(header: int, fragment: bytes) -> bytes:
    return struct.pack(">IBB", len(fragment) + 2, CONTEXT_ID, header) + fragment


def find_request(identifier: bytes, message_id: int) -> bytes:
    """One C-FIND-RQ (Modality Worklist, medium priority) carrying an encoded identifier,
    as one P-DATA-TF PDU: command PDV then data set PDV, each its last fragment."""
    uid = MWL.encode("ascii") + b"\0" * (len(MWL) % 2)
    body = b"".join((
        _element(0x0002, uid),
        _element(0x0100, struct.pack("<H", C_FIND_RQ)),
        _element(0x0110, struct.pack("<H", message_id)),
        _element(0x0700, struct.pack("<H", PRIORITY_MEDIUM)),
        _element(0x0800, struct.pack("<H", DATASET_PRESENT)),
    ))
    command = _element(0x0000, struct.pack("<I", len(body))) + body
    pdvs = _pdv(0x03, command) + _pdv(0x02, identifier)
    if len(pdvs) > MAX_PDU:
        raise ValueError("identifier too long for one PDU")
    return struct.pack(">BBI", P_DATA, 0, len(pdvs)) + pdvs


def _status(command: bytes) -> int:
    """Status (0000,0900) of an Implicit VR Little Endian command set."""
    offset = 0
    while offset < len(command):
        group, element, length = struct.unpack_from("<HHI", command, offset)
        offset += 8
        if (group, element) == STATUS_TAG:
            return int(struct.unpack_from("<H", command, offset)[0])
        offset += length
    raise AssociationError("a response command set without a Status")


class WorklistSCU:
    """One association to a worklist SCP (called AE title ``called``), kept open for
    any number of :meth:`find` calls; ``with`` releases it (PS3.8 7.2)."""

    def __init__(self, port: int, called: str, calling: str = "BENCH_SCU") -> None:
        self._sock = socket.create_connection(("127.0.0.1", port), timeout=120)
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._reader = self._sock.makefile("rb", buffering=1 << 16)
        self._message_id = 0
        self._sock.sendall(_associate_rq(calling, called))
        kind, body = self._pdu()
        if kind != A_ASSOCIATE_AC or not self._accepted(body):
            self.close()
            raise AssociationError(f"association not accepted (PDU type {kind:#04x})")

    @staticmethod
    def _accepted(body: bytes) -> bool:
        """Whether the A-ASSOCIATE-AC accepts our context (PS3.8 9.3.3.2: result 0)."""
        offset = 68  # protocol version, reserved, AE titles echoed, reserved
        while offset + 4 <= len(body):
            kind, length = body[offset], struct.unpack_from(">H", body, offset + 2)[0]
            if kind == 0x21 and body[offset + 4] == CONTEXT_ID:
                return body[offset + 6] == 0
            offset += 4 + length
        return False

    def _read(self, size: int) -> bytes:
        data = self._reader.read(size)
        if len(data) != size:
            raise AssociationError("the SCP closed the connection")
        return data

    def _pdu(self) -> tuple[int, bytes]:
        kind, _, length = struct.unpack(">BBI", self._read(6))
        return kind, self._read(length)

    def request(self, identifier: bytes) -> bytes:
        """The next C-FIND-RQ (its own Message ID) for an identifier encoded by
        :func:`encode_identifier`, ready for :meth:`find`."""
        self._message_id = self._message_id % 0xFFFF + 1
        return find_request(identifier, self._message_id)

    def find(self, request: bytes) -> tuple[int, int, float]:
        """Send one C-FIND-RQ and read every response: (pending responses, final
        status, milliseconds from the first byte sent to the final response read)."""
        began = time.perf_counter()
        self._sock.sendall(request)
        pending, command = 0, b""
        while True:
            kind, body = self._pdu()
            if kind != P_DATA:
                raise AssociationError(f"PDU type {kind:#04x} during a C-FIND")
            offset = 0
            while offset < len(body):
                length, header = struct.unpack_from(">I", body, offset)[0], body[offset + 5]
                if header & 0x01:  # a command fragment
                    command += body[offset + 6:offset + 4 + length]
                    if header & 0x02:  # its last: the command set is complete
                        status = _status(command)
                        if status not in PENDING:
                            return pending, status, (time.perf_counter() - began) * 1000
                        pending += 1
                        command = b""
                offset += 4 + length

    def close(self) -> None:
        self._reader.close()
        self._sock.close()

    def release(self) -> None:
        """A-RELEASE-RQ, then wait for the A-RELEASE-RP (PS3.8 9.3.6, 9.3.7)."""
        try:
            self._sock.sendall(struct.pack(">BBII", A_RELEASE_RQ, 0, 4, 0))
            while self._pdu()[0] != A_RELEASE_RP:
                pass
        finally:
            self.close()

    def __enter__(self) -> WorklistSCU:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        if kind is None:
            self.release()
        else:
            self.close()
