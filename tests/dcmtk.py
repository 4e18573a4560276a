"""Drive DCMTK's command-line tools as the modality (findscu, echoscu)."""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset


def findscu(port: int, keys: list[str], *, aet: str = "MODALITY1", aec: str = "MWL_BROKER",
            host: str = "127.0.0.1", extra: list[str] | None = None,
            timeout: float = 30) -> list[Dataset]:
    """Run ``findscu -W`` with ``-k`` keys; return the pending response identifiers.

    Raises when findscu fails (exit status != 0), with its output in the message.
    """
    with tempfile.TemporaryDirectory() as out:
        args = ["findscu", "-W", "-aet", aet, "-aec", aec, "-X", "-od", out]
        for key in keys:
            args += ["-k", key]
        args += [*(extra or []), host, str(port)]
        proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise AssertionError(f"findscu failed ({proc.returncode}): {proc.stderr}")
        files = sorted(Path(out).glob("rsp*.dcm"))
        return [pydicom.dcmread(f) for f in files]


def sps(ds: Dataset) -> Dataset:
    """The single Scheduled Procedure Step Sequence item of a response."""
    seq = ds.ScheduledProcedureStepSequence
    assert len(seq) == 1, "each MWL response carries exactly one SPS item"
    return seq[0]


WORKLIST_KEYS = [
    "PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex",
    "AccessionNumber", "RequestedProcedureID", "StudyInstanceUID",
    "RequestedProcedureDescription", "RequestedProcedurePriority", "MedicalAlerts",
    "PregnancyStatus", "PatientWeight", "SpecificCharacterSet",
    "ScheduledProcedureStepSequence[0].ScheduledStationAETitle",
    "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate",
    "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartTime",
    "ScheduledProcedureStepSequence[0].Modality",
    "ScheduledProcedureStepSequence[0].ScheduledPerformingPhysicianName",
    "ScheduledProcedureStepSequence[0].ScheduledProcedureStepID",
    "ScheduledProcedureStepSequence[0].ScheduledProcedureStepDescription",
    "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStatus",
]
