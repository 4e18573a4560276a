"""``mwl-broker mapping deploy / versions / diff / rollback / export``, run as an
integration engineer would (a real subprocess on a migrated SQLite database)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, func, select

from broker.models import AuditEvent, MappingDeployment, MappingVersion
from tests.builders import order
from tests.integration.hl7util import send
from tests.integration.test_cli import run
from tests.site_profiles import DX_STATION as SITE

BROKEN = """name: site
extends: default
senders:
  - {application: EHR}
stations:
  - name: dx-room
    when: {modality: DX}
    ae_title: AN_AE_TITLE_TOO_LONG
unexpected_key: 1
"""


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """A migrated database and a mappings directory with a site profile (DX_OLD)."""
    mappings = tmp_path / "mappings"
    mappings.mkdir()
    (mappings / "site.yaml").write_text(SITE.format(ae="DX_OLD"))
    values = {"MWLB_DATABASE_URL": f"sqlite:///{tmp_path / 'broker.db'}",
              "MWLB_MAPPINGS_DIR": str(mappings), "MWLB_TIMEZONE": "UTC"}
    run("db", "upgrade", env=values)
    return values


def edit(env: dict[str, str], text: str) -> Path:
    path = Path(env["MWLB_MAPPINGS_DIR"]) / "site.yaml"
    path.write_text(text)
    return path


def counts(env: dict[str, str]) -> tuple[int, int]:
    engine = create_engine(env["MWLB_DATABASE_URL"])
    try:
        with engine.connect() as conn:
            return (conn.scalar(select(func.count()).select_from(MappingVersion)) or 0,
                    conn.scalar(select(func.count()).select_from(MappingDeployment)) or 0)
    finally:
        engine.dispose()


def configuration_audits(env: dict[str, str]) -> list[str]:
    """What the audit records of mapping changes say (Security Alert, Software
    Configuration: PS3.15 A.5.3.13)."""
    engine = create_engine(env["MWLB_DATABASE_URL"])
    try:
        with engine.connect() as conn:
            return list(conn.scalars(
                select(AuditEvent.detail)
                .where(AuditEvent.event_name == "Software Configuration")
                .order_by(AuditEvent.id)))
    finally:
        engine.dispose()


def test_deploy_makes_versions_and_the_same_files_make_none(env: dict[str, str]) -> None:
    assert "deployed version 1" in run("mapping", "deploy", "--comment", "first DX room",
                                       env=env).stdout
    again = run("mapping", "deploy", env=env).stdout
    assert "version 1 already in force" in again and "nothing deployed" in again
    edit(env, SITE.format(ae="DX_NEW"))
    assert "deployed version 2 from" in run("mapping", "deploy", env=env).stdout
    assert counts(env) == (2, 2)
    listing = run("mapping", "versions", env=env).stdout.splitlines()
    rows = [line.split("│")[1:-1] for line in listing if line.startswith("│")]
    assert [(r[0].strip(), r[1].strip(), r[6].strip()) for r in rows] == [
        ("2", "yes", ""), ("1", "", "first DX room")]


def test_a_refused_deploy_exits_1_naming_file_and_key_and_changes_nothing(
        env: dict[str, str]) -> None:
    run("mapping", "deploy", env=env)
    path = edit(env, BROKEN)
    proc = run("mapping", "deploy", env=env, ok=False)
    assert proc.returncode == 1
    errors = proc.stderr.splitlines()
    assert f"error {path}: stations[0].ae_title: Value error, an AE title has 1 to 16 " \
           "characters and no backslash" in errors
    assert f"error {path}: unexpected_key: Extra inputs are not permitted" in errors
    assert counts(env) == (1, 1)
    dry = run("mapping", "deploy", "--dry-run", env=env, ok=False)
    assert dry.returncode == 1 and f"error {path}: unexpected_key" in dry.stderr


def test_diff_between_versions_and_the_directory(env: dict[str, str]) -> None:
    run("mapping", "deploy", env=env)
    edit(env, SITE.format(ae="DX_NEW"))
    to_dir = run("mapping", "diff", "1", "dir", env=env).stdout.splitlines()
    assert to_dir[:2] == ["--- v1/site.yaml", "+++ dir/site.yaml"]
    assert "-    ae_title: DX_OLD" in to_dir and "+    ae_title: DX_NEW" in to_dir
    run("mapping", "deploy", env=env)
    # B defaults to the version in force (2).
    assert run("mapping", "diff", "1", env=env).stdout.splitlines()[:2] == [
        "--- v1/site.yaml", "+++ v2/site.yaml"]
    assert "have the same files" in run("mapping", "diff", "2", "dir", env=env).stdout
    assert run("mapping", "diff", "9", env=env, ok=False).returncode == 1
    assert run("mapping", "diff", "latest", env=env, ok=False).returncode == 2


def test_rollback_puts_an_earlier_version_back_and_export_writes_its_files(
        env: dict[str, str], tmp_path: Path) -> None:
    run("mapping", "deploy", env=env)
    edit(env, SITE.format(ae="DX_NEW"))
    run("mapping", "deploy", env=env)
    out = run("mapping", "rollback", "1", "--comment", "DX room closed", env=env).stdout
    assert "version 1 in force again (was version 2)" in out
    assert counts(env) == (2, 3)
    assert configuration_audits(env) == [
        "mapping profiles deployed: version 1 in force",
        "mapping profiles deployed: version 2 in force",
        "mapping profiles rolled back: version 1 in force (DX room closed)"]
    rows = [line.split("│")[1:-1] for line in
            run("mapping", "versions", env=env).stdout.splitlines() if line.startswith("│")]
    assert [(r[0].strip(), r[1].strip()) for r in rows] == [("2", ""), ("1", "yes")]
    missing = run("mapping", "rollback", "7", env=env, ok=False)
    assert missing.returncode == 1 and "no mapping version 7" in missing.stderr
    exported = tmp_path / "v2"
    run("mapping", "export", "2", str(exported), env=env)
    assert (exported / "site.yaml").read_text() == SITE.format(ae="DX_NEW")
    assert (exported / "packaged" / "default.yaml").is_file()
    # The export deploys as it is: the same files as version 2, so no new version.
    redeployed = run("mapping", "deploy", str(exported), env=env).stdout
    assert "deployed version 2" in redeployed
    assert counts(env) == (2, 4)
    refused = run("mapping", "export", "2", str(exported), env=env, ok=False)
    assert refused.returncode == 1 and "not empty" in refused.stderr


def test_dry_run_reports_what_would_change_and_deploys_nothing(
        env: dict[str, str], make_broker: Any) -> None:
    """Three DX orders applied with version 1; the site profile then sends DX steps to
    another station: the dry run names the station change for each of them, and the
    version in force stays 1."""
    mappings = Path(env["MWLB_MAPPINGS_DIR"])
    run("mapping", "deploy", env=env)
    broker = make_broker(database_url=env["MWLB_DATABASE_URL"], mappings_dir=mappings)
    assert {ack.code for ack in send(broker.mllp_port, order(1), order(2), order(3))} == {"AA"}
    edit(env, SITE.format(ae="DX_NEW"))
    out = run("mapping", "deploy", "--dry-run", "--last", "2", env=env).stdout
    assert f"impact of {mappings} against version 1: 2 message(s) of 1 sender(s)" in out
    assert ("ScheduledProcedureStepSequence.ScheduledStationAETitle changes in 2 item(s): "
            "['DX_OLD'] -> ['DX_NEW'] (2)") in out
    assert f"dry run: {mappings} validates; nothing deployed" in out
    assert counts(env) == (1, 1)
