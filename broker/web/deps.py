"""Request plumbing shared by the API and the pages: a database session per request,
the current user (session cookie or ``Authorization: Bearer`` token) and role checks.
Every write action declares the role it needs."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from broker.application import UseCases
from broker.db import unit_of_work
from broker.mapping.modality import ModalityProfile
from broker.models import Role, User
from broker.runtime import Runtime
from broker.security.accounts import (
    has_role,
    may_hold_tokens,
    may_perform,
    session_user,
    token_user,
)
from broker.web import protections

COOKIE = protections.COOKIE


class LoginRequired(Exception):
    """A page was asked for without a live session: the app redirects to /login."""


def runtime_of(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def modality_profile_of(request: Request, session: Session, calling_ae_title: str
                        ) -> tuple[ModalityProfile | None, int | None]:
    """The modality profile the worklist applies to ``calling_ae_title`` now, and the
    version of the profiles in force (None: loaded from the mappings directory, before
    any deployment)."""
    deployed = runtime_of(request).mappings.current(session.connection())
    return deployed.profiles.modality(calling_ae_title), deployed.version


def use_cases_of(request: Request) -> UseCases:
    """The process's use cases: every write action of the console is one of them."""
    use_cases: UseCases = request.app.state.use_cases
    return use_cases


def db(request: Request) -> Iterator[Session]:
    """A read-only session per request (writes go through the use cases, each in a
    transaction of its own, so a request never holds a write lock while it works)."""
    with runtime_of(request).reader_factory() as session:
        yield session


DB = Annotated[Session, Depends(db)]


# Declared so that the OpenAPI documentation (/docs) offers "Authorize" with a token.
BEARER = HTTPBearer(auto_error=False, scheme_name="API token", description=(
    "A token from POST /api/tokens or the console's API tokens page, sent as "
    "`Authorization: Bearer mwlb_...`."))
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)]


def _user(request: Request, credentials: HTTPAuthorizationCredentials | None) -> User | None:
    """The caller, by API token or else session cookie, in a short transaction of its
    own (it records the activity)."""
    runtime = runtime_of(request)
    cookie = request.cookies.get(COOKIE)
    if credentials is None and (protections.bearer(request) or not cookie):
        return None  # "Bearer" without a token is refused, never taken for the cookie
    with unit_of_work(runtime.session_factory) as session:
        if credentials is not None:
            return token_user(session, credentials.credentials.strip())
        assert cookie is not None
        return session_user(session, cookie, runtime.settings.session_idle_minutes)


def api_user(role: Role = Role.VIEWER) -> Callable[..., Any]:
    """Dependency: the caller, who must hold ``role`` (401 / 403 otherwise)."""

    def dependency(request: Request, credentials: Credentials) -> User:
        user = _user(request, credentials)
        if user is None:
            raise HTTPException(401, "log in or send an API token",
                                headers={"WWW-Authenticate": "Bearer"})
        if not has_role(user, role):
            raise HTTPException(403, f"this needs the {role.value} role")
        return user

    return dependency


def performer_user(request: Request, credentials: Credentials) -> User:
    """Dependency of the Worklist Service (UPS-RS, /dicomweb): the caller must be a
    performer or an admin (401 / 403 otherwise)."""
    user = _user(request, credentials)
    if user is None:
        raise HTTPException(401, "log in or send an API token",
                            headers={"WWW-Authenticate": "Bearer"})
    if not may_perform(user):
        raise HTTPException(403, "the Worklist Service needs the performer role")
    return user


def token_holder(request: Request, credentials: Credentials) -> User:
    """Dependency of the API tokens page: any logged-in user, the performer too (who
    needs a token for the Worklist Service and may see nothing else)."""
    user = _user(request, credentials)
    if user is None:
        raise LoginRequired()
    if not may_hold_tokens(user):
        raise HTTPException(403, "this needs a console role")
    return user


def page_user(role: Role = Role.VIEWER) -> Callable[..., Any]:
    """Dependency for pages: like :func:`api_user` but sends people to /login."""

    def dependency(request: Request, credentials: Credentials) -> User:
        user = _user(request, credentials)
        if user is None:
            raise LoginRequired()
        if not has_role(user, role):
            raise HTTPException(403, f"this needs the {role.value} role")
        return user

    return dependency


Viewer = Annotated[User, Depends(api_user(Role.VIEWER))]
Operator = Annotated[User, Depends(api_user(Role.OPERATOR))]
Admin = Annotated[User, Depends(api_user(Role.ADMIN))]
Performer = Annotated[User, Depends(performer_user)]
PageTokenHolder = Annotated[User, Depends(token_holder)]
PageViewer = Annotated[User, Depends(page_user(Role.VIEWER))]
PageOperator = Annotated[User, Depends(page_user(Role.OPERATOR))]
PageAdmin = Annotated[User, Depends(page_user(Role.ADMIN))]


def client_address(request: Request) -> str:
    return request.client.host if request.client else ""
