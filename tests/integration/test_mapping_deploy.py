"""Deploying mapping profiles while the broker works: one MLLP connection and one DICOM
association stay open, orders flow on the connection and the modality queries its
worklist on the association, and ``mwl-broker mapping deploy`` (a real subprocess)
changes the station the site profile sends DX steps to.

What the engineer checks: no connection drops; orders applied before the deploy keep
the old Scheduled Station AE Title (PS3.4 Table K.6-1) and record version 1, orders
after it get the new one and record version 2, and each order sent during the deploy
has the station of the version its message row records. A broken profile deployed by
mistake is refused (exit 1, naming the file and key) and version 2 keeps mapping.
Then ``mwl-broker mapping rollback 1`` puts version 1 back in force the same way:
orders after it get the old station again and record version 1, orders mapped by
version 2 keep theirs, and the deployment history reads initial, deploy, rollback.
Embedded mode (SQLite, applied in the commit that stores each message) and a real
Celery worker (PostgreSQL + Redis) alike.

Modality profiles are deployed the same way: a modalities file added to the mappings
directory restricts the open association's universal C-FIND to its station from the
next query on, and a rollback lifts the restriction.
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
from broker.models import InboundMessage, MappingDeployment, WorklistQuery
from tests.builders import order
from tests.integration.hl7util import Ack
from tests.site_profiles import DX_STATION as SITE
from tests.workflow import wait_until

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

    def everything(self) -> dict[str, str]:
        """A universal query (no station, no date): accession -> its step's Scheduled
        Station AE Title."""
        query = Dataset()
        query.AccessionNumber = ""
        step = Dataset()
        step.ScheduledStationAETitle = ""
        query.ScheduledProcedureStepSequence = Sequence([step])
        found = {}
        with self.lock:
            for status, identifier in self.assoc.send_c_find(query, MWL_FIND):
                assert status is not None and "Status" in status, "association dropped"
                if status.Status in (0xFF00, 0xFF01) and identifier is not None:
                    found[str(identifier.AccessionNumber)] = str(
                        identifier.ScheduledProcedureStepSequence[0].ScheduledStationAETitle)
        return found


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


def mapping(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``mwl-broker mapping ARGS`` as the engineer runs it, in its own process."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("MWLB_")}
    full.update(env, COLUMNS="200")
    return subprocess.run([CLI, "mapping", *args],
                          capture_output=True, text=True, env=full, timeout=180)


def deploy(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return mapping(env, "deploy", "--comment", "DX room moved")


def rollback(env: dict[str, str], version: int) -> subprocess.CompletedProcess[str]:
    return mapping(env, "rollback", str(version), "--comment", "DX room back")


def deployment_history(database_url: str) -> list[tuple[int, str]]:
    """(version, action) of each deployment, oldest first."""
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            return [(r.version, r.action) for r in conn.execute(
                select(MappingDeployment.version, MappingDeployment.action)
                .order_by(MappingDeployment.id))]
    finally:
        engine.dispose()


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
        # Rollback to version 1 while orders flow: orders after it get DX_OLD again.
        orders.flow()
        time.sleep(0.5)
        back = rollback(env, 1)
        assert back.returncode == 0, back.stdout + back.stderr
        assert "version 1 in force again (was version 2)" in back.stdout
        time.sleep(0.3)
        orders.pause()
        rolling = list(range(still[-1] + 1, orders.next))
        rolled_back = orders.send(3)
        assert [modality.station(f"ACC{n}") for n in rolled_back] == ["DX_OLD"] * 3
        # Nothing dropped: the same connection and association answer still.
        assert modality.assoc.is_established
        assert {ack.code for ack in orders.acks.values()} == {"AA"}
        assert [modality.station(f"ACC{n}") for n in before] == ["DX_OLD"] * 3
        assert [modality.station(f"ACC{n}") for n in after] == ["DX_NEW"] * 3
        stations = {n: modality.station(f"ACC{n}") for n in during + rolling}
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
    assert {n: (found[n].profile, found[n].profile_version) for n in rolled_back} == {
        n: ("site", 1) for n in rolled_back}
    # The refused deploy left no trace; the rollback is a deployment of version 1.
    assert deployment_history(env["MWLB_DATABASE_URL"]) == [
        (1, "initial"), (2, "deploy"), (1, "rollback")]
    # Each order sent during the deploy or the rollback has the station of the version
    # that mapped it.
    assert during, "no order flowed during the deploy"
    assert rolling, "no order flowed during the rollback"
    assert stations == {n: {1: "DX_OLD", 2: "DX_NEW"}[found[n].profile_version]
                        for n in during + rolling}


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


# The open association's calling AE title (``Modality``) restricted to its station.
MODALITIES = """\
modalities:
  - name: dx-modality
    ae_titles: [DX_MODALITY]
    stations: [DX_OLD]
"""


def queries(app: Any) -> list[tuple[str, int | None, int]]:
    """(modality profile, version, result count) of each recorded C-FIND, oldest first."""
    with app.runtime.session_factory() as session:
        return [(q.modality_profile, q.profile_version, q.result_count)
                for q in session.scalars(select(WorklistQuery).order_by(WorklistQuery.id))]


@pytest.mark.parametrize("database", [
    "sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_a_modality_profile_deployed_on_an_open_association(
        make_broker: Any, tmp_path: Path, database: str, request: pytest.FixtureRequest,
) -> None:
    """Embedded mode only: a C-FIND is answered by ``serve`` itself, the same process
    (:class:`broker.app.BrokerApp`) in both modes, and a Celery worker never takes part
    in it. What the Celery run would add is PostgreSQL (the station restriction is
    SQL), hence the PostgreSQL run."""
    site = _site(tmp_path)
    extra = {"database_url": request.getfixturevalue("postgres_url")} \
        if database == "postgresql" else {}
    broker = make_broker(mappings_dir=site.parent, **extra)
    env = {"MWLB_DATABASE_URL": broker.settings.database_url,
           "MWLB_MAPPINGS_DIR": str(site.parent), "MWLB_TIMEZONE": "America/Chicago"}
    modality = Modality(broker.dicom_port)
    orders = Orders(broker.mllp_port, modality)
    try:
        orders.send(2)  # two DX steps for DX_OLD, and a CT step for another station
        ct = order(3).replace(b"||||DX|||", b"||||CT|||")
        assert Ack.parse(orders.client.send(ct)).code == "AA"
        everything = {"ACC1": "DX_OLD", "ACC2": "DX_OLD", "ACC3": "CT01_AE"}
        assert modality.everything() == everything
        # Deploy the directory with a modalities file; same association.
        (site.parent / "modalities.yaml").write_text(MODALITIES)
        done = deploy(env)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "deployed version 2" in done.stdout
        assert modality.everything() == {"ACC1": "DX_OLD", "ACC2": "DX_OLD"}
        # Rollback: the next query is unrestricted again.
        back = rollback(env, 1)
        assert back.returncode == 0, back.stdout + back.stderr
        assert modality.everything() == everything
        assert modality.assoc.is_established
    finally:
        orders.client.close()
        modality.assoc.release()
    wait_until(lambda: len(queries(broker)) == 3, what="the queries recorded")
    assert queries(broker) == [("", 1, 3), ("dx-modality", 2, 2), ("", 1, 3)]
