"""`mwl-broker` run from a directory with no mappings/ (and no MWLB_MAPPINGS_DIR) uses the
mapping profile shipped in the package; a site directory adds profiles that extend it."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import pytest

from broker.mapping import PACKAGED_PROFILES
from tests.conftest import SAMPLES, sample
from tests.dcmtk import findscu
from tests.integration.hl7util import send
from tests.integration.test_cli import CLI, run

PACKAGED_DEFAULT = str(PACKAGED_PROFILES / "default.yaml")


@pytest.fixture
def empty(tmp_path: Path) -> Path:
    here = tmp_path / "elsewhere"
    here.mkdir()
    return here


def test_mapping_check_and_test_without_a_mappings_directory(empty: Path) -> None:
    checked = run("mapping", "check", cwd=empty).stdout
    assert f"default: {PACKAGED_DEFAULT} (packaged)" in checked
    assert "all profiles valid" in checked
    items = run("mapping", "test", str(SAMPLES / "05_orm_o01_nw_two_sps.hl7"),
                env={"MWLB_TIMEZONE": "UTC"}, cwd=empty).stdout
    assert "SPS0001" in items and "MWL_DEFAULT" in items
    assert list(empty.iterdir()) == [], "nothing written where it ran"


def test_a_site_directory_extends_the_packaged_default(empty: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "ehr2.yaml").write_text(
        "name: ehr2\nextends: default\nsenders: [{application: EHR2}]\n"
        "stations:\n  - {name: dx-room, when: {modality: DX}, ae_title: DX01_AE}\n")
    checked = run("mapping", "check", cwd=empty, env={"MWLB_MAPPINGS_DIR": str(site)}).stdout
    assert f"default: {PACKAGED_DEFAULT} (packaged)" in checked
    assert f"ehr2: {site / 'ehr2.yaml'}" in checked
    message = tmp_path / "ehr2.hl7"
    message.write_bytes(sample("05").replace(b"|EHR|HOSP|", b"|EHR2|HOSP|", 1))
    items = run("mapping", "test", str(message), cwd=empty,
                env={"MWLB_MAPPINGS_DIR": str(site), "MWLB_TIMEZONE": "UTC"}).stdout
    assert "DX01_AE" in items and "MWL_DEFAULT" not in items


def test_serve_from_an_empty_directory(empty: Path, tmp_path: Path) -> None:
    """A real `mwl-broker serve` started elsewhere loads the packaged default profile and
    schedules with it (sample #05, DX: the default station MWL_DEFAULT)."""
    log = tmp_path / "serve.log"
    env = {"MWLB_DATABASE_URL": f"sqlite:///{tmp_path / 'broker.db'}",
           "MWLB_MLLP_HOST": "127.0.0.1", "MWLB_MLLP_PORT": "0",
           "MWLB_DICOM_HOST": "127.0.0.1", "MWLB_DICOM_PORT": "0", "MWLB_HTTP_PORT": "-1",
           "MWLB_MLLP_TLS_PORT": "-1", "MWLB_DICOM_TLS_PORT": "-1", "MWLB_TIMEZONE": "UTC",
           "PATH": "/usr/bin:/bin"}
    with log.open("wb") as out:
        proc = subprocess.Popen([CLI, "serve"], cwd=empty, env=env, stdout=out,
                                stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while "mwl-broker listening" not in log.read_text() and time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()
            time.sleep(0.1)
        text = log.read_text()
        assert f"version 1 in force ({PACKAGED_PROFILES})" in text, text
        assert "version 1 loaded: default (default.yaml)" in text, text
        mllp, dicom = (int(re.findall(rf"{name}\s+[\d.]+:(\d+)", text)[0])
                       for name in ("HL7 MLLP", "DICOM"))
        assert [a.code for a in send(mllp, sample("05"))] == ["AA"]
        items = findscu(dicom, [
            "AccessionNumber=ACC0001",
            "ScheduledProcedureStepSequence[0].ScheduledStationAETitle=MWL_DEFAULT"])
        assert len(items) == 2
    finally:
        proc.terminate()
        proc.wait(30)
    assert [p.name for p in empty.iterdir()] == [], "nothing needed nor written here"
