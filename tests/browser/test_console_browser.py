"""The console in a real headless Chromium (Debian's, driven by Playwright): log in,
find a failed message and reprocess it, open a station's worklist and ask why an item
is not on it, open an order timeline, resolve a reconciliation item, run the mapping
dry run. A screenshot of every page goes to test-artifacts/screenshots/."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright
from pydicom.uid import generate_uid

from tests.conftest import REPO, sample
from tests.console import PASSWORD, add_users
from tests.dcmtk import findscu
from tests.ehr import EHREndpoint
from tests.integration.hl7util import send, set_field
from tests.modality import MPPS, in_progress, n_create, step_item
from tests.workflow import destination, wait_until

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
    page.locator("tr[data-user='nurse.kim']").get_by_role("button", name="Disable").click()
    expect(page.locator("tr[data-user='nurse.kim']")).to_contain_text("disabled")
    shot(page, "11-users-and-tokens")
    page.locator("tr[data-user='nurse.kim']").get_by_role("button", name="Delete").click()
    expect(page.locator("tr[data-user='nurse.kim']")).to_have_count(0)
    page.get_by_role("button", name="Log out").click()
    expect(page).to_have_url("/login")
