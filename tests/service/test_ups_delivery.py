"""Where N-EVENT-REPORT delivery stands per subscriber AE
(:mod:`broker.services.ups_delivery`), on SQLite and PostgreSQL: a new AE starts at
the beginning, the position only moves forward, one owner at a time holds an AE's
lease, and a released or lapsed lease passes to another process."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from sqlalchemy.orm import Session

from broker.db import unit_of_work
from broker.models import UPSEventDelivery
from broker.services import ups_delivery
from tests.service.conftest import Services

T = TypeVar("T")


def test_a_position_is_kept_and_leased_to_one_owner_at_a_time(services: Services) -> None:
    def run(body: Callable[[Session], T]) -> T:
        with unit_of_work(services.factory) as session:
            return body(session)

    assert run(lambda s: ups_delivery.take(s, "WATCHER", "node-a", 60)) == 0
    assert run(lambda s: ups_delivery.take(s, "WATCHER", "node-b", 60)) is None
    run(lambda s: ups_delivery.delivered(s, "WATCHER", "node-a", 7, 60))
    run(lambda s: ups_delivery.delivered(s, "WATCHER", "node-a", 5, 60))  # never back
    run(lambda s: ups_delivery.delivered(s, "WATCHER", "node-b", 9, 60))  # not its lease
    assert run(lambda s: ups_delivery.take(s, "WATCHER", "node-a", 60)) == 7
    assert run(lambda s: ups_delivery.failed(s, "WATCHER", "node-a", "refused")) == 1
    assert run(lambda s: ups_delivery.failed(s, "WATCHER", "node-a", "refused")) == 2

    run(lambda s: ups_delivery.release(s, "WATCHER", "node-a"))
    assert run(lambda s: ups_delivery.take(s, "WATCHER", "node-b", 0)) == 7  # lapses at once
    assert run(lambda s: ups_delivery.take(s, "WATCHER", "node-a", 60)) == 7
    run(lambda s: ups_delivery.delivered(s, "WATCHER", "node-a", 8, 60))

    def row(session: Session) -> tuple[int, str, int, str]:
        found = session.get(UPSEventDelivery, "WATCHER")
        assert found is not None
        return found.last_event_id, found.owner, found.failures, found.last_error

    assert run(row) == (8, "node-a", 0, "")
    assert run(lambda s: ups_delivery.take(s, "OTHER", "node-b", 60)) == 0
