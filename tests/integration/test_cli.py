"""The mwl-broker command line, run as a user would (a real subprocess)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, inspect, text

from tests.conftest import MAPPINGS, SAMPLES, sample
from tests.dcmtk import findscu, sps
from tests.integration.hl7util import send, set_all, set_field

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
    """Every setting a deployment sets (the README's table, tests/unit/test_docs.py),
    and not those only tests use."""
    from broker.config import user_settings

    out = run("serve", "--help").stdout
    listed = set(re.findall(r"^  (MWLB_[A-Z0-9_]+)\b", out, re.MULTILINE))
    assert listed == {f"MWLB_{name.upper()}" for name in user_settings()}
    assert "MWLB_FAILPOINT" not in out


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


def test_mapping_test_prints_items_and_the_ack_without_creating_a_database(
        tmp_path: Path) -> None:
    db = tmp_path / "never.db"
    proc = run("mapping", "test", str(SAMPLES / "05_orm_o01_nw_two_sps.hl7"),
               env={"MWLB_DATABASE_URL": f"sqlite:///{db}", "MWLB_TIMEZONE": "UTC",
                    "MWLB_MAPPINGS_DIR": str(MAPPINGS)})
    assert "SPS0001" in proc.stdout and "SPS0002" in proc.stdout
    assert "ACC0001" in proc.stdout and "ACK AA" in proc.stdout
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


def _dry_run(tmp_path: Path, message: bytes, database_url: str | None = None,
             ok: bool = True) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "message.hl7"
    path.write_bytes(message)
    url = database_url or f"sqlite:///{tmp_path / 'never.db'}"
    return run("mapping", "test", str(path), ok=ok,
               env={"MWLB_DATABASE_URL": url, "MWLB_TIMEZONE": "UTC",
                    "MWLB_MAPPINGS_DIR": str(MAPPINGS)})


def test_mapping_test_refuses_what_live_processing_refuses(tmp_path: Path) -> None:
    """The dry run is the live pipeline: an event live processing does not take, an
    ORC-1/ORC-5 pair outside the table, and an SC for an order never seen are refused
    with the ACK live processing would send, and the exit status says so."""
    unsupported = set_field(sample("03"), "MSH", 9, "ADT^A28^ADT_A05")
    proc = _dry_run(tmp_path, unsupported, ok=False)
    assert proc.returncode == 1 and "ACK AR: 201 at MSH^1^9" in proc.stdout
    final = set_all(sample("05"), "ORC", 5, "CM")
    proc = _dry_run(tmp_path, final, ok=False)
    assert proc.returncode == 1 and "ACK AE: 103 at ORC^1^1" in proc.stdout
    status = set_all(set_all(sample("06"), "ORC", 1, "SC"), "ORC", 5, "IP")
    proc = _dry_run(tmp_path, status, ok=False)
    assert proc.returncode == 1 and "ACK AE: 204" in proc.stdout
    assert "as on a new, empty broker" in proc.stdout
    assert not (tmp_path / "never.db").exists()


def test_mapping_test_checks_order_state_without_writing(make_broker: Any,
                                                         tmp_path: Path) -> None:
    """With the broker's database, an SC for an order it holds is accepted; nothing
    the dry run did is kept."""
    broker = make_broker()
    assert send(broker.mllp_port, sample("05"))[0].code == "AA"
    status = set_all(set_all(sample("06"), "ORC", 1, "SC"), "ORC", 5, "IP")
    proc = _dry_run(tmp_path, status, broker.settings.database_url)
    assert "checked read-only against" in proc.stdout and "ACK AA" in proc.stdout
    engine = create_engine(broker.settings.database_url)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM inbound_message")).scalar() == 1
        assert conn.execute(text("SELECT count(*) FROM outbound_message")).scalar() == 0
    engine.dispose()
    assert {sps(ds).ScheduledProcedureStepStatus
            for ds in findscu(broker.dicom_port, [
                "AccessionNumber=ACC0001",
                "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStatus"])
            } == {"SCHEDULED"}
