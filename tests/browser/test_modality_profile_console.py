"""The console in headless Chromium says which modality profile applies to an AE
title: on the station worklist page, and in "why is it not on the worklist?", where a
restriction to the modality's own station is given as the reason it did not get another
station's step."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright
from sqlalchemy import func, select

from broker.models import WorklistQuery
from tests.conftest import MAPPINGS, sample
from tests.console import PASSWORD, add_users
from tests.dcmtk import findscu, sps
from tests.integration.hl7util import send
from tests.workflow import wait_until

pytestmark = [pytest.mark.browser, pytest.mark.dcmtk]

CHROMIUM = "/usr/bin/chromium"
MODALITIES = """\
modalities:
  - name: ct-room
    description: the CT in room 1
    ae_titles: [CT_ROOM_SCU]
    stations: [CT01_AE]
"""


@pytest.fixture
def page(make_broker: Any, tmp_path: Path) -> Iterator[tuple[Any, Page]]:
    site = tmp_path / "mappings"
    shutil.copytree(MAPPINGS, site)
    (site / "modalities.yaml").write_text(MODALITIES)
    app = make_broker(mappings_dir=site)
    add_users(app)
    with sync_playwright() as playwright:
        browser: Browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                                      args=["--no-sandbox"])
        context = browser.new_context(base_url=f"http://127.0.0.1:{app.http_port}")
        yield app, context.new_page()
        context.close()
        browser.close()


def test_the_explainer_gives_the_station_restriction(page: tuple[Any, Page]) -> None:
    app, tab = page
    assert {a.code for a in send(app.mllp_port, sample("05"), sample("09"))} == {"AA"}
    answered = findscu(app.dicom_port, [
        "ScheduledProcedureStepSequence[0].ScheduledProcedureStepID",
        "ScheduledProcedureStepSequence[0].ScheduledStationAETitle"], aet="CT_ROOM_SCU")
    assert sorted(sps(ds).ScheduledProcedureStepID for ds in answered) == ["SPS0003",
                                                                           "SPS0004"]

    def recorded() -> int:  # off the response path
        with app.runtime.session_factory() as session:
            return session.scalar(select(func.count(WorklistQuery.id))) or 0

    wait_until(recorded, what="the query recorded")
    tab.goto("/login")
    tab.get_by_label("Name").fill("viewer")
    tab.get_by_label("Password").fill(PASSWORD)
    tab.get_by_role("button", name="Log in").click()
    expect(tab.get_by_role("heading", name="Dashboard")).to_be_visible()

    tab.get_by_role("link", name="Worklist").click()
    tab.get_by_label("Station AE title").fill("CT_ROOM_SCU")
    tab.get_by_label("Date").fill("")
    tab.get_by_role("button", name="Show").click()
    expect(tab.get_by_test_id("modality-profile")).to_contain_text(
        "Modality profile for calling AE title CT_ROOM_SCU: ct-room")
    expect(tab.get_by_test_id("modality-profile")).to_contain_text(
        "other stations' steps are hidden from it")

    tab.get_by_label("Station AE title").fill("MWL_DEFAULT")
    tab.get_by_role("button", name="Show").click()
    expect(tab.get_by_test_id("modality-profile")).to_contain_text(
        "No modality profile applies to calling AE title MWL_DEFAULT")
    tab.get_by_role("link", name="SPS0001").click()
    tab.get_by_label("Station AE title").fill("CT_ROOM_SCU")
    tab.get_by_role("button", name="Check").click()
    expect(tab.get_by_test_id("verdict")).to_have_text(
        "excluded by modality profile ct-room: a query without a station gets only CT01_AE")
    expect(tab.get_by_test_id("modality-profile")).to_contain_text(
        "Modality profile for CT_ROOM_SCU: ct-room")
