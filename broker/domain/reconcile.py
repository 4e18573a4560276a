"""Reconciliation scoring and order status derivation (no I/O).

Candidate orders for unmatched performed work are scored on what a person would
compare: patient id (40), patient name (25, or 10 for the family name alone), birth
date (15), modality (10), station AE title (5) and how close the scheduled start is to
the performed time (up to 10, falling to 0 at the edge of the window). The score and
the reasons that made it are stored with each candidate.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from broker.domain.status import SPSStatus

WEIGHTS = {"patient_id": 40, "name": 25, "family_name": 10, "birth_date": 15,
           "modality": 10, "station": 5, "time": 10}


@dataclass
class Observed:
    """What the modality or PACS told us about the performed work."""

    patient_id: str = ""
    name_key: str = ""  # upper-cased alphabetic PN, as in Patient.name_key_alphabetic
    birth_date: str = ""
    modality: str = ""
    station_ae_title: str = ""
    when: datetime | None = None


@dataclass
class Candidate:
    """One requested procedure that might be what was performed."""

    procedure_pk: int
    accession: str
    patient_id: str
    name_key: str
    birth_date: str
    modalities: set[str] = field(default_factory=set)
    station_ae_titles: set[str] = field(default_factory=set)
    start: datetime | None = None


def parse_datetime(value: str) -> datetime | None:
    """DICOM DA+TM as stored (YYYYMMDDHHMMSS[.ffffff]) to a naive local datetime."""
    digits = value.split(".")[0]
    for fmt, size in (("%Y%m%d%H%M%S", 14), ("%Y%m%d%H%M", 12), ("%Y%m%d", 8)):
        if len(digits) >= size:
            try:
                return datetime.strptime(digits[:size], fmt)
            except ValueError:
                return None
    return None


def score(observed: Observed, candidate: Candidate, window_hours: float) -> tuple[int, list[str]]:
    """(score 0-105, reasons) for one candidate."""
    total, reasons = 0, []
    if observed.patient_id and observed.patient_id == candidate.patient_id:
        total += WEIGHTS["patient_id"]
        reasons.append("patient id")
    if observed.name_key and observed.name_key == candidate.name_key:
        total += WEIGHTS["name"]
        reasons.append("name")
    elif observed.name_key and observed.name_key.split("^")[0] == candidate.name_key.split("^")[0]:
        total += WEIGHTS["family_name"]
        reasons.append("family name")
    if observed.birth_date and observed.birth_date == candidate.birth_date:
        total += WEIGHTS["birth_date"]
        reasons.append("birth date")
    if observed.modality and observed.modality in candidate.modalities:
        total += WEIGHTS["modality"]
        reasons.append("modality")
    if observed.station_ae_title and observed.station_ae_title in candidate.station_ae_titles:
        total += WEIGHTS["station"]
        reasons.append("station")
    if observed.when and candidate.start and window_hours > 0:
        hours = abs((observed.when - candidate.start).total_seconds()) / 3600
        if hours <= window_hours:
            total += round(WEIGHTS["time"] * (1 - hours / window_hours))
            reasons.append(f"scheduled {hours:.1f} h away")
    return total, reasons


def rank(observed: Observed, candidates: list[Candidate], window_hours: float,
         limit: int = 5) -> list[dict[str, object]]:
    """The best ``limit`` candidates with a score above zero, best first."""
    scored = []
    for cand in candidates:
        points, reasons = score(observed, cand, window_hours)
        if points > 0:
            scored.append((-points, cand.procedure_pk, cand.accession, reasons))
    scored.sort(key=lambda row: (row[0], row[1]))
    return [{"procedure_pk": pk, "accession": accession, "score": -negative,
             "reasons": reasons} for negative, pk, accession, reasons in scored[:limit]]


FINAL_SPS = frozenset({SPSStatus.COMPLETED.value, SPSStatus.DISCONTINUED.value,
                       SPSStatus.CANCELLED.value})


def order_status(step_statuses: list[str]) -> str:
    """HL7 Table 0038 order status of a requested procedure from its steps' statuses:
    IP while any step is started (or some are done and others still open), CM when all
    are final and one completed, DC when all are discontinued or cancelled, else SC."""
    if not step_statuses:
        return "SC"
    if all(s in FINAL_SPS for s in step_statuses):
        return "CM" if SPSStatus.COMPLETED.value in step_statuses else "DC"
    if any(s == SPSStatus.STARTED.value or s in FINAL_SPS - {SPSStatus.CANCELLED.value}
           for s in step_statuses):
        return "IP"
    return "SC"


def report_transitions(reported: str, current: str) -> list[str]:
    """Status messages that take the EHR from ``reported`` to ``current``: a step that
    completed without an IN PROGRESS ever being reported gets IP first."""
    if current == reported:
        return []
    if current in ("CM", "DC") and reported == "SC":
        return ["IP", current]
    return [current]
