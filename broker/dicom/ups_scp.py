"""Unified Procedure Step over DIMSE (PS3.4 Annex CC): the handlers of the UPS Push,
Pull, Watch and Query SOP Classes, registered by :mod:`broker.dicom.server`.

=================  ==========================================================
UPS Push  (.6.1)   N-CREATE (CC.2.5), N-ACTION Request Cancel (CC.2.1.3), N-GET
UPS Pull  (.6.3)   C-FIND (CC.2.8), N-GET (CC.2.7), N-SET (CC.2.6), N-ACTION
                   Change State (CC.2.1)
UPS Watch (.6.2)   N-ACTION Subscribe / Unsubscribe / Suspend Global (CC.2.2,
                   CC.2.3), N-GET, C-FIND, N-ACTION Request Cancel
UPS Query (.6.5)   C-FIND
=================  ==========================================================

A request is answered whatever UPS SOP Class its presentation context names (the
Action Type ID, not the context, says what an N-ACTION asks for): liberal in what we
accept. UPS Event (.6.4) N-EVENT-REPORTs are sent by :mod:`broker.dicom.ups_events`.

Handlers are thin: they read the request (the Action Information by Action Type ID:
:func:`parse_action`), call one UPS use case, and answer the status of the
:class:`~broker.domain.ups.UPSError` it raises (the one table of UPS statuses, PS3.4
CC.2), or its warning. Every request is kept in the ``dicom_request`` store with the
status answered (a state change after its commit, a read off the response path).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Protocol

from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataset import Dataset
from pydicom.tag import Tag
from sqlalchemy.exc import SQLAlchemyError

from broker.config import Settings
from broker.domain import ups as rules
from broker.domain.ups import UPSError, refusal
from broker.models import DicomRequest
from broker.services.dimse_status import (
    ATTRIBUTE_LIST_ERROR,
    NO_SUCH_ACTION,
    PROCESSING_FAILURE,
)

log = logging.getLogger(__name__)

UPS_PUSH = "1.2.840.10008.5.1.4.34.6.1"
UPS_WATCH = "1.2.840.10008.5.1.4.34.6.2"
UPS_PULL = "1.2.840.10008.5.1.4.34.6.3"
UPS_EVENT = "1.2.840.10008.5.1.4.34.6.4"
UPS_QUERY = "1.2.840.10008.5.1.4.34.6.5"
# The SOP Classes whose requests the broker serves (UPS Event: it sends them).
UPS_SERVED = (UPS_PUSH, UPS_WATCH, UPS_PULL, UPS_QUERY)
# The well-known UPS Global Subscription SOP Instances (PS3.4 CC.3.1, Annex A of PS3.6).
GLOBAL_SUBSCRIPTION = "1.2.840.10008.5.1.4.34.5"
FILTERED_GLOBAL_SUBSCRIPTION = "1.2.840.10008.5.1.4.34.5.1"
GLOBAL_INSTANCES = (GLOBAL_SUBSCRIPTION, FILTERED_GLOBAL_SUBSCRIPTION)

RESOURCE_LIMITATION = 0x0213  # PS3.7 C.5: the SCU may try again later
OUT_OF_RESOURCES = 0xA700  # C-FIND: more matches than the broker returns (PS3.4 C.4.1)
PENDING, PENDING_WARNING = 0xFF00, 0xFF01  # FF01: some keys were not matched on
UNABLE_TO_PROCESS = 0xC000  # C-FIND failure (PS3.4 C.4.1.1.4)

TRANSACTION_UID = "TransactionUID"
# Action Information attributes that are no matching keys of a filtered subscription.
SUBSCRIPTION_ARGUMENTS = frozenset({"ReceivingAE", "DeletionLock", "SpecificCharacterSet"})


class ActionType(IntEnum):
    """N-ACTION Action Type IDs of the UPS SOP Classes (PS3.4 Table CC.2-3)."""

    CHANGE_STATE = 1
    REQUEST_CANCEL = 2
    SUBSCRIBE = 3
    UNSUBSCRIBE = 4
    SUSPEND_GLOBAL = 5


@dataclass(frozen=True)
class ChangeState:
    """Change UPS State (CC.2.1.1): Procedure Step State and Transaction UID."""

    state: str
    transaction_uid: str


@dataclass(frozen=True)
class CancelRequest:
    """Request UPS Cancel (CC.2.1.3): why, and whom to contact."""

    reason: str
    contact: str


@dataclass(frozen=True)
class Subscription:
    """Subscribe / Unsubscribe / Suspend Global Subscription (CC.2.2, CC.2.3): the
    Receiving AE, the Deletion Lock, and for the Filtered Global Subscription its
    matching keys."""

    action: ActionType
    receiving_ae: str
    deletion_lock: bool = False
    filter: Dataset | None = None


Action = ChangeState | CancelRequest | Subscription


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    return "" if value is None else str(value).strip()


def parse_action(action_type: int, info: Dataset | None, instance_uid: str,
                 calling: str) -> Action:
    """The request of an N-ACTION on a UPS (PS3.4 CC.2.1-CC.2.3) from its Action Type
    ID and Action Information. Liberal: a Subscribe, Unsubscribe or Suspend without
    Receiving AE (0074,1234) is for the calling AE; a Deletion Lock other than TRUE is
    none. A Suspend names a Global Subscription instance, else 0xC314; an unknown
    Action Type ID is 0x0123 (No such action)."""
    ds = info if info is not None else Dataset()
    try:
        action = ActionType(action_type)
    except ValueError:
        raise UPSError(NO_SUCH_ACTION, f"no UPS Action Type ID {action_type} (1 to 5, "
                       "PS3.4 CC.2)") from None
    if action is ActionType.CHANGE_STATE:
        return ChangeState(_text(ds, "ProcedureStepState"), _text(ds, TRANSACTION_UID))
    if action is ActionType.REQUEST_CANCEL:
        reason = _text(ds, "ReasonForCancellation")
        if not reason:  # the coded reason's meaning, when no words are given
            codes = ds.get("ProcedureStepDiscontinuationReasonCodeSequence") or []
            reason = next((_text(item, "CodeMeaning") for item in codes
                           if _text(item, "CodeMeaning")), "")
        return CancelRequest(reason, _text(ds, "ContactURI") or _text(ds, "ContactDisplayName"))
    receiving = _text(ds, "ReceivingAE") or calling.strip()
    if action is ActionType.SUSPEND_GLOBAL and instance_uid not in GLOBAL_INSTANCES:
        raise refusal(rules.NOT_APPROPRIATE, "Suspend Global Subscription names the "
                      "Global Subscription SOP Instance")
    if action is not ActionType.SUBSCRIBE:
        return Subscription(action, receiving)
    matching = None
    if instance_uid == FILTERED_GLOBAL_SUBSCRIPTION:
        matching = Dataset()
        for elem in ds:
            if elem.keyword not in SUBSCRIPTION_ARGUMENTS and elem.tag.group != 0x0000:
                matching[elem.tag] = elem
    return Subscription(action, receiving, _text(ds, "DeletionLock").upper() == "TRUE",
                        matching)


def requested_attributes(ds: Dataset, tags: list[Any] | None) -> Dataset:
    """An N-GET's Attribute List (PS3.7 10.1.2.1.4): the attributes the request names
    (all when it names none), a named one the workitem lacks as zero length; never
    the Transaction UID (PS3.4 CC.2.7.3)."""
    if not tags:
        out = Dataset()
        out.update(ds)
    else:
        out = Dataset()
        for value in tags:
            tag = Tag(value)
            if tag in ds:
                out[tag] = ds[tag]
            elif keyword_for_tag(tag):
                out.add_new(tag, dictionary_VR(tag), None)
    if TRANSACTION_UID in out:
        del out[TRANSACTION_UID]
    return out


def status(code: int, comment: str = "") -> Dataset:
    """A status dataset: Error Comment is LO (64 characters)."""
    ds = Dataset()
    ds.Status = code
    if comment:
        ds.ErrorComment = comment[:64]
    return ds


def error_comment(reason: str) -> str:
    """The Error Comment (LO, 64 characters) of a refusal: its words, or when they are
    longer, what follows the status's standard words ("...: missing X"): the status
    code says those already."""
    if len(reason) <= 64 or ": " not in reason:
        return reason[:64]
    return reason.split(": ", 1)[1][:64]


class UPSOperations(Protocol):
    """The UPS use cases the handlers call (:class:`broker.application.UPSUseCases`)."""

    def search(self, query: Dataset, *, limit: int | None, offset: int = 0,
               calling: str = "") -> Any: ...

    def retrieve(self, uid: str) -> Dataset: ...

    def create(self, dataset: Dataset, *, uid: str | None = None, by: str,
               address: str = "") -> str: ...

    def update(self, uid: str, transaction_uid: str, changes: Dataset, *,
               by: str) -> list[str]: ...

    def change_state(self, uid: str, state: str, transaction_uid: str, *, by: str,
                     address: str = "") -> int: ...

    def request_cancellation(self, uid: str, *, by: str, reason: str = "",
                             contact: str = "", address: str = "") -> int: ...

    def subscribe(self, ae_title: str, uid: str, *, deletion_lock: bool,
                  filter: Dataset | None = None) -> None: ...

    def unsubscribe(self, ae_title: str, uid: str) -> None: ...

    def suspend_global(self, ae_title: str) -> None: ...


Record = Callable[[DicomRequest, bool], None]


class UPSProvider:
    """The UPS handlers of one DICOM server. ``record(row, durable)`` keeps a
    ``dicom_request`` row: durable (before the response) for a change, in the
    background for a read. ``receivers()`` are the AE titles N-EVENT-REPORTs can be
    sent to (:attr:`Settings.ups_event_destinations`)."""

    def __init__(self, ups: UPSOperations, settings: Settings, record: Record) -> None:
        self._ups = ups
        self._settings = settings
        self._record = record

    def _row(self, event: Any, command: str, sop_class: str, uid: str,
             raw: Any) -> DicomRequest:
        requestor = event.assoc.requestor
        return DicomRequest(
            calling_ae_title=str(requestor.ae_title).strip()[:16],
            peer=f"{requestor.address}:{requestor.port}"[:100], command=command,
            sop_class_uid=sop_class[:64], sop_instance_uid=uid[:64],
            transfer_syntax_uid=str(event.context.transfer_syntax),
            dataset=raw.getvalue() if raw is not None else b"", status=0)

    def _answer(self, row: DicomRequest, body: Callable[[], int | Dataset],
                *, durable: bool) -> int | Dataset:
        """Run ``body`` (a status or a status dataset), mapping refusals and failures
        to their status; keep ``row`` with the status answered."""
        try:
            answer = body()
        except UPSError as exc:
            answer = status(exc.code, error_comment(exc.reason))
        except SQLAlchemyError as exc:
            log.error("%s %s: database error %s", row.command, row.sop_instance_uid,
                      type(exc).__name__)
            answer = status(RESOURCE_LIMITATION, "database unavailable, retry")
        except Exception as exc:  # a dataset pydicom cannot read
            log.info("%s: unreadable request (%s)", row.command, type(exc).__name__)
            answer = status(PROCESSING_FAILURE, f"cannot read the request: "
                            f"{type(exc).__name__}")
        code = answer if isinstance(answer, int) else int(answer.Status)
        row.status = code
        if isinstance(answer, Dataset):
            row.error_comment = str(answer.get("ErrorComment", ""))[:1024]
        if code:
            log.info("UPS %s %s: 0x%04X", row.command, row.sop_instance_uid, code)
        try:
            self._record(row, durable)
        except SQLAlchemyError as exc:
            log.error("UPS %s not recorded: %s", row.command, type(exc).__name__)
        return answer

    @staticmethod
    def _calling(event: Any) -> str:
        return str(event.assoc.requestor.ae_title).strip()

    @staticmethod
    def _address(event: Any) -> str:
        return str(event.assoc.requestor.address)

    # -- N-CREATE (UPS Push) -------------------------------------------------------------

    def n_create(self, event: Any) -> tuple[int | Dataset, Dataset | None]:
        """Create a workitem (PS3.4 CC.2.5); the response names a UID the broker chose."""
        req = event.request
        given = str(req.AffectedSOPInstanceUID or "")
        row = self._row(event, "N-CREATE", str(req.AffectedSOPClassUID), given,
                        req.AttributeList)
        created: list[str] = []

        def body() -> int:
            created.append(self._ups.create(event.attribute_list, uid=given or None,
                                            by=self._calling(event),
                                            address=self._address(event)))
            row.sop_instance_uid = created[0][:64]
            return rules.SUCCESS

        answer = self._answer(row, body, durable=True)
        if answer != rules.SUCCESS or given:
            return answer, None
        reply = Dataset()
        reply.AffectedSOPInstanceUID = created[0]
        return answer, reply

    # -- N-SET (UPS Pull) ------------------------------------------------------------------

    def n_set(self, event: Any) -> tuple[int | Dataset, Dataset | None]:
        """Update a workitem (PS3.4 CC.2.6): the Transaction UID comes in the
        Modification List; attributes that may not be set are left out with warning
        0x0107 naming them."""
        req = event.request
        uid = str(req.RequestedSOPInstanceUID or "")
        row = self._row(event, "N-SET", str(req.RequestedSOPClassUID), uid,
                        req.ModificationList)

        def body() -> int | Dataset:
            changes = Dataset()
            changes.update(event.modification_list)
            transaction_uid = _text(changes, TRANSACTION_UID)
            if TRANSACTION_UID in changes:
                del changes[TRANSACTION_UID]
            warnings = self._ups.update(uid, transaction_uid, changes,
                                        by=self._calling(event))
            if warnings:
                return status(ATTRIBUTE_LIST_ERROR, "; ".join(warnings))
            return rules.SUCCESS

        return self._answer(row, body, durable=True), None

    # -- N-GET (Push, Pull, Watch) ---------------------------------------------------------

    def n_get(self, event: Any) -> tuple[int | Dataset, Dataset | None]:
        """Retrieve a workitem (PS3.4 CC.2.7): the attributes asked for."""
        req = event.request
        uid = str(req.RequestedSOPInstanceUID or "")
        row = self._row(event, "N-GET", str(req.RequestedSOPClassUID), uid, None)
        found: list[Dataset] = []

        def body() -> int:
            found.append(requested_attributes(self._ups.retrieve(uid),
                                              req.AttributeIdentifierList))
            return rules.SUCCESS

        answer = self._answer(row, body, durable=False)
        return answer, (found[0] if found and answer == rules.SUCCESS else None)

    # -- N-ACTION (Push, Pull, Watch) ------------------------------------------------------

    def n_action(self, event: Any) -> tuple[int | Dataset, Dataset | None]:
        """Change State, Request Cancel, Subscribe, Unsubscribe, Suspend Global
        Subscription (PS3.4 CC.2.1-CC.2.3), by Action Type ID. A Subscribe for a
        Receiving AE the broker has no address for is 0xC308: it could send it
        nothing."""
        req = event.request
        uid = str(req.RequestedSOPInstanceUID or "")
        action_type = int(req.ActionTypeID or 0)
        row = self._row(event, f"N-ACTION {action_type}"[:16], str(req.RequestedSOPClassUID),
                        uid, req.ActionInformation)
        calling = self._calling(event)

        def body() -> int | Dataset:
            info = event.action_information if req.ActionInformation is not None else None
            action = parse_action(action_type, info, uid, calling)
            if isinstance(action, ChangeState):
                return self._warning(self._ups.change_state(
                    uid, action.state, action.transaction_uid, by=calling,
                    address=self._address(event)))
            if isinstance(action, CancelRequest):
                return self._warning(self._ups.request_cancellation(
                    uid, by=calling, reason=action.reason, contact=action.contact,
                    address=self._address(event)))
            if action.action is ActionType.SUBSCRIBE:
                if action.receiving_ae not in self.receivers():
                    raise refusal(rules.UNKNOWN_RECEIVING_AE,
                                  f"no address for {action.receiving_ae!r}")
                self._ups.subscribe(action.receiving_ae, uid,
                                    deletion_lock=action.deletion_lock, filter=action.filter)
            elif action.action is ActionType.UNSUBSCRIBE:
                self._ups.unsubscribe(action.receiving_ae, uid)
            else:
                self._ups.suspend_global(action.receiving_ae)
            return rules.SUCCESS

        return self._answer(row, body, durable=True), None

    def receivers(self) -> set[str]:
        return {d.ae_title for d in self._settings.ups_event_destinations}

    @staticmethod
    def _warning(code: int) -> int | Dataset:
        if code == rules.SUCCESS:
            return code
        return status(code, rules.WARNINGS.get(code, ""))

    # -- C-FIND (Pull, Watch, Query) -------------------------------------------------------

    def c_find(self, event: Any) -> Iterator[tuple[int | Dataset, Dataset | None]]:
        """Search workitems (PS3.4 CC.2.8) with the Modality Worklist's matching: each
        match a pending response (0xFF01 when some keys were not matched on), then
        success, or 0xA700 after MWLB_WORKLIST_MAX_RESULTS matches when there are
        more (as the worklist does)."""
        req = event.request
        row = self._row(event, "C-FIND", str(req.AffectedSOPClassUID), "", req.Identifier)
        found: list[Any] = []
        cap = self._settings.worklist_max_results or None

        def body() -> int | Dataset:
            try:
                identifier = event.identifier
            except Exception as exc:  # PS3.4 C.4.1.1.4: unable to process
                return status(UNABLE_TO_PROCESS, f"cannot read the identifier: "
                              f"{type(exc).__name__}")
            found.append(self._ups.search(identifier, limit=cap,
                                          calling=self._calling(event)))
            if found[0].total_capped:
                return status(OUT_OF_RESOURCES, f"more than {cap} workitems match")
            return rules.SUCCESS

        final = self._answer(row, body, durable=False)
        if found:
            pending = PENDING_WARNING if found[0].warnings else PENDING
            for item in found[0].items:
                if event.is_cancelled:
                    yield 0xFE00, None
                    return
                yield pending, item
        yield final, None
