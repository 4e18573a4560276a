"""Storage SCP (PS3.4 Annex B): index each received instance, then keep, spool for
forwarding, or discard the file as ``storage_mode`` says.

The index row is committed before the response, without waiting for the disk; the
association's DICOM Instances Transferred audit record, committed durably when the
association ends (before the A-RELEASE-RP), makes its rows durable too
(:func:`broker.db.unsynced_transaction`). A database failure answers 0xA700 (Refused:
Out of Resources, Table B.2-1) so that the modality keeps the instance and sends it
again. An instance without SOP/Study Instance UIDs answers 0xC000 (cannot
understand). Study reconciliation runs in a task, started when the association ends.
"""

from __future__ import annotations

import logging
from pathlib import Path

from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

from broker.config import Settings, StorageMode

log = logging.getLogger(__name__)

OUT_OF_RESOURCES, CANNOT_UNDERSTAND = 0xA700, 0xC000

# Storage SOP classes of the modalities a radiology department runs.
STORAGE_SOP_CLASSES = {
    "CT": "1.2.840.10008.5.1.4.1.1.2",
    "Enhanced CT": "1.2.840.10008.5.1.4.1.1.2.1",
    "MR": "1.2.840.10008.5.1.4.1.1.4",
    "Enhanced MR": "1.2.840.10008.5.1.4.1.1.4.1",
    "CR": "1.2.840.10008.5.1.4.1.1.1",
    "DX for presentation": "1.2.840.10008.5.1.4.1.1.1.1",
    "DX for processing": "1.2.840.10008.5.1.4.1.1.1.1.1",
    "MG for presentation": "1.2.840.10008.5.1.4.1.1.1.2",
    "MG for processing": "1.2.840.10008.5.1.4.1.1.1.2.1",
    "Breast tomosynthesis": "1.2.840.10008.5.1.4.1.1.13.1.3",
    "US": "1.2.840.10008.5.1.4.1.1.6.1",
    "US multi-frame": "1.2.840.10008.5.1.4.1.1.3.1",
    "NM": "1.2.840.10008.5.1.4.1.1.20",
    "PET": "1.2.840.10008.5.1.4.1.1.128",
    "XA": "1.2.840.10008.5.1.4.1.1.12.1",
    "Enhanced XA": "1.2.840.10008.5.1.4.1.1.12.1.1",
    "RF": "1.2.840.10008.5.1.4.1.1.12.2",
    "SC": "1.2.840.10008.5.1.4.1.1.7",
    "SC multi-frame grayscale byte": "1.2.840.10008.5.1.4.1.1.7.2",
    "SC multi-frame true colour": "1.2.840.10008.5.1.4.1.1.7.4",
    "Basic Text SR": "1.2.840.10008.5.1.4.1.1.88.11",
    "Enhanced SR": "1.2.840.10008.5.1.4.1.1.88.22",
    "Comprehensive SR": "1.2.840.10008.5.1.4.1.1.88.33",
    "X-Ray Radiation Dose SR": "1.2.840.10008.5.1.4.1.1.88.67",
    "Grayscale Softcopy Presentation State": "1.2.840.10008.5.1.4.1.1.11.1",
    "Encapsulated PDF": "1.2.840.10008.5.1.4.1.1.104.1",
}
# Accepted as they come, compressed ones included: nothing is decompressed.
STORAGE_TRANSFER_SYNTAXES = [
    ImplicitVRLittleEndian, ExplicitVRLittleEndian, DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian, JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLosslessSV1,
    JPEGLSLossless, JPEGLSNearLossless, JPEG2000Lossless, JPEG2000, RLELossless,
]


def file_path(settings: Settings, study: str, series: str, sop: str) -> Path | None:
    """Where the instance is written: None when it is discarded after indexing."""
    if settings.storage_mode is StorageMode.DISCARD:
        return None
    safe = [part.replace("/", "_").replace("..", "_") or "unknown" for part in
            (study, series, sop)]
    return settings.storage_dir / safe[0] / safe[1] / f"{safe[2]}.dcm"


def write_file(path: Path, encoded: bytes) -> None:
    """Write atomically: a crash leaves no half file under the final name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".part")
    partial.write_bytes(encoded)
    partial.replace(path)
