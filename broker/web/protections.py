"""Browser-facing protections of the console: cross-site request forgery defences and
security response headers.

CSRF (OWASP Cross-Site Request Forgery Prevention Cheat Sheet), two layers:

* Origin verification, every route: an unsafe request (POST, PUT, PATCH, DELETE) that
  carries the session cookie must come from the console's own origin: its ``Origin``
  header, or when a browser sent none its ``Referer``, must name the host of the
  request's ``Host`` header (either scheme, for a TLS-terminating proxy) or one of
  ``http_trusted_origins``. With neither header, or ``Origin: null``, it is refused
  (403). A request authenticated with ``Authorization: Bearer`` is not cookie-based
  (a browser never adds that header by itself) and is not checked. A login (no
  session yet) is refused only when it names a foreign origin (login CSRF).
* Synchronizer token, HTML forms: every POST form of the pages carries the session's
  token (:func:`broker.security.accounts.csrf_token`) in the hidden field ``csrf_token``;
  :func:`form_token_required` refuses a page POST with a session but without it.

SameSite=Strict on the cookie stays as a third layer, not relied upon.

Headers (OWASP HTTP Headers Cheat Sheet) on every response: a Content-Security-Policy
allowing only the console's own scripts, styles, images and form targets and no
framing, ``X-Frame-Options: DENY`` for browsers without CSP level 2,
``X-Content-Type-Options: nosniff`` and ``Referrer-Policy: same-origin`` (the Referer
fallback above keeps working on the console, and no console URL leaks elsewhere). The
OpenAPI pages /docs and /redoc load FastAPI's documentation UI from its CDN with an
inline bootstrap script, so their policy also allows that CDN and inline code; they
show the API's schema, never data.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response

from broker.security.accounts import csrf_token

log = logging.getLogger(__name__)

COOKIE = "mwlb_session"
UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})
FORM_FIELD = "csrf_token"

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
       "form-action 'self'; frame-ancestors 'none'")
DOCS_CDN = "https://cdn.jsdelivr.net"
DOCS_CSP = (f"default-src 'self'; script-src 'self' 'unsafe-inline' {DOCS_CDN}; "
            f"style-src 'self' 'unsafe-inline' {DOCS_CDN} https://fonts.googleapis.com; "
            "img-src 'self' data: https://fastapi.tiangolo.com https://cdn.redoc.ly; "
            "font-src 'self' https://fonts.gstatic.com; worker-src 'self' blob:; "
            "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
            "frame-ancestors 'none'")
DOCS_PATHS = ("/docs", "/redoc")
HEADERS = {"X-Frame-Options": "DENY", "X-Content-Type-Options": "nosniff",
           "Referrer-Policy": "same-origin"}


def _netloc(scheme: str, netloc: str) -> str:
    """``host[:port]`` lowercased, without the scheme's default port."""
    netloc = netloc.lower()
    default = {"http": ":80", "https": ":443"}.get(scheme.lower(), "")
    return netloc[: -len(default)] if default and netloc.endswith(default) else netloc


def request_origin(request: Request) -> str | None:
    """The origin the browser says the request comes from: ``Origin``, else the origin
    of ``Referer``; None when it sent neither (or ``Origin: null``)."""
    origin = request.headers.get("origin")
    if origin is None:
        referer = request.headers.get("referer")
        if not referer:
            return None
        parts = urlsplit(referer)
        origin = f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else ""
    return None if origin in ("", "null") else origin.strip()


def same_origin(request: Request, origin: str, trusted: list[str]) -> bool:
    """``origin`` is the console's own (its Host header) or a trusted one."""
    parts = urlsplit(origin)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return False
    if any(origin.rstrip("/").lower() == t.rstrip("/").lower() for t in trusted):
        return True
    host = request.headers.get("host", "")
    return bool(host) and _netloc(parts.scheme, parts.netloc) in (
        _netloc("http", host), _netloc("https", host))


def bearer(request: Request) -> bool:
    """The request says it is authenticated with an API token."""
    return request.headers.get("authorization", "").lower().startswith("bearer ")


def origin_refusal(request: Request, trusted: list[str]) -> str:
    """Why this request must be refused as cross-site ("" when it may go on)."""
    if request.method not in UNSAFE or bearer(request):
        return ""
    origin = request_origin(request)
    if COOKIE in request.cookies:
        if origin is None:
            return "no Origin or Referer header on a state-changing request"
        if not same_origin(request, origin, trusted):
            return f"cross-site request from {origin}"
    elif origin is not None and not same_origin(request, origin, trusted):
        return f"cross-site request from {origin}"
    return ""


async def form_token_required(request: Request) -> None:
    """Dependency of the HTML pages: a POST with a session cookie must carry the
    session's CSRF token in the form field ``csrf_token`` (403 otherwise). The login
    form, sent before there is a session, is exempt (its Origin is checked)."""
    cookie = request.cookies.get(COOKIE)
    if request.method not in UNSAFE or not cookie or request.url.path == "/login":
        return
    form = await request.form()
    sent = form.get(FORM_FIELD)
    if not isinstance(sent, str) or not _equal(sent, csrf_token(cookie)):
        log.warning("console form without a valid CSRF token refused: %s %s",
                    request.method, request.url.path)
        raise HTTPException(403, "this form has expired or did not come from the console: "
                                 "reload the page and try again")


def _equal(a: str, b: str) -> bool:
    import hmac

    return hmac.compare_digest(a.encode(), b.encode())


def install(app: FastAPI, trusted_origins: list[str]) -> None:
    """Add the origin check and the security headers to ``app``."""

    @app.middleware("http")
    async def protect(request: Request,
                      call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        why = origin_refusal(request, trusted_origins)
        if why:
            log.warning("console request refused: %s (%s %s)", why, request.method,
                        request.url.path)
            response: Response = JSONResponse(
                {"detail": f"refused: {why} (cross-site request forgery protection)"},
                status_code=403)
        else:
            response = await call_next(request)
        docs = request.url.path in DOCS_PATHS or request.url.path.startswith("/docs/")
        response.headers.setdefault("Content-Security-Policy", DOCS_CSP if docs else CSP)
        for name, value in HEADERS.items():
            response.headers.setdefault(name, value)
        return response
