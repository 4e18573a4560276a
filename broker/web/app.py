"""The console application (FastAPI): pages, the JSON API under /api, OpenAPI docs at
/docs, and /metrics, /healthz, /readyz; every response carries the security headers
and every state-changing request is checked against cross-site request forgery
(broker.web.protections). ``create_app`` takes the process's Runtime and use cases
(from the composition root, broker.bootstrap);
``mwl-broker serve`` runs it beside the MLLP and DICOM servers, ``mwl-broker web``
alone."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from broker.application import UseCases
from broker.runtime import Runtime
from broker.web import api, dicomweb, ops, pages, protections, ups_events
from broker.web.deps import LoginRequired


def create_app(runtime: Runtime, use_cases: UseCases) -> FastAPI:
    app = FastAPI(title="mwl-broker", version="0.1.0", description=api.DESCRIPTION)
    app.state.runtime = runtime
    app.state.use_cases = use_cases
    app.state.metrics = ops.metrics_registry(runtime)
    protections.install(app, runtime.settings.http_trusted_origins)
    app.mount("/static", StaticFiles(directory=Path(__file__).parent / "static"), name="static")
    app.include_router(api.router)
    dicomweb.install(app)
    app.include_router(ups_events.router)
    app.include_router(ops.router)
    app.include_router(pages.router)

    @app.exception_handler(LoginRequired)
    def _to_login(request: Request, exc: LoginRequired) -> Response:
        return RedirectResponse("/login", status_code=303)

    return app
