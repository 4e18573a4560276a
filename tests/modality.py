"""The modality side of performed work, for tests: MPPS N-CREATE/N-SET and IAN over a
real pynetdicom association, and synthetic image files for DCMTK ``storescu``."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, evt

MPPS = "1.2.840.10008.3.1.2.3.3"
IAN = "1.2.840.10008.5.1.4.33"


def _nodelay(event: Any) -> None:
    event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _associate(port: int, sop_class: str, aet: str) -> Any:
    """An association with Nagle's algorithm off on our side, as most modality
    toolkits do, so that timings measure the broker rather than TCP's delayed ACK."""
    ae = AE(ae_title=aet)
    ae.add_requested_context(sop_class)
    assoc = ae.associate("127.0.0.1", port, ae_title="MWL_BROKER",
                         evt_handlers=[(evt.EVT_CONN_OPEN, _nodelay)])
    assert assoc.is_established, "association with the broker refused"
    return assoc


def n_create(port: int, sop_class: str, uid: str | None, ds: Dataset,
             aet: str = "CT01_AE") -> Dataset:
    """Send N-CREATE; returns the response status dataset."""
    assoc = _associate(port, sop_class, aet)
    try:
        status, _ = assoc.send_n_create(ds, sop_class, uid)
    finally:
        assoc.release()
    assert status is not None and "Status" in status, "no N-CREATE response"
    return status


def n_set(port: int, uid: str, ds: Dataset, aet: str = "CT01_AE") -> Dataset:
    assoc = _associate(port, MPPS, aet)
    try:
        status, _ = assoc.send_n_set(ds, MPPS, uid)
    finally:
        assoc.release()
    assert status is not None and "Status" in status, "no N-SET response"
    return status


def step_item(*, accession: str = "", rp_id: str = "", sps_id: str = "",
              study_uid: str | None = None) -> Dataset:
    """One Scheduled Step Attributes Sequence item (PS3.4 Table F.7.2-1)."""
    item = Dataset()
    item.StudyInstanceUID = study_uid or generate_uid()
    item.ReferencedStudySequence = Sequence([])
    item.AccessionNumber = accession
    item.RequestedProcedureID = rp_id
    item.RequestedProcedureDescription = ""
    item.ScheduledProcedureStepID = sps_id
    item.ScheduledProcedureStepDescription = ""
    item.ScheduledProtocolCodeSequence = Sequence([])
    return item


def in_progress(items: list[Dataset], *, patient_id: str = "135790",
                patient_name: str = "Doe^Jane^Marie", modality: str = "DX",
                station: str = "CT01_AE", start: tuple[str, str] = ("20250310", "093100"),
                status: str = "IN PROGRESS") -> Dataset:
    """An N-CREATE attribute list with every Type 1 and Type 2 attribute."""
    ds = Dataset()
    ds.ScheduledStepAttributesSequence = Sequence(items)
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19900214"
    ds.PatientSex = "F"
    ds.ReferencedPatientSequence = Sequence([])
    ds.PerformedProcedureStepID = "PPS-" + generate_uid()[-8:]
    ds.PerformedStationAETitle = station
    ds.PerformedStationName = ""
    ds.PerformedLocation = ""
    ds.PerformedProcedureStepStartDate, ds.PerformedProcedureStepStartTime = start
    ds.PerformedProcedureStepEndDate = ""
    ds.PerformedProcedureStepEndTime = ""
    ds.PerformedProcedureStepStatus = status
    ds.PerformedProcedureStepDescription = ""
    ds.PerformedProcedureTypeDescription = ""
    ds.ProcedureCodeSequence = Sequence([])
    ds.Modality = modality
    ds.StudyID = ""
    ds.PerformedProtocolCodeSequence = Sequence([])
    ds.PerformedSeriesSequence = Sequence([])
    return ds


def final(status: str = "COMPLETED", *, series_uid: str | None = None,
          reason: tuple[str, str, str] | None = None, with_series: bool = True,
          end: tuple[str, str] = ("20250310", "094500")) -> Dataset:
    """An N-SET modification list ending the step (with what PS3.4 Table F.7.2-1
    requires of a final state)."""
    ds = Dataset()
    ds.PerformedProcedureStepStatus = status
    ds.PerformedProcedureStepEndDate, ds.PerformedProcedureStepEndTime = end
    if with_series:
        series = Dataset()
        series.SeriesInstanceUID = series_uid or generate_uid()
        series.ProtocolName = "Chest"
        series.RetrieveAETitle = "PACS"
        series.PerformingPhysicianName = ""
        series.OperatorsName = ""
        series.SeriesDescription = ""
        series.ReferencedImageSequence = Sequence([])
        series.ReferencedNonImageCompositeSOPInstanceSequence = Sequence([])
        ds.PerformedSeriesSequence = Sequence([series])
    if reason is not None:
        code = Dataset()
        code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = reason
        ds.PerformedProcedureStepDiscontinuationReasonCodeSequence = Sequence([code])
    return ds


def write_images(directory: Path, count: int, *, accession: str, study_uid: str,
                 patient_id: str = "135790", patient_name: str = "Doe^Jane^Marie",
                 modality: str = "CT", study_datetime: tuple[str, str] = ("20250310", "093200"),
                 ) -> list[Path]:
    """``count`` small synthetic CT images of one series, as DICOM files."""
    directory.mkdir(parents=True, exist_ok=True)
    series_uid = generate_uid()
    paths = []
    for n in range(count):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.AccessionNumber = accession
        ds.PatientID, ds.PatientName = patient_id, patient_name
        ds.PatientBirthDate = "19900214"
        ds.Modality = modality
        ds.StudyDate, ds.StudyTime = study_datetime
        ds.InstanceNumber = n + 1
        ds.Rows = ds.Columns = 8
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 0
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.PixelData = bytes(range(128))
        path = directory / f"img{n:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def storescu(port: int, files: list[Path], *, aet: str = "CT01_AE",
             extra: tuple[str, ...] = (), nodelay: bool = False) -> None:
    """Send files with DCMTK ``storescu`` (one association). ``nodelay``: switch Nagle's
    algorithm off as DCMTK's TCP_NODELAY=1 does (DCMTK >= 3.6.2 leaves it on)."""
    env = {**os.environ, "TCP_NODELAY": "1"} if nodelay else None
    proc = subprocess.run(["storescu", "-aet", aet, "-aec", "MWL_BROKER", *extra, "127.0.0.1",
                           str(port), *map(str, files)], capture_output=True, text=True,
                          timeout=120, env=env)
    assert proc.returncode == 0, f"storescu failed: {proc.stderr}"


def availability(study_uid: str, instances: list[tuple[str, str]], *,
                 accession: str = "", patient_id: str = "",
                 mpps_uid: str | None = None) -> Dataset:
    """An IAN N-CREATE attribute list (PS3.3 C.4.23) for one series."""
    ds = Dataset()
    ds.StudyInstanceUID = study_uid
    ds.AccessionNumber = accession
    ds.PatientID = patient_id
    pps = Dataset()
    if mpps_uid:
        pps.ReferencedSOPClassUID, pps.ReferencedSOPInstanceUID = MPPS, mpps_uid
        ds.ReferencedPerformedProcedureStepSequence = Sequence([pps])
    else:
        ds.ReferencedPerformedProcedureStepSequence = Sequence([])
    series = Dataset()
    series.SeriesInstanceUID = generate_uid()
    refs = []
    for sop_class, sop_uid in instances:
        ref = Dataset()
        ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = sop_class, sop_uid
        ref.InstanceAvailability = "ONLINE"
        ref.RetrieveAETitle = "PACS"
        refs.append(ref)
    series.ReferencedSOPSequence = Sequence(refs)
    ds.ReferencedSeriesSequence = Sequence([series])
    return ds
