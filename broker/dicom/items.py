"""Build one Modality Worklist C-FIND response identifier (PS3.4 K.2.2.1.2, K.4.1.1.3).

* Only requested attributes are returned; a requested attribute we hold nothing for is
  returned zero-length (Type 2 "present, empty").
* The Scheduled Procedure Step Sequence item carries only the requested
  sub-attributes; an empty sequence key, or one empty item, asks for all of the step's
  attributes (C.2.2.2.6).
* Specific Character Set (0008,0005) is set when, and only when, the item's text needs
  more than the default repertoire: the patient's own character set when it can encode
  the text (ISO_IR 100 for Latin-1 sources, ISO 2022 IR 87 for Japanese), else
  ISO_IR 192 (UTF-8). For a modality whose profile lists the character sets it accepts
  (:mod:`broker.mapping.modality`), that choice if accepted, else the first accepted
  one (in :data:`SINGLE_VALUED` order) that encodes the text, else
  :class:`Unrepresentable` (the profile's fallback then applies,
  :mod:`broker.dicom.modality_rules`).
* Timezone Offset From UTC (0008,0201), when requested, is the broker zone's offset at
  the step's start, never empty (K.4.1.1.3).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from pydicom.charset import python_encoding
from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from broker.services.worklist_query import SPS_SEQUENCE, requested_keywords

# Attributes of the SPS item a universal SPS key returns (PS3.4 Table K.6-1).
SPS_ITEM_KEYWORDS = (
    "ScheduledStationAETitle", "ScheduledProcedureStepStartDate",
    "ScheduledProcedureStepStartTime", "Modality", "ScheduledPerformingPhysicianName",
    "ScheduledProcedureStepDescription", "ScheduledProtocolCodeSequence",
    "ScheduledProcedureStepID", "ScheduledStationName", "ScheduledProcedureStepLocation",
    "ScheduledProcedureStepStatus", "PreMedication", "RequestedContrastAgent",
)
# Return Key Type 1 in the SPS item (Table K.6-1): always present, even if we hold nothing.
SPS_TYPE1_KEYWORDS = frozenset({
    "ScheduledStationAETitle", "ScheduledProcedureStepStartDate",
    "ScheduledProcedureStepStartTime", "Modality", "ScheduledProcedureStepID",
})


def to_element_value(keyword: str, value: Any) -> Any:
    """A stored keyword-dict value as pydicom expects it for ``keyword``."""
    if isinstance(value, list) and value and isinstance(value[0], dict):
        return Sequence([to_dataset(item) for item in value])
    if dictionary_VR(keyword) == "SQ":
        return Sequence([to_dataset(item) for item in value or []])
    if value == "" or value is None:
        return None
    return value


def to_dataset(attributes: dict[str, Any]) -> Dataset:
    ds = Dataset()
    for keyword, value in attributes.items():
        setattr(ds, keyword, to_element_value(keyword, value))
    return ds


def _set(ds: Dataset, keyword: str, attributes: dict[str, Any]) -> None:
    value = attributes.get(keyword)
    if dictionary_VR(keyword) == "SQ":
        setattr(ds, keyword, to_element_value(keyword, value if isinstance(value, list) else []))
    else:
        setattr(ds, keyword, to_element_value(keyword, value))


def _sps_item(query_item: Dataset | None, step: dict[str, Any]) -> Dataset:
    wanted = requested_keywords(query_item) if query_item is not None else []
    if not wanted:
        wanted = [k for k in SPS_ITEM_KEYWORDS if k in step or k in SPS_TYPE1_KEYWORDS]
    item = Dataset()
    for keyword in wanted:
        _set(item, keyword, step)
    return item


def _dataset_texts(ds: Dataset) -> list[str]:
    """Every string value in a dataset (sequences included)."""
    out: list[str] = []
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value:
                out += _dataset_texts(item)
        elif elem.value is not None:
            values = elem.value if isinstance(elem.value, list | tuple) else [elem.value]
            out += [str(v) for v in values]
    return out


# Defined terms that may stand alone as (0008,0005) (PS3.3 C.12.1.1.2: single-byte
# without code extensions, and the multi-byte ones without them), in the order tried
# for a modality that accepts several.
SINGLE_VALUED = ("ISO_IR 100", "ISO_IR 101", "ISO_IR 109", "ISO_IR 110", "ISO_IR 144",
                 "ISO_IR 127", "ISO_IR 126", "ISO_IR 138", "ISO_IR 148", "ISO_IR 166",
                 "ISO_IR 192", "GB18030", "GBK")
# The default repertoire's defined terms: accepted by every modality.
DEFAULT_REPERTOIRE = frozenset({"", "ISO_IR 6", "ISO 2022 IR 6"})


class Unrepresentable(ValueError):
    """No character set the modality accepts encodes the response's text."""


def character_set(texts: list[str], patient_charset: str,
                  accepted: frozenset[str] | None = None) -> list[str] | None:
    """The (0008,0005) value for a response whose strings are ``texts`` (module doc);
    ``accepted``: the defined terms the modality accepts, None for any."""
    if all(t.isascii() for t in texts):
        return None
    natural = _natural_character_set("".join(texts), patient_charset)
    if accepted is None or set(natural) - DEFAULT_REPERTOIRE <= accepted:
        return natural
    joined = "".join(texts)
    for term in SINGLE_VALUED:
        if term in accepted:
            try:
                joined.encode(python_encoding[term])
                return [term]
            except UnicodeEncodeError:
                continue
    raise Unrepresentable(", ".join(sorted(accepted)) or "default repertoire")


def _natural_character_set(joined: str, patient_charset: str) -> list[str]:
    terms = patient_charset.split("\\") if patient_charset else []
    if terms == ["ISO_IR 100"]:
        try:
            joined.encode("latin-1")
            return ["ISO_IR 100"]
        except UnicodeEncodeError:
            pass
    if terms and terms[-1] == "ISO 2022 IR 87":
        try:
            joined.encode("iso2022_jp")
            return ["", "ISO 2022 IR 87"]
        except UnicodeEncodeError:
            pass
    return ["ISO_IR 192"]


def timezone_offset(zone: str, start_datetime: str) -> str:
    """``+HHMM``/``-HHMM`` of ``zone`` at the step's start (now if unknown)."""
    try:
        moment = datetime.strptime(start_datetime[:14], "%Y%m%d%H%M%S")
    except ValueError:
        moment = datetime.now()
    offset = moment.replace(tzinfo=ZoneInfo(zone)).utcoffset()
    minutes = int(offset.total_seconds() // 60) if offset is not None else 0
    sign = "-" if minutes < 0 else "+"
    return f"{sign}{abs(minutes) // 60:02d}{abs(minutes) % 60:02d}"


def build_response(query: Dataset, merged: dict[str, Any], step: dict[str, Any], *,
                   patient_charset: str, zone: str, start_datetime: str,
                   accepted: frozenset[str] | None = None) -> Dataset:
    """The response identifier for one step.

    ``merged`` holds the patient and requested procedure attributes, ``step`` the SPS
    item attributes (with the authoritative status and AE titles already applied);
    ``accepted``: the character sets the modality accepts (None: any), see
    :func:`character_set`.
    """
    ds = Dataset()
    for keyword in requested_keywords(query):
        if keyword == SPS_SEQUENCE:
            seq = query.get(SPS_SEQUENCE)
            query_item = seq[0] if seq is not None and len(seq) else None
            ds.ScheduledProcedureStepSequence = Sequence([_sps_item(query_item, step)])
        elif keyword == "SpecificCharacterSet":
            continue
        elif keyword == "TimezoneOffsetFromUTC":
            ds.TimezoneOffsetFromUTC = timezone_offset(zone, start_datetime)
        else:
            _set(ds, keyword, merged)
    charset = character_set(_dataset_texts(ds), patient_charset, accepted)
    if charset is not None:
        ds.SpecificCharacterSet = charset if len(charset) > 1 else charset[0]
    return ds
