#!/usr/bin/env python3
"""A UPS "Task Performer" (IHE AIW-I) for mwl-broker's Worklist Service (UPS-RS,
DICOM PS3.18 chapter 11): what an AI application does with the broker, in one file.

1. Subscribe its AE title to workitem events (PS3.18 11.10): to every workitem (the
   UPS Global Subscription, 1.2.840.10008.5.1.4.34.5), or only to those of one
   Scheduled Workitem Code (the filtered global subscription, ...34.5.1, ``filter=``).
2. Open the event channel (PS3.18 11.13, a WebSocket) to learn of new workitems.
3. Search for SCHEDULED workitems of its code and station (PS3.18 11.9); none yet:
   wait for an event, search again.
4. Claim one: Change State to IN PROGRESS with a Transaction UID of its own (PS3.18
   11.7, PS3.4 CC.2.1.3). Another performer was faster (409): try the next one.
5. Report progress (Update, PS3.18 11.6: Procedure Step Progress Information).
6. Complete it: the final-state attributes (PS3.4 Table CC.2.5-3: the Unified Procedure
   Step Performed Procedure Sequence with its start and end, the station, the
   workitem code and an Output Information Sequence referencing the result series),
   then Change State to COMPLETED. Asked to cancel meanwhile (a Cancel Requested event,
   PS3.4 CC.2.4.2): it cancels instead.

It logs workitem UIDs and states, never patient data. The "work" is a pause and the
result a synthetic Comprehensive SR reference (no instance is stored anywhere).

Use it as a script (``python examples/ups_performer.py --help``), or import it and
call :func:`perform_one`. It needs ``httpx``, ``websockets`` and ``pydicom``, and an API
token of a performer user an admin has bound to its AE title (``mwl-broker users
ae-titles NAME AE_TITLE``): the broker refuses (403) anything else.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import httpx
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

log = logging.getLogger("ups_performer")

DICOM_JSON = "application/dicom+json"
GLOBAL = "1.2.840.10008.5.1.4.34.5"  # UPS Global Subscription SOP Instance
FILTERED_GLOBAL = "1.2.840.10008.5.1.4.34.5.1"  # ... its filtered form
COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"  # the (synthetic) result's SOP Class
# Event Type ID of an N-EVENT-REPORT of the UPS Event SOP Class (PS3.4 CC.2.4.2).
STATE_REPORT, CANCEL_REQUESTED, PROGRESS_REPORT, SCP_STATUS_CHANGE, ASSIGNED = 1, 2, 3, 4, 5


class Performer:
    """One AE title's connection to the Worklist Service: an HTTP client with its API
    token (performer role) and, once :meth:`channel` is open, its event channel."""

    def __init__(self, base_url: str, token: str, ae_title: str, *,
                 verify: bool | str = True) -> None:
        self.base_url = base_url.rstrip("/")
        self.ae_title = ae_title
        self._token = token
        self._verify = verify
        self.http = httpx.Client(base_url=self.base_url, verify=verify, timeout=30, headers={
            "Authorization": f"Bearer {token}", "Accept": DICOM_JSON})
        self._ws: ClientConnection | None = None

    # -- subscriptions and events ----------------------------------------------------

    def subscribe(self, workitem_code: str = "") -> str:
        """Subscribe to every workitem, or to those of ``workitem_code`` (Scheduled
        Workitem Code Sequence > Code Value); returns the subscription's UID."""
        uid, params = GLOBAL, {}
        if workitem_code:
            uid = FILTERED_GLOBAL
            params = {"filter": f"ScheduledWorkitemCodeSequence.CodeValue={workitem_code}"}
        answer = self.http.post(f"/dicomweb/workitems/{uid}/subscribers/{self.ae_title}",
                                params=params)
        _check(answer, "subscribe", 201)
        log.info("subscribed %s to %s", self.ae_title,
                 "workitems of code " + workitem_code if workitem_code else "all workitems")
        return uid

    def unsubscribe(self, uid: str) -> None:
        answer = self.http.delete(f"/dicomweb/workitems/{uid}/subscribers/{self.ae_title}")
        _check(answer, "unsubscribe", 200)
        log.info("unsubscribed %s", self.ae_title)

    @contextmanager
    def channel(self) -> Iterator[Performer]:
        """The event channel of this AE title (PS3.18 11.13), open while in the block."""
        url = self.base_url.replace("https://", "wss://", 1).replace("http://", "ws://", 1)
        options: dict[str, Any] = {}
        if url.startswith("wss://") and isinstance(self._verify, str):
            import ssl

            options["ssl"] = ssl.create_default_context(cafile=self._verify)
        with connect(f"{url}/dicomweb/subscribers/{self.ae_title}", open_timeout=30,
                     additional_headers={"Authorization": f"Bearer {self._token}"},
                     **options) as ws:
            self._ws = ws
            log.info("event channel open")
            try:
                yield self
            finally:
                self._ws = None

    def next_event(self, timeout: float) -> Dataset | None:
        """The next event report (an N-EVENT-REPORT as DICOM JSON), None when none
        came within ``timeout`` seconds."""
        if self._ws is None:
            time.sleep(timeout)
            return None
        try:
            frame = self._ws.recv(timeout=max(timeout, 0.0))
        except TimeoutError:
            return None
        except ConnectionClosed:
            log.warning("event channel closed by the broker")
            self._ws = None
            return None
        event = Dataset.from_json(json.loads(frame))
        log.info("event %s for workitem %s%s", _EVENT_NAMES.get(int(event.EventTypeID), "?"),
                 event.AffectedSOPInstanceUID,
                 f": {event.ProcedureStepState}" if "ProcedureStepState" in event else "")
        return event

    # -- the workitem transactions ---------------------------------------------------

    def search(self, workitem_code: str = "", station: str = "") -> list[Dataset]:
        """SCHEDULED workitems of this code and station, oldest first."""
        params = {"ProcedureStepState": "SCHEDULED",
                  "includefield": "ScheduledWorkitemCodeSequence,ReferencedRequestSequence,"
                                  "ScheduledStationNameCodeSequence"}
        if workitem_code:
            params["ScheduledWorkitemCodeSequence.CodeValue"] = workitem_code
        if station:
            params["ScheduledStationNameCodeSequence.CodeValue"] = station
        answer = self.http.get("/dicomweb/workitems", params=params)
        if answer.status_code == 204:
            return []
        _check(answer, "search", 200)
        return [Dataset.from_json(item) for item in answer.json()]

    def claim(self, uid: str) -> str | None:
        """Change the workitem's state to IN PROGRESS with a new Transaction UID, which
        is returned (keep it: every later change needs it); None when it is no longer
        SCHEDULED (another performer claimed it, or it was cancelled)."""
        transaction_uid = generate_uid()
        answer = self._put_state(uid, "IN PROGRESS", transaction_uid)
        if answer.status_code == 409:
            log.info("workitem %s not claimed: %s", uid, answer.headers.get("warning", ""))
            return None
        _check(answer, "claim", 200)
        log.info("claimed workitem %s", uid)
        return transaction_uid

    def progress(self, uid: str, transaction_uid: str, percent: int, description: str) -> None:
        """Update the Procedure Step Progress Information (a Progress Report event to
        the workitem's other subscribers)."""
        item = Dataset()
        item.ProcedureStepProgress = percent
        item.ProcedureStepProgressDescription = description
        changes = Dataset()
        changes.ProcedureStepProgressInformationSequence = [item]
        _check(self._update(uid, transaction_uid, changes), "progress update", 200)
        log.info("workitem %s: %d%% (%s)", uid, percent, description)

    def complete(self, uid: str, transaction_uid: str, workitem: Dataset, started: str) -> None:
        """Record what was performed, then Change State to COMPLETED."""
        performed = Dataset()
        performed.PerformedProcedureStepStartDateTime = started
        performed.PerformedProcedureStepEndDateTime = _now()
        station = Dataset()
        station.CodeValue = self.ae_title
        station.CodingSchemeDesignator = "99LOCAL"
        station.CodeMeaning = f"AI application {self.ae_title}"
        performed.PerformedStationNameCodeSequence = [station]
        if workitem.get("ScheduledWorkitemCodeSequence"):
            performed.PerformedWorkitemCodeSequence = workitem.ScheduledWorkitemCodeSequence
        performed.OutputInformationSequence = [self.result_reference(workitem)]
        changes = Dataset()
        changes.UnifiedProcedureStepPerformedProcedureSequence = [performed]
        _check(self._update(uid, transaction_uid, changes), "final-state update", 200)
        _check(self._put_state(uid, "COMPLETED", transaction_uid), "completion", 200)
        log.info("completed workitem %s", uid)

    def cancel(self, uid: str, transaction_uid: str, reason: str) -> None:
        """Give up the claimed workitem: Change State to CANCELED."""
        item = Dataset()
        item.ProcedureStepCancellationDateTime = _now()
        item.ReasonForCancellation = reason
        changes = Dataset()
        changes.ProcedureStepProgressInformationSequence = [item]
        _check(self._update(uid, transaction_uid, changes), "cancellation update", 200)
        _check(self._put_state(uid, "CANCELED", transaction_uid), "cancellation", 200)
        log.info("cancelled workitem %s", uid)

    def result_reference(self, workitem: Dataset) -> Dataset:
        """An Output Information Sequence item (PS3.3 Table 10-3b, Referenced Instances
        and Access Macro): one synthetic SR instance in a new series of the workitem's
        study, retrievable from this AE title."""
        request = (workitem.get("ReferencedRequestSequence") or [Dataset()])[0]
        reference = Dataset()
        reference.TypeOfInstances = "DICOM"
        reference.StudyInstanceUID = request.get("StudyInstanceUID") or generate_uid()
        reference.SeriesInstanceUID = generate_uid()
        instance = Dataset()
        instance.ReferencedSOPClassUID = COMPREHENSIVE_SR
        instance.ReferencedSOPInstanceUID = generate_uid()
        reference.ReferencedSOPSequence = [instance]
        retrieval = Dataset()
        retrieval.RetrieveAETitle = self.ae_title
        reference.DICOMRetrievalSequence = [retrieval]
        return reference

    def _update(self, uid: str, transaction_uid: str, changes: Dataset) -> httpx.Response:
        return self.http.post(f"/dicomweb/workitems/{uid}?{transaction_uid}",
                              content=_body(changes), headers={"Content-Type": DICOM_JSON})

    def _put_state(self, uid: str, state: str, transaction_uid: str) -> httpx.Response:
        ds = Dataset()
        ds.ProcedureStepState = state
        ds.TransactionUID = transaction_uid
        return self.http.put(f"/dicomweb/workitems/{uid}/state", content=_body(ds),
                             headers={"Content-Type": DICOM_JSON})

    def close(self) -> None:
        self.http.close()


_EVENT_NAMES = {STATE_REPORT: "State Report", CANCEL_REQUESTED: "Cancel Requested",
                PROGRESS_REPORT: "Progress Report", SCP_STATUS_CHANGE: "SCP Status Change",
                ASSIGNED: "Assigned"}


class RefusedError(Exception):
    """The broker refused a transaction (its status and Warning header say why)."""


def _check(answer: httpx.Response, what: str, expected: int) -> None:
    if answer.status_code != expected:
        raise RefusedError(f"{what}: HTTP {answer.status_code} "
                           f"{answer.headers.get('warning', '')}".rstrip())


def _body(ds: Dataset) -> bytes:
    return json.dumps(ds.to_json_dict()).encode()


def _now() -> str:
    return datetime.now(UTC).strftime("%Y%m%d%H%M%S+0000")


def _cancel_requested(performer: Performer, uid: str) -> bool:
    """Whether a Cancel Requested event for ``uid`` is waiting on the channel."""
    while (event := performer.next_event(0)) is not None:
        if event.AffectedSOPInstanceUID == uid and int(event.EventTypeID) == CANCEL_REQUESTED:
            return True
    return False


def perform_one(base_url: str, token: str, ae_title: str, *, workitem_code: str = "",
                station: str = "", wait: float = 60.0, work_seconds: float = 1.0,
                verify: bool | str = True) -> str | None:
    """Wait up to ``wait`` seconds for a SCHEDULED workitem of ``workitem_code`` and
    ``station`` (either may be "": any), claim it, perform it and complete it. Returns
    its SOP Instance UID, or None when none could be claimed in time. Raises
    :class:`RefusedError` when the broker refuses a step after the claim."""
    performer = Performer(base_url, token, ae_title, verify=verify)
    subscription = ""
    try:
        subscription = performer.subscribe(workitem_code)
        with performer.channel():
            deadline = time.monotonic() + wait
            claimed: tuple[Dataset, str] | None = None
            while claimed is None:
                for workitem in performer.search(workitem_code, station):
                    transaction_uid = performer.claim(str(workitem.SOPInstanceUID))
                    if transaction_uid:
                        claimed = workitem, transaction_uid
                        break
                if claimed is None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        log.info("no workitem to perform within %.0f s", wait)
                        return None
                    log.info("waiting for workitems")
                    performer.next_event(min(left, 5.0))
            workitem, transaction_uid = claimed
            uid = str(workitem.SOPInstanceUID)
            started = _now()
            performer.progress(uid, transaction_uid, 10, "input retrieved")
            time.sleep(work_seconds)  # the application's own work goes here
            if _cancel_requested(performer, uid):
                performer.cancel(uid, transaction_uid, "cancellation requested")
                return uid
            performer.progress(uid, transaction_uid, 90, "result created")
            performer.complete(uid, transaction_uid, workitem, started)
            return uid
    finally:
        if subscription:
            performer.unsubscribe(subscription)
        performer.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Perform one UPS workitem of mwl-broker's Worklist Service (UPS-RS) "
                    "as an AI application would: subscribe, search, claim, report "
                    "progress, complete with a (synthetic) result reference.")
    parser.add_argument("--url", default="http://localhost:8080",
                        help="the broker's console base URL (default %(default)s)")
    parser.add_argument("--token", default=os.environ.get("UPS_TOKEN", ""),
                        help="an API token of the performer role (default: $UPS_TOKEN)")
    parser.add_argument("--ae-title", default="AI_APP",
                        help="this application's AE title, one bound to the token's user "
                             "(mwl-broker users ae-titles; default %(default)s)")
    parser.add_argument("--code", default="",
                        help="Scheduled Workitem Code Value to perform (default: any)")
    parser.add_argument("--station", default="",
                        help="Scheduled Station Name Code Value to perform (default: any)")
    parser.add_argument("--wait", type=float, default=60.0,
                        help="seconds to wait for a workitem (default %(default)s)")
    parser.add_argument("--work-seconds", type=float, default=1.0,
                        help="how long the pretend work takes (default %(default)s)")
    parser.add_argument("--cafile", default="",
                        help="CA certificate file for an https:// broker")
    args = parser.parse_args(argv)
    if not args.token:
        parser.error("give --token or set UPS_TOKEN")
    logging.basicConfig(level=logging.INFO, stream=sys.stdout,
                        format="%(asctime)s %(name)s %(message)s")
    try:
        uid = perform_one(args.url, args.token, args.ae_title, workitem_code=args.code,
                          station=args.station, wait=args.wait,
                          work_seconds=args.work_seconds, verify=args.cafile or True)
    except (RefusedError, httpx.HTTPError, OSError) as exc:
        log.error("stopped: %s", exc)
        return 1
    return 0 if uid else 2


if __name__ == "__main__":
    sys.exit(main())
