"""The JSON API: one endpoint per console screen and action. Reading needs
the viewer role, repairing the operator role, managing users and everyone's tokens the
admin role; OpenAPI documentation at /docs. Calls with the session cookie must come from
the console's origin (broker.web.protections); calls with an API token need not."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel, Field
from sqlalchemy import select

from broker.db import unit_of_work
from broker.mapping.versions import DeployRefused
from broker.models import Role, User
from broker.security import accounts as sec
from broker.services.replay import ReplayCriteria
from broker.services.resolve import ResolveError
from broker.web import mapping_versions, mappings, queries, replays, traffic
from broker.web.deps import (
    DB,
    Admin,
    Operator,
    Viewer,
    client_address,
    modality_profile_of,
    runtime_of,
    use_cases_of,
)

router = APIRouter(prefix="/api", tags=["api"])

# The top of the OpenAPI documentation page (/docs): how a script gets in.
DESCRIPTION = """\
Modality worklist and HL7 integration broker: the console's JSON API.

### Authentication: the API token flow

Every `/api` call acts as a console user: a logged-in browser sends its session cookie,
a script sends an **API token** with that user's role.

1. **Log in** to the console at `/login` (an admin creates users: the Users & tokens
   page, or `mwl-broker users add NAME --role viewer`).
2. **Create a token** on the console's *API tokens* page (it is shown once: copy it),
   or from the logged-in session: `POST /api/tokens` with `{"name": "nightly report"}`.
3. **Use it** in the `Authorization` header:
   `curl -H "Authorization: Bearer mwlb_..." "http://HOST:8080/api/messages?status=failed"`.
   Here, **Authorize** with the token to try the calls below.

A token stops working (401) when it is revoked (the *API tokens* page,
`POST /api/tokens/{token_id}/revoke`, `mwl-broker tokens revoke ID`) or its user is
disabled. Reading needs the viewer role, repairing the operator role, managing users
the admin role.

The DICOMweb Worklist Service (UPS-RS, PS3.18 chapter 11) under `/dicomweb` needs a
token of the **performer** role (or admin); a performer may use nothing else here, and
acts only as the AE titles an admin binds to it (`POST /api/users/{name}/ae-titles`).
"""


class Ids(BaseModel):
    ids: list[int] = Field(min_length=1, max_length=1000)


class LinkRequest(BaseModel):
    order: str = Field(description="Accession number, or #id of a requested procedure.")


class DryRun(BaseModel):
    message: str = Field(description="One HL7 message (CR, LF or CRLF segment ends).")


class TokenRequest(BaseModel):
    name: str = Field(default="script", max_length=64)


class NewUser(BaseModel):
    name: str = Field(min_length=1, max_length=64)
    password: str = Field(description="Checked against the password policy (README).")
    role: Role = Role.VIEWER


class RoleRequest(BaseModel):
    role: Role


class AETitlesRequest(BaseModel):
    ae_titles: list[str] = Field(max_length=100, description=(
        "The AE titles a performer acts as on the Worklist Service (empty: none)."))


def _found(value: Any, what: str) -> Any:
    if value is None:
        raise HTTPException(404, f"no such {what}")
    return value


@router.get("/dashboard")
def dashboard(request: Request, session: DB, user: Viewer,
              hours: int = traffic.DEFAULT_HOURS) -> dict[str, Any]:
    """What the dashboard shows: counters per interface over what the store holds (inbound:
    received = processed + failed + rejected + pending), queues, health, last activity
    per AE title, and over the last ``hours`` (1, 3, 6, 12 or 24): HL7 received, sent and
    failed per time bucket (``traffic``, one-minute buckets up to 3 h), the adjustments
    messages were accepted with, worklist queries per station, and what needs
    attention. Times are ISO 8601 in UTC."""
    return queries.dashboard(session, runtime_of(request).settings, hours)


@router.get("/messages")
def messages(session: DB, user: Viewer, control_id: str = "", accession: str = "",
             patient_id: str = "", type: str = "", status: str = "",
             since: datetime | None = None, until: datetime | None = None,
             warnings: bool = False, limit: int = 100) -> list[dict[str, Any]]:
    """Search the inbound message store (``warnings=true``: only messages accepted
    with adjustments)."""
    return queries.search_messages(session, control_id=control_id, accession=accession,
                                   patient_id=patient_id, message_type=type, status=status,
                                   since=since, until=until, with_warnings=warnings,
                                   limit=min(limit, 1000))


@router.get("/messages/{message_id}")
def message(request: Request, session: DB, user: Viewer, message_id: int) -> dict[str, Any]:
    """One message: segments and fields with their names, the ACK sent, the outcome."""
    return dict(_found(queries.message_detail(session, message_id, runtime_of(request).read),
                      "message"))


@router.post("/messages/{message_id}/reprocess")
def reprocess_one(request: Request, user: Operator, message_id: int) -> dict[str, Any]:
    result = use_cases_of(request).reprocess([message_id])[0]
    if not result["queued"]:
        raise HTTPException(409, result["reason"])
    return result


@router.post("/messages/reprocess")
def reprocess_many(request: Request, user: Operator, body: Ids) -> list[dict[str, Any]]:
    """Reprocess several messages (bulk)."""
    return use_cases_of(request).reprocess(body.ids)


@router.get("/worklist")
def worklist(request: Request, session: DB, user: Viewer, ae_title: str, date: str = "",
             modality: str = "", status: str = "") -> list[dict[str, Any]]:
    """The items station ``ae_title`` would get (optionally for a date, modality, status)."""
    return queries.station_worklist(session, runtime_of(request).settings, ae_title=ae_title,
                                    date=date, modality=modality, status=status)


@router.get("/worklist/items/{sps_pk}")
def worklist_item(session: DB, user: Viewer, sps_pk: int) -> dict[str, Any]:
    return dict(_found(queries.item_detail(session, sps_pk), "worklist item"))


@router.get("/worklist/items/{sps_pk}/why")
def why_not(request: Request, session: DB, user: Viewer, sps_pk: int,
            ae_title: str) -> dict[str, Any]:
    """Replay the station's latest C-FIND keys against the item: which key excluded it."""
    _found(queries.item_detail(session, sps_pk), "worklist item")
    profile, version = modality_profile_of(request, session, ae_title)
    return queries.why_not(session, runtime_of(request).settings, sps_pk, ae_title,
                           profile=profile, version=version)


@router.get("/timeline/{accession}")
def timeline(session: DB, user: Viewer, accession: str) -> dict[str, Any]:
    """Everything that happened to an order, in time order; a run of C-FIND queries of
    one station that returned a step is one event with its ``count`` and ``last`` time."""
    return dict(_found(queries.timeline(session, accession), "accession"))


@router.get("/reconciliation")
def reconciliation(session: DB, user: Viewer, state: str = "open") -> list[dict[str, Any]]:
    return queries.reconciliation_items(session, state)


@router.post("/reconciliation/{item_id}/link")
def reconciliation_link(request: Request, user: Operator, item_id: int,
                        body: LinkRequest) -> dict[str, str]:
    try:
        return {"outcome": use_cases_of(request).link_item(item_id, body.order, user.name)}
    except ResolveError as exc:
        raise HTTPException(409, str(exc)) from None


@router.post("/reconciliation/{item_id}/dismiss")
def reconciliation_dismiss(request: Request, user: Operator, item_id: int) -> dict[str, str]:
    try:
        return {"outcome": use_cases_of(request).dismiss_item(item_id, user.name)}
    except ResolveError as exc:
        raise HTTPException(409, str(exc)) from None


@router.get("/mappings")
def mapping_profiles(request: Request, user: Viewer) -> dict[str, Any]:
    return mappings.profiles(runtime_of(request))


@router.post("/mappings/dry-run")
def mapping_dry_run(request: Request, session: DB, user: Viewer,
                    body: DryRun) -> dict[str, Any]:
    """The items a message would produce, and how they differ from what is stored."""
    return mappings.dry_run(session, use_cases_of(request), body.message)


class DeployRequest(BaseModel):
    comment: str = Field(default="", max_length=500)
    digest: str = Field(default="", description=(
        "The digest of the files whose impact was reviewed (GET /api/mappings/impact): "
        "refused (422) when the directory changed since. Empty: deploy it as it is."))


class RollbackRequest(BaseModel):
    version: int
    comment: str = Field(default="", max_length=500)


class ReplayRequest(BaseModel):
    status: str = Field(default="failed", description="failed or processed")
    since: datetime | None = Field(default=None, description="received at or after")
    until: datetime | None = Field(default=None, description="received before")
    sender: str | None = Field(default=None, description="MSH-3, or MSH-3/MSH-4")


@router.get("/mappings/versions")
def mapping_versions_list(request: Request, session: DB, user: Viewer) -> dict[str, Any]:
    """The deployed versions of the profiles (newest first, ``active``: in force), the
    deployment history, and whether the mappings directory differs from the version in
    force (not deployed)."""
    return mapping_versions.overview(session, runtime_of(request).settings.mappings_dir)


@router.get("/mappings/versions/{number}")
def mapping_version(session: DB, user: Viewer, number: int) -> dict[str, Any]:
    """One version with the text of each of its files."""
    try:
        return mapping_versions.version_detail(session, number)
    except mapping_versions.NotFound as exc:
        raise HTTPException(404, str(exc)) from None


@router.get("/mappings/diff")
def mapping_diff(request: Request, session: DB, user: Viewer, old: str,
                 new: str = "") -> dict[str, Any]:
    """The unified difference between two versions (``dir``: the mappings directory;
    ``new`` defaults to the version in force), whole and per file."""
    try:
        return mapping_versions.diff(session, old, new or mapping_versions.active_name(
            session), runtime_of(request).settings.mappings_dir)
    except mapping_versions.NotFound as exc:
        raise HTTPException(404, str(exc)) from None


@router.get("/mappings/impact")
def mapping_impact(request: Request, session: DB, user: Admin,
                   last: int = 50) -> dict[str, Any]:
    """What deploying the mappings directory would change (admin; nothing written):
    the last ``last`` messages of each sender mapped by the version in force and by
    the directory's profiles, or every validation error."""
    return mapping_versions.preview(session, runtime_of(request),
                                    per_sender=max(1, min(last, 1000)))


@router.post("/mappings/deploy")
def mapping_deploy(request: Request, user: Admin, body: DeployRequest) -> dict[str, Any]:
    """Deploy the mappings directory (admin): the version in force in every process.
    422 with every error when it does not validate (nothing changes)."""
    try:
        change = mapping_versions.deploy(
            use_cases_of(request), runtime_of(request).settings.mappings_dir,
            user=user.name, address=client_address(request), comment=body.comment,
            expected_digest=body.digest)
    except DeployRefused as exc:
        raise HTTPException(422, {"errors": list(exc.errors)}) from None
    return mapping_versions.info_row(change.info)


@router.post("/mappings/rollback")
def mapping_rollback(request: Request, user: Admin, body: RollbackRequest) -> dict[str, Any]:
    """Put an earlier version in force again (admin); 404 for an unknown version."""
    try:
        change = use_cases_of(request).mapping.rollback(
            body.version, user=user.name, address=client_address(request),
            comment=body.comment)
    except KeyError:
        raise HTTPException(404, f"no mapping version {body.version}") from None
    return mapping_versions.info_row(change.info)


@router.post("/replays", status_code=201)
def replay_start(request: Request, user: Operator, body: ReplayRequest) -> dict[str, Any]:
    """Reprocess in bulk the stored messages matching the filter under the version in
    force (operator); follow it with GET /api/replays/{id}."""
    try:
        criteria = ReplayCriteria(body.status, body.since, body.until, body.sender)
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from None
    return {"id": use_cases_of(request).mapping.replay(criteria, user.name)}


@router.get("/replays/{run_id}")
def replay_progress(session: DB, user: Viewer, run_id: int) -> dict[str, Any]:
    """A replay's progress: messages in it (``total``), with an outcome (``done``),
    ``passed``, still ``failing``, ``waiting``; ``reasons``: the failing ones grouped
    by error; ``finished`` once nothing waits."""
    return dict(_found(replays.status(session, run_id), "replay"))


@router.get("/outbound")
def outbound(session: DB, user: Viewer, status: str = "") -> list[dict[str, Any]]:
    return queries.outbound_messages(session, status)


@router.post("/outbound/{message_id}/resend")
def outbound_resend(request: Request, user: Operator, message_id: int) -> dict[str, Any]:
    if not use_cases_of(request).resend_outbound([message_id]):
        raise HTTPException(404, "no such outbound message")
    return {"id": message_id, "queued": True}


@router.get("/users")
def users(session: DB, user: Admin) -> list[dict[str, Any]]:
    """Console users and their roles (admin)."""
    return [{"name": u.name, "role": u.role, "disabled": u.disabled,
             "ae_titles": sec.ae_titles_of(u), "last_login_at": queries.iso(u.last_login_at)}
            for u in session.scalars(select(User).order_by(User.name))]


def _admin_action(request: Request, what: Any) -> Any:
    """Run ``what(session, actor address)`` in a transaction: 404 for an unknown user or
    token, 409 for a refused change (the last admin, a password policy breach)."""
    try:
        with unit_of_work(runtime_of(request).session_factory) as session:
            return what(session, client_address(request))
    except sec.NotFound as exc:
        raise HTTPException(404, str(exc)) from None
    except ValueError as exc:
        raise HTTPException(409, str(exc)) from None


def _user_row(user: User) -> dict[str, Any]:
    return {"name": user.name, "role": user.role, "disabled": user.disabled,
            "ae_titles": sec.ae_titles_of(user)}


@router.post("/users", status_code=201)
def add_user(request: Request, user: Admin, body: NewUser) -> dict[str, Any]:
    """Create a user (admin). The password must follow the policy: 409 with the reason
    otherwise."""
    settings = runtime_of(request).settings
    return _admin_action(request, lambda s, addr: _user_row(sec.add_user(
        s, settings, user.name, addr, body.name, body.password, body.role)))


@router.post("/users/{name}/disable")
def disable_user(request: Request, user: Admin, name: str) -> dict[str, Any]:
    """Disable a user (admin): its sessions end and its API tokens stop working now."""
    return _admin_action(request, lambda s, addr: _user_row(
        sec.set_disabled(s, user.name, addr, name, True)))


@router.post("/users/{name}/enable")
def enable_user(request: Request, user: Admin, name: str) -> dict[str, Any]:
    return _admin_action(request, lambda s, addr: _user_row(
        sec.set_disabled(s, user.name, addr, name, False)))


@router.post("/users/{name}/role")
def change_role(request: Request, user: Admin, name: str, body: RoleRequest
                ) -> dict[str, Any]:
    """Give a user another role (admin; the last enabled admin keeps theirs)."""
    return _admin_action(request, lambda s, addr: _user_row(
        sec.set_role(s, user.name, addr, name, body.role)))


@router.post("/users/{name}/ae-titles")
def bind_ae_titles(request: Request, user: Admin, name: str, body: AETitlesRequest
                   ) -> dict[str, Any]:
    """Bind a performer to the AE titles it acts as on the Worklist Service (admin):
    only as those may it open a UPS event channel, subscribe and unsubscribe, and with
    none it may not claim workitems (PS3.18 11). 409 for a value that is no AE title."""
    return _admin_action(request, lambda s, addr: _user_row(
        sec.set_ae_titles(s, user.name, addr, name, body.ae_titles)))


@router.delete("/users/{name}")
def delete_user(request: Request, user: Admin, name: str) -> dict[str, Any]:
    """Delete a user with its sessions and API tokens (admin)."""
    _admin_action(request, lambda s, addr: sec.delete_user(s, user.name, addr, name))
    return {"name": name, "deleted": True}


@router.get("/tokens")
def tokens(session: DB, user: Viewer) -> list[dict[str, Any]]:
    """API tokens (never their values): an admin's call lists everyone's, others their
    own."""
    return sec.list_tokens(session, None if sec.has_role(user, Role.ADMIN) else user)


@router.post("/tokens/{token_id}/revoke")
def revoke_token(request: Request, user: Viewer, token_id: int) -> dict[str, Any]:
    """Revoke an API token: one's own, or any as an admin. It gets 401 from now on."""
    owner = None if sec.has_role(user, Role.ADMIN) else user
    return dict(_admin_action(request, lambda s, addr: {
        "id": token_id, "revoked": True, "revoked_at": queries.iso(
            sec.revoke_token(s, user.name, addr, token_id, owner).revoked_at)}))


@router.post("/tokens")
def new_token(request: Request, user: Viewer, body: TokenRequest) -> dict[str, str]:
    """An API token for the calling user (shown once)."""
    with unit_of_work(runtime_of(request).session_factory) as session:
        token = sec.create_api_token(session, user, body.name, client_address(request))
    return {"token": token, "role": user.role}
