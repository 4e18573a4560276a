"""The mappings screen (issue 4 §3): the profiles and their validation state, and a
dry run: an HL7 message pasted in -> the worklist items it would produce, compared
field by field with what is stored now for the same steps. Nothing is written."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from broker.domain.types import AdtMessage
from broker.hl7.errors import HL7Error
from broker.hl7.message import parse
from broker.mapping.apply import map_message, render_items
from broker.mapping.profile import check_directory
from broker.models import RequestedProcedure, ScheduledProcedureStep
from broker.runtime import Runtime
from broker.web.queries import flat_attributes


def profiles(runtime: Runtime) -> dict[str, Any]:
    directory = runtime.settings.mappings_dir
    files = sorted(p.name for p in directory.glob("*") if p.suffix in (".yaml", ".yml", ".toml"))
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


def dry_run(session: Session, runtime: Runtime, message: str) -> dict[str, Any]:
    """Map ``message`` with the loaded profiles; never writes."""
    raw = message.strip().replace("\r\n", "\r").replace("\n", "\r").encode("utf-8")
    try:
        msg = parse(raw)
        mapped = map_message(msg, runtime.profiles, timezone=runtime.timezone,
                             received_at=datetime.now(UTC))
    except HL7Error as exc:
        return {"error": f"{exc.code} at {exc.location or '-'}: {exc.text}", "items": []}
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}", "items": []}
    if isinstance(mapped, AdtMessage):
        return {"profile": mapped.profile, "adt": mapped.event,
                "patient": flat_attributes(mapped.patient.attributes), "items": []}
    items = []
    for item in render_items(mapped):
        new = flat_attributes(item)
        step = item["ScheduledProcedureStepSequence"][0]
        stored_item = _stored_item(session, str(item.get("AccessionNumber", "")),
                                   str(step.get("ScheduledProcedureStepID", "")))
        stored = flat_attributes(stored_item) if stored_item is not None else {}
        # An attribute the message does not carry is left as it is (C2), so only what
        # it carries can differ.
        diff = [{"attribute": key, "stored": stored.get(key, ""), "new": new[key]}
                for key in sorted(new) if stored_item is not None
                and stored.get(key, "") != new[key]]
        items.append({"attributes": new, "stored": stored_item is not None, "diff": diff})
    return {"profile": mapped.profile, "items": items}
