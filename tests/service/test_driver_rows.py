"""The apply path's driver SQL (broker/driver_rows.py) stores and reads what the SQL
expression layer stores and reads: defaults, JSON, datetimes, booleans, a reserved-word
column, UPDATE's ``onupdate``, and a refused row raised as SQLAlchemy's IntegrityError
(the processor fails such a message instead of retrying it)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError

from broker.db import make_engine
from broker.driver_rows import insert_rows, savepoint, select_rows, update_by_key
from broker.models import AuditEvent, Patient
from broker.services.rows import table

AUDIT = table(AuditEvent)
PATIENTS = table(Patient)


def _columns(row: dict[str, object], *skip: str) -> dict[str, object]:
    return {k: v for k, v in row.items() if k not in ("id", *skip)}


def test_driver_rows_are_stored_as_core_stores_them(database_url: str) -> None:
    engine = make_engine(database_url)
    event = {"event_id": "110110", "event_name": "Patient Record", "action": "C",
             "user": "EHR^HOSP", "message": "<AuditMessage/>"}
    patient = {"patient_id": "PAT-1", "issuer": "HOSP", "patient_name": "DOE^JANE",
               "attributes": {"PatientName": [{"Alphabetic": "DOE^JANE"}], "n": 1}}
    try:
        with engine.begin() as conn:
            conn.execute(insert(AUDIT), event)
            insert_rows(conn, AUDIT, [event, event])
            conn.execute(insert(PATIENTS), {**patient, "id": 1})
            insert_rows(conn, PATIENTS, [{**patient, "id": 2, "patient_id": "PAT-2"}])
        with engine.connect() as conn:
            core, *driver = [dict(r) for r in conn.execute(
                select(AUDIT).order_by(AUDIT.c.id)).mappings()]
            patients = [dict(r) for r in conn.execute(
                select(PATIENTS).order_by(PATIENTS.c.id)).mappings()]
        assert [_columns(r, "at") for r in driver] == [_columns(core, "at")] * 2
        assert core["exported"] is False and core["outcome"] == 0
        assert all(abs(r["at"] - core["at"]) < timedelta(minutes=1) for r in driver)
        assert _columns(patients[1], "created_at", "updated_at", "patient_id") == _columns(
            patients[0], "created_at", "updated_at", "patient_id")
        assert patients[1]["attributes"] == patient["attributes"]
        assert patients[1]["created_at"] is not None
    finally:
        engine.dispose()


def test_update_by_key_sets_onupdate_and_select_rows_reads_back(database_url: str) -> None:
    engine = make_engine(database_url)
    then = datetime(2020, 1, 2, 3, 4, 5, tzinfo=UTC)
    try:
        with engine.begin() as conn:
            insert_rows(conn, PATIENTS, [{"id": 7, "patient_id": "PAT-7", "created_at": then,
                                          "updated_at": then, "attributes": {"a": [1]}}])
            update_by_key(conn, PATIENTS, [(7, {"patient_name": "ROE^RICHARD",
                                                "attributes": {"a": [2]}})])
            query = select(PATIENTS.c.patient_name, PATIENTS.c.attributes,
                           PATIENTS.c.created_at, PATIENTS.c.updated_at).where(
                PATIENTS.c.id == 7)
            (name, attributes, created, updated), = select_rows(conn, query)
        assert (name, attributes) == ("ROE^RICHARD", {"a": [2]})
        assert created.replace(tzinfo=UTC) == then
        assert updated.replace(tzinfo=UTC) > then  # the column's onupdate, as with Core
    finally:
        engine.dispose()


def test_a_refused_row_raises_sqlalchemys_error_and_the_savepoint_undoes_its_block(
        database_url: str) -> None:
    engine = make_engine(database_url)
    try:
        with engine.begin() as conn:
            insert_rows(conn, PATIENTS, [{"id": 9, "patient_id": "PAT-9"}])
            with pytest.raises(IntegrityError), savepoint(conn):
                insert_rows(conn, PATIENTS, [{"id": 10, "patient_id": "PAT-10"}])
                insert_rows(conn, PATIENTS, [{"id": 9, "patient_id": "PAT-9b"}])
            kept = select_rows(conn, select(PATIENTS.c.patient_id).order_by(PATIENTS.c.id))
        assert kept == [("PAT-9",)]
    finally:
        engine.dispose()
