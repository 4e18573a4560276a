"""The mwl-broker command line, run as a user would (a real subprocess)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, inspect

from tests.conftest import MAPPINGS, SAMPLES, sample
from tests.dcmtk import findscu, sps
from tests.integration.hl7util import send

CLI = str(Path(sys.executable).with_name("mwl-broker"))


def run(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
        ok: bool = True) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("MWLB_")}
    full_env.update(env or {})
    full_env["COLUMNS"] = "200"
    proc = subprocess.run([CLI, *args], capture_output=True, text=True, env=full_env,
                          cwd=cwd, timeout=120)
    if ok:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def test_serve_help_lists_every_setting() -> None:
    out = run("serve", "--help").stdout
    for name in ("DATABASE_URL", "CELERY_BROKER_URL", "MLLP_HOST", "MLLP_PORT", "DICOM_PORT",
                 "AE_TITLE", "TIMEZONE", "MAPPINGS_DIR", "ACK_MODE"):
        assert f"MWLB_{name}" in out


def test_db_upgrade_creates_the_schema(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'new.db'}"
    run("db", "upgrade", env={"MWLB_DATABASE_URL": url})
    tables = set(inspect(create_engine(url)).get_table_names())
    assert {"inbound_message", "patient", "imaging_order", "requested_procedure",
            "scheduled_procedure_step", "alembic_version"} <= tables


def test_mapping_check_passes_on_the_shipped_profiles() -> None:
    proc = run("mapping", "check", str(MAPPINGS))
    assert "valid" in proc.stdout


def test_mapping_check_names_file_and_key(tmp_path: Path) -> None:
    broken = tmp_path / "mappings"
    shutil.copytree(MAPPINGS, broken)
    profile = next(broken.glob("*.yaml"))
    profile.write_text(profile.read_text() + "\nunexpected_key: 1\n")
    proc = run("mapping", "check", str(broken), ok=False)
    assert proc.returncode == 1
    assert profile.name in proc.stderr and "unexpected_key" in proc.stderr


def test_mapping_test_prints_items_without_touching_a_database(tmp_path: Path) -> None:
    db = tmp_path / "never.db"
    proc = run("mapping", "test", str(SAMPLES / "05_orm_o01_nw_two_sps.hl7"),
               env={"MWLB_DATABASE_URL": f"sqlite:///{db}", "MWLB_TIMEZONE": "UTC",
                    "MWLB_MAPPINGS_DIR": str(MAPPINGS)})
    assert "SPS0001" in proc.stdout and "SPS0002" in proc.stdout
    assert "ACC0001" in proc.stdout
    assert not db.exists()


def test_send_hl7_prints_the_ack(make_broker: Any) -> None:
    broker = make_broker()
    proc = run("send-hl7", "--port", str(broker.mllp_port),
               str(SAMPLES / "05_orm_o01_nw_two_sps.hl7"))
    assert "MSA|AA|ORM0005" in proc.stdout


def test_reprocess_applies_a_failed_message(make_broker: Any) -> None:
    """A message that failed (XO before its NW: AE 204) is applied by
    `mwl-broker messages reprocess ID` once the NW has arrived."""
    broker = make_broker()
    [early] = send(broker.mllp_port, sample("06"))
    assert early.code == "AE"
    assert send(broker.mllp_port, sample("05"))[0].code == "AA"
    env = {"MWLB_DATABASE_URL": broker.settings.database_url,
           "MWLB_MAPPINGS_DIR": str(MAPPINGS), "MWLB_TIMEZONE": "America/Chicago"}
    listing = run("messages", "list", "--status", "failed", env=env).stdout
    assert "ORM0006" in listing and "204" in listing
    proc = run("messages", "reprocess", "1", env=env)
    assert "processed" in proc.stdout
    items = findscu(broker.dicom_port, [
        "AccessionNumber=ACC0001",
        "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartTime"])
    assert {sps(ds).ScheduledProcedureStepStartTime[:4] for ds in items} == {"1100", "1105"}
    # The sender's resend of ORM0006 now gets the new outcome.
    [resent] = send(broker.mllp_port, sample("06"))
    assert resent.code == "AA"
