"""Warnings: adjustments the broker made to accept a message (HL7 v2.5.1 2.9.2, ERR-4
severity ``W``).

A real sender's quirk (a byte order mark, LF segment ends, a charset spelled
``UTF-8``, a description too long for its DICOM VR, an order without a start time) is
accepted and recorded, never silently: the message is ``processed`` and lists its
warnings in the message store, the console, ``mwl-broker messages show``, /metrics and,
from v2.5, in the ACK as ERR segments of severity W (MSA-1 stays AA).

Code that finds a quirk calls :func:`warn`; whoever handles the message collects them
with :func:`collecting` (one collection per message and thread, through a context
variable, so converters deep in the mapping need no extra parameter). A warning's
text names the field and what was done, never the value: it may be shown to anyone
who reads the message store.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, TypeVar

from broker.hl7.errors import ErrorCode, ErrorLocation

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class HL7Warning:
    """One adjustment: a Table 0357 code, where, and what was done."""

    code: int
    text: str
    location: ErrorLocation | None = None

    def as_json(self) -> dict[str, Any]:
        return {"code": self.code, "location": str(self.location or ""), "text": self.text}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> HL7Warning:
        return cls(int(data.get("code", 0)), str(data.get("text", "")),
                   _location(str(data.get("location", ""))))

    def __str__(self) -> str:
        where = f" at {self.location}" if self.location else ""
        return f"{self.code}{where}: {self.text}"


def _location(text: str) -> ErrorLocation | None:
    """Inverse of ``str(ErrorLocation)``: ``PID^1^7[^2]`` or a bare segment name."""
    if not text:
        return None
    parts = text.split("^")
    numbers = [int(p) if p.isdigit() else 0 for p in parts[1:4]]
    sequence, field, component = [*numbers, 1, 0, 0][:3] if numbers else (1, 0, 0)
    return ErrorLocation(parts[0], field, component, sequence or 1)


_current: ContextVar[list[HL7Warning] | None] = ContextVar("hl7_warnings", default=None)

# Codes of the adjustments the broker makes (HL7 Table 0357).
DATA_TYPE = ErrorCode.DATA_TYPE_ERROR
TABLE_VALUE = ErrorCode.TABLE_VALUE_NOT_FOUND
REQUIRED_FIELD = ErrorCode.REQUIRED_FIELD_MISSING
DUPLICATE_KEY = ErrorCode.DUPLICATE_KEY_IDENTIFIER

CONTROL_ID_REUSED = HL7Warning(
    DUPLICATE_KEY, "this sender used MSH-10 before for another message: stored and "
    "processed as a new message", ErrorLocation("MSH", 10))


class _Collection:
    """The context manager :func:`collecting` returns (a class: it is entered for every
    field the mapping reads, where a generator-based one costs several times more)."""

    __slots__ = ("found", "token")

    def __enter__(self) -> list[HL7Warning]:
        self.found: list[HL7Warning] = []
        self.token = _current.set(self.found)
        return self.found

    def __exit__(self, *exc: object) -> None:
        _current.reset(self.token)


def collecting() -> _Collection:
    """Collect the warnings raised by :func:`warn` in this context into a list."""
    return _Collection()


def collect(call: Callable[..., T], *args: Any) -> tuple[T, list[HL7Warning]]:
    """``call(*args)`` with the warnings it raises collected: (its result, the
    warnings). Those of a call that raises are dropped with it."""
    found: list[HL7Warning] = []
    token = _current.set(found)
    try:
        return call(*args), found
    finally:
        _current.reset(token)


def warn(code: int, text: str, location: ErrorLocation | None = None) -> None:
    """Record an adjustment in the current collection (logged when nothing collects)."""
    warning = HL7Warning(int(code), text, location)
    found = _current.get()
    if found is None:
        log.warning("%s", warning)
    elif warning not in found:
        found.append(warning)


def located(found: list[HL7Warning], since: int, location: ErrorLocation) -> None:
    """Give ``location`` to the warnings added after index ``since`` that have none
    (a converter knows what it did, its caller knows which field it read)."""
    for i in range(since, len(found)):
        if found[i].location is None:
            found[i] = HL7Warning(found[i].code, found[i].text, location)


def to_json(warnings: Sequence[HL7Warning]) -> list[dict[str, Any]] | None:
    """Column value of the message store (None when there is nothing to say)."""
    return [w.as_json() for w in warnings] or None


def from_json(data: Sequence[dict[str, Any]] | None) -> list[HL7Warning]:
    return [HL7Warning.from_json(d) for d in data or ()]
