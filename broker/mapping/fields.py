"""Reading HL7 fields for the mapping: the segments a rule may read (:class:`Scope`),
the context it is evaluated with, and the field readers (HL7 v2.5.1 2.5.3, 2.7;
chapter 2A data types).

A rule's source path is looked up in the step's own segments first (IPC), then its
order group (ORC, TQ1, OBR, NTE, OBX), then the message (MSH, PID, PV1, AL1, Z...).
Converter errors are raised, and converter warnings recorded, with the location of the
field they came from (:func:`location_of`, :func:`forward`, :func:`locating`).

* Coded values, identifiers and timestamps (ID, IS, CWE/CE code, EI, HD, TS) whose
  rule names no component are read from their first component, and from a component
  its first non-empty sub-component, trimmed of spaces: PID-8 ``F^`` is F, OBR-24
  `` MR`` is MR. An identifier that loses other non-empty parts this way is kept with
  a warning.
* A field of nothing but spaces and delimiters (``^^^``, `` ``) is not sent: the
  stored value is left alone. Only the HL7 explicit null ``""`` clears it.
* Structured values (names XPN/XCN/CN, locations PL, codes CE/CWE, HD) are split at
  the sub-component delimiter before unescaping, so a raw ``&`` never reaches DICOM
  while an escaped ``\\T\\`` is still a literal ``&``. Free text (ST, TX, FT and the
  text component of a code) has no sub-components: an unescaped ``&`` there is the
  sender's own ampersand and is kept as one.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime

from broker.hl7 import warnings
from broker.hl7.errors import ErrorLocation
from broker.hl7.message import NULL, Message, Path, Segment
from broker.hl7.warnings import HL7Warning, located, warn
from broker.mapping import conversions as conv


@dataclass
class Scope:
    """The segments a rule may read, nearest layer first (``nearest``: each segment
    name's segments in the nearest layer that has it). ``starts`` keeps the scheduled
    start read from each chain of sources (their texts), with its warnings: the start
    date and start time rules read the same chain."""

    layers: list[dict[str, list[Segment]]]
    message: Message
    nearest: dict[str, list[Segment]] = field(init=False)
    starts: dict[tuple[str, ...], tuple[tuple[str, str] | None, list[HL7Warning]]] = field(
        init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.nearest = {name: segments for layer in reversed(self.layers)
                        for name, segments in layer.items()}

    def all(self, name: str) -> list[Segment]:
        return self.nearest.get(name, [])

    def first(self, name: str) -> Segment | None:
        found = self.nearest.get(name)
        return found[0] if found else None

    def everywhere(self, name: str) -> list[Segment]:
        return [s for layer in self.layers for s in layer.get(name, [])]


@dataclass(frozen=True)
class MessageContext:
    """What every rule of one message is evaluated with (``received_at``: when the
    broker received the message, the scheduled start of an order without one)."""

    zone: str
    v25: bool
    structure: str
    received_at: datetime


def layer_of(segments: list[Segment]) -> dict[str, list[Segment]]:
    out: dict[str, list[Segment]] = {}
    for seg in segments:
        out.setdefault(seg.name, []).append(seg)
    return out


# -- reading fields -------------------------------------------------------------------

def is_blank(seg: Segment, text: str) -> bool:
    """Nothing but spaces and delimiters: "not sent" (never a clear)."""
    return not text.strip(seg.delimiters.blank)


def text_of(parts: list[str]) -> str:
    """A free-text component: an unescaped ``&`` in it is the sender's own character."""
    return "&".join(p for p in parts if p.strip()).strip()


def sub_value(seg: Segment | None, number: int, component: int, sub: int = 1,
         repetition: int = 0) -> str:
    """One sub-component (1-based), trimmed; '' when absent."""
    if seg is None:
        return ""
    parts = seg.parts(number, repetition)
    if component > len(parts) or sub > len(parts[component - 1]):
        return ""
    return parts[component - 1][sub - 1].strip()


def first_value(seg: Segment | None, number: int, component: int = 1, repetition: int = 0) -> str:
    """A component's value: its first non-empty sub-component, trimmed."""
    if seg is None:
        return ""
    parts = seg.parts(number, repetition)
    return conv.first_part(parts[component - 1]) if component <= len(parts) else ""


def read_value(seg: Segment | None, path: Path) -> tuple[str | None, bool]:
    """A coded value, identifier or timestamp at ``path`` of ``seg`` (the segment the
    path names; None when the scope has none): ``(value, dropped)``.

    The value is None when not sent, ``""`` (the explicit null) to clear, else the
    first component (when the path names none) and its first non-empty sub-component
    (when the path names none), trimmed. ``dropped`` says other non-empty parts were
    left out."""
    if seg is None:
        return None, False
    raw = seg.raw_field(path.field)
    if raw == NULL:
        return NULL, False
    if is_blank(seg, raw):
        return None, False
    parts = seg.parts(path.field)
    index = (path.component or 1) - 1
    if index >= len(parts):
        return None, False
    subs = parts[index]
    if path.subcomponent:
        chosen = subs[path.subcomponent - 1].strip() if path.subcomponent <= len(subs) else ""
        dropped = False
    elif len(subs) == 1:
        chosen, dropped = subs[0].strip(), False
    else:
        filled = [s for s in subs if s.strip()]
        chosen = filled[0].strip() if filled else ""
        dropped = len(filled) > 1
    if not chosen:
        return None, False
    if not dropped and not path.component and len(parts) > 1:
        dropped = any(s.strip() for comp in parts[1:] for s in comp)
    return chosen, dropped


def raw_text(seg: Segment, path: Path) -> str | None:
    """Free text at ``path`` (whole field, component or sub-component), delimiters
    inside it kept as the characters they are; None when blank."""
    raw = seg.raw_field(path.field)
    if raw == NULL and not path.component:
        return NULL
    value = seg.get(path.field, path.component, path.subcomponent)
    if not value or is_blank(seg, value):
        return None
    return value


def _sequence_of(scope: Scope, seg_name: str) -> int:
    seg = scope.first(seg_name)
    if seg is None:
        return 1
    same = scope.message.all(seg_name)
    return next((i + 1 for i, s in enumerate(same) if s is seg), 1)


def location_of(scope: Scope, path: Path) -> ErrorLocation:
    return ErrorLocation(path.segment, path.field, path.component,
                         _sequence_of(scope, path.segment))


def forward(found: list[HL7Warning], location: ErrorLocation) -> None:
    """Record warnings collected while reading one field in the enclosing collection,
    with ``location`` unless they carry their own."""
    located(found, 0, location)
    for warning in found:
        warn(warning.code, warning.text, warning.location)


@contextmanager
def locating(location: ErrorLocation) -> Iterator[None]:
    """Warnings raised inside get ``location`` unless they carry their own (those of
    a block that raises are dropped with it)."""
    with warnings.collecting() as inner:
        yield
    forward(inner, location)
