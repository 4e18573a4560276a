"""Performed-work rates: MPPS N-CREATE + N-SET pairs per second and C-STORE
instances per second, with the time until the broker has linked / reconciled them.

Each MPPS message goes on its own association, as modalities send them (N-CREATE at
the start of the exam, N-SET at its end), from a blocking SCU (:mod:`bench.mpps_scu`);
C-STORE is DCMTK ``storescu`` sending a series of small CT images on one association
(storage_mode discard).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from pydicom.uid import generate_uid
from sqlalchemy import func, select

from bench import mpps_scu
from broker.app import BrokerApp
from broker.hl7.client import MLLPClient
from broker.models import PerformedProcedureStep, StoredInstance
from tests.builders import order
from tests.modality import final, in_progress, step_item, storescu
from tests.modality import write_images as synthetic_images


def _wait(app: BrokerApp, query: object, expected: int, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with app.runtime.session_factory() as session:
            if session.scalar(query) == expected:  # type: ignore[call-overload]
                return
        time.sleep(0.01)
    raise TimeoutError("the broker did not finish in time")


def mpps_pairs(app: BrokerApp, first: int, count: int) -> tuple[float, float]:
    """(pairs/s as the modality sees them, pairs/s until all are linked)."""
    with MLLPClient("127.0.0.1", app.mllp_port, timeout=30) as client:
        for n in range(first, first + count):
            assert b"MSA|AA|" in client.send(order(n))
    began = time.perf_counter()
    for n in range(first, first + count):
        uid = generate_uid()
        item = step_item(accession=f"ACC{n}", rp_id=f"RP{n}", sps_id=f"SPS{n}")
        ds = in_progress([item], patient_id=f"BP{n % 1000}", patient_name=f"Bench^Patient^{n}")
        assert mpps_scu.n_create(app.dicom_port, uid, ds) == 0
        assert mpps_scu.n_set(app.dicom_port, uid, final()) == 0
    sent = time.perf_counter() - began
    linked = select(func.count()).select_from(PerformedProcedureStep).where(
        PerformedProcedureStep.linked_version == 2)
    _wait(app, linked, count * (first // count))
    return count / sent, count / (time.perf_counter() - began)


def cstore(app: BrokerApp, count: int, done_before: int, *,
           nodelay: bool) -> tuple[float, float]:
    """(instances/s as storescu sees them, instances/s until all are reconciled)."""
    with tempfile.TemporaryDirectory() as tmp:
        files = synthetic_images(Path(tmp), count, accession="ACC1", study_uid=generate_uid())
        began = time.perf_counter()
        storescu(app.dicom_port, files, nodelay=nodelay)
        sent = time.perf_counter() - began
        reconciled = select(func.count()).select_from(StoredInstance).where(
            StoredInstance.reconciled.is_(True))
        _wait(app, reconciled, done_before + count)
    return count / sent, count / (time.perf_counter() - began)
