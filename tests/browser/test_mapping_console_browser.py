"""Mapping versions in a real headless Chromium: an admin sees the versions, opens the
difference between the mappings directory and the version in force, deploys the
directory with its impact shown first, sees a broken set refused, rolls back; the
message page names the profile and version that mapped a message; an operator starts
a replay of the failed messages and watches its progress bar reach the summary.
Screenshots go to test-artifacts/screenshots/."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect
from sqlalchemy import create_engine, func, select

from broker.models import InboundMessage
from broker.services.processing import _lock_id
from tests.browser.test_console_browser import browser, log_in, shot
from tests.builders import order
from tests.console import add_users
from tests.integration.hl7util import send
from tests.site_profiles import DX_STATION as STATION

pytestmark = [pytest.mark.browser]

__all__ = ["browser"]  # the module's Chromium, shared with the console tests' fixture



def write_site(directory: Path, text_: str) -> None:
    (directory / "site.yaml").write_text(text_, encoding="utf-8")


def start(make_broker: Any, tmp_path: Path, **overrides: Any) -> Any:
    """A broker whose site profile sends DX steps to DX_OLD (its first start deployed
    it as version 1)."""
    directory = tmp_path / "mappings"
    directory.mkdir()
    write_site(directory, STATION.format(ae="DX_OLD"))
    app = make_broker(mappings_dir=directory, **overrides)
    add_users(app)
    return app


@contextmanager
def console_page(app: Any, browser: Browser) -> Iterator[Page]:
    """A browser page on the broker's console; the CSP must block nothing it needs."""
    context = browser.new_context(viewport={"width": 1360, "height": 900},
                                  base_url=f"http://127.0.0.1:{app.http_port}")
    page = context.new_page()
    violations: list[str] = []
    page.on("console", lambda msg: violations.append(msg.text)
            if "Content Security Policy" in msg.text else None)
    yield page
    assert violations == [], violations
    context.close()


@pytest.fixture
def mapping_console(make_broker: Any, browser: Browser,
                    tmp_path: Path) -> Iterator[tuple[Any, Page]]:
    app = start(make_broker, tmp_path)
    with console_page(app, browser) as page:
        yield app, page


def test_admin_diffs_deploys_with_impact_and_rolls_back(
        mapping_console: tuple[Any, Page]) -> None:
    app, page = mapping_console
    directory = app.runtime.settings.mappings_dir
    assert [a.code for a in send(app.mllp_port, order(1))] == ["AA"]
    write_site(directory, STATION.format(ae="DX_NEW"))  # edited, not deployed

    log_in(page, "admin")
    page.get_by_role("link", name="Mappings").click()
    versions_table = page.locator("table.versions tbody tr")
    expect(versions_table).to_have_count(1)
    expect(versions_table.first).to_contain_text("in force")
    expect(page.get_by_test_id("in-force")).to_contain_text("Version 1 is in force")
    expect(page.get_by_test_id("directory-state")).to_contain_text(
        "differ from the version in force")
    shot(page, "mappings-01-versions")

    page.get_by_role("link", name="Show the difference").click()
    expect(page.get_by_role("heading", name="Mappings: version 1 → directory")).to_be_visible()
    expect(page.locator("pre.udiff .removed")).to_have_text(["-    ae_title: DX_OLD"])
    expect(page.locator("pre.udiff .added")).to_have_text(["+    ae_title: DX_NEW"])
    expect(page.locator(".difffile h3")).to_have_text([f"directory {directory}/site.yaml"])
    shot(page, "mappings-02-diff-directory")

    # Deploy: the impact comes first, then the confirmation.
    page.get_by_role("link", name="back to the versions").click()
    page.get_by_role("link", name="Deploy the directory…").click()
    impact = page.locator("#impact")
    expect(impact.locator("[data-key='compared']")).to_have_text("1")
    expect(impact.locator("[data-key='now_failing']")).to_have_text("0")
    expect(impact.locator("[data-key='attributes_changed']")).to_have_text("1")
    changed = impact.locator("table.diff tbody tr")
    expect(changed).to_have_count(1)
    expect(changed.first).to_contain_text("ScheduledStationAETitle")
    expect(changed.first.locator("td.old")).to_have_text("DX_OLD")
    expect(changed.first.locator("td.new")).to_have_text("DX_NEW")
    shot(page, "mappings-03-deploy-impact")
    page.get_by_label("Comment").fill("DX room moved")
    page.get_by_role("button", name="Deploy these profiles").click()
    expect(page.locator(".notice")).to_have_text("version 2 deployed: in force now")
    expect(versions_table).to_have_count(2)
    expect(page.locator("tr[data-version='2']")).to_contain_text("in force")
    expect(page.locator("tr[data-version='2']")).to_contain_text("DX room moved")
    expect(page.get_by_test_id("directory-state")).to_contain_text("version 2, in force")
    expect(page.locator("#deployments tbody tr").first).to_contain_text("deploy")
    shot(page, "mappings-04-deployed")

    # A set that does not validate is refused; nothing changes.
    write_site(directory, STATION.format(ae="DX_NEW").replace("modality: DX", "modality: 7"))
    page.reload()
    page.get_by_role("link", name="Deploy the directory…").click()
    expect(page.locator("#refused")).to_contain_text("site.yaml: stations[0].when.modality")
    expect(page.get_by_role("button", name="Deploy these profiles")).to_have_count(0)
    shot(page, "mappings-05-refused")

    # Roll back to version 1: what it changes is shown with the button.
    page.get_by_role("link", name="back to the mappings").click()
    page.locator("tr[data-version='1']").get_by_role("link", name="roll back to it…").click()
    rollback = page.locator("#rollback")
    expect(rollback.locator("pre.udiff .added")).to_have_text(["+    ae_title: DX_OLD"])
    shot(page, "mappings-06-rollback")
    rollback.get_by_label("Comment").fill("back to the old room")
    rollback.get_by_role("button", name="Roll back to version 1").click()
    expect(page.locator(".notice")).to_have_text("rolled back: version 1 in force now")
    expect(page.locator("tr[data-version='1']")).to_contain_text("in force")
    expect(page.locator("#deployments tbody tr").first).to_contain_text("rollback")

    # The message page names the profile and version that mapped the order.
    # The message page and the order's timeline name the profile and version that
    # mapped the order (version 1, before the deploy).
    page.goto("/messages")
    page.locator("tbody tr", has_text="B1").get_by_role("link").first.click()
    expect(page.get_by_test_id("mapped-by")).to_have_text("Mapped by profile site, version 1")
    page.get_by_role("link", name="timeline of ACC1").click()
    expect(page.locator("li.ev-hl7-in .mapped-by")).to_have_text("profile site, version 1")
    shot(page, "mappings-07-timeline")
    page.locator("li.ev-hl7-in .mapped-by").get_by_role("link", name="version 1").click()
    expect(page.get_by_role("heading", name="Mapping version 1")).to_be_visible()
    shot(page, "mappings-08-version")


def _hold_ordering_keys(app: Any) -> Any:
    """A transaction holding the ordering locks of the failed messages (PostgreSQL
    advisory locks, as a worker applying them holds them): they cannot be applied
    until it ends."""
    engine = create_engine(app.runtime.settings.database_url)
    connection = engine.connect()
    transaction = connection.begin()
    keys = connection.scalars(select(InboundMessage.ordering_key).where(
        InboundMessage.status == "failed")).all()
    assert keys and all(keys)
    for key in keys:
        connection.execute(select(func.pg_advisory_xact_lock(_lock_id(key))))
    return engine, connection, transaction


@pytest.mark.postgres
def test_operator_replays_failed_messages_and_watches_progress(
        make_broker: Any, browser: Browser, tmp_path: Path, postgres_url: str) -> None:
    """Two updates that came before their orders failed (204); one order then came.
    The operator replays the failed messages: the bar waits while the messages are
    locked (a worker busy with them), then reaches the summary: 1 passed, 1 still
    failing for its reason."""
    app = start(make_broker, tmp_path, database_url=postgres_url)
    early = [order(n).replace(b"ORC|NW", b"ORC|XO").replace(f"|B{n}|".encode(),
                                                            f"|XO{n}|".encode())
             for n in (3, 4)]
    assert [a.code for a in send(app.mllp_port, *early)] == ["AE", "AE"]
    assert [a.code for a in send(app.mllp_port, order(3))] == ["AA"]
    with console_page(app, browser) as page:
        watch_a_replay(app, page)


def watch_a_replay(app: Any, page: Page) -> None:
    engine, connection, transaction = _hold_ordering_keys(app)
    try:
        log_in(page, "operator")
        page.get_by_role("link", name="Mappings").click()
        expect(page.get_by_role("button", name="Deploy these profiles")).to_have_count(0)
        expect(page.get_by_role("link", name="Deploy the directory…")).to_have_count(0)
        form = page.locator("#replay")
        form.get_by_label("Status").select_option("failed")
        form.get_by_label("Sender").fill("EHR")
        form.get_by_role("button", name="Start replay").click()
        box = page.locator("#replay-progress")
        expect(box.locator("[data-key='state']")).to_have_text("running")
        expect(box.locator("[data-key='total']")).to_have_text("2")
        expect(box.locator("[data-key='done']")).to_have_text("0")
        expect(box.locator("[data-key='summary']")).to_be_hidden()
        shot(page, "replay-01-running")
    finally:
        transaction.rollback()  # the "worker" lets go: the replay goes on
        connection.close()
        engine.dispose()
    expect(box.locator("[data-key='state']")).to_have_text("finished", timeout=20_000)
    expect(box.locator("progress")).to_have_attribute("value", "2")
    expect(box.locator("[data-key='passed']")).to_have_text("1")
    expect(box.locator("[data-key='failing']")).to_have_text("1")
    reasons = box.locator("tbody[data-key='reasons'] tr")
    expect(reasons).to_have_count(1)
    expect(reasons.first.locator("td").first).to_contain_text("204")
    expect(reasons.first.locator("td").nth(1)).to_have_text("1")
    shot(page, "replay-02-summary")
