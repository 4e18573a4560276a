"""The UPS-RS event channel: Open Event Channel (PS3.18 8.10.4, 11.13) at
``ws[s]://HOST/dicomweb/subscribers/{aetitle}`` and Send Event Report (PS3.18 8.10.5)
over it.

A performer (or admin) opens the channel with its API token (``Authorization: Bearer``
on the WebSocket handshake; the console's session cookie works too); without one the
handshake is refused (HTTP 403). A performer opens only the channel of an AE title an
admin bound to it (:func:`broker.security.accounts.acting_refusal`): the channel's
events and its delivery position are that AE's, so no other performer may read or
consume them; any other handshake is refused with HTTP 403 and a ``Warning`` header
saying why, as the Worklist Service's refusals (:mod:`broker.web.dicomweb`).

The broker then sends, as WebSocket text frames, one ``application/dicom+json``
dataset per event of the subscriptions of ``aetitle``, in order: the N-EVENT-REPORT
fields of PS3.7 Table 10.3-1 (Affected SOP Class UID, Command Field N-EVENT-REPORT-RQ,
Message ID, Affected SOP Instance UID = the workitem, Event Type ID) with the Event
Information of PS3.4 Table CC.2.4-1.

The Affected SOP Class UID is the UPS Push SOP Class (1.2.840.10008.5.1.4.34.6.1), as in
the N-EVENT-REPORTs sent over DIMSE (:mod:`broker.dicom.ups_events`): PS3.18 11.13 asks
for the mandatory fields of the N-EVENT-REPORT message (PS3.7 10.3.1) and PS3.4 CC.2.4.3
requires its Affected SOP Class UID to be the UPS Push SOP Class, the class of every
workitem (PS3.4 CC.3.1), whichever UPS SOP Class carries the report (UPS Event, PS3.4
CC.3.1.1). The example payload of PS3.18 11.13 shows the UPS Event SOP Class UID there;
it is informative (and its VRs are not those of the attributes), so the normative text
of PS3.4 is followed, and one report is the same on both channels.

Events are the ``ups_event`` rows the UPS service appends in the transaction of each
change (read with ``events_after``): the channel reads the rows after the last one it
sent when this process's UPS use cases say they committed events, and every
``POLL_SECONDS`` for those other processes wrote (an order applied by a worker).

Where delivery starts: after the last event delivered to the AE title, a position the
UPS service keeps in the database (``ups_delivery``, shared with N-EVENT-REPORT
delivery: one queue per subscriber AE, each event delivered once by whichever channel
sent it). It moves after each page of reports sent, so a reconnection, even to another
process or after a restart, resumes where the last channel stopped; an AE title never
delivered to gets every event raised since it subscribed (the UPS service gives an AE
only those), the initial State Reports of its subscriptions first.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from typing import Any

import orjson
from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from pydicom.dataset import Dataset
from starlette.concurrency import run_in_threadpool

from broker.db import unit_of_work
from broker.models import User
from broker.runtime import Runtime
from broker.security.accounts import acting_refusal, session_user, token_user
from broker.web.dicomjson import DicomWebError, error_response, to_json
from broker.web.protections import COOKIE

log = logging.getLogger(__name__)

router = APIRouter(prefix="/dicomweb")

UPS_PUSH_SOP_CLASS = "1.2.840.10008.5.1.4.34.6.1"  # Affected SOP Class UID, PS3.4 CC.2.4.3
N_EVENT_REPORT_RQ = 0x0100
POLL_SECONDS = 1.0
PAGE = 100
POLICY_VIOLATION = 1008  # RFC 6455 7.4.1: the handshake is answered with HTTP 403


class Wakeups:
    """The open channels' wake-up signals, set from any thread when the UPS use cases
    of this process have committed events (:meth:`UPSUseCases.on_events`)."""

    def __init__(self) -> None:
        self._waiting: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()

    def add(self, signal: asyncio.Event) -> tuple[asyncio.AbstractEventLoop, asyncio.Event]:
        entry = (asyncio.get_running_loop(), signal)
        self._waiting.add(entry)
        return entry

    def discard(self, entry: tuple[asyncio.AbstractEventLoop, asyncio.Event]) -> None:
        self._waiting.discard(entry)

    def __call__(self) -> None:
        for loop, signal in list(self._waiting):
            if not loop.is_closed():
                loop.call_soon_threadsafe(signal.set)


def wakeups_of(app: Any) -> Wakeups:
    wakeups: Wakeups | None = getattr(app.state, "ups_wakeups", None)
    if wakeups is None:
        wakeups = app.state.ups_wakeups = Wakeups()
        app.state.use_cases.ups.on_events(wakeups)
    return wakeups


def event_report(event: Any, message_id: int) -> Dataset:
    """The Event Report dataset of one event (PS3.18 11.13, PS3.7 10.3.1); its Affected
    SOP Class UID is the UPS Push SOP Class (PS3.4 CC.2.4.3)."""
    ds = Dataset()
    ds.AffectedSOPClassUID = UPS_PUSH_SOP_CLASS
    ds.CommandField = N_EVENT_REPORT_RQ
    ds.MessageID = message_id % 0x10000
    ds.AffectedSOPInstanceUID = event.workitem_uid
    ds.EventTypeID = int(event.event_type_id)
    ds.update(event.payload)
    return ds


def _caller(runtime: Runtime, websocket: WebSocket) -> User | None:
    """The user of the handshake's API token, else of its session cookie."""
    header = websocket.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    cookie = websocket.cookies.get(COOKIE)
    with unit_of_work(runtime.session_factory) as session:
        if scheme.lower() == "bearer" and token.strip():
            return token_user(session, token.strip())
        if header or not cookie:
            return None
        return session_user(session, cookie, runtime.settings.session_idle_minutes)


async def _refuse(websocket: WebSocket, reason: str) -> None:
    """Refuse the handshake: HTTP 403 with ``reason`` in a ``Warning`` header and the
    body (the WebSocket Denial Response of ASGI), else, on a server without it, the
    close that the server answers with a bare 403 (RFC 6455 4.2.2)."""
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(
            error_response(websocket, DicomWebError(403, reason)))
    else:
        await websocket.close(code=POLICY_VIOLATION, reason=reason[:120])


async def _until_closed(websocket: WebSocket) -> None:
    """Read (and drop) what the peer sends until it closes the channel."""
    try:
        while True:
            await websocket.receive_text()
    except (WebSocketDisconnect, RuntimeError):
        return


@router.websocket("/subscribers/{aetitle}")
async def event_channel(websocket: WebSocket, aetitle: str) -> None:
    """Open Event Channel (PS3.18 11.13) for ``aetitle``: its events as they happen."""
    runtime: Runtime = websocket.app.state.runtime
    ae_title = aetitle.strip()
    user = await run_in_threadpool(_caller, runtime, websocket)
    if user is None:
        await _refuse(websocket, "open the event channel with an API token (Authorization: "
                                 "Bearer) of a performer")
        return
    if not 0 < len(ae_title) <= 16:
        await _refuse(websocket, f"{aetitle[:40]!r} is not an AE title")
        return
    reason = acting_refusal(user, ae_title)
    if reason:
        log.info("UPS event channel of %s refused to user %s", ae_title, user.name)
        await _refuse(websocket, reason)
        return
    await websocket.accept()
    ups = websocket.app.state.use_cases.ups
    position = await run_in_threadpool(ups.delivered_up_to, ae_title)
    closed = asyncio.create_task(_until_closed(websocket))
    signal = asyncio.Event()
    wakeups = wakeups_of(websocket.app)
    entry = wakeups.add(signal)
    message_ids = itertools.count(1)
    log.info("UPS event channel opened for %s", ae_title)
    try:
        while not closed.done():
            signal.clear()
            events = await run_in_threadpool(ups.events_after, position, ae_title, PAGE)
            for event in events:
                report = event_report(event, next(message_ids))
                await websocket.send_text(orjson.dumps(to_json(report)).decode())
                position = max(position, int(event.id))
            if events:
                await run_in_threadpool(ups.record_delivery, ae_title, position)
            if len(events) < PAGE:
                woken = asyncio.ensure_future(signal.wait())
                await asyncio.wait({closed, woken}, timeout=POLL_SECONDS,
                                   return_when=asyncio.FIRST_COMPLETED)
                woken.cancel()
    except (WebSocketDisconnect, RuntimeError, OSError):
        pass  # the peer went away while a report was being sent
    finally:
        wakeups.discard(entry)
        closed.cancel()
        log.info("UPS event channel closed for %s", ae_title)
