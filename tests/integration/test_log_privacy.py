"""No patient data in logs: the whole sample flow with every logger at
DEBUG, then no patient name, patient id or birth date of the test data in any record."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import generate_uid

from broker.hl7.message import parse
from tests.conftest import SAMPLES, sample
from tests.dcmtk import findscu
from tests.integration.hl7util import send
from tests.modality import MPPS, final, in_progress, n_create, n_set, step_item, storescu
from tests.modality import write_images as images
from tests.workflow import STUDY_05, step_statuses, wait_until

pytestmark = [pytest.mark.dcmtk]


def patient_data() -> set[str]:
    """Name components, patient ids and birth dates in the sample messages (PID-3, -5,
    -7, MRG-1); assigning authorities and OIDs are not patient data."""
    found: set[str] = set()
    for path in sorted(SAMPLES.glob("*.hl7")):
        msg = parse(path.read_bytes())
        for seg in msg.segments:
            if seg.name not in ("PID", "MRG"):
                continue
            for number in (3, 5, 7) if seg.name == "PID" else (1,):
                for rep in seg.repetitions(number):
                    first = re.split(r"[\^&]", rep)[0] if number in (1, 3) else None
                    parts = [first] if first is not None else re.split(r"[\^&=]", rep)
                    for part in parts:
                        long_enough = len(part) >= (3 if part.isascii() else 2)
                        if long_enough and not re.fullmatch(r"[\d.]+\.[\d.]+", part):
                            found.add(part)
    return found


def test_no_patient_data_in_any_log_record(make_broker: Any, caplog: pytest.LogCaptureFixture,
                                           tmp_path: Path) -> None:
    secrets = patient_data()
    assert {"Doe", "Jane", "135790", "19900214", "864209"} <= secrets
    caplog.set_level(logging.DEBUG)
    names = ("", "pynetdicom", "broker", "workers", "sqlalchemy.engine")
    before = {name: logging.getLogger(name).level for name in names}
    for name in names:
        logging.getLogger(name).setLevel(logging.DEBUG)
    try:
        _run_the_flow(make_broker, caplog, tmp_path, secrets)
    finally:  # later tests must not inherit DEBUG loggers
        for name, level in before.items():
            logging.getLogger(name).setLevel(level)


def _run_the_flow(make_broker: Any, caplog: pytest.LogCaptureFixture, tmp_path: Path,
                  secrets: set[str]) -> None:
    app = make_broker()
    for n in range(1, 10):
        send(app.mllp_port, sample(f"0{n}"))
    findscu(app.dicom_port, ["PatientName", "PatientID", "PatientBirthDate", "AccessionNumber"])
    uid = generate_uid()
    ds = in_progress([step_item(accession="ACC0002", rp_id="RP0002", sps_id="SPS0003")],
                     patient_id="864209", patient_name="O'Brien^Sean^Patrick", modality="CT")
    n_create(app.dicom_port, MPPS, uid, ds)
    storescu(app.dicom_port, images(tmp_path, 2, accession="ACC0002", study_uid=STUDY_05,
                                    patient_id="864209", patient_name="O'Brien^Sean^Patrick"))
    n_set(app.dicom_port, uid, final())
    wait_until(lambda: step_statuses(app).get("SPS0003") == "COMPLETED", what="COMPLETED")
    assert len(caplog.records) > 100, "the flow was logged at DEBUG"
    leaks = []
    for record in caplog.records:
        if record.name.startswith("sqlalchemy.engine"):
            # Forced to DEBUG above; SQLAlchemy then logs rows. The broker's own logging
            # set-up pins it at WARNING (test_sqlalchemy_never_logs_below_warning).
            continue
        text = record.getMessage()
        leaks += [(record.name, s) for s in secrets if s in text]
    assert leaks == [], leaks[:10]
    assert not app.runtime.engine.echo and app.runtime.engine.hide_parameters


def test_sqlalchemy_never_logs_below_warning() -> None:
    """Even at DEBUG, the broker's logging keeps SQLAlchemy's statements and result rows
    (patient data) out of the log."""
    from broker.cli_common import configure_logging

    logger = logging.getLogger("sqlalchemy")
    before = logger.level
    try:
        configure_logging("DEBUG")
        assert not logging.getLogger("sqlalchemy.engine.Engine").isEnabledFor(logging.INFO)
    finally:
        logger.setLevel(before)
