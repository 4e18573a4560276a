"""Server-rendered console pages (Jinja2, a little plain JavaScript, no front-end build).
Each page shows what the matching JSON API endpoint returns (broker.web.queries).
Every POST form carries the session's CSRF token (OWASP synchronizer token pattern,
checked by broker.web.protections.form_token_required); scripts and styles are static
files only, as the Content-Security-Policy requires."""

from __future__ import annotations

import math
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Depends, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from jinja2 import pass_context
from jinja2.runtime import Context
from markupsafe import Markup
from sqlalchemy import select
from sqlalchemy.orm import Session

from broker.audit import hooks as audit
from broker.db import unit_of_work
from broker.mapping.versions import DeployRefused
from broker.models import Role, User
from broker.security import accounts as sec
from broker.security.accounts import csrf_token, end_session, has_role, session_user, start_session
from broker.services.replay import ReplayCriteria
from broker.services.resolve import ResolveError
from broker.web import chart, display, mapping_versions, mappings, queries, replays, traffic
from broker.web.deps import (
    COOKIE,
    DB,
    PageAdmin,
    PageOperator,
    PageTokenHolder,
    PageViewer,
    client_address,
    modality_profile_of,
    runtime_of,
    use_cases_of,
)
from broker.web.protections import form_token_required

templates = Jinja2Templates(directory=Path(__file__).parent / "templates")
router = APIRouter(include_in_schema=False, dependencies=[Depends(form_token_required)])


@lru_cache(maxsize=8)
def zone_named(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def zone_of(request: Request) -> ZoneInfo:
    """The zone the console shows times in (MWLB_TIMEZONE, else the host's)."""
    return zone_named(runtime_of(request).timezone)


@pass_context
def _when(context: Context, value: Any) -> Markup:
    return display.time_element(value, zone_of(context["request"]))


@pass_context
def _between(context: Context, first: Any, last: Any) -> str:
    return display.between(first, last, zone_of(context["request"]))


# Every page shows person names, moments and DICOM dates through these (broker.web.display).
templates.env.filters.update(person=display.person_name, dicom_dt=display.dicom_datetime,
                             when=_when, between=_between)


def render(request: Request, name: str, user: User | None, status_code: int = 200,
           headers: dict[str, str] | None = None, **context: Any) -> HTMLResponse:
    cookie = request.cookies.get(COOKIE)
    return templates.TemplateResponse(request, name, {
        "user": user, "operator": user is not None and has_role(user, Role.OPERATOR),
        "admin": user is not None and has_role(user, Role.ADMIN),
        "console": user is not None and has_role(user, Role.VIEWER),
        "csrf": csrf_token(cookie) if cookie and user is not None else "",
        "zone": runtime_of(request).timezone,
        "notice": request.query_params.get("notice", ""), **context},
        status_code=status_code, headers=headers)


def back(url: str, notice: str) -> RedirectResponse:
    joiner = "&" if "?" in url else "?"
    return RedirectResponse(f"{url}{joiner}notice={quote(notice)}", status_code=303)


@router.get("/login")
def login_page(request: Request) -> HTMLResponse:
    return render(request, "login.html", None, error="")


@router.post("/login")
def login(request: Request, name: Annotated[str, Form()],
          password: Annotated[str, Form()]) -> Response:
    runtime = runtime_of(request)
    with unit_of_work(runtime.session_factory) as session:
        result = sec.login(session, runtime.settings, name, password, client_address(request))
        token = start_session(session, result.user) if result.user is not None else None
    if token is None:
        if result.retry_after > 0:
            wait = math.ceil(result.retry_after)
            return render(request, "login.html", None, status_code=429,
                          headers={"Retry-After": str(wait)},
                          error=f"Too many failed logins: try again in {wait} s.")
        return render(request, "login.html", None, error="Wrong name or password.")
    # A performer sees nothing of the console but its API tokens (for the Worklist
    # Service): send it there rather than to a dashboard it may not see.
    home = "/" if result.user is not None and has_role(result.user, Role.VIEWER) else "/tokens"
    response = RedirectResponse(home, status_code=303)
    response.set_cookie(COOKIE, token, httponly=True, samesite="strict",
                        secure=request.url.scheme == "https")
    return response


@router.post("/logout")
def logout(request: Request) -> Response:
    token = request.cookies.get(COOKIE)
    if token:
        with unit_of_work(runtime_of(request).session_factory) as session:
            user = session_user(session, token, runtime_of(request).settings.session_idle_minutes)
            end_session(session, token)
            if user is not None:
                audit.user_authentication(session, user.name,
                                          request.client.host if request.client else "",
                                          login=False, ok=True)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(COOKIE)
    return response


@router.get("/")
def dashboard(request: Request, session: DB, user: PageViewer,
              hours: int = traffic.DEFAULT_HOURS) -> HTMLResponse:
    """Counts, the traffic chart of the last ``hours``, worklist queries per station and
    what needs attention (dashboard.js reloads the panels marked ``data-live``)."""
    data = queries.dashboard(session, runtime_of(request).settings, hours)
    return render(request, "dashboard.html", user, data=data, windows=traffic.WINDOW_HOURS,
                  chart=chart.traffic_chart(data["traffic"], zone_of(request)),
                  sparklines={s["ae_title"]: chart.sparkline(s["per_bucket"])
                              for s in data["stations"]})


def _moment(value: str) -> datetime | None:
    """A datetime-local form value (browser local time, taken as the broker's zone)."""
    if not value:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise HTTPException(422, f"not a date and time: {value!r}") from None


@router.get("/messages")
def messages(request: Request, session: DB, user: PageViewer, control_id: str = "",
             accession: str = "", patient_id: str = "", type: str = "", status: str = "",
             since: str = "", until: str = "", warnings: str = "") -> HTMLResponse:
    zone = zone_of(request)
    start, end = _moment(since), _moment(until)
    rows = queries.search_messages(
        session, control_id=control_id, accession=accession, patient_id=patient_id,
        message_type=type, status=status,
        since=start.replace(tzinfo=zone) if start else None,
        until=end.replace(tzinfo=zone) if end else None, with_warnings=bool(warnings))
    return render(request, "messages.html", user, rows=rows, filters={
        "control_id": control_id, "accession": accession, "patient_id": patient_id,
        "type": type, "status": status, "since": since, "until": until,
        "warnings": warnings})


@router.get("/messages/{message_id}")
def message(request: Request, session: DB, user: PageViewer, message_id: int) -> HTMLResponse:
    detail = queries.message_detail(session, message_id, runtime_of(request).read)
    if detail is None:
        raise HTTPException(404, "no such message")
    return render(request, "message.html", user, m=detail)


@router.post("/messages/reprocess")
def reprocess(request: Request, user: PageOperator,
              ids: Annotated[list[int], Form()]) -> Response:
    results = use_cases_of(request).reprocess(ids)
    queued = [str(r["id"]) for r in results if r["queued"]]
    refused = [str(r["id"]) for r in results if not r["queued"]]
    notice = (f"queued for reprocessing: {', '.join(queued) or 'none'}"
              + (f"; refused: {', '.join(refused)}" if refused else ""))
    target = f"/messages/{ids[0]}" if len(ids) == 1 else "/messages"
    return back(target, notice)


@router.get("/worklist")
def worklist(request: Request, session: DB, user: PageViewer, ae_title: str = "",
             date: str | None = None, modality: str = "", status: str = "") -> HTMLResponse:
    if date is None:  # first visit: today's list, as a modality asks for it each morning
        date = datetime.now(zone_of(request)).strftime("%Y%m%d")
    rows = (queries.station_worklist(session, runtime_of(request).settings, ae_title=ae_title,
                                     date=date, modality=modality, status=status)
            if ae_title else [])
    applies = (queries.modality_profile(*modality_profile_of(request, session, ae_title),
                                        ae_title) if ae_title else None)
    return render(request, "worklist.html", user, rows=rows, modality_profile=applies,
                  filters={"ae_title": ae_title, "date": date, "modality": modality,
                           "status": status})


@router.get("/worklist/items/{sps_pk}")
def worklist_item(request: Request, session: DB, user: PageViewer, sps_pk: int,
                  ae_title: str = "") -> HTMLResponse:
    item = queries.item_detail(session, sps_pk)
    if item is None:
        raise HTTPException(404, "no such worklist item")
    why = None
    if ae_title:
        profile, version = modality_profile_of(request, session, ae_title)
        why = queries.why_not(session, runtime_of(request).settings, sps_pk, ae_title,
                              profile=profile, version=version)
    return render(request, "item.html", user, item=item, why=why, ae_title=ae_title)


@router.get("/timeline")
def timeline_search(accession: str = "") -> Response:
    return RedirectResponse(f"/timeline/{quote(accession)}" if accession else "/messages",
                            status_code=303)


@router.get("/timeline/{accession}")
def timeline(request: Request, session: DB, user: PageViewer, accession: str) -> HTMLResponse:
    data = queries.timeline(session, accession)
    if data is None:
        raise HTTPException(404, "no order with this accession number")
    return render(request, "timeline.html", user, t=data)


@router.get("/reconciliation")
def reconciliation(request: Request, session: DB, user: PageViewer,
                   state: str = "open") -> HTMLResponse:
    return render(request, "reconciliation.html", user,
                  items=queries.reconciliation_items(session, state), state=state)


@router.post("/reconciliation/{item_id}/link")
def reconciliation_link(request: Request, user: PageOperator, item_id: int,
                        order: Annotated[str, Form()]) -> Response:
    try:
        notice = use_cases_of(request).link_item(item_id, order, user.name)
    except ResolveError as exc:
        notice = f"not linked: {exc}"
    return back("/reconciliation", notice)


@router.post("/reconciliation/{item_id}/dismiss")
def reconciliation_dismiss(request: Request, user: PageOperator, item_id: int) -> Response:
    try:
        notice = use_cases_of(request).dismiss_item(item_id, user.name)
    except ResolveError as exc:
        notice = f"not dismissed: {exc}"
    return back("/reconciliation", notice)


def _mapping_page(request: Request, session: Session, user: User,
                  **context: Any) -> HTMLResponse:
    runtime = runtime_of(request)
    return render(request, "mappings.html", user, profiles=mappings.profiles(runtime),
                  versions=mapping_versions.overview(session, runtime.settings.mappings_dir),
                  **context)


@router.get("/mappings")
def mapping_page(request: Request, session: DB, user: PageViewer) -> HTMLResponse:
    """The profiles: versions in force and before, deployment history, the mappings
    directory and whether it is deployed, a dry run, a replay form (operators)."""
    return _mapping_page(request, session, user, message="", result=None)


@router.post("/mappings")
def mapping_dry_run(request: Request, session: DB, user: PageViewer,
                    message: Annotated[str, Form()]) -> HTMLResponse:
    return _mapping_page(request, session, user, message=message,
                         result=mappings.dry_run(session, use_cases_of(request), message))


@router.get("/mappings/diff")
def mapping_diff(request: Request, session: DB, user: PageViewer, old: str = "",
                 new: str = "") -> HTMLResponse:
    """The difference between two versions (or ``dir``, the mappings directory); the
    newer one defaults to the version in force."""
    active = mapping_versions.active_name(session)
    new = new or active
    old = old or active
    try:
        data = mapping_versions.diff(session, old, new, runtime_of(request).settings.mappings_dir)
    except mapping_versions.NotFound as exc:
        raise HTTPException(404, str(exc)) from None
    return render(request, "mapping_diff.html", user, d=data, versions=mapping_versions.overview(
        session, runtime_of(request).settings.mappings_dir))


@router.get("/mappings/versions/{number}")
def mapping_version(request: Request, session: DB, user: PageViewer,
                    number: int) -> HTMLResponse:
    """One version: its files, its deployments; for an admin, rolling back to it (the
    difference it would make to the version in force is shown first)."""
    try:
        version = mapping_versions.version_detail(session, number)
    except mapping_versions.NotFound as exc:
        raise HTTPException(404, str(exc)) from None
    active = mapping_versions.active_name(session)
    change = (mapping_versions.diff(session, active, str(number),
                                    runtime_of(request).settings.mappings_dir)
              if active and active != str(number) else None)
    return render(request, "mapping_version.html", user, v=version, change=change,
                  active=active)


@router.get("/mappings/deploy")
def mapping_deploy_preview(request: Request, session: DB, user: PageAdmin,
                           last: int = 50) -> HTMLResponse:
    """Deploy the mappings directory, step one (admin): the impact of its files on the
    last ``last`` messages of each sender, or why they cannot be deployed."""
    last = max(1, min(last, 1000))
    preview = mapping_versions.preview(session, runtime_of(request), per_sender=last)
    return render(request, "mapping_deploy.html", user, p=preview, last=last, errors=[])


@router.post("/mappings/deploy")
def mapping_deploy(request: Request, user: PageAdmin, digest: Annotated[str, Form()] = "",
                   comment: Annotated[str, Form(max_length=500)] = "") -> Response:
    """Deploy the mappings directory, step two (admin): the files whose impact was
    shown (``digest``) become the version in force, in every process; a set that does
    not validate, or files changed since, are refused and nothing changes."""
    runtime = runtime_of(request)
    try:
        change = mapping_versions.deploy(
            use_cases_of(request), runtime.settings.mappings_dir, user=user.name,
            address=client_address(request), comment=comment, expected_digest=digest)
    except DeployRefused as exc:
        return render(request, "mapping_deploy.html", user, status_code=422, p=None,
                      last=50, errors=list(exc.errors))
    info = change.info
    if not change.changed:
        return back("/mappings", f"version {info.version} is already in force: "
                                 "nothing deployed")
    return back("/mappings", f"version {info.version} deployed: in force now")


@router.post("/mappings/rollback")
def mapping_rollback(request: Request, user: PageAdmin, version: Annotated[int, Form()],
                     comment: Annotated[str, Form(max_length=500)] = "") -> Response:
    """Put an earlier version in force again (admin), as a deploy does."""
    try:
        use_cases_of(request).mapping.rollback(version, user=user.name,
                                               address=client_address(request),
                                               comment=comment)
    except KeyError:
        return back("/mappings", f"not rolled back: no mapping version {version}")
    return back("/mappings", f"rolled back: version {version} in force now")


@router.post("/replays")
def replay_start(request: Request, user: PageOperator,
                 status: Annotated[str, Form()] = "failed",
                 since: Annotated[str, Form()] = "",
                 sender: Annotated[str, Form()] = "") -> Response:
    """Reprocess in bulk the stored messages with this status (received since
    ``since``, from ``sender`` APP or APP/FACILITY) under the version in force; opens
    the replay's progress page."""
    start = _moment(since)
    try:
        criteria = ReplayCriteria(status, start.replace(tzinfo=zone_of(request))
                                  if start else None, None, sender.strip() or None)
    except ValueError as exc:
        return back("/mappings", f"no replay: {exc}")
    run_id = use_cases_of(request).mapping.replay(criteria, user.name)
    return RedirectResponse(f"/replays/{run_id}", status_code=303)


@router.get("/replays/{run_id}")
def replay_page(request: Request, session: DB, user: PageViewer, run_id: int) -> HTMLResponse:
    """A replay's progress bar (replay.js polls /api/replays/{id}) and, once every
    message has an outcome, its summary: passed, still failing by reason."""
    run = replays.status(session, run_id)
    if run is None:
        raise HTTPException(404, "no such replay")
    return render(request, "replay.html", user, r=run)


@router.get("/outbound")
def outbound(request: Request, session: DB, user: PageViewer, status: str = "") -> HTMLResponse:
    return render(request, "outbound.html", user,
                  rows=queries.outbound_messages(session, status), status=status)


@router.post("/outbound/{message_id}/resend")
def outbound_resend(request: Request, user: PageOperator, message_id: int) -> Response:
    found = bool(use_cases_of(request).resend_outbound([message_id]))
    return back("/outbound", f"message {message_id} queued again" if found
                else f"no outbound message {message_id}")


@router.get("/users")
def users_page(request: Request, session: DB, user: PageAdmin) -> HTMLResponse:
    """Users & tokens (admin): add, disable, enable, delete users, change roles, revoke
    API tokens; every change is audited."""
    users = list(session.scalars(select(User).order_by(User.name)))
    return render(request, "users.html", user, users=users, roles=[r.value for r in Role],
                  tokens=sec.list_tokens(session),
                  min_length=runtime_of(request).settings.password_min_length)


def _admin_form(request: Request, what: Any, done: str) -> Response:
    try:
        with unit_of_work(runtime_of(request).session_factory) as session:
            what(session, client_address(request))
    except (sec.NotFound, ValueError) as exc:
        return back("/users", f"not done: {exc}")
    return back("/users", done)


@router.post("/users")
def users_add(request: Request, user: PageAdmin, name: Annotated[str, Form()],
              password: Annotated[str, Form()], role: Annotated[Role, Form()]) -> Response:
    settings = runtime_of(request).settings
    return _admin_form(request, lambda s, addr: sec.add_user(
        s, settings, user.name, addr, name, password, role), f"user {name} created")


@router.post("/users/{name}/role")
def users_role(request: Request, user: PageAdmin, name: str,
               role: Annotated[Role, Form()]) -> Response:
    return _admin_form(request, lambda s, addr: sec.set_role(s, user.name, addr, name, role),
                       f"{name} is now {role.value}")


@router.post("/users/{name}/ae-titles")
def users_ae_titles(request: Request, user: PageAdmin, name: str,
                    ae_titles: Annotated[str, Form()] = "") -> Response:
    """Bind a performer to the AE titles (comma-separated) it acts as on the Worklist
    Service; empty unbinds them all."""
    return _admin_form(request, lambda s, addr: sec.set_ae_titles(
        s, user.name, addr, name, [ae_titles]), f"AE titles of {name} saved")


@router.post("/users/{name}/disable")
def users_disable(request: Request, user: PageAdmin, name: str) -> Response:
    return _admin_form(request, lambda s, addr: sec.set_disabled(
        s, user.name, addr, name, True), f"{name} disabled")


@router.post("/users/{name}/enable")
def users_enable(request: Request, user: PageAdmin, name: str) -> Response:
    return _admin_form(request, lambda s, addr: sec.set_disabled(
        s, user.name, addr, name, False), f"{name} enabled")


@router.post("/users/{name}/delete")
def users_delete(request: Request, user: PageAdmin, name: str) -> Response:
    return _admin_form(request, lambda s, addr: sec.delete_user(s, user.name, addr, name),
                       f"{name} deleted")


@router.get("/tokens")
def tokens_page(request: Request, session: DB, user: PageTokenHolder) -> HTMLResponse:
    """The caller's API tokens: create one for a script (shown once), revoke one."""
    return render(request, "tokens.html", user, tokens=sec.list_tokens(session, user),
                  created=None)


@router.post("/tokens")
def tokens_create(request: Request, user: PageTokenHolder,
                  name: Annotated[str, Form(min_length=1, max_length=64)]) -> HTMLResponse:
    """A new token for the caller, with the caller's role: shown on this page only, never
    stored in the clear (nor cached: ``no-store``)."""
    with unit_of_work(runtime_of(request).session_factory) as session:
        token = sec.create_api_token(session, user, name, client_address(request))
        listed = sec.list_tokens(session, user)
    return render(request, "tokens.html", user, headers={"Cache-Control": "no-store"},
                  tokens=listed, created={"name": name, "token": token},
                  console_url=str(request.base_url).rstrip("/"))


@router.post("/tokens/{token_id}/revoke")
def tokens_revoke(request: Request, user: PageTokenHolder, token_id: int,
                  page: Annotated[str, Form()] = "/tokens") -> Response:
    """Revoke an API token: one's own, or anyone's as an admin; back to the API tokens
    page or (``page``) the admin's Users & tokens page."""
    owner = None if has_role(user, Role.ADMIN) else user
    target = page if page in ("/tokens", "/users") else "/tokens"
    try:
        with unit_of_work(runtime_of(request).session_factory) as session:
            sec.revoke_token(session, user.name, client_address(request), token_id, owner)
    except sec.NotFound as exc:
        return back(target, f"not done: {exc}")
    return back(target, f"API token {token_id} revoked")
