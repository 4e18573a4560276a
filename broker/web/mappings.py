"""The mappings screen: the profiles and their validation state, and a dry run: an HL7
message pasted in -> the ACK live processing would send, its warnings, and the
worklist items it would produce, compared field by field with what is stored now for
the same steps. Nothing is written."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from broker.application.use_cases import UseCases
from broker.domain.types import AdtMessage
from broker.mapping import PACKAGED_PROFILES
from broker.mapping.apply import render_items
from broker.mapping.profile import check_directory, profile_files
from broker.models import RequestedProcedure, ScheduledProcedureStep
from broker.runtime import Runtime
from broker.web.queries import flat_attributes


def profiles(runtime: Runtime) -> dict[str, Any]:
    directory = runtime.settings.mappings_dir
    files = sorted(p.name for p in directory.glob("*") if p.suffix in (".yaml", ".yml", ".toml"))
    if directory.resolve() != PACKAGED_PROFILES:  # the packaged profiles not replaced
        files += [f"{p.name} (packaged)" for p in profile_files(directory).values()
                  if p.parent == PACKAGED_PROFILES]
    return {"directory": str(directory), "files": files,
            "errors": [str(e) for e in check_directory(directory)]}


def _stored_item(session: Session, accession: str, sps_id: str) -> dict[str, Any] | None:
    if not accession or not sps_id:
        return None
    sps = session.scalars(select(ScheduledProcedureStep).join(RequestedProcedure).where(
        RequestedProcedure.accession_number == accession,
        ScheduledProcedureStep.sps_id == sps_id).limit(1)).first()
    if sps is None:
        return None
    rp = sps.procedure
    return {**(rp.order.patient.attributes or {}), **(rp.attributes or {}),
            "ScheduledProcedureStepSequence": [sps.attributes or {}]}


def dry_run(session: Session, use_cases: UseCases, message: str) -> dict[str, Any]:
    """Run ``message`` through live processing against the current state and roll it
    back (:mod:`broker.services.dry_run`): the ACK it would get, its warnings, and
    the items it would produce compared with what is stored now. Never writes."""
    raw = message.strip().replace("\r\n", "\r").replace("\n", "\r").encode("utf-8")
    result = use_cases.dry_run(raw)
    out: dict[str, Any] = {"ack_code": result.ack_code, "error": result.error,
                           "warnings": result.warnings, "items": []}
    mapped = result.mapped
    if mapped is None:  # refused before or while mapping
        return out
    out["profile"] = mapped.profile
    if isinstance(mapped, AdtMessage):
        return {**out, "adt": mapped.event,
                "patient": flat_attributes(mapped.patient.attributes)}
    for item in render_items(mapped):
        new = flat_attributes(item)
        step = item["ScheduledProcedureStepSequence"][0]
        stored_item = _stored_item(session, str(item.get("AccessionNumber", "")),
                                   str(step.get("ScheduledProcedureStepID", "")))
        stored = flat_attributes(stored_item) if stored_item is not None else {}
        # An attribute the message does not carry is left as it is (HL7 null
        # semantics), so only what it carries can differ.
        diff = [{"attribute": key, "stored": stored.get(key, ""), "new": new[key]}
                for key in sorted(new) if stored_item is not None
                and stored.get(key, "") != new[key]]
        out["items"].append({"attributes": new, "stored": stored_item is not None,
                             "diff": diff})
    return out
