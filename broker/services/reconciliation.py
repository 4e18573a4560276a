"""The reconciliation inbox: performed work the broker could not tie to an order on its
own, or tied with a demographic discrepancy, with ranked candidate orders.

One open item per (kind, MPPS) or (kind, study): a second observation of the same
thing does not add a second item. Candidates are searched among requested procedures
of the same patient id or name, or with a step scheduled within
``reconcile_window_hours`` of the performed time, and scored by
:mod:`broker.domain.reconcile`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from broker.config import Settings
from broker.domain.matching import person_name_key
from broker.domain.reconcile import Candidate, Observed, parse_datetime, rank
from broker.models import (
    ImagingOrder,
    Patient,
    ReconciliationItem,
    ReconciliationKind,
    RequestedProcedure,
    ScheduledProcedureStep,
    SPSStatus,
    StationAETitle,
)

CANDIDATE_SCAN_LIMIT = 500


@dataclass
class Observation:
    """Performed work as the modality or PACS described it."""

    patient_id: str = ""
    patient_name: str = ""
    birth_date: str = ""
    modality: str = ""
    station_ae_title: str = ""
    performed: str = ""  # DA+TM, local
    accession: str = ""
    study_instance_uid: str = ""

    def observed(self) -> Observed:
        return Observed(self.patient_id, person_name_key(self.patient_name), self.birth_date,
                        self.modality, self.station_ae_title, parse_datetime(self.performed))


def _window(obs: Observation, hours: float) -> tuple[str, str] | None:
    when = parse_datetime(obs.performed)
    if when is None or hours <= 0:
        return None
    fmt = "%Y%m%d%H%M%S"
    return ((when - timedelta(hours=hours)).strftime(fmt),
            (when + timedelta(hours=hours)).strftime(fmt) + ".999999")


def candidates(session: Session, settings: Settings, obs: Observation) -> list[Candidate]:
    """Requested procedures that might be what was performed (unscored)."""
    clauses = []
    if obs.patient_id:
        clauses.append(Patient.patient_id == obs.patient_id)
    name_key = person_name_key(obs.patient_name)
    if name_key:
        clauses.append(Patient.name_key_alphabetic == name_key)
    window = _window(obs, settings.reconcile_window_hours)
    if window is not None:
        clauses.append(ScheduledProcedureStep.start_datetime.between(*window))
    if not clauses:
        return []
    rows = session.execute(
        select(ScheduledProcedureStep, RequestedProcedure, Patient)
        .join(RequestedProcedure, ScheduledProcedureStep.procedure_pk == RequestedProcedure.id)
        .join(ImagingOrder, RequestedProcedure.order_pk == ImagingOrder.id)
        .join(Patient, ImagingOrder.patient_pk == Patient.id)
        .where(Patient.merged_into_id.is_(None),
               ScheduledProcedureStep.status != SPSStatus.CANCELLED.value, or_(*clauses))
        .order_by(ScheduledProcedureStep.id).limit(CANDIDATE_SCAN_LIMIT))
    out: dict[int, Candidate] = {}
    step_rp: dict[int, int] = {}
    for step, rp, patient in rows:
        cand = out.setdefault(rp.id, Candidate(
            rp.id, rp.accession_number, patient.patient_id, patient.name_key_alphabetic,
            patient.birth_date, start=parse_datetime(step.start_datetime)))
        cand.modalities.add(step.modality)
        step_rp[step.id] = rp.id
    if step_rp:
        for sps_pk, title in session.execute(
                select(StationAETitle.sps_pk, StationAETitle.ae_title)
                .where(StationAETitle.sps_pk.in_(list(step_rp)))):
            out[step_rp[sps_pk]].station_ae_titles.add(title)
    return list(out.values())


def ranked_candidates(session: Session, settings: Settings,
                      obs: Observation) -> list[dict[str, object]]:
    return rank(obs.observed(), candidates(session, settings, obs),
                settings.reconcile_window_hours)


def open_item(session: Session, settings: Settings, kind: ReconciliationKind,
              obs: Observation, *, mpps_pk: int | None = None, procedure_pk: int | None = None,
              detail: str = "") -> ReconciliationItem:
    """The item of this kind for this MPPS (or study), created if there is none yet. An
    item a person already linked or dismissed is returned as it is, not reopened: a
    later N-SET or instance of the same work is not a new question."""
    query = select(ReconciliationItem).where(ReconciliationItem.kind == kind.value)
    query = (query.where(ReconciliationItem.mpps_pk == mpps_pk) if mpps_pk is not None
             else query.where(ReconciliationItem.mpps_pk.is_(None),
                              ReconciliationItem.study_instance_uid == obs.study_instance_uid))
    existing = session.scalars(query.order_by(ReconciliationItem.id).limit(1)).first()
    if existing is not None:
        return existing
    item = ReconciliationItem(
        kind=kind.value, mpps_pk=mpps_pk, study_instance_uid=obs.study_instance_uid[:64],
        patient_id=obs.patient_id[:64], patient_name=obs.patient_name[:400],
        birth_date=obs.birth_date[:8], modality=obs.modality[:16],
        station_ae_title=obs.station_ae_title[:16], performed_datetime=obs.performed[:21],
        accession_number=obs.accession[:16], detail=detail, procedure_pk=procedure_pk,
        candidates=ranked_candidates(session, settings, obs))
    session.add(item)
    session.flush()
    return item


def find_procedure(session: Session, settings: Settings,
                   obs: Observation) -> RequestedProcedure | None:
    """The requested procedure performed work belongs to: by accession number, then
    Study Instance UID, then the one procedure of the same patient id and modality
    scheduled within the window (none when there are several: a person decides)."""
    if obs.accession:
        rp = session.scalars(select(RequestedProcedure).where(
            RequestedProcedure.accession_number == obs.accession).limit(1)).first()
        if rp is not None:
            return rp
    if obs.study_instance_uid:
        rp = session.scalars(select(RequestedProcedure).where(
            RequestedProcedure.study_instance_uid == obs.study_instance_uid).limit(1)).first()
        if rp is not None:
            return rp
    if not (obs.patient_id and obs.modality):
        return None
    hours = settings.reconcile_window_hours
    observed = obs.observed()
    near = [c for c in candidates(session, settings, obs)
            if c.patient_id == obs.patient_id and obs.modality in c.modalities
            and c.start is not None and observed.when is not None
            and abs((c.start - observed.when).total_seconds()) <= hours * 3600]
    if len(near) == 1:
        return session.get(RequestedProcedure, near[0].procedure_pk)
    return None


def check_demographics(session: Session, settings: Settings, rp: RequestedProcedure,
                       obs: Observation, *, what: str, mpps_pk: int | None = None) -> None:
    """Performed work is never refused for demographics, but a patient id
    or name that differs from the order's opens a "demographic mismatch" item."""
    patient = rp.order.patient
    differs = []
    if obs.patient_id and obs.patient_id != patient.patient_id:
        differs.append("patient id")
    if obs.patient_name and person_name_key(obs.patient_name) != patient.name_key_alphabetic:
        differs.append("patient name")
    if differs:
        open_item(session, settings, ReconciliationKind.DEMOGRAPHICS, obs, mpps_pk=mpps_pk,
                  procedure_pk=rp.id,
                  detail=f"{what} linked to accession {rp.accession_number}; "
                         f"{' and '.join(differs)} differ from the order")
