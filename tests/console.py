"""Helpers for console tests: users in the broker's database, logged-in HTTP clients."""

from __future__ import annotations

from typing import Any

import httpx

from broker.db import unit_of_work
from broker.models import Role
from broker.security.accounts import create_user, csrf_token

PASSWORD = "correct horse battery"


def add_users(app: Any) -> None:
    with unit_of_work(app.runtime.session_factory) as session:
        for role in Role:
            create_user(session, role.value, PASSWORD, role)


_OPEN: list[httpx.Client] = []


def close_clients() -> None:
    while _OPEN:
        _OPEN.pop().close()


def origin(app: Any) -> str:
    return f"http://127.0.0.1:{app.http_port}"


def client(app: Any, role: str | None = None, *, browser_origin: bool = True) -> httpx.Client:
    """An HTTP client on the broker's console, logged in as ``role`` when given (closed
    by the ``_close_console_clients`` fixture after each test). Like a browser, it sends
    the console's ``Origin`` with every request unless ``browser_origin`` is False."""
    http = httpx.Client(base_url=origin(app), timeout=30,
                        headers={"Origin": origin(app)} if browser_origin else {})
    _OPEN.append(http)
    if role is not None:
        response = http.post("/login", data={"name": role, "password": PASSWORD})
        assert response.status_code == 303, response.text
    return http


def csrf(http: httpx.Client) -> str:
    """The CSRF token the console puts in the forms of ``http``'s session."""
    return csrf_token(http.cookies["mwlb_session"])
