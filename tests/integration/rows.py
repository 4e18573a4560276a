"""Read what an in-process broker stored, as a user inspecting its database would."""

from __future__ import annotations

from typing import Any, TypeVar

from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from broker.models import InboundMessage

Row = TypeVar("Row")


def rows(broker: Any, model: type[Row]) -> list[Row]:
    """Every row of ``model`` in ``broker``'s database, in id order."""
    engine = create_engine(broker.settings.database_url)
    with Session(engine) as session:
        found = list(session.scalars(select(model).order_by(model.id)))  # type: ignore[attr-defined]
    engine.dispose()
    return found


def stored(broker: Any) -> list[InboundMessage]:
    """The message store, oldest first."""
    return rows(broker, InboundMessage)
