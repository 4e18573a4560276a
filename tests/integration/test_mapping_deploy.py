"""Deploying mapping profiles while the broker works: one MLLP connection and one DICOM
association stay open, orders flow on the connection and the modality queries its
worklist on the association, and ``mwl-broker mapping deploy`` (a real subprocess)
changes the station the site profile sends DX steps to.

What the engineer checks: no connection drops; orders applied before the deploy keep
the old Scheduled Station AE Title (PS3.4 Table K.6-1) and record version 1, orders
after it get the new one and record version 2, and each order sent during the deploy
has the station of the version its message row records. A broken profile deployed by
mistake is refused (exit 1, naming the file and key) and version 2 keeps mapping.
Embedded mode (SQLite, applied in the commit that stores each message) and a real
Celery worker (PostgreSQL + Redis) alike.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pynetdicom import AE
from sqlalchemy import create_engine, select

from broker.hl7.client import MLLPClient
from broker.models import InboundMessage
from tests.builders import order
from tests.integration.hl7util import Ack
from tests.site_profiles import DX_STATION as SITE

CLI = str(Path(sys.executable).with_name("mwl-broker"))
MWL_FIND = "1.2.840.10008.5.1.4.31"


# A station AE title of 17 characters (PS3.5 Table 6.2-1: at most 16).
BROKEN = SITE.format(ae="DX_ROOM_TOO_LONG1")


class Modality:
    """One MWL association held open (Modality Worklist C-FIND, PS3.4 K.4)."""

    def __init__(self, port: int) -> None:
        ae = AE(ae_title="DX_MODALITY")
        ae.add_requested_context(MWL_FIND)
        self.assoc = ae.associate("127.0.0.1", port, ae_title="MWL_BROKER")
        assert self.assoc.is_established, "association with the broker refused"
        self.lock = threading.Lock()

    def station(self, accession: str) -> str:
        """The Scheduled Station AE Title of the accession's step ("" when none)."""
        query = Dataset()
        query.AccessionNumber = accession
        step = Dataset()
        step.ScheduledStationAETitle = ""
        query.ScheduledProcedureStepSequence = Sequence([step])
        found = []
        with self.lock:
            for status, identifier in self.assoc.send_c_find(query, MWL_FIND):
                assert status is not None and "Status" in status, "association dropped"
                if status.Status in (0xFF00, 0xFF01) and identifier is not None:
                    found.append(str(identifier.ScheduledProcedureStepSequence[0]
                                     .ScheduledStationAETitle))
        assert len(found) <= 1, found
        return found[0] if found else ""


class Orders:
    """One MLLP connection held open; orders sent one at a time, each ACK kept.
    :meth:`flow` keeps sending from a thread (and the modality querying) until
    :meth:`pause`."""

    def __init__(self, port: int, modality: Modality) -> None:
        self.client = MLLPClient("127.0.0.1", port, timeout=30)
        self.client.connect()
        self.modality = modality
        self.acks: dict[int, Ack] = {}
        self.next = 1
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.failure: BaseException | None = None

    def send(self, count: int) -> list[int]:
        sent = []
        for _ in range(count):
            n, self.next = self.next, self.next + 1
            self.acks[n] = Ack.parse(self.client.send(order(n)))
            sent.append(n)
        return sent

    def flow(self) -> None:
        def run() -> None:
            try:
                while not self._stop.is_set():
                    [n] = self.send(1)
                    self.modality.station(f"ACC{n}")
                    time.sleep(0.05)
            except BaseException as exc:  # reported by pause()
                self.failure = exc

        self._stop.clear()
        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()

    def pause(self) -> None:
        assert self._thread is not None
        self._stop.set()
        self._thread.join(60)
        assert self.failure is None, f"the flow stopped: {self.failure!r}"


def deploy(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("MWLB_")}
    full.update(env, COLUMNS="200")
    return subprocess.run([CLI, "mapping", "deploy", "--comment", "DX room moved"],
                          capture_output=True, text=True, env=full, timeout=180)


def rows(database_url: str) -> dict[int, Any]:
    """The message rows by order number (MSH-10 ``B<n>``), once each has an outcome."""
    engine = create_engine(database_url)
    deadline = time.monotonic() + 60
    try:
        while True:
            with engine.connect() as conn:
                found = {int(r.control_id[1:]): r for r in conn.execute(
                    select(InboundMessage.control_id, InboundMessage.status,
                           InboundMessage.profile, InboundMessage.profile_version))}
            if all(r.status != "received" for r in found.values()) \
                    or time.monotonic() > deadline:
                return found
            time.sleep(0.2)
    finally:
        engine.dispose()


def deploy_while_messages_flow(mllp_port: int, dicom_port: int, env: dict[str, str],
                               site: Path) -> None:
    modality = Modality(dicom_port)
    orders = Orders(mllp_port, modality)
    try:
        before = orders.send(3)
        assert [modality.station(f"ACC{n}") for n in before] == ["DX_OLD"] * 3
        orders.flow()
        time.sleep(0.5)
        site.write_text(SITE.format(ae="DX_NEW"))
        done = deploy(env)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "deployed version 2" in done.stdout
        time.sleep(0.3)
        orders.pause()
        during = list(range(before[-1] + 1, orders.next))
        after = orders.send(3)
        assert [modality.station(f"ACC{n}") for n in after] == ["DX_NEW"] * 3
        # A broken profile is refused; the version in force keeps mapping.
        site.write_text(BROKEN)
        refused = deploy(env)
        assert refused.returncode == 1, refused.stdout + refused.stderr
        assert f"error {site}: stations[0].ae_title:" in refused.stderr
        still = orders.send(2)
        assert [modality.station(f"ACC{n}") for n in still] == ["DX_NEW"] * 2
        # Nothing dropped: the same connection and association answer still.
        assert modality.assoc.is_established
        assert {ack.code for ack in orders.acks.values()} == {"AA"}
        assert [modality.station(f"ACC{n}") for n in before] == ["DX_OLD"] * 3
        stations = {n: modality.station(f"ACC{n}") for n in during}
    finally:
        orders.client.close()
        modality.assoc.release()
    found = rows(env["MWLB_DATABASE_URL"])
    assert sorted(found) == list(range(1, orders.next))
    assert {r.status for r in found.values()} == {"processed"}
    assert {n: (found[n].profile, found[n].profile_version) for n in before} == {
        n: ("site", 1) for n in before}
    assert {n: (found[n].profile, found[n].profile_version) for n in after + still} == {
        n: ("site", 2) for n in after + still}
    # Each order sent during the deploy has the station of the version that mapped it.
    assert during, "no order flowed during the deploy"
    assert {n: stations[n] for n in during} == {
        n: {1: "DX_OLD", 2: "DX_NEW"}[found[n].profile_version] for n in during}


def _site(tmp_path: Path) -> Path:
    directory = tmp_path / "mappings"
    directory.mkdir()
    site = directory / "site.yaml"
    site.write_text(SITE.format(ae="DX_OLD"))
    return site


def test_deploy_while_messages_flow_embedded(make_broker: Any, tmp_path: Path) -> None:
    site = _site(tmp_path)
    broker = make_broker(mappings_dir=site.parent)
    env = {"MWLB_DATABASE_URL": broker.settings.database_url,
           "MWLB_MAPPINGS_DIR": str(site.parent), "MWLB_TIMEZONE": "America/Chicago"}
    deploy_while_messages_flow(broker.mllp_port, broker.dicom_port, env, site)


@pytest.mark.postgres
@pytest.mark.redis
def test_deploy_while_messages_flow_with_a_celery_worker(start_distributed: Any,
                                                         tmp_path: Path) -> None:
    site = _site(tmp_path)
    distributed = start_distributed(mappings_dir=str(site.parent))
    env = {"MWLB_DATABASE_URL": distributed.database_url,
           "MWLB_MAPPINGS_DIR": str(site.parent), "MWLB_TIMEZONE": "America/Chicago"}
    try:
        deploy_while_messages_flow(distributed.mllp_port, distributed.dicom_port, env, site)
    except AssertionError:
        print(distributed.output())
        raise
