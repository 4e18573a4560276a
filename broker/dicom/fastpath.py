"""Everything the broker does beneath pynetdicom's public API, and the switch back to it.

The C-FIND fast path (on unless ``MWLB_DICOM_FAST_PATH=false``):

* pending C-FIND-RSP messages (PS3.7 9.1.2, 9.3.2) are framed by
  :mod:`broker.dicom.responses` as P-DATA-TF PDUs (PS3.8 9.3.5) and written to the
  association's socket in batches, instead of one trip per message through
  pynetdicom's DIMSE/DUL queues; their identifiers are encoded straight from the stored
  attributes by :mod:`broker.dicom.encoder` (pydicom where it declines). pynetdicom
  sends the final response (success, cancel, failure) through its queue, after the
  last pending one;
* the server's supported presentation contexts are copied per association by a
  cheaper ``__deepcopy__`` (:class:`_Contexts`).

With the fast path off, :func:`find_responder` hands each pending response back as a
``(status, Dataset)`` pair, pynetdicom encodes and sends it, and the contexts are
deep-copied by pynetdicom as usual. Both give the modality the same identifiers and
statuses (the worklist SCP tests run in both modes).

pynetdicom internals this module depends on, checked against pynetdicom 3.0.x
(3.0.4; pyproject.toml pins ``>=3.0,<3.1``), fast path only unless stated:

1. ``Association.dul.socket`` (``transport.AssociationSocket``) and its ``send(bytes)``:
   the PDUs are written there while the C-FIND handler runs. This relies on the
   association being in Sta6 with nothing else queued for it during the handler,
   and on pynetdicom writing the final response only after the handler yields it.
2. ``Association.dul.socket.socket``, the accepted (possibly TLS) socket, read by
   :func:`transport_socket` in both modes: the peer certificate for access control,
   TCP_NODELAY / TCP_QUICKACK, the association guard. If it moves, the accessor
   returns None: the TCP options are skipped and a certificate-bound AE title is
   rejected (fails closed).
3. ``AssociationServer.contexts`` deep-copied per association in
   ``RequestHandler._handle_connection``, and ``PresentationContext._transfer_syntax``,
   the list the negotiation changes in the copy.
4. ``pynetdicom._config.LOG_REQUEST_IDENTIFIERS`` / ``LOG_RESPONSE_IDENTIFIERS``
   (documented configuration options, but in a private module): set False in both
   modes, pynetdicom would otherwise log patient data.

Public API used by both modes: the ``EVT_C_FIND`` event (``identifier``, ``request``
and its encoded ``Identifier``, ``context``, ``is_cancelled``),
``Association.requestor.maximum_length`` (the peer's Maximum Length, PS3.8 D.1) and
:func:`pynetdicom.dsutils.encode` / ``decode``.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import socket
from collections.abc import Callable, Iterable
from io import BytesIO
from typing import Any, Protocol

from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom import _config
from pynetdicom.dsutils import decode, encode

from broker.dicom.encoder import ResponsePlan, Unsupported
from broker.dicom.encoder import encode_item as encode_plan_item
from broker.dicom.responses import FLUSH_BYTES, command_set, frame_message
from broker.dicom.worklist import WorklistItem

PYNETDICOM_CHECKED = "3.0.4"


def quiet_identifier_logging() -> None:
    """Never log C-FIND identifiers (patient data, and slow); both modes."""
    _config.LOG_REQUEST_IDENTIFIERS = False
    _config.LOG_RESPONSE_IDENTIFIERS = False


def transport_socket(assoc: Any) -> socket.socket | None:
    """The association's TCP (or TLS) socket, None if pynetdicom no longer exposes it."""
    sock = getattr(getattr(getattr(assoc, "dul", None), "socket", None), "socket", None)
    return sock if isinstance(sock, socket.socket) else None


class _Contexts(list[Any]):
    """The supported presentation contexts of a running server. pynetdicom deep-copies
    them for every association (PS3.8 negotiation then changes the copy); with some
    forty storage classes times their transfer syntaxes that is hundreds of UID objects
    re-validated per association, a large part of a short C-FIND's cost when
    profiled. UIDs are immutable, so a copy of each context with its own transfer
    syntax list is the same thing, made far faster."""

    def __deepcopy__(self, memo: dict[int, Any]) -> list[Any]:
        out = []
        for context in self:
            twin = copy.copy(context)
            twin._transfer_syntax = list(context._transfer_syntax)
            out.append(twin)
        return out


def share_contexts(server: Any) -> None:
    """Give a started ``AssociationServer`` the cheaper context copy (fast path only)."""
    server.contexts = _Contexts(server.contexts)


class PendingWriter:
    """Buffers framed pending C-FIND-RSP messages and writes them to the association's
    socket: the first at once (the modality sees its first item, and can cancel,
    without waiting for the rest), then in writes of about FLUSH_BYTES. No PDU is
    longer than the peer's Maximum Length (PS3.8 9.3.5, D.1)."""

    def __init__(self, assoc: Any, context_id: int, sop_class_uid: str,
                 message_id: int) -> None:
        self._socket = assoc.dul.socket
        self._context_id = context_id
        self._max_pdu = int(assoc.requestor.maximum_length or 0)
        self._commands: dict[int, bytes] = {}
        self._sop_class_uid, self._message_id = sop_class_uid, message_id
        self._buffer: list[bytes] = []
        self._size = 0
        self._flushed = False

    def pending(self, status: int, identifier: bytes) -> None:
        command = self._commands.get(status)
        if command is None:
            command = self._commands[status] = command_set(
                self._sop_class_uid, self._message_id, status)
        frame = frame_message(self._context_id, command, identifier, self._max_pdu)
        self._buffer.append(frame)
        self._size += len(frame)
        if self._size >= FLUSH_BYTES or not self._flushed:
            self.flush()

    def flush(self) -> None:
        if self._buffer:
            self._socket.send(b"".join(self._buffer))
            self._flushed = True
            self._buffer, self._size = [], 0


@functools.lru_cache(maxsize=1024)
def response_plan(encoded: bytes, transfer_syntax: str) -> ResponsePlan | None:
    """The :class:`ResponsePlan` of an encoded identifier, None where the plan declines;
    memoised on the identifier's bytes, as a modality repeats its queries."""
    syntax = UID(transfer_syntax)
    if not syntax.is_little_endian or syntax.is_deflated:
        return None
    identifier = decode(BytesIO(encoded), syntax.is_implicit_VR, True, False)
    try:
        return ResponsePlan.from_query(identifier, implicit=syntax.is_implicit_VR)
    except Unsupported:
        return None


def item_encoder(identifier: Dataset, encoded: bytes, syntax: UID,
                 zone: str) -> Callable[[WorklistItem], bytes]:
    """Encode items with the query's :class:`ResponsePlan` (``encoded``: the identifier's
    bytes in ``syntax``), or with pydicom (as pynetdicom would) where the plan declines."""
    general = functools.partial(encode, is_implicit_vr=syntax.is_implicit_VR,
                                is_little_endian=syntax.is_little_endian,
                                deflated=syntax.is_deflated)
    plan = response_plan(encoded, str(syntax))

    def encode_item(item: WorklistItem) -> bytes:
        if plan is not None:
            with contextlib.suppress(Unsupported):
                return encode_plan_item(plan, item, zone)
        data = general(item.dataset(identifier, zone))
        if not data:
            raise ValueError("response identifier could not be encoded")
        return bytes(data)

    return encode_item


class FindResponder(Protocol):
    """Sends the pending responses of one C-FIND (PS3.7 9.1.2.1.6)."""

    def pending(self, status: int, item: WorklistItem) -> Iterable[tuple[int, Dataset]]:
        """Answer one match; what it returns the EVT_C_FIND handler yields."""

    def close(self) -> None:
        """After the last pending response, before the handler yields the final one."""


class _FastResponder:
    def __init__(self, event: Any, identifier: Dataset, zone: str) -> None:
        self._encode = item_encoder(identifier, event.request.Identifier.getvalue(),
                                    UID(str(event.context.transfer_syntax)), zone)
        self._writer = PendingWriter(event.assoc, event.context.context_id,
                                     str(event.request.AffectedSOPClassUID),
                                     event.request.MessageID)

    def pending(self, status: int, item: WorklistItem) -> Iterable[tuple[int, Dataset]]:
        self._writer.pending(status, self._encode(item))
        return ()

    def close(self) -> None:
        self._writer.flush()


class _PlainResponder:
    def __init__(self, identifier: Dataset, zone: str) -> None:
        self._identifier, self._zone = identifier, zone

    def pending(self, status: int, item: WorklistItem) -> Iterable[tuple[int, Dataset]]:
        return ((status, item.dataset(self._identifier, self._zone)),)

    def close(self) -> None:
        pass


def find_responder(event: Any, identifier: Dataset, zone: str, *,
                   fast: bool) -> FindResponder:
    """The fast path's writer, or pynetdicom's public (status, Dataset) yields."""
    if fast:
        return _FastResponder(event, identifier, zone)
    return _PlainResponder(identifier, zone)
