"""Load N scheduled procedure steps for the worklist benchmarks.

One synthetic ORM^O01 goes through the broker's real path (MLLP, message store,
mapping, processing); its rows are the template. The loader then writes N copies
straight into the broker's tables (patients, orders, requested procedures, steps,
station AE titles; with ``workitems``, each step's UPS workitem as well) with new
identifiers, spread over 20 station AE titles, 10 modalities and 5 days starting
today, one patient per step. The same items are
written as DCMTK ``.wl`` files for ``wlmscpfs``, the broker's own response to a
universal query, so both servers hold the same attributes.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from datetime import date, timedelta
from io import BytesIO
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import write_file_meta_info
from pydicom.sequence import Sequence
from pydicom.uid import UID, ExplicitVRLittleEndian
from pynetdicom.dsutils import encode
from sqlalchemy import Table, insert, select, text, update
from sqlalchemy.orm import Session

from broker.dicom.encoder import ResponsePlan, Unsupported
from broker.dicom.items import build_response
from broker.models import (
    ImagingOrder,
    Patient,
    RequestedProcedure,
    ScheduledProcedureStep,
    StationAETitle,
    UPSWorkitem,
)

STATIONS = 20
MODALITIES = ("CT", "MR", "CR", "DX", "MG", "US", "NM", "PT", "XA", "RF")
DAYS = 5
BATCH = 5000


def station(i: int) -> str:
    return f"STATION{i % STATIONS:02d}"


def day(i: int, today: date) -> str:
    return (today + timedelta(days=(i // STATIONS) % DAYS)).strftime("%Y%m%d")


def _rows(session: Session, model: Any) -> dict[str, Any]:
    row = session.scalars(select(model).limit(1)).one()
    return {c.key: getattr(row, c.key) for c in model.__table__.columns}


def template(session: Session, workitems: bool = False) -> dict[str, dict[str, Any]]:
    """The rows one processed order produced (the database must hold just that one)."""
    models: list[tuple[str, Any]] = [
        ("patient", Patient), ("order", ImagingOrder), ("procedure", RequestedProcedure),
        ("step", ScheduledProcedureStep)]
    if workitems:
        models.append(("workitem", UPSWorkitem))
    return {name: _rows(session, model) for name, model in models}


def _copies(tpl: dict[str, dict[str, Any]], first: int, count: int, today: date,
            offset: int) -> Iterator[dict[str, dict[str, Any]]]:
    for i in range(first, first + count):
        pk = offset + i + 1
        patient, order = copy.deepcopy(tpl["patient"]), copy.deepcopy(tpl["order"])
        procedure, step = copy.deepcopy(tpl["procedure"]), copy.deepcopy(tpl["step"])
        name = f"Bench^Patient^{i}"
        patient.update(id=pk, patient_id=f"WLP{i:06d}", patient_name=name,
                       name_key_alphabetic=name.upper())
        patient["attributes"].update(PatientID=patient["patient_id"], PatientName=name)
        order.update(id=pk, patient_pk=pk, placer_order_number=f"PLC-W{i}",
                     filler_order_number=f"FIL-W{i}", last_message_pk=None)
        accession, rp_id, uid = f"WA{i:08d}", f"WRP{i}", f"2.25.{7 * 10**15 + i}"
        procedure.update(id=pk, order_pk=pk, accession_number=accession,
                         requested_procedure_id=rp_id, study_instance_uid=uid)
        procedure["attributes"].update(
            AccessionNumber=accession, RequestedProcedureID=rp_id, StudyInstanceUID=uid,
            PlacerOrderNumberImagingServiceRequest=order["placer_order_number"],
            FillerOrderNumberImagingServiceRequest=order["filler_order_number"])
        minute = (i * 7) % 600
        start_date, start_time = day(i, today), f"{8 + minute // 60:02d}{minute % 60:02d}00"
        modality, title = MODALITIES[i % len(MODALITIES)], station(i)
        step.update(id=pk, procedure_pk=pk, sps_id=f"WS{i}", start_date=start_date,
                    start_time=start_time, start_datetime=start_date + start_time,
                    modality=modality, station_name=title[:16])
        step["attributes"].update(
            ScheduledProcedureStepID=step["sps_id"], ScheduledProcedureStepStartDate=start_date,
            ScheduledProcedureStepStartTime=start_time, Modality=modality,
            ScheduledStationAETitle=[title], ScheduledStationName=title[:16])
        rows = {"patient": patient, "order": order, "procedure": procedure, "step": step,
                "title": {"sps_pk": pk, "position": 0, "ae_title": title}}
        if "workitem" in tpl:
            workitem = copy.deepcopy(tpl["workitem"])
            workitem.update(id=pk, uid=f"2.25.{8 * 10**15 + i}", sps_pk=pk,
                            start_datetime=step["start_datetime"], station_name_code=title,
                            worklist_label=title)
            rows["workitem"] = workitem
        yield rows


def load(session: Session, count: int, today: date, *, workitems: bool = False) -> None:
    """Add ``count`` steps cloned from the database's one order, whose own step is then
    marked DISCONTINUED so that it is off the worklist. With ``workitems``, each step
    gets a SCHEDULED UPS workitem cloned from the order's (its station's code and its
    start), and the order's own workitem is CANCELED."""
    tpl = template(session, workitems)
    session.execute(update(ScheduledProcedureStep).values(status="DISCONTINUED"))
    if workitems:
        session.execute(update(UPSWorkitem).values(state="CANCELED"))
    offset = max(row["id"] for row in tpl.values())
    tables: list[tuple[str, Table]] = [
        ("patient", Patient.__table__), ("order", ImagingOrder.__table__),  # type: ignore[list-item]
        ("procedure", RequestedProcedure.__table__),  # type: ignore[list-item]
        ("step", ScheduledProcedureStep.__table__),  # type: ignore[list-item]
        ("title", StationAETitle.__table__)]  # type: ignore[list-item]
    if workitems:
        tables.append(("workitem", UPSWorkitem.__table__))  # type: ignore[arg-type]
    for first in range(0, count, BATCH):
        batch = list(_copies(tpl, first, min(BATCH, count - first), today, offset))
        for name, table in tables:
            session.execute(insert(table), [rows[name] for rows in batch])
    session.commit()
    # Planner statistics, as a running broker keeps them (the sweeper on SQLite,
    # autovacuum on PostgreSQL).
    session.execute(text("ANALYZE"))
    session.commit()


def universal_query() -> Dataset:
    """Every attribute a worklist item carries (what a .wl file must hold)."""
    query = Dataset()
    for keyword in ("SpecificCharacterSet", "PatientName", "PatientID", "IssuerOfPatientID",
                    "PatientBirthDate", "PatientSex", "CurrentPatientLocation",
                    "AccessionNumber", "RequestedProcedureID", "RequestedProcedureDescription",
                    "StudyInstanceUID", "RequestedProcedurePriority",
                    "ReferringPhysicianName", "RequestedProcedureCodeSequence"):
        setattr(query, keyword, None)
    query.RequestedProcedureCodeSequence = Sequence([])
    query.ScheduledProcedureStepSequence = Sequence([])
    return query


def write_wl_files(session: Session, directory: Path, zone: str) -> int:
    """One DCMTK ``.wl`` file per scheduled step (wlmscpfs's data source, Explicit VR
    Little Endian with a file meta header), plus the lockfile wlmscpfs wants. The data
    set is the broker's own response to a universal query."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "lockfile").touch()
    query = universal_query()
    plan = ResponsePlan.from_query(query, implicit=False)
    rows = session.execute(
        select(ScheduledProcedureStep, RequestedProcedure, Patient)
        .join(RequestedProcedure, ScheduledProcedureStep.procedure_pk == RequestedProcedure.id)
        .join(ImagingOrder, RequestedProcedure.order_pk == ImagingOrder.id)
        .join(Patient, ImagingOrder.patient_pk == Patient.id)
        .where(ScheduledProcedureStep.status == "SCHEDULED")).yield_per(1000)
    written = 0
    for sps, rp, patient in rows:
        step = dict(sps.attributes)
        step["ScheduledProcedureStepStatus"] = sps.status
        merged = {**patient.attributes, **rp.attributes}
        try:
            data = plan.encode(merged, step, zone=zone, start_datetime=sps.start_datetime)
        except Unsupported:
            ds = build_response(query, merged, step, zone=zone,
                                patient_charset=patient.specific_character_set,
                                start_datetime=sps.start_datetime)
            data = encode(ds, False, True) or b""
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = UID("1.2.276.0.7230010.3.1.0.1")
        meta.MediaStorageSOPInstanceUID = UID(rp.study_instance_uid)
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        header = BytesIO()
        header.write(b"\0" * 128 + b"DICM")
        write_file_meta_info(header, meta)  # type: ignore[arg-type]
        (directory / f"{sps.id:07d}.wl").write_bytes(header.getvalue() + data)
        written += 1
    return written
