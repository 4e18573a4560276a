"""Everything the broker does beneath pynetdicom's public API, and the switch back to it.

The fast path (on unless ``MWLB_DICOM_FAST_PATH=false``):

* pending C-FIND-RSP messages (PS3.7 9.1.2, 9.3.2) are framed by
  :mod:`broker.dicom.responses` as P-DATA-TF PDUs (PS3.8 9.3.5) and written to the
  association's socket in batches, instead of one trip per message through
  pynetdicom's DIMSE/DUL queues; their identifiers are encoded straight from the stored
  attributes by :mod:`broker.dicom.encoder` (pydicom where it declines). pynetdicom
  sends the final response (success, cancel, failure) through its queue, after the
  last pending one;
* the server's supported presentation contexts are copied per association by a
  cheaper ``__deepcopy__`` (:class:`_Contexts`), and the server's full garbage
  collection every 60 connections is left out (:func:`tune_server`).

C-ECHO, C-STORE, N-CREATE and N-SET requests are served as soon as they are complete,
in pynetdicom's DUL thread (:class:`_ServeOnArrival`), instead of waiting for two
threads that poll each other, and that thread waits for its socket rather than
sleeping between loops (:class:`_WaitOnSocket`); their responses, when they carry
only a status, are framed by :mod:`broker.dicom.responses` and written to the socket
(:class:`_StatusResponses`).

With the fast path off, :func:`find_responder` hands each pending response back as a
``(status, Dataset)`` pair, pynetdicom encodes and sends it, the contexts are
deep-copied and requests served by pynetdicom as usual. Both give the modality the
same identifiers and statuses (the worklist SCP tests run in both modes).

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
   rejected (fails closed). :func:`close_transport` calls ``Association.dul.socket``'s
   ``close()`` for a connection refused before its association starts.
3. ``AssociationServer.contexts`` deep-copied per association in
   ``RequestHandler._handle_connection``, and ``PresentationContext._transfer_syntax``,
   the list the negotiation changes in the copy.
4. ``pynetdicom._config.LOG_REQUEST_IDENTIFIERS`` / ``LOG_RESPONSE_IDENTIFIERS``
   (documented configuration options, but in a private module): set False in both
   modes, pynetdicom would otherwise log patient data.
5. ``AssociationServer.service_actions``, the ``socketserver`` hook that pynetdicom
   overrides with a ``gc.collect()`` every 60 calls.
6. ``Association.dimse.msg_queue``, the ``queue.Queue`` on which
   ``DIMSEServiceProvider.receive_primitive`` (run by the DUL thread) puts each decoded
   request with its context ID, and the association's reactor takes it; replaced before
   the association starts. A request is served there with
   ``uid_to_service_class(uid)(assoc).SCP(request, context)``, what the reactor's
   ``_serve_request`` does (the broker negotiates no SOP Class Extended Negotiation);
   should that raise, ``Association.dul.event_queue.put("Evt19")`` aborts, as the DUL
   does for a message it cannot decode (the reactor's own ``abort()`` would wait for
   the DUL thread, which is the caller).
7. ``DULServiceProvider``, subclassed and swapped in as the class of a new
   association's ``Association.dul`` (before its thread starts) by
   :func:`serve_on_arrival` (its thread's ``run`` overridden to close the wake-up
   sockets after the reactor ends), and its ``run_reactor`` loop that calls
   ``time.sleep(self._run_loop_delay)`` only when a loop found nothing to do, in its
   own thread, and reads ``to_provider_queue`` (its deque, ``.queue``),
   ``event_queue`` and ``_kill_thread``, set by ``kill_dul`` / ``stop_dul``; the two
   ``queue.Queue`` s get a subclass (:class:`_WakingQueue`) whose ``put`` wakes the
   reactor; ``Association.dul.socket.socket`` as in 2.

8. ``Association.dimse.send_msg(primitive, context_id)``, replaced per association by
   :class:`_StatusResponses`, which writes to ``Association.dul.socket`` as in 1 when
   ``Association.dul.to_provider_queue`` is empty and
   ``Association.dul.state_machine.current_state`` is ``"Sta6"``, and reads the
   response primitives' fields (``MessageIDBeingRespondedTo``, ``Status``,
   ``AffectedSOPClassUID``, ``AffectedSOPInstanceUID`` and the optional ones it
   declines).

Public API used by both modes: the ``EVT_C_FIND`` event (``identifier``, ``request``
and its encoded ``Identifier``, ``context``, ``is_cancelled``),
``Association.requestor.maximum_length`` (the peer's Maximum Length, PS3.8 D.1),
``Association.accepted_contexts``, :func:`pynetdicom.sop_class.uid_to_service_class`
and :func:`pynetdicom.dsutils.encode` / ``decode``.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import logging
import queue
import select
import socket
import ssl
import threading
from collections.abc import Callable, Iterable
from io import BytesIO
from typing import Any, Protocol

from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom import _config
from pynetdicom.dimse_primitives import C_ECHO, C_STORE, N_CREATE, N_SET
from pynetdicom.dsutils import decode, encode
from pynetdicom.dul import DULServiceProvider
from pynetdicom.sop_class import uid_to_service_class

from broker.dicom.encoder import ResponsePlan, Unsupported, encode_answer
from broker.dicom.encoder import encode_item as encode_plan_item
from broker.dicom.modality_rules import Answer
from broker.dicom.responses import (
    FLUSH_BYTES,
    command_set,
    frame_command,
    frame_message,
    response_command,
)
from broker.dicom.worklist import WorklistItem

PYNETDICOM_CHECKED = "3.0.4"

log = logging.getLogger(__name__)

# Requests served as soon as they are complete (:class:`_ServeOnArrival`).
SERVED_ON_ARRIVAL = (C_ECHO, C_STORE, N_CREATE, N_SET)


def quiet_identifier_logging() -> None:
    """Never log C-FIND identifiers (patient data, and slow); both modes."""
    _config.LOG_REQUEST_IDENTIFIERS = False
    _config.LOG_RESPONSE_IDENTIFIERS = False


def transport_socket(assoc: Any) -> socket.socket | None:
    """The association's TCP (or TLS) socket, None if pynetdicom no longer exposes it."""
    sock = getattr(getattr(getattr(assoc, "dul", None), "socket", None), "socket", None)
    return sock if isinstance(sock, socket.socket) else None


def close_transport(assoc: Any) -> None:
    """Close a connection refused before its association thread starts: pynetdicom
    then finds the transport closed (Evt17) and never reads what the peer sent, which
    it would log as errors (non-DICOM bytes: an A-ABORT and a line per six bytes)."""
    transport = getattr(getattr(assoc, "dul", None), "socket", None)
    if transport is not None:
        transport.close()


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


def tune_server(server: Any) -> None:
    """Give a started ``AssociationServer`` the cheaper context copy, and take away its
    full garbage collection every 60 connections (``service_actions``, the accept
    loop's hook): with the broker's heap that took about 0.4 s with every thread
    stopped, a pause every 15 MPPS pairs. CPython's own collector frees the cycles of
    ended associations. Fast path only."""
    server.contexts = _Contexts(server.contexts)
    server.service_actions = _no_action


def _no_action() -> None:
    pass


class _ServeOnArrival(queue.Queue[Any]):
    """An association's queue of decoded DIMSE messages that serves a C-ECHO, C-STORE,
    N-CREATE or N-SET request at once, in the thread that completed it (pynetdicom's
    DUL reactor), with pynetdicom's own service class and so the EVT_* handlers.

    pynetdicom leaves each request on this queue for the association's reactor, which
    looks at it once a millisecond, and that reactor hands the response back to the
    DUL reactor, which looks at its queue once a millisecond too; on a busy machine
    each of these waits took several milliseconds, most of an instance's time. Served
    here, the response is sent by the DUL reactor's very next loop. The DUL reactor
    reads nothing while a request is served, which is what the association's reactor
    would be doing anyway; C-FIND stays queued, since its C-CANCEL must be read while
    it is answered. A request arriving before the previous one is answered (a peer
    ignoring the one-operation window, PS3.7 D.3.3.3) may be answered out of order."""

    def __init__(self, assoc: Any) -> None:
        super().__init__()
        self._assoc = assoc

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        context_id, message = item
        context = None
        if isinstance(message, SERVED_ON_ARRIVAL) and message.is_valid_request \
                and self.empty():
            context = next((cx for cx in self._assoc.accepted_contexts
                            if cx.context_id == context_id), None)
        if context is None:  # pynetdicom's reactor serves it (or aborts, as it does)
            super().put(item, block, timeout)
            return
        sop_class = message.AffectedSOPClassUID or getattr(message, "RequestedSOPClassUID",
                                                           None)
        try:
            uid_to_service_class(str(sop_class))(self._assoc).SCP(message, context)
        except Exception as exc:  # pynetdicom's reactor aborts here; from this thread
            # the DUL's own route does: A-ABORT from the provider (PS3.8 Evt19, AA-8).
            log.error("%s not answered (%s): association aborted", type(message).__name__,
                      type(exc).__name__)
            self._assoc.dul.event_queue.put("Evt19")


class _WakingQueue(queue.Queue[Any]):
    """One of a DUL reactor's queues (``to_provider_queue``, ``event_queue``) whose
    ``put`` from another thread also writes a byte to the reactor's wake-up socket, so
    that :class:`_WaitOnSocket` hears of the work at once (the reactor looks at its
    queues before it waits, so its own puts need none)."""

    _wake: socket.socket | None = None
    _owner: threading.Thread | None = None

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        wake = self._wake
        if wake is not None and threading.current_thread() is not self._owner:
            with contextlib.suppress(OSError):  # full (already woken) or closed
                wake.send(b"\0")


class _WaitOnSocket(DULServiceProvider):
    """pynetdicom's DUL reactor sleeps ``_run_loop_delay`` (1 ms) after every loop that
    found nothing to do, so a PDU arriving meanwhile waits for the sleep to end (the
    next C-STORE after each response, the A-ASSOCIATE-RQ, the A-RELEASE-RQ), and an
    idle association costs a thousand loops a second. In the reactor's own thread,
    reading that delay waits instead until its socket is readable or another thread
    hands it work (its queues are :class:`_WakingQueue` s, and a stop request wakes it
    too), at most :attr:`_longest_wait` (the ARTIM and idle timers are checked between
    waits), and then asks for no sleep."""

    _idle_wait = 0.001  # pynetdicom's delay
    _longest_wait = 0.02
    _wake_reader: socket.socket | None = None
    _wake_writer: socket.socket | None = None

    @property
    def _run_loop_delay(self) -> float:  # type: ignore[override]
        sock = transport_socket(self.assoc)
        if threading.current_thread() is not self or sock is None:
            return self._idle_wait
        if isinstance(sock, ssl.SSLSocket) and sock.pending():
            return 0.0
        wake = self._wake_reader or self._make_wake_up()
        if wake is None:
            waiting: list[Any] = [sock]
            longest = self._idle_wait
        elif self.to_provider_queue.queue or self.event_queue.queue or self._kill_thread:
            return 0.0
        else:
            waiting, longest = [sock, wake], self._longest_wait
        try:
            ready, _, _ = select.select(waiting, [], [], longest)
        except (OSError, ValueError):  # closed meanwhile: the reactor finds out
            return self._idle_wait
        if wake is not None and wake in ready:
            with contextlib.suppress(OSError):
                wake.recv(4096)
        return 0.0

    def _make_wake_up(self) -> socket.socket | None:
        """The wake-up socket pair, made in the reactor's thread (whose end closes it)
        once its queues are :class:`_WakingQueue` s; None to keep pynetdicom's delay."""
        queues = (self.to_provider_queue, self.event_queue)
        if not all(isinstance(waiting, _WakingQueue) for waiting in queues):
            return None
        reader, writer = socket.socketpair()
        reader.setblocking(False)
        writer.setblocking(False)
        self._wake_reader, self._wake_writer = reader, writer
        for waiting in queues:
            waiting._wake = writer  # type: ignore[union-attr]
            waiting._owner = self  # type: ignore[union-attr]
        return reader

    def _wake_up(self) -> None:
        if self._wake_writer is not None:
            with contextlib.suppress(OSError):
                self._wake_writer.send(b"\0")

    def kill_dul(self) -> None:
        super().kill_dul()
        self._wake_up()

    def stop_dul(self) -> bool:
        stopped = super().stop_dul()
        if stopped:
            self._wake_up()
        return stopped

    def run(self) -> None:
        """The thread's body (pynetdicom's reactor), then the wake-up sockets closed."""
        try:
            super().run()
        finally:
            for waiting in (self.to_provider_queue, self.event_queue):
                if isinstance(waiting, _WakingQueue):
                    waiting._wake = None
            for end in (self._wake_reader, self._wake_writer):
                if end is not None:
                    end.close()


def serve_on_arrival(assoc: Any) -> None:
    """Give a new association the :class:`_ServeOnArrival` queue, a DUL reactor that
    waits on its socket and :class:`_StatusResponses` (fast path only; before the
    association starts, from EVT_CONN_OPEN)."""
    assoc.dimse.msg_queue = _ServeOnArrival(assoc)
    dul = assoc.dul
    dul.__class__ = _WaitOnSocket
    for waiting in (dul.to_provider_queue, dul.event_queue):
        waiting.__class__ = _WakingQueue  # the same queue, items kept
    assoc.dimse.send_msg = _StatusResponses(assoc, assoc.dimse.send_msg)


# Response primitives framed by hand: the Command Field of their response, whether it
# has an Affected SOP Instance UID, and the optional fields that send it back to
# pynetdicom when set (PS3.7 9.3.1.2, 9.3.5.2, 10.3.4.2, 10.3.5.2).
_RESPONSES: dict[type, tuple[int, bool, tuple[str, ...]]] = {
    C_ECHO: (0x8030, False, ("ErrorComment",)),
    C_STORE: (0x8001, True, ("OffendingElement", "ErrorComment")),
    N_SET: (0x8120, True, ("AttributeList", "AttributeIdentifierList", "ErrorComment",
                           "ErrorID")),
    N_CREATE: (0x8140, True, ("AttributeList", "ErrorComment", "ErrorID")),
}


class _StatusResponses:
    """An association's ``dimse.send_msg`` that writes a C-ECHO, C-STORE, N-CREATE or
    N-SET response carrying only its status (no data set, no error fields) to the
    socket as one P-DATA-TF PDU framed by :mod:`broker.dicom.responses`, instead of
    pynetdicom building a DIMSE message with pydicom and handing it through its state
    machine queue; profiled, that was most of the broker's time per C-STORE.

    Only in the DUL reactor's own thread (where :class:`_ServeOnArrival` serves these
    requests, and where pynetdicom would write the PDU itself), in Sta6 with nothing
    queued for sending before it; anything else goes to pynetdicom's ``send_msg``."""

    def __init__(self, assoc: Any, send_msg: Callable[[Any, int], None]) -> None:
        self._assoc = assoc
        self._send_msg = send_msg

    def __call__(self, primitive: Any, context_id: int) -> None:
        data = self._framed(primitive, context_id)
        if data is None:
            self._send_msg(primitive, context_id)
            return
        self._assoc.dul.socket.send(data)

    def _framed(self, primitive: Any, context_id: int) -> bytes | None:
        spec = _RESPONSES.get(type(primitive))
        dul = self._assoc.dul
        in_reactor = threading.current_thread() is dul
        if spec is None or primitive.MessageIDBeingRespondedTo is None or not in_reactor \
                or not dul.to_provider_queue.empty() \
                or dul.state_machine.current_state != "Sta6":
            return None
        command_field, has_instance, optional = spec
        if any(getattr(primitive, name, None) is not None for name in optional) \
                or primitive.Status is None or primitive.AffectedSOPClassUID is None:
            return None
        instance = primitive.AffectedSOPInstanceUID if has_instance else None
        command = response_command(command_field, str(primitive.AffectedSOPClassUID),
                                   primitive.MessageIDBeingRespondedTo, primitive.Status,
                                   sop_instance_uid=None if instance is None else str(instance))
        return frame_command(context_id, command,
                             int(self._assoc.requestor.maximum_length or 0))


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


def item_encoder(identifier: Dataset, encoded: bytes, syntax: UID, zone: str,
                 answer: Answer | None = None) -> Callable[[WorklistItem], bytes]:
    """Encode items with the query's :class:`ResponsePlan` (``encoded``: the identifier's
    bytes in ``syntax``), or with pydicom (as pynetdicom would) where the plan declines;
    ``answer``: the calling modality profile's, when it transforms responses."""
    general = functools.partial(encode, is_implicit_vr=syntax.is_implicit_VR,
                                is_little_endian=syntax.is_little_endian,
                                deflated=syntax.is_deflated)
    if answer is not None:
        return _answer_encoder(answer, syntax, zone, general)
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


def _answer_encoder(answer: Answer, syntax: UID, zone: str,
                    general: Callable[[Dataset], bytes | None]
                    ) -> Callable[[WorklistItem], bytes]:
    plan = None
    if syntax.is_little_endian and not syntax.is_deflated:
        with contextlib.suppress(Unsupported):
            plan = ResponsePlan.from_query(answer.query, implicit=syntax.is_implicit_VR)

    def encode_item(item: WorklistItem) -> bytes:
        if plan is not None:
            with contextlib.suppress(Unsupported):
                return encode_answer(plan, answer, item, zone)
        data = general(answer.dataset(item, zone))
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
    def __init__(self, event: Any, identifier: Dataset, zone: str,
                 answer: Answer | None) -> None:
        self._encode = item_encoder(identifier, event.request.Identifier.getvalue(),
                                    UID(str(event.context.transfer_syntax)), zone, answer)
        self._writer = PendingWriter(event.assoc, event.context.context_id,
                                     str(event.request.AffectedSOPClassUID),
                                     event.request.MessageID)

    def pending(self, status: int, item: WorklistItem) -> Iterable[tuple[int, Dataset]]:
        self._writer.pending(status, self._encode(item))
        return ()

    def close(self) -> None:
        self._writer.flush()


class _PlainResponder:
    def __init__(self, identifier: Dataset, zone: str, answer: Answer | None) -> None:
        self._identifier, self._zone, self._answer = identifier, zone, answer

    def pending(self, status: int, item: WorklistItem) -> Iterable[tuple[int, Dataset]]:
        if self._answer is not None:
            return ((status, self._answer.dataset(item, self._zone)),)
        return ((status, item.dataset(self._identifier, self._zone)),)

    def close(self) -> None:
        pass


def find_responder(event: Any, identifier: Dataset, zone: str, *, fast: bool,
                   answer: Answer | None = None) -> FindResponder:
    """The fast path's writer, or pynetdicom's public (status, Dataset) yields;
    ``answer``: the calling modality profile's, when it transforms responses."""
    if fast:
        return _FastResponder(event, identifier, zone, answer)
    return _PlainResponder(identifier, zone, answer)
