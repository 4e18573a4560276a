"""Query parameters of a DICOMweb search (PS3.18 8.3.4, Table 8.3.4-1; UPS-RS Search
Workitems, PS3.18 11.9) as a C-FIND-style identifier dataset, which the UPS service
matches with the same code as Modality Worklist C-FIND.

* ``{attributeID}={value}``: a matching key. An attributeID is a keyword
  (``PatientName``) or a tag of eight hex digits (``00100010``), or a path of them into
  sequences separated by dots (``ScheduledStationNameCodeSequence.CodeValue``). An empty
  value asks for the attribute back (universal matching). A UID key may list several
  UIDs, separated by commas or backslashes or by repeating the parameter (UID list
  matching, PS3.4 C.2.2.2.2).
* ``includefield``: ``all``, or attributeIDs separated by commas (repeatable): return
  keys.
* ``fuzzymatching``: ``true`` / ``false``; fuzzy matching of person names is not
  supported, so ``true`` answers with a warning and literal matching (PS3.18 8.3.4.5).
* ``limit`` / ``offset``: paging (non-negative integers).
* ``accept`` / ``charset`` (PS3.18 8.3.3.1): taken, not used (the response is always
  ``application/dicom+json`` in UTF-8).

Anything else is refused (400 Bad Request), as is an unknown attribute or a value that
its VR cannot hold.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence

from broker.web.dicomjson import DicomWebError, check_value, valid_uid

FUZZY_WARNING = ("The fuzzymatching parameter is not supported. Only literal matching "
                 "has been performed.")
IGNORED_PARAMETERS = frozenset({"accept", "charset"})
RESERVED = frozenset({"includefield", "fuzzymatching", "limit", "offset"}) | IGNORED_PARAMETERS

# Values a query may hold per VR (ranges for dates and times, wildcards for strings).
_DATE = r"\d{8}"
_TIME = r"\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?"
_DT = r"\d{4}(\d{2}(\d{2}(\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?)?)?)?([+-]\d{4})?"
_RANGES = {"DA": _DATE, "TM": _TIME, "DT": _DT}


@dataclass
class SearchQuery:
    """A parsed search: the identifier (matching and return keys), whether every
    attribute is asked for, paging, and warnings for the response."""

    identifier: Dataset
    include_all: bool = False
    limit: int | None = None
    offset: int = 0
    warnings: list[str] = field(default_factory=list)


def attribute_path(attribute_id: str) -> list[tuple[int, str]]:
    """The (tag, VR) of each step of a dotted attributeID path; 400 for an unknown
    attribute, a private or command tag, or a path through a non-sequence."""
    steps = attribute_id.strip().split(".")
    out: list[tuple[int, str]] = []
    for position, step in enumerate(steps):
        tag = _tag_of(step)
        vr = dictionary_VR(tag)
        if position < len(steps) - 1 and vr != "SQ":
            raise DicomWebError(400, f"{attribute_id!r}: {step} is not a sequence")
        out.append((tag, vr))
    return out


def _tag_of(step: str) -> int:
    step = step.strip()
    tag: int | None
    if re.fullmatch(r"[0-9A-Fa-f]{8}", step):
        tag = int(step, 16)
        known = keyword_for_tag(tag) if (tag >> 16) % 2 == 0 and tag >> 16 else ""
        if not known:
            raise DicomWebError(400, f"unknown attribute {step!r}")
        return tag
    tag = tag_for_keyword(step) if step else None
    if tag is None or tag >> 16 == 0:
        raise DicomWebError(400, f"unknown attribute {step[:64]!r}")
    return tag


def _check_value(attribute_id: str, vr: str, value: str) -> None:
    """400 when ``value`` cannot be a matching value of ``vr``."""
    if vr == "UI":
        bad = [v for v in value.split("\\") if v and not valid_uid(v)]
        if bad:
            raise DicomWebError(400, f"{attribute_id}: {bad[0][:70]!r} is not a valid UID")
        return
    pattern = _RANGES.get(vr)
    if pattern is None:
        check_value(attribute_id, vr, value)
        return
    low, dash, high = value.partition("-")
    parts = [low, high] if dash else [low]
    if vr == "DT" and dash and re.fullmatch(_DT, value):
        parts = [value]  # a single DT with a negative UTC offset
    if not any(parts) or any(p and not re.fullmatch(pattern, p) for p in parts):
        raise DicomWebError(400, f"{attribute_id}: {value[:40]!r} is not a {vr} value or "
                                 "range")


def _element_holder(ds: Dataset, path: list[tuple[int, str]]) -> Dataset:
    """The dataset the last step of ``path`` goes in, creating one item per sequence
    on the way (a query has one item per sequence, PS3.4 C.2.2.1.3)."""
    holder = ds
    for tag, _vr in path[:-1]:
        if tag not in holder or not holder[tag].value:
            holder.add_new(tag, "SQ", Sequence([Dataset()]))
        holder = holder[tag].value[0]
    return holder


def add_key(ds: Dataset, attribute_id: str, value: str | None) -> None:
    """Put a matching key (``value``) or a return key (None) for ``attribute_id`` in
    ``ds``. A UID key given twice lists both; another key given twice is refused."""
    path = attribute_path(attribute_id)
    holder = _element_holder(ds, path)
    tag, vr = path[-1]
    if value is None:
        if tag not in holder:
            holder.add_new(tag, vr, Sequence() if vr == "SQ" else None)
        return
    if vr == "SQ":
        if value.strip():
            raise DicomWebError(400, f"{attribute_id} is a sequence: match on an attribute "
                                     f"inside it ({attribute_id}.<attribute>=...)")
        holder.add_new(tag, vr, Sequence())
        return
    if vr == "UI":
        value = "\\".join(v.strip() for v in re.split(r"[,\\]", value) if v.strip())
    elif vr == "CS":
        value = value.upper()  # CS is upper case (PS3.5 6.2): liberal in what we accept
    _check_value(attribute_id, vr, value)
    if tag in holder and holder[tag].value not in (None, "", []):
        if vr != "UI":
            raise DicomWebError(400, f"{attribute_id} is given more than once")
        before = holder[tag].value
        values = list(before) if isinstance(before, MultiValue | list) else [str(before)]
        value = "\\".join([*map(str, values), value])
    holder.add_new(tag, vr, value if value else None)


def _non_negative(name: str, value: str) -> int:
    if not re.fullmatch(r"\d{1,9}", value.strip()):
        raise DicomWebError(400, f"{name}={value[:20]!r}: give a non-negative integer")
    return int(value)


def parse_search(params: Iterable[tuple[str, str]]) -> SearchQuery:
    """The search of PS3.18 11.9 / 8.3.4 from the request's query parameters (in order,
    repeats kept)."""
    query = SearchQuery(Dataset())
    includes: list[str] = []
    for name, value in params:
        key = name.strip()
        lowered = key.lower()
        if lowered == "includefield":
            includes += [v.strip() for v in value.split(",") if v.strip()]
        elif lowered == "fuzzymatching":
            flag = value.strip().lower()
            if flag not in ("true", "false"):
                raise DicomWebError(400, f"fuzzymatching={value[:20]!r}: true or false")
            if flag == "true" and FUZZY_WARNING not in query.warnings:
                query.warnings.append(FUZZY_WARNING)
        elif lowered == "limit":
            query.limit = _non_negative("limit", value)
        elif lowered == "offset":
            query.offset = _non_negative("offset", value)
        elif lowered in IGNORED_PARAMETERS:
            continue
        elif not key:
            raise DicomWebError(400, "a query parameter without a name")
        else:
            add_key(query.identifier, key, value)
    for include in includes:
        if include.lower() == "all":
            query.include_all = True
        else:
            add_key(query.identifier, include, None)
    return query


def parse_filter(values: Iterable[str]) -> Dataset:
    """The matching keys of a filtered global subscription (PS3.18 11.10.1.2 ``filter``
    parameter: ``{attributeID}={value}`` pairs separated by commas, repeatable)."""
    ds = Dataset()
    for value in values:
        for pair in (p for p in value.split(",") if p.strip()):
            attribute_id, equals, match = pair.partition("=")
            if not equals:
                raise DicomWebError(400, f"filter {pair[:60]!r}: give attribute=value")
            add_key(ds, attribute_id, match)
    return ds


def keywords(ds: Dataset) -> list[str]:
    """The keywords of the top-level attributes of ``ds`` (for messages and logs)."""
    return [elem.keyword or f"{elem.tag:08X}" for elem in ds]
