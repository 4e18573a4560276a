"""The DICOMweb Worklist Service (UPS-RS, PS3.18 chapter 11) under ``/dicomweb``:

=========================================================  ==============================
``GET /dicomweb/workitems?{query}``                        Search Workitems (11.9)
``POST /dicomweb/workitems[?{workitem}]``                  Create Workitem (11.4)
``GET /dicomweb/workitems/{workitem}``                     Retrieve Workitem (11.5)
``POST /dicomweb/workitems/{workitem}[?{transaction}]``    Update Workitem (11.6)
``PUT /dicomweb/workitems/{workitem}/state``               Change Workitem State (11.7)
``POST /dicomweb/workitems/{workitem}/cancelrequest``      Request Cancellation (11.8)
``POST /dicomweb/workitems/{uid}/subscribers/{aetitle}``   Subscribe (11.10)
``DELETE /dicomweb/workitems/{uid}/subscribers/{aetitle}`` Unsubscribe (11.11)
``POST /dicomweb/workitems/1.2.840.10008.5.1.4.34.5/``     Suspend Global Subscription
``subscribers/{aetitle}/suspend``                          (11.12)
``ws://.../dicomweb/subscribers/{aetitle}``                Open Event Channel (11.13,
                                                           :mod:`broker.web.ups_events`)
=========================================================  ==============================

``{uid}`` of a subscription is a workitem's, or the UPS Global Subscription SOP Instance
(1.2.840.10008.5.1.4.34.5) or its filtered form (1.2.840.10008.5.1.4.34.5.1, with
``filter`` parameters). The workitem UID of Create and the Transaction UID of Update
go in the query as PS3.18 writes them, ``?1.2.3``, or named, ``?workitem=1.2.3`` /
``?transaction=1.2.3``.

Payloads are ``application/dicom+json`` (PS3.18 F.2; ``application/json`` is taken
too); anything else is 415. Every route needs an API token (or session) of the
performer role, or admin. A performer acts as the AE titles an admin bound to it
(:func:`broker.security.accounts.acting_refusal`): it may subscribe, unsubscribe and
suspend only those (and open only their event channel), claim a workitem (as its
first AE title) only when it has one, and change a workitem with its Transaction UID
only as the AE title it was claimed as; otherwise 403. An admin may act
as any AE title. A refusal answers with the PS3.18 status the UPS service
gives (:class:`broker.domain.ups.UPSError`: 400, 404, 409) or the adapter's (400 bad
query or payload, 406 unacceptable Accept, 415 media type) and a
``Warning: 299 <service>: <text>`` header saying why. The rules live in the UPS
service; this module only translates HTTP to its calls, through the application layer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import Response
from pydicom.dataset import Dataset
from starlette.concurrency import run_in_threadpool

from broker.application.ups import UPSUseCases
from broker.domain import ups as rules
from broker.domain.ups import UPSError
from broker.models import User
from broker.security.accounts import acting_refusal, claiming_as, performing_refusal
from broker.web.deps import Performer, use_cases_of
from broker.web.dicomjson import (
    DicomWebError,
    add_warnings,
    body_dataset,
    documents_response,
    error_response,
    json_response,
    require_acceptable,
    require_uid,
)
from broker.web.dicomweb_query import parse_filter, parse_search

router = APIRouter(prefix="/dicomweb", tags=["dicomweb (UPS-RS)"])

GLOBAL_SUBSCRIPTION = "1.2.840.10008.5.1.4.34.5"
FILTERED_GLOBAL_SUBSCRIPTION = "1.2.840.10008.5.1.4.34.5.1"
GLOBAL_UIDS = frozenset({GLOBAL_SUBSCRIPTION, FILTERED_GLOBAL_SUBSCRIPTION})
TRANSACTION_UID = "TransactionUID"

CAPPED_WARNING = ("The number of results exceeded the maximum supported by the server. "
                  "Additional results can be requested.")

T = TypeVar("T")


def install(app: FastAPI) -> None:
    """Add the router and its error handlers: a refusal of the UPS service or of this
    adapter becomes its PS3.18 status with a Warning header."""
    app.include_router(router)

    @app.exception_handler(DicomWebError)
    def _refused(request: Request, exc: DicomWebError) -> Response:
        return error_response(request, exc)

    @app.exception_handler(UPSError)
    def _ups_refused(request: Request, exc: UPSError) -> Response:
        return error_response(request, DicomWebError(exc.http_status, exc.reason),
                              dimse_status=exc.code)


def worklist(request: Request) -> UPSUseCases:
    """The UPS use cases of the process (the application layer)."""
    return use_cases_of(request).ups


async def call(function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a use case (blocking: its own transaction) off the event loop."""
    return await run_in_threadpool(function, *args, **kwargs)


def _only(request: Request, *allowed: str) -> None:
    """400 for a query parameter the transaction does not define."""
    names = {"accept", "charset", *allowed}
    for name in request.query_params:
        if name.lower() not in names:
            raise DicomWebError(400, f"query parameter {name[:40]!r} is not supported here")


def _bare_uid(request: Request, named: str) -> str:
    """The UID a transaction takes in its query: ``?1.2.3`` (PS3.18's form) or
    ``?{named}=1.2.3``; "" when none."""
    found = ""
    for name, value in request.query_params.multi_items():
        if name.lower() == named:
            found = value
        elif not value and name.lower() not in ("accept", "charset"):
            found = name
        elif name.lower() not in ("accept", "charset"):
            raise DicomWebError(400, f"query parameter {name[:40]!r} is not supported here")
    return require_uid(found, named.capitalize() + " UID") if found else ""


def _workitem_url(request: Request, uid: str) -> str:
    return str(request.url_for("retrieve_workitem", workitem=uid))


def _ae_title(value: str) -> str:
    """An AE title (PS3.5 6.2 AE: 16 characters at most, no backslash or control
    character, not only spaces); 400 otherwise."""
    title = value.strip()
    if not title or len(title) > 16 or "\\" in title or any(
            not c.isprintable() or ord(c) > 127 for c in title):
        raise DicomWebError(400, f"{value[:40]!r} is not an AE title")
    return title


def _acting_as(user: User, value: str) -> str:
    """The AE title of the path, which ``user`` must be allowed to act as (400 when it
    is no AE title, 403 when the user may not act as it)."""
    title = _ae_title(value)
    reason = acting_refusal(user, title)
    if reason:
        raise DicomWebError(403, reason)
    return title


async def _performing(request: Request, user: User, uid: str, *, claim: bool = False
                      ) -> None:
    """403 when ``user`` may not claim workitem ``uid`` or change it with its
    Transaction UID: a performer with no AE title bound, or (not a claim) not acting as
    the AE title the workitem was claimed as."""
    claimed = "" if claim else await call(worklist(request).claimed_as, uid)
    reason = performing_refusal(user, claimed)
    if reason:
        raise DicomWebError(403, reason)


def _address(request: Request) -> str:
    """The client's network address, for the audit record (PS3.15 A.5.2)."""
    return request.client.host if request.client else ""


def _warning_words(code: int) -> str:
    return rules.WARNINGS.get(code, f"warning status 0x{code:04X}")


def _without_transaction_uid(ds: Dataset) -> Dataset:
    """The Transaction UID is never returned (PS3.4 CC.2.5.1.3)."""
    if TRANSACTION_UID in ds:
        del ds[TRANSACTION_UID]
    return ds


# -- search and retrieve -----------------------------------------------------------------

@router.get("/workitems")
async def search_workitems(request: Request, user: Performer) -> Response:
    """Search Workitems (PS3.18 11.9): query parameters of PS3.18 8.3.4 (attribute
    keywords or tags, sequence paths, ``includefield``, ``fuzzymatching``, ``limit``,
    ``offset``). 200 with the matches, 204 when none."""
    require_acceptable(request)
    query = parse_search(request.query_params.multi_items())
    result = await call(worklist(request).search, query.identifier, limit=query.limit,
                        offset=query.offset, calling=user.name,
                        include_all=query.include_all, as_json=True)
    items = list(result.documents)  # the Transaction UID never in them (PS3.4 CC.2.5.1.3)
    texts = [*query.warnings, *result.warnings]
    if result.total_capped:
        texts.append(CAPPED_WARNING)
    if not items:
        return add_warnings(request, Response(status_code=204), texts)
    return add_warnings(request, documents_response(items), texts)


@router.get("/workitems/{workitem}", name="retrieve_workitem")
async def retrieve_workitem(request: Request, user: Performer, workitem: str) -> Response:
    """Retrieve Workitem (PS3.18 11.5): 200 with the workitem, 404 when unknown."""
    require_acceptable(request)
    _only(request)
    uid = require_uid(workitem, "Workitem UID")
    ds = await call(worklist(request).retrieve, uid)
    return json_response(_without_transaction_uid(ds),
                         headers={"Content-Location": _workitem_url(request, uid)})


# -- create and update -------------------------------------------------------------------

@router.post("/workitems", status_code=201)
async def create_workitem(request: Request, user: Performer) -> Response:
    """Create Workitem (PS3.18 11.4): the workitem UID in the query (``?1.2.3``) or in
    the payload's SOP Instance UID, else the broker makes one. 201 with ``Location``
    and ``Content-Location`` of the new workitem; 409 when the UID is in use."""
    uid = _bare_uid(request, "workitem") or None
    ds = await body_dataset(request)
    created = await call(worklist(request).create, ds, uid=uid, by=user.name,
                         address=_address(request))
    url = _workitem_url(request, created)
    return Response(status_code=201, headers={"Location": url, "Content-Location": url})


@router.post("/workitems/{workitem}")
async def update_workitem(request: Request, user: Performer, workitem: str) -> Response:
    """Update Workitem (PS3.18 11.6): the Transaction UID in the query (``?1.2.3``; in
    the payload is taken too) is required once the workitem is IN PROGRESS. 200, with a
    Warning for each attribute left as it was; 400 without the right Transaction UID,
    409 when the workitem is COMPLETED or CANCELED."""
    uid = require_uid(workitem, "Workitem UID")
    transaction = _bare_uid(request, "transaction")
    changes = await body_dataset(request)
    sent = str(changes.get(TRANSACTION_UID, "") or "")
    if TRANSACTION_UID in changes:
        del changes[TRANSACTION_UID]
    if sent and not transaction:
        transaction = require_uid(sent, "Transaction UID")
    if transaction:
        await _performing(request, user, uid)
    texts = await call(worklist(request).update, uid, transaction, changes, by=user.name)
    response = Response(status_code=200,
                        headers={"Content-Location": _workitem_url(request, uid)})
    return add_warnings(request, response, texts or [])


# -- state and cancellation --------------------------------------------------------------

@router.put("/workitems/{workitem}/state")
async def change_workitem_state(request: Request, user: Performer, workitem: str
                                ) -> Response:
    """Change Workitem State (PS3.18 11.7): the payload holds the Procedure Step State
    (IN PROGRESS to claim, COMPLETED, CANCELED) and the Transaction UID (new when
    claiming, the claim's afterwards). 200 (with a Warning when it was already in that
    state); 409 when the state forbids it or the final-state attributes are missing,
    400 without the right Transaction UID."""
    uid = require_uid(workitem, "Workitem UID")
    _only(request)
    ds = await body_dataset(request)
    state = str(ds.get("ProcedureStepState", "") or "").strip()
    if not state:
        raise DicomWebError(400, "the payload has no Procedure Step State (0074,1000)")
    transaction = str(ds.get(TRANSACTION_UID, "") or "").strip()
    if not transaction:
        raise DicomWebError(400, "the payload has no Transaction UID (0008,1195)")
    require_uid(transaction, "Transaction UID")
    claim = state.upper() == "IN PROGRESS"
    await _performing(request, user, uid, claim=claim)
    status = await call(worklist(request).change_state, uid, state, transaction,
                        by=user.name, address=_address(request),
                        claimed_as=claiming_as(user) if claim else "")
    response = Response(status_code=200)
    return add_warnings(request, response, [_warning_words(status)] if status else [])


@router.post("/workitems/{workitem}/cancelrequest")
async def request_cancellation(request: Request, user: Performer, workitem: str
                               ) -> Response:
    """Request Cancellation (PS3.18 11.8): the optional payload holds the Reason For
    Cancellation and a Contact Display Name / URI. 202 Accepted: a SCHEDULED workitem
    is cancelled, the performer of an IN PROGRESS one is told; 409 when COMPLETED."""
    uid = require_uid(workitem, "Workitem UID")
    _only(request)
    ds = await body_dataset(request, required=False)
    reason = str(ds.get("ReasonForCancellation", "") or "")
    contact = str(ds.get("ContactURI", "") or ds.get("ContactDisplayName", "") or "")
    status = await call(worklist(request).request_cancellation, uid, by=user.name,
                        reason=reason, contact=contact, address=_address(request))
    response = Response(status_code=202)
    return add_warnings(request, response, [_warning_words(status)] if status else [])


# -- subscriptions -----------------------------------------------------------------------

@router.post("/workitems/{workitem}/subscribers/{aetitle}", status_code=201)
async def subscribe(request: Request, user: Performer, workitem: str, aetitle: str
                    ) -> Response:
    """Subscribe (PS3.18 11.10) ``aetitle`` to one workitem's events or, with a global
    UID, to every workitem's (``filter`` parameters with the filtered one);
    ``deletionlock=true`` asks for a Deletion Lock. 201; events arrive over the event
    channel (:mod:`broker.web.ups_events`). 403 when the caller may not act as
    ``aetitle`` (a performer not bound to it)."""
    uid = require_uid(workitem, "Workitem UID")
    ae = _acting_as(user, aetitle)
    _only(request, "deletionlock", "filter")
    lock_values = request.query_params.getlist("deletionlock")
    lock = bool(lock_values) and lock_values[-1].strip().lower() == "true"
    if any(v.strip().lower() not in ("true", "false") for v in lock_values):
        raise DicomWebError(400, "deletionlock: true or false")
    filters = request.query_params.getlist("filter")
    if filters and uid != FILTERED_GLOBAL_SUBSCRIPTION:
        raise DicomWebError(400, f"filter applies to the filtered global subscription "
                                 f"({FILTERED_GLOBAL_SUBSCRIPTION}) only")
    match = parse_filter(filters) if filters else None
    await call(worklist(request).subscribe, ae, uid, deletion_lock=lock, filter=match)
    return Response(status_code=201)


@router.delete("/workitems/{workitem}/subscribers/{aetitle}")
async def unsubscribe(request: Request, user: Performer, workitem: str, aetitle: str
                      ) -> Response:
    """Unsubscribe (PS3.18 11.11): from one workitem, or with a global UID from the
    global subscription and every workitem subscription (PS3.4 CC.2.3.2). 200."""
    uid = require_uid(workitem, "Workitem UID")
    _only(request)
    await call(worklist(request).unsubscribe, _acting_as(user, aetitle), uid)
    return Response(status_code=200)


@router.post("/workitems/{workitem}/subscribers/{aetitle}/suspend")
async def suspend_global_subscription(request: Request, user: Performer, workitem: str,
                                      aetitle: str) -> Response:
    """Suspend Global Subscription (PS3.18 11.12): no new workitems for ``aetitle``,
    its subscriptions to existing ones kept. 200; 400 for a workitem UID."""
    uid = require_uid(workitem, "Workitem UID")
    _only(request)
    if uid not in GLOBAL_UIDS:
        raise DicomWebError(400, f"only a global subscription ({GLOBAL_SUBSCRIPTION}) may "
                                 "be suspended")
    await call(worklist(request).suspend_global, _acting_as(user, aetitle))
    return Response(status_code=200)

