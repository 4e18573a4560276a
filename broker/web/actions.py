"""The console's write actions, shared by the API and the pages. Each commits its own
transaction before anything is dispatched, so a task never runs ahead of the commit,
and records who did it where the data model has a place for it."""

from __future__ import annotations

from typing import Any

from broker.db import unit_of_work
from broker.models import InboundMessage
from broker.runtime import Runtime
from broker.services.outbound import resend
from broker.services.processing import reset_for_reprocess
from broker.services.resolve import ResolveError, dismiss_item, link_item


def reprocess(runtime: Runtime, message_pks: list[int]) -> list[dict[str, Any]]:
    """Queue messages again (failed or processed ones); rejected ones are refused."""
    results = []
    for pk in message_pks:
        with unit_of_work(runtime.session_factory) as session:
            row = session.get(InboundMessage, pk)
            queued = row is not None and reset_for_reprocess(session, row)
        if queued:
            runtime.dispatcher.dispatch(pk)
        results.append({"id": pk, "queued": queued,
                        "reason": "" if queued else "not found, or rejected at the door"})
    return results


def _deliver(runtime: Runtime) -> None:
    for dest in runtime.settings.outbound_destinations:
        runtime.dispatcher.submit("deliver_outbound", dest.name)


def link(runtime: Runtime, item_pk: int, procedure_ref: str, user: str) -> str:
    """Raises ResolveError with a message for people."""
    with unit_of_work(runtime.session_factory) as session:
        outcome = link_item(session, runtime.settings, item_pk, procedure_ref, user)
    _deliver(runtime)
    return outcome


def dismiss(runtime: Runtime, item_pk: int, user: str) -> str:
    with unit_of_work(runtime.session_factory) as session:
        return dismiss_item(session, item_pk, user)


def resend_outbound(runtime: Runtime, message_pk: int) -> bool:
    with unit_of_work(runtime.session_factory) as session:
        found = resend(session, message_pk) is not None
    if found:
        _deliver(runtime)
    return found


__all__ = ["ResolveError", "dismiss", "link", "reprocess", "resend_outbound"]
