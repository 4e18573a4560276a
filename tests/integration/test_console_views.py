"""The console over real HTTP: the dashboard's windows, the API tokens page, the token
flow as the README and /docs tell it (run with curl), and searches in the configured
zone."""

from __future__ import annotations

import json
import re
import subprocess
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from tests.builders import order
from tests.conftest import REPO
from tests.console import PASSWORD, add_users, client, csrf, origin
from tests.integration.hl7util import send


@pytest.fixture
def broker(make_broker: Any) -> Any:
    app = make_broker()
    add_users(app)
    return app


def test_dashboard_windows(broker: Any) -> None:
    assert [a.code for a in send(broker.mllp_port, order(1), order(2))] == ["AA", "AA"]
    viewer = client(broker, "viewer")
    for hours, buckets, width in ((1, 60, 60), (3, 180, 60), (24, 180, 480), (5, 180, 60)):
        data = viewer.get("/api/dashboard", params={"hours": hours}).json()
        traffic = data["traffic"]
        assert (len(traffic["buckets"]), traffic["bucket_seconds"]) == (buckets, width), hours
        assert traffic["totals"]["received"] == 2 and traffic["buckets"][-1]["received"] == 2
    inbound = data["hl7_inbound"]
    assert inbound["received"] == inbound["processed"] + inbound["failed"] \
        + inbound["rejected"] + inbound["pending"] == 2
    page = viewer.get("/", params={"hours": 24})
    assert "HL7 traffic, last 24 h" in page.text and '<svg class="chart"' in page.text
    assert "style=" not in page.text  # nothing the Content-Security-Policy would block


def readme_token_flow() -> list[str]:
    """The README console section's curl session, as lines."""
    section = (REPO / "README.md").read_text().split("\n### The console\n", 1)[1]
    block = next(b for b in re.findall(r"```sh\n(.*?)```", section, re.S) if "/api/tokens" in b)
    return block.splitlines()


def test_the_readme_token_flow_works_with_curl(broker: Any, tmp_path: Path) -> None:
    """Log in, create a token, use it: the README's commands, run as written (the console
    at this broker's port)."""
    lines = [f"CONSOLE={origin(broker)}" if line.startswith("CONSOLE=") else line
             for line in readme_token_flow()]
    cut = next(i for i, line in enumerate(lines) if line.startswith("TOKEN="))

    def run(script: list[str], **env: str) -> str:
        done = subprocess.run(["bash", "-euo", "pipefail", "-c", "\n".join(script)],
                              cwd=tmp_path, capture_output=True, text=True, timeout=60,
                              env={"PATH": "/usr/bin:/bin", **env})
        assert done.returncode == 0, done.stderr
        return done.stdout

    created = json.loads(run(lines[:cut], ADMIN_PASSWORD=PASSWORD))
    assert created["role"] == "admin" and created["token"].startswith("mwlb_")
    failed = json.loads(run([lines[0], *lines[cut + 1:]], TOKEN=created["token"]))
    assert failed == []


def test_docs_page_tells_the_token_flow(broker: Any) -> None:
    anonymous = client(broker)
    schema = anonymous.get("/openapi.json").json()
    text = schema["info"]["description"]
    for step in ("**Log in**", "**Create a token**", "**Use it**", "Authorization: Bearer"):
        assert step in text
    assert schema["components"]["securitySchemes"]["API token"]["scheme"] == "bearer"
    assert schema["paths"]["/api/dashboard"]["get"]["security"] == [{"API token": []}]
    assert anonymous.get("/docs").status_code == 200


def test_api_tokens_page(broker: Any) -> None:
    viewer, operator = client(broker, "viewer"), client(broker, "operator")
    made = viewer.post("/tokens", data={"csrf_token": csrf(viewer), "name": "nightly"})
    assert made.status_code == 200 and made.headers["cache-control"] == "no-store"
    token = re.search(r'data-testid="new-token">(mwlb_[^<]+)<', made.text)
    assert token is not None
    script = client(broker, browser_origin=False)
    bearer = {"Authorization": f"Bearer {token.group(1)}"}
    assert script.get("/api/messages", headers=bearer).status_code == 200
    assert viewer.get("/tokens").text.count("mwlb_") == 0  # shown once only
    theirs = operator.post("/api/tokens", json={"name": "operator-script"}).json()
    listed = {t["name"]: t["id"] for t in operator.get("/api/tokens").json()}
    refused = viewer.post(f"/tokens/{listed['operator-script']}/revoke",
                          data={"csrf_token": csrf(viewer)})
    assert "not%20done" in refused.headers["location"]  # only one's own
    assert script.get("/api/messages", headers={
        "Authorization": f"Bearer {theirs['token']}"}).status_code == 200
    own = {t["name"]: t["id"] for t in viewer.get("/api/tokens").json()}["nightly"]
    done = viewer.post(f"/tokens/{own}/revoke", data={"csrf_token": csrf(viewer)})
    assert done.headers["location"].startswith("/tokens?notice=API%20token")
    assert script.get("/api/messages", headers=bearer).status_code == 401
    admin = client(broker, "admin")
    back = admin.post(f"/tokens/{listed['operator-script']}/revoke",
                      data={"csrf_token": csrf(admin), "page": "/users"})
    assert back.headers["location"].startswith("/users?notice=")


def test_performer_gets_its_api_tokens_and_nothing_else_of_the_console(broker: Any) -> None:
    performer = client(broker)
    landed = performer.post("/login", data={"name": "performer", "password": PASSWORD})
    assert landed.headers["location"] == "/tokens"
    page = performer.get("/tokens")
    assert page.status_code == 200 and "/dicomweb" in page.text
    assert 'href="/messages"' not in page.text and 'href="/docs"' not in page.text
    made = performer.post("/tokens", data={"csrf_token": csrf(performer), "name": "ai-app"})
    token = re.search(r'data-testid="new-token">(mwlb_[^<]+)<', made.text)
    assert token is not None and "/dicomweb/workitems" in made.text
    for url in ("/", "/messages", "/worklist", "/users"):
        assert performer.get(url).status_code == 403, url
    bearer = {"Authorization": f"Bearer {token.group(1)}"}
    script = client(broker, browser_origin=False)
    for url in ("/api/dashboard", "/api/messages", "/api/tokens", "/api/users"):
        assert script.get(url, headers=bearer).status_code == 403, url
    assert script.post("/api/tokens", headers=bearer, json={"name": "x"}).status_code == 403
    admin = client(broker, "admin")
    users = admin.get("/users")
    assert '<option value="performer">performer</option>' in users.text
    # The admin binds the performer to the AE titles it acts as on the Worklist Service.
    bound = admin.post("/users/performer/ae-titles",
                       data={"csrf_token": csrf(admin), "ae_titles": "CT_AI, MR_AI"})
    assert bound.headers["location"].startswith("/users?notice=AE%20titles%20of%20performer")
    assert 'value="CT_AI, MR_AI"' in admin.get("/users").text
    wrong = admin.post("/users/performer/ae-titles",
                       data={"csrf_token": csrf(admin), "ae_titles": "A" * 17})
    assert "is%20not%20an%20AE%20title" in wrong.headers["location"]
    assert 'value="CT_AI, MR_AI"' in admin.get("/users").text


def test_message_search_and_times_in_the_configured_zone(broker: Any) -> None:
    """The search form's times are the broker's zone (America/Chicago in the tests), as
    are the times shown."""
    assert [a.code for a in send(broker.mllp_port, order(7))] == ["AA"]
    viewer = client(broker, "viewer")
    now = datetime.now(ZoneInfo(broker.runtime.timezone))

    def found(since: datetime, until: datetime) -> bool:
        page = viewer.get("/messages", params={"since": f"{since:%Y-%m-%dT%H:%M}",
                                               "until": f"{until:%Y-%m-%dT%H:%M}"})
        return ">B7<" in page.text

    assert found(now - timedelta(minutes=5), now + timedelta(minutes=5))
    assert not found(now - timedelta(minutes=30), now - timedelta(minutes=10))
    received = viewer.get("/api/messages").json()[0]["received_at"]
    shown = datetime.fromisoformat(received).astimezone(ZoneInfo("America/Chicago"))
    assert f'<time datetime="{received}">{shown:%Y-%m-%d %H:%M:%S}</time>' \
        in viewer.get("/messages").text
