"""What the console shows, as plain data: the JSON API returns it and the pages render
it, so both always agree. Read-only, one session per call."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any
from urllib.parse import quote

from pydicom.dataset import Dataset
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from broker.config import Settings
from broker.domain.status import MessageStatus
from broker.domain.ups import UPSEventType
from broker.hl7.message import Message, parse
from broker.hl7.warnings import from_json
from broker.mapping.modality import ModalityProfile
from broker.models import (
    DicomRefusal,
    DicomRequest,
    InboundMessage,
    MppsStepLink,
    OutboundMessage,
    PerformedProcedureStep,
    ReconciliationItem,
    RequestedProcedure,
    ScheduledProcedureStep,
    StepStatusChange,
    StoredInstance,
    UPSEvent,
    UPSWorkitem,
    WorklistQuery,
    WorklistQueryResult,
)
from broker.outage import describe, describe_redis
from broker.services.worklist_query import StationRestriction, build_query, excluding_keys
from broker.web import traffic
from broker.web.display import instant

PENDING_WARN_SECONDS = 60  # a message pending longer than this is worth a look


def iso(value: datetime | None, timespec: str = "seconds") -> str:
    if value is None:
        return ""
    aware = value if value.tzinfo else value.replace(tzinfo=UTC)
    return aware.isoformat(timespec=timespec)


# -- dashboard -------------------------------------------------------------------------


def _counts(session: Session, column: Any) -> dict[str, int]:
    return {str(k): int(v) for k, v in session.execute(
        select(column, func.count()).group_by(column))}


def oldest_unprocessed_age(session: Session) -> float | None:
    oldest = session.scalar(select(func.min(InboundMessage.received_at)).where(
        InboundMessage.status == "received"))
    if oldest is None:
        return None
    aware = oldest if oldest.tzinfo else oldest.replace(tzinfo=UTC)
    return max(0.0, (datetime.now(UTC) - aware).total_seconds())


def last_activity(session: Session) -> list[dict[str, str]]:
    """Last time each calling AE title was seen, and doing what."""
    seen: dict[str, tuple[datetime, str]] = {}
    for table, column, what in (
            (WorklistQuery, WorklistQuery.at, "worklist query"),
            (DicomRequest, DicomRequest.received_at, "MPPS / IAN"),
            (StoredInstance, StoredInstance.received_at, "C-STORE")):
        for ae, at in session.execute(select(table.calling_ae_title, func.max(column))
                                      .group_by(table.calling_ae_title)):
            if at is None:
                continue
            aware = at if at.tzinfo else at.replace(tzinfo=UTC)
            if ae not in seen or aware > seen[ae][0]:
                seen[ae] = (aware, what)
    return [{"ae_title": ae, "at": iso(at), "activity": what}
            for ae, (at, what) in sorted(seen.items(), key=lambda kv: kv[1][0], reverse=True)]


def refused_associations(session: Session, within: timedelta = timedelta(hours=1)
                         ) -> list[dict[str, Any]]:
    """DICOM refusals of the last ``within``, per calling AE title and reason, most
    first: how many, the called AE titles and addresses they came with, the last one."""
    since = datetime.now(UTC) - within
    groups: dict[tuple[str, str], dict[str, Any]] = {}
    for calling, reason, called, address, count, last in session.execute(
            select(DicomRefusal.calling_ae_title, DicomRefusal.reason,
                   DicomRefusal.called_ae_title, DicomRefusal.address,
                   func.sum(DicomRefusal.count), func.max(DicomRefusal.at))
            .where(DicomRefusal.at >= since)
            .group_by(DicomRefusal.calling_ae_title, DicomRefusal.reason,
                      DicomRefusal.called_ae_title, DicomRefusal.address)):
        group = groups.setdefault((calling, reason), {
            "calling_ae_title": calling, "reason": reason, "count": 0,
            "called_ae_titles": set(), "addresses": set(), "last": ""})
        group["count"] += int(count)
        if called:
            group["called_ae_titles"].add(called)
        group["addresses"].add(address)
        group["last"] = max(group["last"], iso(last))
    return [{**g, "called_ae_titles": sorted(g["called_ae_titles"]),
             "addresses": sorted(g["addresses"])}
            for g in sorted(groups.values(), key=lambda g: (g["count"], g["last"]),
                            reverse=True)]


def dashboard(session: Session, settings: Settings, hours: int = traffic.DEFAULT_HOURS
              ) -> dict[str, Any]:
    """Everything the dashboard shows: what the store holds (inbound by status, so
    received = processed + failed + rejected + pending), the traffic of the last
    ``hours`` (broker.web.traffic), health, and what needs attention."""
    inbound = _counts(session, InboundMessage.status)
    outbound = _counts(session, OutboundMessage.status)
    state = health(session, settings)
    window = traffic.Window.last(hours)
    data = {
        "hl7_inbound": {"received": sum(inbound.values()),
                        **{status.value: inbound.get(status.value, 0)
                           for status in (MessageStatus.PROCESSED, MessageStatus.FAILED,
                                          MessageStatus.REJECTED)},
                        "pending": inbound.get(MessageStatus.RECEIVED.value, 0),
                        "with_warnings": session.scalar(
                            select(func.count(InboundMessage.id))
                            .where(InboundMessage.warning_count > 0)) or 0,
                        "oldest_pending_seconds": state.get("oldest_unprocessed_seconds")},
        "dicom": {"worklist_queries": session.scalar(select(func.count(WorklistQuery.id))) or 0,
                  "mpps": session.scalar(select(func.count(PerformedProcedureStep.id))) or 0,
                  "instances": session.scalar(select(func.count(StoredInstance.id))) or 0},
        "outbound": {"pending": outbound.get("pending", 0), "sent": outbound.get("sent", 0),
                     "failed": outbound.get("failed", 0)},
        "reconciliation_open": session.scalar(select(func.count(ReconciliationItem.id)).where(
            ReconciliationItem.state == "open")) or 0,
        "traffic": traffic.hl7(session, window),
        "hl7_warnings": traffic.warnings(session, window),
        "stations": traffic.stations(session, window),
        "health": state,
        "last_activity": last_activity(session),
        "refused_associations": refused_associations(session),
    }
    data["attention"] = attention(data)
    return data


def attention(data: dict[str, Any]) -> list[dict[str, str]]:
    """What someone should look at, worst first: {"level": "bad" | "warn", "text",
    "href"} built from :func:`dashboard`'s numbers (no values from messages)."""
    window = f"in the last {data['traffic']['hours']} h"
    inbound, outbound, state = data["hl7_inbound"], data["outbound"], data["health"]
    waited = inbound["oldest_pending_seconds"] or 0
    found: list[dict[str, str]] = []

    def add(level: str, text: str, href: str = "") -> None:
        found.append({"level": level, "text": text, "href": href})

    if state["database"] != "ok":
        add("bad", f"Database {state['database']}")
    if state["redis"] not in ("ok", "not used (embedded)"):
        add("bad", f"Redis {state['redis']}")
    if inbound["failed"]:
        add("bad", f"{_many(inbound['failed'], 'HL7 message')} failed, waiting for an "
            "operator", "/messages?status=failed")
    if outbound["failed"]:
        add("bad", f"{_many(outbound['failed'], 'message')} to the EHR failed",
            "/outbound?status=failed")
    if waited >= PENDING_WARN_SECONDS:
        add("warn", f"The oldest pending HL7 message has waited {waited:.0f} s to be applied",
            "/messages?status=received")
    rejected = data["traffic"]["totals"]["by_status"]["rejected"]
    if rejected:
        add("warn", f"{_many(rejected, 'HL7 message')} "
            f"rejected {window}", "/messages?status=rejected")
    if data["hl7_warnings"]["messages"]:
        add("warn", f"{_many(data['hl7_warnings']['messages'], 'HL7 message')} accepted "
            f"with adjustments {window}", "/messages?warnings=1")
    if data["reconciliation_open"]:
        add("warn", f"{_many(data['reconciliation_open'], 'performed work item')} to "
            "reconcile", "/reconciliation")
    for station in data["stations"]:
        if station["unsuccessful"]:
            queries = _many(station["unsuccessful"], "worklist query", "worklist queries")
            add("warn", f"{station['ae_title']}: {queries} not successful {window}",
                f"/worklist?ae_title={quote(station['ae_title'])}")
    return found


def _many(count: int, one: str, several: str = "") -> str:
    return f"{count} {one if count == 1 else several or one + 's'}"


def health(session: Session, settings: Settings) -> dict[str, Any]:
    """Database and (when configured) Redis reachability, oldest queued message."""
    out: dict[str, Any] = {}
    try:
        session.execute(text("SELECT 1"))
        out["database"] = "ok"
        out["oldest_unprocessed_seconds"] = oldest_unprocessed_age(session)
    except Exception as exc:
        out["database"] = f"down: {describe(exc)}"
    if settings.celery_broker_url:
        try:
            import redis

            redis.Redis.from_url(settings.celery_broker_url, socket_timeout=2).ping()
            out["redis"] = "ok"
        except Exception as exc:
            out["redis"] = f"down: {describe_redis(exc)}"
    else:
        out["redis"] = "not used (embedded)"
    return out


# -- messages --------------------------------------------------------------------------


def search_messages(session: Session, *, control_id: str = "", accession: str = "",
                    patient_id: str = "", message_type: str = "", status: str = "",
                    since: datetime | None = None, until: datetime | None = None,
                    with_warnings: bool = False, limit: int = 100) -> list[dict[str, Any]]:
    """The latest ``limit`` stored messages matching every filter given; ``since`` and
    ``until`` bound the time received (a naive datetime is UTC)."""
    query = select(InboundMessage).order_by(InboundMessage.id.desc()).limit(limit)
    if with_warnings:
        query = query.where(InboundMessage.warning_count > 0)
    if control_id:
        query = query.where(InboundMessage.control_id == control_id)
    if accession:
        query = query.where(InboundMessage.accession_number == accession)
    if patient_id:
        # patient_key is "id|authority" of the first PID-3 repetition
        query = query.where(InboundMessage.patient_key.like(
            patient_id.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "|%",
            escape="\\"))
    if message_type:
        query = query.where(InboundMessage.message_type.like(f"{message_type}%"))
    if status:
        query = query.where(InboundMessage.status == status)
    # In UTC, as stored: SQLite compares the text of the wall-clock time.
    if since:
        query = query.where(InboundMessage.received_at >= instant(since))
    if until:
        query = query.where(InboundMessage.received_at <= instant(until))
    return [_message_row(row) for row in session.scalars(query)]


def _message_row(row: InboundMessage) -> dict[str, Any]:
    return {"id": row.id, "received_at": iso(row.received_at), "type": row.message_type,
            "control_id": row.control_id or "", "sender": row.sending_application or "",
            "accession": row.accession_number or "", "status": row.status,
            "ack_code": row.ack_code or "", "attempts": row.attempts,
            "error": (f"{row.error_code} {row.error_location or ''}: {row.error_text or ''}"
                      if row.error_code else ""), "outcome": row.outcome or "",
            "warnings": [str(w) for w in from_json(row.warnings)],
            "control_id_reused": bool(row.control_id_reused),
            "profile": row.profile or "", "profile_version": row.profile_version}


@lru_cache(maxsize=2048)
def field_name(segment: str, number: int, version: str) -> str:
    """The HL7 name of a field (from hl7apy's tables), '' when unknown (Z segments)."""
    from hl7apy import load_reference

    try:
        ref = load_reference(f"{segment}_{number}", "Field", version)
    except Exception:
        return ""
    name = str(ref[-3]) if isinstance(ref, tuple | list) and len(ref) >= 3 else ""
    return name.replace("_", " ").capitalize()


def message_detail(session: Session, message_pk: int,
                   read: Callable[[bytes], Message] = parse) -> dict[str, Any] | None:
    """One stored message for people: its fields with their HL7 names, read as the
    processor reads it (``read``: the profiles' charset aliases and the caps)."""
    row = session.get(InboundMessage, message_pk)
    if row is None:
        return None
    out = _message_row(row)
    text_raw = row.raw.decode("utf-8", "replace")
    segments = []
    try:
        msg = read(row.raw)
        version = msg.version if msg.version in ("2.3.1", "2.4", "2.5", "2.5.1", "2.6") else "2.5"
        for seg in msg.segments:
            fields = []
            for n, value in enumerate(seg.fields):
                if n and value:  # index 0 is the segment name
                    fields.append({"n": n, "name": field_name(seg.name, n, version),
                                   "value": value})
            segments.append({"name": seg.name, "fields": fields})
    except Exception as exc:  # shown raw; the parse error is what the user needs
        out["parse_error"] = type(exc).__name__
    out.update({"raw": text_raw.replace("\r", "\n").strip(), "segments": segments,
                "ack": (row.ack or b"").decode("utf-8", "replace").replace("\r", "\n").strip(),
                "peer": row.peer})
    return out


# -- worklist --------------------------------------------------------------------------


def station_worklist(session: Session, settings: Settings, *, ae_title: str, date: str = "",
                     modality: str = "", status: str = "") -> list[dict[str, Any]]:
    """The items ``ae_title`` gets for a query on its AE title (+ date, modality,
    status), as the modality sees them (the same SQL as the C-FIND SCP)."""
    identifier = Dataset()
    item = Dataset()
    item.ScheduledStationAETitle = ae_title
    item.ScheduledProcedureStepStartDate = date
    item.Modality = modality
    item.ScheduledProcedureStepStatus = status
    identifier.ScheduledProcedureStepSequence = [item]
    query, _ = build_query(identifier, settings, columns=None)
    return [_item_row(sps, rp, patient) for sps, rp, patient in session.execute(query.limit(500))]


def modality_profile(profile: ModalityProfile | None, version: int | None,
                     ae_title: str) -> dict[str, Any] | None:
    """What the worklist does for calling AE title ``ae_title`` by its modality profile
    (:mod:`broker.mapping.modality`), as text; None when it has none."""
    if profile is None:
        return None
    rules = []
    if profile.restricts:
        rules.append(f"a query from {ae_title} without a Scheduled Station AE Title gets "
                     f"only the steps of {', '.join(profile.stations)}; other stations' "
                     "steps are hidden from it (a query naming a station gets that station)")
    if profile.character_sets is not None:
        accepted = ", ".join(profile.character_sets) or "the default repertoire only"
        rules.append(f"character sets: {accepted}; text beyond them is transliterated "
                     f"({'to ASCII' if profile.fallback == 'ascii' else 'Latin-1 kept'})")
    for c in profile.coercions:
        argument = {"copy": f" from {c.source}", "default": f" to {c.value!r}",
                    "truncate": f" to {c.length} characters"}.get(c.action, "")
        rules.append(f"{c.action} {c.attribute}{argument}")
    if profile.max_results is not None:
        rules.append(f"at most {profile.max_results} items (0xA700 beyond)")
    return {"name": profile.name, "version": version, "description": profile.description,
            "restricts": profile.restricts, "stations": list(profile.stations),
            "rules": rules}


def _item_row(sps: ScheduledProcedureStep, rp: RequestedProcedure, patient: Any) -> dict[str, Any]:
    attrs = sps.attributes or {}
    return {"sps_pk": sps.id, "sps_id": sps.sps_id, "status": sps.status,
            "start": sps.start_datetime[:14], "modality": sps.modality,
            "station_ae_titles": [t.ae_title for t in sps.station_ae_titles],
            "description": str(attrs.get("ScheduledProcedureStepDescription", "")),
            "accession": rp.accession_number, "requested_procedure_id": rp.requested_procedure_id,
            "patient_id": patient.patient_id,
            "patient_name": str((patient.attributes or {}).get("PatientName", ""))}


def flat_attributes(attrs: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Keyword dict to display rows; sequence items become "Seq[1]>Keyword"."""
    out: dict[str, str] = {}
    for key, value in attrs.items():
        if isinstance(value, list) and value and isinstance(value[0], dict):
            for n, item in enumerate(value, start=1):
                out.update(flat_attributes(item, f"{prefix}{key}[{n}]>"))
        else:
            out[prefix + key] = "\\".join(map(str, value)) if isinstance(value, list) else str(
                value)
    return out


def item_detail(session: Session, sps_pk: int) -> dict[str, Any] | None:
    sps = session.get(ScheduledProcedureStep, sps_pk)
    if sps is None:
        return None
    rp = sps.procedure
    patient = rp.order.patient
    row = _item_row(sps, rp, patient)
    row["attributes"] = flat_attributes({
        **(patient.attributes or {}), **(rp.attributes or {}),
        "ScheduledProcedureStepSequence": [sps.attributes or {}]})
    row["station_rule"] = sps.station_rule
    return row


def why_not(session: Session, settings: Settings, sps_pk: int, ae_title: str, *,
            profile: ModalityProfile | None = None,
            version: int | None = None) -> dict[str, Any]:
    """Replay ``ae_title``'s latest C-FIND keys against step ``sps_pk``, with the
    modality profile that applies to it now (``profile``, of the profiles ``version``):
    which key (or rule: the profile's station restriction) excluded it, or that it
    matches now."""
    applies = modality_profile(profile, version, ae_title)
    query = session.scalars(select(WorklistQuery).where(
        WorklistQuery.calling_ae_title == ae_title).order_by(WorklistQuery.id.desc())
        .limit(1)).first()
    if query is None:
        return {"query": None, "verdict": f"{ae_title} has not queried the worklist yet",
                "excluded_by": [], "modality_profile": applies}
    identifier = Dataset.from_json(query.identifier)
    restriction = (StationRestriction(profile.name, tuple(profile.stations))
                   if profile is not None and profile.restricts else None)
    excluded = excluding_keys(session, identifier, settings, sps_pk,
                              restriction=restriction)
    returned = session.scalar(select(WorklistQueryResult.sps_pk).where(
        WorklistQueryResult.query_pk == query.id, WorklistQueryResult.sps_pk == sps_pk))
    keys = {elem.keyword: str(elem.value) for elem in identifier if elem.keyword
            and elem.VR != "SQ" and elem.value not in (None, "")}
    for item in identifier.get("ScheduledProcedureStepSequence") or []:
        keys.update({f"SPS>{e.keyword}": str(e.value) for e in item
                     if e.keyword and e.VR != "SQ" and e.value not in (None, "")})
    charset = identifier.get("SpecificCharacterSet")
    if excluded:
        verdict = "excluded by " + ", ".join(excluded)
    elif returned:
        verdict = "it was returned by that query"
    else:
        verdict = "it matches these keys now (it changed after the query, or was created later)"
    return {"query": {"id": query.id, "at": iso(query.at), "keys": keys,
                      "result_count": query.result_count,
                      "character_set": str(charset) if charset else "default repertoire",
                      "modality_profile": query.modality_profile,
                      "profile_version": query.profile_version},
            "verdict": verdict, "excluded_by": excluded, "modality_profile": applies}


# -- timeline --------------------------------------------------------------------------


def timeline(session: Session, accession: str) -> dict[str, Any] | None:
    """Everything that happened to the requested procedure(s) with this accession."""
    rps = list(session.scalars(select(RequestedProcedure).where(
        RequestedProcedure.accession_number == accession)))
    if not rps:
        return None
    rp_ids = [rp.id for rp in rps]
    steps = {s.id: s for rp in rps for s in rp.steps}
    events: list[dict[str, Any]] = []

    def add(at: datetime | None, kind: str, text_: str, ref: str = "",
            **more: Any) -> None:
        events.append({"at": iso(at), "when": iso(at, "microseconds"), "kind": kind,
                       "text": text_, "ref": ref, **more})

    for msg in session.scalars(select(InboundMessage).where(
            InboundMessage.accession_number == accession)):
        # The mapping profile and deployed version that mapped it (none until mapped).
        add(msg.received_at, "HL7 in", f"{msg.message_type} MSH-10 {msg.control_id}: "
            f"{msg.status}, ACK {msg.ack_code or '-'}", f"message:{msg.id}",
            profile=msg.profile or "", profile_version=msg.profile_version)
    for change in session.scalars(select(StepStatusChange).where(
            StepStatusChange.sps_pk.in_(list(steps)))):
        step = steps[change.sps_pk]
        add(change.at, "step", f"{step.sps_id}: {change.old_status or 'new'} -> "
            f"{change.new_status} ({change.cause})")
    hits = [(iso(at, "microseconds"), ae, steps[sps_pk].sps_id)
            for at, ae, sps_pk in session.execute(
        select(WorklistQuery.at, WorklistQuery.calling_ae_title, WorklistQueryResult.sps_pk)
        .join(WorklistQueryResult, WorklistQueryResult.query_pk == WorklistQuery.id)
        .where(WorklistQueryResult.sps_pk.in_(list(steps))))]
    # The UIDs alone: PostgreSQL has no equality for the json column DISTINCT would compare.
    uids = list(session.scalars(
        select(PerformedProcedureStep.sop_instance_uid).join(MppsStepLink)
        .where(MppsStepLink.sps_pk.in_(list(steps))).distinct()))
    if uids:
        for req in session.scalars(select(DicomRequest).where(
                DicomRequest.sop_instance_uid.in_(uids))):
            add(req.received_at, "MPPS", f"{req.command} from {req.calling_ae_title}: status "
                f"0x{req.status:04X} {req.error_comment}".strip())
    for series, count, first, ae in session.execute(
            select(StoredInstance.series_instance_uid, func.count(),
                   func.min(StoredInstance.received_at), func.min(StoredInstance.calling_ae_title))
            .where(StoredInstance.procedure_pk.in_(rp_ids))
            .group_by(StoredInstance.series_instance_uid)):
        add(first, "series", f"{count} instance(s) of series {series} from {ae}")
    for out in session.scalars(select(OutboundMessage).where(
            OutboundMessage.procedure_pk.in_(rp_ids))):
        add(out.created_at, "HL7 out", f"ORC-5 {out.trigger} to {out.destination} MSH-10 "
            f"{out.control_id}: {out.status}, ACK {out.ack_code or '-'}, "
            f"{out.attempts} attempt(s)", f"outbound:{out.id}")
    for at, line, ref in ups_events(session, {pk: s.sps_id for pk, s in steps.items()}):
        add(at, "UPS", line, ref)
    events.sort(key=lambda e: e["when"])
    events = with_cfind_hits(events, hits)
    for event in events:  # ordered to the microsecond; shown to the second
        when = event.pop("when")
        event["at"] = iso(datetime.fromisoformat(when)) if when else ""
        if "last" in event:
            event["last"] = iso(datetime.fromisoformat(event["last"]))
    first_rp = rps[0]
    patient = first_rp.order.patient
    return {"accession": accession,
            "patient": {"id": patient.patient_id,
                        "name": str((patient.attributes or {}).get("PatientName", ""))},
            "procedures": [{"requested_procedure_id": rp.requested_procedure_id,
                            "reported_status": rp.reported_status,
                            "images_available_at": iso(rp.images_available_at),
                            "steps": [{"sps_pk": s.id, "sps_id": s.sps_id, "status": s.status,
                                       "modality": s.modality} for s in rp.steps]}
                           for rp in rps],
            "events": events}


# Procedure Step State (0074,1000) in an event's Event Information (DICOM JSON).
_STATE_TAG = "00741000"


def ups_events(session: Session, sps_ids: dict[int, str]
               ) -> list[tuple[datetime, str, str]]:
    """The UPS events of the workitems of these steps (step id -> SPS ID), for the
    timeline: (when, text, reference). An event addressed to one subscriber only (the
    initial report of a subscription) is not a change and is left out."""
    if not sps_ids:
        return []
    workitems: dict[str, int] = {
        uid: sps_pk for uid, sps_pk in session.execute(select(
            UPSWorkitem.uid, UPSWorkitem.sps_pk).where(UPSWorkitem.sps_pk.in_(list(sps_ids))))
        if sps_pk is not None}
    if not workitems:
        return []
    out = []
    for event in session.scalars(select(UPSEvent).where(
            UPSEvent.workitem_uid.in_(list(workitems)), UPSEvent.recipient.is_(None))
            .order_by(UPSEvent.id)):
        kind = UPSEventType(event.event_type_id).name.replace("_", " ").title()
        state = ((event.payload or {}).get(_STATE_TAG) or {}).get("Value") or [""]
        sps = sps_ids[workitems[event.workitem_uid]]
        text_ = f"{sps} workitem: {kind} {state[0]}".rstrip()
        out.append((event.created_at, f"{text_} ({event.cause})" if event.cause else text_,
                    f"ups:{event.workitem_uid}"))
    return out


def with_cfind_hits(events: list[dict[str, Any]],
                    hits: list[tuple[str, str, str]]) -> list[dict[str, Any]]:
    """``events`` (in time order) with the C-FIND hits ``(when, calling AE title, SPS
    ID)`` merged in, a run of hits of one step to one station as one event: where the
    first hit falls, with ``count`` and the ``last`` hit's time ("SPS0003 returned 12
    times to CT01_AE"). Any other event in between ends the runs, so the order of what
    happened stays readable. Events and hits are placed by ``when``, ISO 8601 to the
    microsecond: things of one second keep their order."""
    merged: list[dict[str, Any]] = []
    runs: dict[tuple[str, str], dict[str, Any]] = {}
    queue = deque(sorted(hits))
    for event in [*events, None]:
        while queue and (event is None or queue[0][0] <= event["when"]):
            at, ae, sps_id = queue.popleft()
            run = runs.get((ae, sps_id))
            if run is None:
                run = runs[(ae, sps_id)] = {"when": at, "kind": "C-FIND", "ref": "",
                                            "station": ae, "step": sps_id, "count": 0}
                merged.append(run)
            run["count"] += 1
            run["last"] = at
            times = "" if run["count"] == 1 else f" {run['count']} times"
            run["text"] = f"{sps_id} returned{times} to {ae}"
        if event is not None:
            runs.clear()
            merged.append(event)
    return merged


# -- reconciliation and outbound -------------------------------------------------------


def reconciliation_items(session: Session, state: str = "open",
                         limit: int = 200) -> list[dict[str, Any]]:
    query = select(ReconciliationItem).order_by(ReconciliationItem.id.desc()).limit(limit)
    if state != "all":
        query = query.where(ReconciliationItem.state == state)
    return [{"id": i.id, "kind": i.kind, "state": i.state, "created_at": iso(i.created_at),
             "detail": i.detail, "patient_id": i.patient_id, "patient_name": i.patient_name,
             "birth_date": i.birth_date, "modality": i.modality,
             "station_ae_title": i.station_ae_title, "performed": i.performed_datetime,
             "accession": i.accession_number, "study_instance_uid": i.study_instance_uid,
             "candidates": i.candidates, "resolved_by": i.resolved_by}
            for i in session.scalars(query)]


def outbound_messages(session: Session, status: str = "", limit: int = 200
                      ) -> list[dict[str, Any]]:
    query = select(OutboundMessage).order_by(OutboundMessage.id.desc()).limit(limit)
    if status:
        query = query.where(OutboundMessage.status == status)
    return [{"id": m.id, "destination": m.destination, "sequence": m.sequence,
             "control_id": m.control_id, "accession": m.accession_number, "status_sent": m.trigger,
             "status": m.status, "attempts": m.attempts, "ack_code": m.ack_code or "",
             "last_error": m.last_error, "created_at": iso(m.created_at),
             "sent_at": iso(m.sent_at)}
            for m in session.scalars(query)]
