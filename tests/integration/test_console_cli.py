"""`mwl-broker users add`, `echo`, `worklist query` and `web` as a user runs them."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from broker.models import AuditEvent
from tests.conftest import MAPPINGS, sample
from tests.console import client
from tests.integration.conftest import free_port
from tests.integration.hl7util import send
from tests.workflow import CLI, wait_until

pytestmark = [pytest.mark.dcmtk]


def run(*args: str, env: dict[str, str], stdin: str = "") -> subprocess.CompletedProcess[str]:
    full = {**{k: v for k, v in os.environ.items() if not k.startswith("MWLB_")},
            "COLUMNS": "250", **env}
    return subprocess.run([CLI, *args], capture_output=True, text=True, env=full, input=stdin,
                          timeout=60)


def test_first_admin_then_login(make_broker: Any) -> None:
    app = make_broker()
    env = {"MWLB_DATABASE_URL": app.settings.database_url}
    added = run("users", "add", "alice", "--role", "admin", "--password-stdin", env=env,
                stdin="s3cret-enough\n")
    assert added.returncode == 0, added.stderr
    assert "alice created with role admin" in added.stdout
    again = run("users", "add", "alice", "--password-stdin", env=env, stdin="another-one\n")
    assert again.returncode == 1 and "exists" in again.stderr
    short = run("users", "add", "bob", "--password-stdin", env=env, stdin="short\n")
    assert short.returncode == 1 and "12 characters" in short.stderr
    for name, password, reason in (("bob", "password", "12 characters"),
                                   ("bob", "12345678", "12 characters"),
                                   ("bob", "password1234", "common passwords"),
                                   ("carol.jones1", "carol.jones1", "user name"),
                                   ("carol.jones", "carol.jones-2025", "user name")):
        weak = run("users", "add", name, "--password-stdin", env=env, stdin=f"{password}\n")
        assert weak.returncode == 1 and reason in weak.stderr, (password, weak.stderr)
    assert "alice" in run("users", "list", env=env).stdout
    with httpx.Client(base_url=f"http://127.0.0.1:{app.http_port}") as http:
        login = http.post("/login", data={"name": "alice", "password": "s3cret-enough"})
        assert login.status_code == 303
        assert http.get("/api/dashboard").status_code == 200


def test_echo_and_worklist_query(make_broker: Any) -> None:
    app = make_broker()
    assert [a.code for a in send(app.mllp_port, sample("09"))] == ["AA"]
    env = {"MWLB_DATABASE_URL": app.settings.database_url}
    echo = run("echo", "--port", str(app.dicom_port), env=env)
    assert echo.returncode == 0 and "success" in echo.stdout
    refused = run("echo", "--port", str(app.dicom_port), "--aec", "NOT_US", env=env)
    assert refused.returncode == 1
    query = run("worklist", "query", "--station", "CT01_AE", "--port", str(app.dicom_port),
                env=env)
    assert query.returncode == 0, query.stderr
    assert "SPS0003" in query.stdout and "SPS0004" in query.stdout
    assert "2 item(s); final status 0x0000" in query.stdout


def test_web_alone(tmp_path: Path) -> None:
    port = free_port()
    env = {"MWLB_DATABASE_URL": f"sqlite:///{tmp_path / 'web.db'}",
           "MWLB_MAPPINGS_DIR": str(MAPPINGS), "MWLB_HTTP_HOST": "127.0.0.1",
           "MWLB_HTTP_PORT": str(port)}
    full = {**{k: v for k, v in os.environ.items() if not k.startswith("MWLB_")}, **env}
    proc = subprocess.Popen([CLI, "web"], env=full, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        def ready() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(ready, what="the console")
        assert httpx.get(f"http://127.0.0.1:{port}/readyz").json()["database"] == "ok"
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
    assert f"console on http://localhost:{port}/" in out


def test_users_and_tokens_administration(make_broker: Any) -> None:
    app = make_broker()
    env = {"MWLB_DATABASE_URL": app.settings.database_url}
    for name, role in (("root", "admin"), ("tech", "operator")):
        added = run("users", "add", name, "--role", role, "--password-stdin", env=env,
                    stdin="plum orchard 88\n")
        assert added.returncode == 0, added.stderr
    tech = client(app)
    assert tech.post("/login", data={"name": "tech", "password": "plum orchard 88"}
                     ).status_code == 303
    token = tech.post("/api/tokens", json={"name": "nightly"}).json()["token"]
    script = client(app, browser_origin=False)
    bearer = {"Authorization": f"Bearer {token}"}
    assert script.get("/api/dashboard", headers=bearer).status_code == 200

    listed = run("tokens", "list", env=env)
    assert listed.returncode == 0 and "nightly" in listed.stdout and "tech" in listed.stdout
    assert token not in listed.stdout
    assert run("tokens", "revoke", "1", env=env).returncode == 0
    assert script.get("/api/dashboard", headers=bearer).status_code == 401
    missing = run("tokens", "revoke", "99", env=env)
    assert missing.returncode == 1 and "no API token 99" in missing.stderr

    assert run("users", "disable", "tech", env=env).returncode == 0
    assert tech.get("/api/dashboard").status_code == 401
    assert "yes" in run("users", "list", env=env).stdout
    assert run("users", "enable", "tech", env=env).returncode == 0
    assert run("users", "role", "tech", "viewer", env=env).returncode == 0
    assert "viewer" in run("users", "list", env=env).stdout
    last = run("users", "role", "root", "viewer", env=env)
    assert last.returncode == 1 and "last enabled admin" in last.stderr
    assert run("users", "delete", "tech", env=env).returncode == 0
    gone = run("users", "delete", "tech", env=env)
    assert gone.returncode == 1 and "no user 'tech'" in gone.stderr
    assert "tech" not in run("users", "list", env=env).stdout

    with app.runtime.session_factory() as session:
        rows = [(e.event_name, e.user, e.detail) for e in session.scalars(
            select(AuditEvent).where(AuditEvent.event_id == "110113"))]
    details = [d for _, user, d in rows if user.startswith("cli")]
    for expected in ("user root created, role admin", "API token 1 (nightly) revoked",
                     "user tech disabled", "user tech enabled", "user tech deleted",
                     "user tech role operator -> viewer"):
        assert expected in details, (expected, details)
    assert ("Security Roles Changed", "user tech role operator -> viewer") in [
        (n, d) for n, _, d in rows]
