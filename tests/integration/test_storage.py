"""Storage SCP: DCMTK storescu as the modality; instances indexed; files
discarded, kept, or forwarded to a PACS (a real pynetdicom storage SCP here) with
retries; compressed transfer syntaxes accepted as they come."""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.uid import RLELossless, generate_uid
from pynetdicom import AE, evt
from sqlalchemy import select

from broker.models import AuditEvent, StoredInstance
from tests.modality import storescu, write_images
from tests.workflow import wait_until

pytestmark = [pytest.mark.dcmtk]


def index(app: Any) -> list[StoredInstance]:
    with app.runtime.session_factory() as session:
        return list(session.scalars(select(StoredInstance).order_by(StoredInstance.id)))


def test_instances_are_indexed_and_discarded_by_default(make_broker: Any,
                                                        tmp_path: Path) -> None:
    app = make_broker(storage_dir=tmp_path / "store")
    study = generate_uid()
    files = write_images(tmp_path / "in", 2, accession="ACC0099", study_uid=study)
    storescu(app.dicom_port, files, aet="CT09_AE")
    rows = index(app)
    assert [r.sop_instance_uid for r in rows] == [pydicom.dcmread(f).SOPInstanceUID
                                                  for f in files]
    first = rows[0]
    assert (first.study_instance_uid, first.accession_number, first.modality,
            first.calling_ae_title, first.patient_id) == (study, "ACC0099", "CT", "CT09_AE",
                                                          "135790")
    assert first.file_path == "" and not (tmp_path / "store").exists()


def test_a_modality_leaving_nagles_algorithm_on_is_not_held_back(make_broker: Any,
                                                                  tmp_path: Path) -> None:
    """DCMTK's storescu keeps Nagle's algorithm on by default: it sends the start of
    each C-STORE's data only once the broker has acknowledged the command. An ACK
    delayed by the broker's TCP stack (40 ms on Linux) would then hold back every
    instance."""
    app = make_broker()
    count = 60
    files = write_images(tmp_path / "in", count, accession="ACC0099", study_uid=generate_uid())
    began = time.monotonic()
    storescu(app.dicom_port, files)
    assert time.monotonic() - began < count * 0.040
    assert len(index(app)) == count


def test_the_transfer_is_recorded_before_the_release_is_answered(make_broker: Any,
                                                                 tmp_path: Path) -> None:
    """Each instance is indexed before its C-STORE response, and the association's
    DICOM Instances Transferred audit record (PS3.15 A.5.3.7) is committed before the
    A-RELEASE-RP, with every instance counted."""
    app = make_broker()
    study = generate_uid()
    storescu(app.dicom_port, write_images(tmp_path / "in", 3, accession="ACC0099",
                                          study_uid=study))
    with app.runtime.session_factory() as session:
        details = list(session.scalars(select(AuditEvent.detail).where(
            AuditEvent.event_id == "110104")))
    assert details == ["3 instance(s) stored"]
    assert {r.study_instance_uid for r in index(app)} == {study}


def test_an_instance_stored_again_replaces_its_index_row(make_broker: Any,
                                                         tmp_path: Path) -> None:
    """PS3.4 B.2.2: storing an SOP Instance again replaces it; the row keeps its
    receipt time."""
    app = make_broker()
    first = write_images(tmp_path / "a", 1, accession="ACC0099", study_uid=generate_uid())[0]
    storescu(app.dicom_port, [first])
    before = index(app)[0]
    again = pydicom.dcmread(first)
    again.AccessionNumber, again.Modality = "ACC0100", "MR"
    again.save_as(tmp_path / "again.dcm")
    storescu(app.dicom_port, [tmp_path / "again.dcm"], aet="MR01_AE")
    rows = index(app)
    assert len(rows) == 1
    assert (rows[0].accession_number, rows[0].modality, rows[0].calling_ae_title) == (
        "ACC0100", "MR", "MR01_AE")
    assert rows[0].received_at == before.received_at


def test_keep_writes_each_instance_as_received(make_broker: Any, tmp_path: Path) -> None:
    app = make_broker(storage_mode="keep", storage_dir=tmp_path / "store")
    source = write_images(tmp_path / "in", 1, accession="ACC0099", study_uid=generate_uid())[0]
    compressed = tmp_path / "rle.dcm"
    subprocess.run(["dcmcrle", str(source), str(compressed)], check=True)
    storescu(app.dicom_port, [compressed], extra=("-xr",))  # propose RLE Lossless first
    row = index(app)[0]
    assert row.transfer_syntax_uid == RLELossless
    kept = pydicom.dcmread(row.file_path)
    assert kept.SOPInstanceUID == row.sop_instance_uid
    assert kept.file_meta.TransferSyntaxUID == RLELossless  # not transcoded


class PACS:
    """A storage SCP standing in for the PACS, recording what it receives."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.received: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        ae = AE(ae_title="PACS")
        ae.add_supported_context("1.2.840.10008.5.1.4.1.1.2",
                                 ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
        self.ae = ae
        self.server: Any = None

    def _on_store(self, event: Any) -> int:
        with self._lock:
            self.received.append((str(event.request.AffectedSOPInstanceUID),
                                  str(event.context.transfer_syntax)))
        return 0x0000

    def start(self) -> None:
        self.server = self.ae.start_server(("127.0.0.1", self.port), block=False,
                                           evt_handlers=[(evt.EVT_C_STORE, self._on_store)])

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()


def test_forward_retries_until_the_pacs_is_up(make_broker: Any, tmp_path: Path) -> None:
    import socket

    reserved = socket.socket()  # the PACS is down: its port refuses connections
    reserved.bind(("127.0.0.1", 0))
    port = reserved.getsockname()[1]
    app = make_broker(storage_mode="forward", storage_dir=tmp_path / "spool",
                      forward_host="127.0.0.1", forward_port=port, forward_ae_title="PACS",
                      sweep_interval=0.2)
    files = write_images(tmp_path / "in", 3, accession="ACC0099", study_uid=generate_uid())
    storescu(app.dicom_port, files)
    wait_until(lambda: all(r.forward_attempts >= 1 for r in index(app)), what="an attempt")
    rows = index(app)
    assert {r.forward_state for r in rows} == {"pending"}
    assert all(Path(r.file_path).exists() for r in rows)
    assert "not reachable" in rows[0].forward_error

    reserved.close()
    pacs = PACS(port)
    pacs.start()
    try:
        wait_until(lambda: {r.forward_state for r in index(app)} == {"forwarded"},
                   what="forwarded", timeout=30)
        assert sorted(uid for uid, _ in pacs.received) == sorted(
            r.sop_instance_uid for r in index(app))
        assert not any((tmp_path / "spool").rglob("*.dcm")), "spool emptied"
    finally:
        pacs.stop()
