"""The fast path's hand-framed status responses (C-ECHO-RSP, C-STORE-RSP, N-CREATE-RSP,
N-SET-RSP, PS3.7 9.3.1.2, 9.3.5.2, 10.3.4.2, 10.3.5.2) are the bytes pynetdicom would
send for the same response primitive: the same command set in one P-DATA-TF PDU."""

from __future__ import annotations

from io import BytesIO
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pynetdicom.dimse_messages import C_ECHO_RSP, C_STORE_RSP, N_CREATE_RSP, N_SET_RSP
from pynetdicom.dimse_primitives import C_ECHO, C_STORE, N_CREATE, N_SET
from pynetdicom.dsutils import decode
from pynetdicom.pdu import P_DATA_TF

from broker.dicom.responses import frame_command, response_command

MESSAGES: dict[type, tuple[type, int, bool]] = {
    C_ECHO: (C_ECHO_RSP, 0x8030, False),
    C_STORE: (C_STORE_RSP, 0x8001, True),
    N_CREATE: (N_CREATE_RSP, 0x8140, True),
    N_SET: (N_SET_RSP, 0x8120, True),
}
# UIDs of at most 64 characters (PS3.5 9.1).
uids = st.from_regex(r"1\.2\.[1-9][0-9]{0,20}(\.[1-9][0-9]{0,8}){0,5}",
                     fullmatch=True).filter(lambda uid: len(uid) <= 64)


def pynetdicom_bytes(primitive: Any, context_id: int, max_pdu: int) -> bytes:
    message_class = MESSAGES[type(primitive)][0]
    message = message_class()
    message.primitive_to_message(primitive)
    out = b""
    for data in message.encode_msg(context_id, max_pdu):
        pdu = P_DATA_TF()
        pdu.from_primitive(data)
        out += pdu.encode()
    return out


@settings(max_examples=200, deadline=None)
@given(kind=st.sampled_from(list(MESSAGES)), sop_class=uids, sop_instance=uids,
       message_id=st.integers(0, 0xFFFF),
       status=st.sampled_from([0x0000, 0x0001, 0xB000, 0xB007, 0x0110, 0xA700, 0xC000]),
       context_id=st.integers(1, 255).filter(lambda n: n % 2 == 1))
def test_the_same_bytes_as_pynetdicom(kind: type, sop_class: str, sop_instance: str,
                                      message_id: int, status: int, context_id: int) -> None:
    _, command_field, has_instance = MESSAGES[kind]
    primitive = kind()
    primitive.MessageIDBeingRespondedTo = message_id
    primitive.AffectedSOPClassUID = sop_class
    if has_instance:
        primitive.AffectedSOPInstanceUID = sop_instance
    primitive.Status = status
    command = response_command(command_field, sop_class, message_id, status,
                               sop_instance_uid=sop_instance if has_instance else None)
    assert frame_command(context_id, command, 16384) == pynetdicom_bytes(primitive,
                                                                        context_id, 16384)


def test_a_command_longer_than_the_peer_maximum_is_left_to_pynetdicom() -> None:
    command = response_command(0x8001, "1.2.840.10008.5.1.4.1.1.2", 1, 0,
                               sop_instance_uid="1.2.3")
    assert frame_command(1, command, 0) is not None  # 0: no limit
    assert frame_command(1, command, len(command) + 6) is not None
    assert frame_command(1, command, len(command) + 5) is None


@pytest.mark.parametrize("uid", ["1.2.3", "1.2.34"])
def test_uids_are_padded_to_even_length_with_nul(uid: str) -> None:
    command = response_command(0x8030, uid, 1, 0)
    assert len(command) % 2 == 0
    value = decode(BytesIO(command), True, True)["AffectedSOPClassUID"]
    assert value.value == uid
