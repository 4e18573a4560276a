"""Bulk replay after a mapping fix, as an engineer runs it: orders refused by a profile
(no station for DX), the profile fixed, then ``mwl-broker messages reprocess --status
failed --since ...`` as a subprocess; the worklist then has the items. In embedded mode
(the command applies the messages while ``serve`` runs) and with a real Celery worker
on PostgreSQL and Redis."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.builders import order
from tests.conftest import MAPPINGS, sample
from tests.dcmtk import findscu, sps
from tests.integration.hl7util import send, set_field

CLI = str(Path(sys.executable).with_name("mwl-broker"))
DEFAULT_YAML = (MAPPINGS / "default.yaml").read_text(encoding="utf-8")
DEFAULT_STATION = "default_station:\n  ae_title: MWL_DEFAULT\n  station_name: DEFAULT\n"
DX_STATION = ("stations:\n  - name: dx-room-1\n    when: {modality: DX}\n"
              "    ae_title: DX01_AE\n    station_name: DX01\n")
AE_KEY = "ScheduledProcedureStepSequence[0].ScheduledStationAETitle"


def refusing(tmp_path: Path) -> Path:
    """A mappings directory whose default profile has no station for DX (and no
    default station): DX orders are refused with AE 103."""
    assert DEFAULT_STATION in DEFAULT_YAML and DEFAULT_YAML.count("\nstations:\n") == 1
    directory = tmp_path / "mappings"
    directory.mkdir()
    (directory / "default.yaml").write_text(DEFAULT_YAML.replace(DEFAULT_STATION, ""),
                                            encoding="utf-8")
    return directory


def fix(directory: Path) -> None:
    """The engineer's fix: a station rule for DX."""
    profile = directory / "default.yaml"
    text = profile.read_text(encoding="utf-8")
    profile.write_text(text.replace("\nstations:\n", "\n" + DX_STATION), encoding="utf-8")


def reprocess(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CLI, "messages", "reprocess", *args], capture_output=True,
                          text=True, env={**env, "COLUMNS": "200"}, timeout=180)


def dx_orders() -> list[bytes]:
    return [order(n) for n in (1, 2, 3)]


def accessions_at_dx01(dicom_port: int) -> list[str]:
    items = findscu(dicom_port, [f"{AE_KEY}=DX01_AE", "AccessionNumber"])
    assert {sps(ds).ScheduledStationAETitle for ds in items} <= {"DX01_AE"}
    return sorted(ds.AccessionNumber for ds in items)


@pytest.mark.dcmtk
def test_failed_messages_are_replayed_after_a_fix_in_embedded_mode(
        make_broker: Any, tmp_path: Path) -> None:
    mappings = refusing(tmp_path)
    broker = make_broker(mappings_dir=mappings)
    since = datetime.now(UTC).isoformat()
    # Another sender's XO for an order never received (AE 204): no fix helps it.
    unknown = set_field(set_field(sample("06"), "MSH", 3, "OTHER"), "MSH", 10, "XO-1")
    acks = send(broker.mllp_port, *dx_orders(), unknown)
    assert [(a.code, "^103&" in a.err, "^204&" in a.err) for a in acks] == [
        ("AE", True, False)] * 3 + [("AE", False, True)]
    fix(mappings)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MWLB_")}
    env.update({"MWLB_DATABASE_URL": broker.settings.database_url,
                "MWLB_MAPPINGS_DIR": str(mappings), "MWLB_TIMEZONE": "America/Chicago"})

    done = reprocess(env, "--status", "failed", "--since", since, "--sender", "EHR/HOSP")

    assert done.returncode == 0, done.stdout + done.stderr
    assert "replay run 1: 3 message(s): 3 passed, 0 still failing" in done.stdout
    assert accessions_at_dx01(broker.dicom_port) == ["ACC1", "ACC2", "ACC3"]

    # Every failed message since then: the XO still fails, and the summary says why.
    still = reprocess(env, "--status", "failed", "--since", since)

    assert still.returncode == 1, still.stdout + still.stderr
    assert "replay run 2: 1 message(s): 0 passed, 1 still failing" in still.stdout
    assert "\n  1 x 204 at ORC^1^2: " in still.stdout
    # --no-wait: exit 0 once dispatched, saying where the run is (applied here).
    queued = reprocess(env, "--sender", "OTHER", "--no-wait")
    assert queued.returncode == 0, queued.stdout + queued.stderr
    assert "replay run 3: 1 message(s): 0 passed, 1 failing, 0 waiting" in queued.stdout
    # Ids and criteria mixed: a usage error.
    mixed = reprocess(env, "4", "--status", "failed")
    assert mixed.returncode == 2 and "not both" in mixed.stderr


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.dcmtk
def test_failed_messages_are_replayed_by_a_celery_worker(start_distributed: Any,
                                                         tmp_path: Path) -> None:
    mappings = refusing(tmp_path)
    distributed = start_distributed(mappings_dir=str(mappings))
    since = datetime.now(UTC).isoformat()
    acks = send(distributed.mllp_port, *dx_orders())
    assert [(a.code, "^103&" in a.err) for a in acks] == [("AE", True)] * 3, (
        distributed.output())
    fix(mappings)
    # The worker maps with the profiles it loaded at its start: a new worker has the fix.
    [old] = [child for child in distributed.children if "worker" in child[0].args]
    old[0].terminate()
    old[0].wait(30)
    distributed.children.remove(old)
    distributed.start("worker", "--concurrency", "2")
    distributed.wait_for("worker", r"ready\.")

    done = reprocess(distributed.env, "--status", "failed", "--since", since)

    assert done.returncode == 0, done.stdout + done.stderr + distributed.output()
    assert "replay run 1: 3 message(s): 3 passed, 0 still failing" in done.stdout
    assert accessions_at_dx01(distributed.dicom_port) == ["ACC1", "ACC2", "ACC3"]
    # The worker applied them, not the command.
    distributed.wait_for("worker", r"message 3 \(MSH-10 B3\) processed")
