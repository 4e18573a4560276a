"""The console in a real headless Chromium (Debian's, driven by Playwright): log in,
find a failed message and reprocess it, open a station's worklist and ask why an item
is not on it, open an order timeline, resolve a reconciliation item, run the mapping
dry run; watch the dashboard's traffic, stations and warnings, read an order timeline
with repeated C-FIND hits grouped, create an API token and use it. A screenshot of every
page goes to test-artifacts/screenshots/."""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright
from pydicom.uid import generate_uid
from sqlalchemy import update

from broker.db import unit_of_work
from broker.models import InboundMessage
from broker.web.display import local
from tests.builders import order
from tests.conftest import REPO, sample
from tests.console import PASSWORD, add_users, origin
from tests.dcmtk import findscu
from tests.ehr import EHREndpoint
from tests.integration.hl7util import send, set_field
from tests.modality import MPPS, in_progress, n_create, step_item
from tests.workflow import destination, outbox_statuses, wait_until

pytestmark = [pytest.mark.browser, pytest.mark.dcmtk]

CHROMIUM = "/usr/bin/chromium"
SHOTS = REPO / "test-artifacts" / "screenshots"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                              args=["--no-sandbox"])
        yield chromium
        chromium.close()


@pytest.fixture
def console(make_broker: Any, browser: Browser) -> Iterator[tuple[Any, Page]]:
    ehr = EHREndpoint().start()
    app = make_broker(outbound_destinations=destination(ehr.port))
    add_users(app)
    context = browser.new_context(viewport={"width": 1360, "height": 900},
                                  base_url=f"http://127.0.0.1:{app.http_port}")
    page = context.new_page()
    violations: list[str] = []
    page.on("console", lambda msg: violations.append(msg.text)
            if "Content Security Policy" in msg.text else None)
    yield app, page
    assert violations == [], violations  # the CSP blocks nothing the console needs
    context.close()
    ehr.stop()


def shot(page: Page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def log_in(page: Page, role: str) -> None:
    page.goto("/")
    expect(page).to_have_url("/login")
    shot(page, "01-login")
    page.get_by_label("Name").fill(role)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="Dashboard")).to_be_visible()


def test_operator_walks_the_console(console: tuple[Any, Page], tmp_path: Path) -> None:
    app, page = console
    early = set_field(sample("06"), "MSH", 10, "XO-EARLY")  # before its NW: fails, AE 204
    acks = send(app.mllp_port, early, sample("01"), sample("05"), sample("09"))
    assert [a.code for a in acks] == ["AE", "AA", "AA", "AA"]
    findscu(app.dicom_port, ["ScheduledProcedureStepSequence[0].Modality=MR",
                             "ScheduledProcedureStepSequence[0].ScheduledStationAETitle=CT01_AE"],
            aet="CT01_AE")
    ds = in_progress([step_item()], patient_id="864209", patient_name="O'Brien^Sean^Patrick",
                     modality="CT", start=("20250310", "140500"))
    assert n_create(app.dicom_port, MPPS, generate_uid(), ds).Status == 0

    log_in(page, "operator")
    expect(page.locator("[data-key='hl7_inbound.failed']")).to_have_text("1")
    shot(page, "02-dashboard")

    # A failed message: find it, read why, reprocess it.
    page.get_by_role("link", name="Messages").click()
    page.get_by_label("Status").select_option("failed")
    page.get_by_role("button", name="Search").click()
    page.get_by_role("link", name="XO-EARLY").or_(page.locator("td a").first).first.click()
    expect(page.locator(".error")).to_contain_text("204")
    expect(page.get_by_text("Patient name")).to_be_visible()
    shot(page, "03-failed-message")
    page.get_by_role("button", name="Reprocess").click()
    expect(page.locator(".notice")).to_contain_text("queued for reprocessing")
    wait_until(lambda: (page.reload() or True) and page.locator("h1 .status").inner_text()
               == "processed", what="processed")
    shot(page, "04-message-reprocessed")

    # A station's worklist, an item, and why the CT's MR query did not list it.
    page.get_by_role("link", name="Worklist").click()
    page.get_by_label("Station AE title").fill("CT01_AE")
    expect(page.get_by_label("Date")).not_to_have_value("")  # today's list by default
    page.get_by_label("Date").fill("")  # the samples are scheduled in 2025: any date
    page.get_by_role("button", name="Show").click()
    expect(page.locator("tbody tr")).to_have_count(2)
    shot(page, "05-worklist-CT01_AE")
    page.get_by_role("link", name="SPS0003").click()
    expect(page.get_by_test_id("verdict")).to_contain_text("excluded by Modality")
    shot(page, "06-why-not-on-worklist")

    # The order timeline.
    page.get_by_role("link", name="ACC0002").first.click()
    expect(page.get_by_role("heading", name="Order ACC0002")).to_be_visible()
    expect(page.locator("ol.timeline li")).not_to_have_count(0)
    shot(page, "07-timeline-ACC0002")

    # Resolve the unscheduled MPPS with its first candidate.
    page.get_by_role("link", name="Reconciliation").click()
    expect(page.locator("section.item h2")).to_contain_text("unscheduled mpps")
    first_candidate = page.locator("section.item tbody tr").first
    expect(first_candidate).to_contain_text("ACC0002")
    shot(page, "08-reconciliation")
    first_candidate.get_by_role("button", name="Link").click()
    expect(page.locator(".notice")).to_contain_text("ACC0002")
    expect(page.get_by_text("Nothing to reconcile.")).to_be_visible()

    # Outbound: the IP the link produced.
    page.get_by_role("link", name="Outbound").click()
    expect(page.locator("tbody")).to_contain_text("ACC0002")
    shot(page, "09-outbound")

    # Mapping dry run: order #05 again, against what the reschedule (#06) stored.
    page.get_by_role("link", name="Mappings").click()
    page.get_by_label("HL7 message").fill(sample("05").decode().replace("\r", "\n"))
    page.get_by_role("button", name="Show the worklist items").click()
    expect(page.locator("table.diff").first).to_contain_text("ScheduledProcedureStepStartTime")
    shot(page, "10-mapping-dry-run")


def test_viewer_cannot_repair(console: tuple[Any, Page]) -> None:
    app, page = console
    assert [a.code for a in send(app.mllp_port, set_field(sample("06"), "MSH", 10, "X1"))] \
        == ["AE"]
    log_in(page, "viewer")
    page.goto("/messages?status=failed")
    expect(page.locator("tbody tr")).to_have_count(1)
    expect(page.get_by_role("button", name="Reprocess selected")).to_have_count(0)
    response = page.request.post("/api/messages/1/reprocess")
    assert response.status == 403


def test_admin_manages_users_and_tokens(console: tuple[Any, Page]) -> None:
    _app, page = console
    log_in(page, "admin")
    page.get_by_role("link", name="Users & tokens").click()
    expect(page.get_by_role("heading", name="Users & tokens")).to_be_visible()
    page.get_by_label("Name").fill("nurse.kim")
    page.get_by_label("Password").fill("nurse.kim-2025")
    page.get_by_role("button", name="Add user").click()
    expect(page.locator(".notice")).to_contain_text("user name")
    page.get_by_label("Name").fill("nurse.kim")
    page.get_by_label("Password").fill("violet harbour 31")
    page.get_by_role("button", name="Add user").click()
    expect(page.locator(".notice")).to_contain_text("user nurse.kim created")
    row = page.locator("tr[data-user='nurse.kim']")
    row.get_by_label("Role of nurse.kim").select_option("operator")
    row.get_by_role("button", name="Change role").click()
    expect(page.locator(".notice")).to_contain_text("nurse.kim is now operator")
    row = page.locator("tr[data-user='nurse.kim']")
    row.get_by_label("AE titles of nurse.kim").fill("CT_AI, MR_AI")
    row.get_by_role("button", name="Save AE titles").click()
    expect(page.locator(".notice")).to_contain_text("AE titles of nurse.kim saved")
    expect(page.locator("tr[data-user='nurse.kim']").get_by_label(
        "AE titles of nurse.kim")).to_have_value("CT_AI, MR_AI")
    page.locator("tr[data-user='nurse.kim']").get_by_role("button", name="Disable").click()
    expect(page.locator("tr[data-user='nurse.kim']")).to_contain_text("disabled")
    shot(page, "11-users-and-tokens")
    page.locator("tr[data-user='nurse.kim']").get_by_role("button", name="Delete").click()
    expect(page.locator("tr[data-user='nurse.kim']")).to_have_count(0)
    page.get_by_role("button", name="Log out").click()
    expect(page).to_have_url("/login")


def earlier_orders(app: Any, count: int) -> None:
    """``count`` orders sent now, then dated back over the last 3 hours (the store keeps
    the time of receipt; a test cannot wait hours), busiest an hour ago."""
    numbers = range(100, 100 + count)
    assert {a.code for a in send(app.mllp_port, *[order(n) for n in numbers])} == {"AA"}
    spread = random.Random(14)
    now = datetime.now(UTC)
    with unit_of_work(app.runtime.session_factory) as session:
        for n in numbers:
            session.execute(update(InboundMessage).where(InboundMessage.control_id == f"B{n}")
                            .values(received_at=now - timedelta(
                                minutes=spread.triangular(2, 178, 60))))


def test_dashboard_shows_the_traffic_at_a_glance(console: tuple[Any, Page]) -> None:
    """Orders, one failing (XO before its order: AE), one rejected (unknown type: AR),
    one accepted with an adjustment (a reused MSH-10); a CT polling its worklist; the
    step started (an IP to the EHR). The dashboard adds it all up, draws it, lists what
    needs attention and keeps itself current."""
    app, page = console
    acks = send(app.mllp_port, set_field(sample("06"), "MSH", 10, "XO-EARLY"), sample("05"),
                sample("09"), set_field(sample("03"), "MSH", 9, "XYZ^A01"),
                set_field(sample("03"), "MSH", 10, "ORM0005"), *[order(n) for n in range(10)])
    assert [a.code for a in acks] == ["AE", "AA", "AA", "AR", "AA", *["AA"] * 10]
    for _ in range(4):
        findscu(app.dicom_port, ["ScheduledProcedureStepSequence[0].ScheduledStationAETitle"
                                 "=CT01_AE"], aet="CT01_AE")
    findscu(app.dicom_port, ["ScheduledProcedureStepSequence[0].Modality=MR"], aet="MR01_AE")
    ds = in_progress([step_item(accession="ACC0002", rp_id="RP0002", sps_id="SPS0003")],
                     patient_id="864209", patient_name="O'Brien^Sean^Patrick", modality="CT")
    assert n_create(app.dicom_port, MPPS, generate_uid(), ds).Status == 0
    wait_until(lambda: outbox_statuses(app) == {"sent"}, what="the IP sent to the EHR")
    earlier_orders(app, 150)

    log_in(page, "operator")
    expect(page.get_by_test_id("hl7-sum")).to_have_text(
        "165 received = 163 processed + 1 failed + 1 rejected + 0 pending")
    expect(page.get_by_test_id("traffic-received")).to_have_text("165")
    expect(page.get_by_test_id("traffic-failed")).to_have_text("2")
    expect(page.get_by_test_id("traffic-sent")).to_have_text("1")
    expect(page.locator("svg.chart polyline.received")).to_have_attribute("points", re.compile(
        r"^(\S+,\S+ ){179}\S+,\S+$"))  # a point per minute of the last 3 hours
    expect(page.locator("svg.chart rect.failed")).to_have_count(1)
    ct = page.locator("tr[data-station='CT01_AE'] td")
    expect(ct.nth(1)).to_have_text("4")
    expect(ct.nth(4)).to_have_text("8")  # SPS0003 and SPS0004, four times
    expect(page.locator("tr[data-station='MR01_AE'] td").nth(1)).to_have_text("1")
    warnings = page.locator("#warnings")
    expect(warnings.locator("li.bad")).to_have_text(["1 HL7 message failed, waiting for an "
                                                     "operator"])
    expect(warnings.locator("li.warn")).to_have_text([
        "1 HL7 message rejected in the last 3 h",
        "1 HL7 message accepted with adjustments in the last 3 h"])
    expect(warnings.locator("table.adjustments")).to_contain_text("205 at MSH^1^10^1")
    shot(page, "dashboard-traffic-stations-warnings")

    # The panels follow the traffic without a reload.
    assert [a.code for a in send(app.mllp_port, order(10))] == ["AA"]
    expect(page.get_by_test_id("hl7-sum")).to_contain_text("166 received", timeout=20_000)
    expect(page.get_by_test_id("traffic-received")).to_have_text("166")

    page.get_by_role("link", name="1 h", exact=True).click()
    expect(page.get_by_role("heading", name="HL7 traffic, last 1 h")).to_be_visible()
    expect(page.locator("svg.chart polyline.received")).to_have_attribute("points", re.compile(
        r"^(\S+,\S+ ){59}\S+,\S+$"))
    shot(page, "dashboard-last-hour")

    # The order timeline: the CT's four queries are one line per step, until the MPPS.
    page.goto("/timeline/ACC0002")
    expect(page.get_by_test_id("patient")).to_have_text("O'Brien, Sean Patrick (864209)")
    hits = page.locator("li.ev-c-find")
    expect(hits).to_have_count(2)
    expect(hits.first).to_contain_text(re.compile(
        r"SPS000[34] returned 4 times to CT01_AE (between [\d:]+ and [\d:]+|at [\d:]+)$"))
    first = page.locator("ol.timeline time").first
    zone = ZoneInfo(app.runtime.timezone)
    assert first.inner_text() == local(first.get_attribute("datetime"), zone)
    expect(page.locator("header")).to_contain_text("times in America/Chicago")
    shot(page, "timeline-grouped-cfind-hits")


def test_api_token_from_the_console_works_with_a_script(console: tuple[Any, Page]) -> None:
    app, page = console
    log_in(page, "viewer")
    page.get_by_role("link", name="API tokens").click()
    page.get_by_label("Name (what the script is)").fill("nightly report")
    page.get_by_role("button", name="Create token").click()
    token = page.get_by_test_id("new-token").inner_text()
    expect(page.locator("pre")).to_contain_text(f"Authorization: Bearer {token}")
    shot(page, "api-token-created")
    script = httpx.Client(base_url=origin(app), headers={"Authorization": f"Bearer {token}"})
    assert script.get("/api/dashboard").json()["hl7_inbound"]["received"] == 0
    page.goto("/tokens")  # the token is shown once only
    expect(page.get_by_test_id("new-token")).to_have_count(0)
    page.locator("tr[data-token='nightly report']").get_by_role("button", name="Revoke").click()
    expect(page.locator(".notice")).to_contain_text("revoked")
    assert script.get("/api/dashboard").status_code == 401
    script.close()
