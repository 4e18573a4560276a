"""Encode Modality Worklist response identifiers straight from stored attributes.

The fast path of C-FIND: building a pydicom Dataset and encoding it costs
about a millisecond per item, so a worklist of 10,000 items would take seconds. Here a
:class:`ResponsePlan` is made once per query (the requested tags in ascending order,
PS3.5 7.1) and each item is written as bytes from its attribute dicts, in Little
Endian Implicit or Explicit VR (PS3.5 7.1.2, 7.1.3, 7.5), with sequences and items of
defined length (PS3.5 7.5.1).

Encoded identifiers are memoised on (plan, zone, the item's stored texts): a
modality asks for the same items again and again, and an update changes the texts.
Those of a modality whose profile transforms its responses
(:mod:`broker.dicom.modality_rules`) are memoised apart, keyed also on the profile
(name, deployed version, content) and the response's shape.

It produces the same identifier as :func:`broker.dicom.items.build_response` (a test
decodes both and compares). Whatever it does not handle, it declines by raising
:class:`Unsupported`, and the caller takes the pydicom path: text outside the default
repertoire (the Specific Character Set rules live there), values that are not
strings, ambiguous VRs, Big Endian and deflated transfer syntaxes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset

from broker.dicom.items import (
    SPS_ITEM_KEYWORDS,
    SPS_SEQUENCE,
    SPS_TYPE1_KEYWORDS,
    requested_keywords,
    timezone_offset,
)
from broker.dicom.worklist import WorklistItem

if TYPE_CHECKING:
    from broker.dicom.modality_rules import Answer, ModalityRules, Shape

# PS3.5 Table 7.1-1: VRs with a reserved field and a 32-bit length in explicit VR.
LONG_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR",
                      "UT", "UV"})
TEXT_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH",
                      "ST", "TM", "UC", "UI", "UR", "UT"})


class Unsupported(Exception):
    """This item needs the general (pydicom) encoder."""


@lru_cache(maxsize=4096)
def element_info(keyword: str) -> tuple[int, str]:
    """(tag, VR) of a public keyword; ambiguous VRs ("US or SS") are unsupported."""
    tag = tag_for_keyword(keyword)
    if tag is None:
        raise Unsupported(keyword)
    vr = dictionary_VR(tag)
    if vr not in TEXT_VRS and vr != "SQ":
        raise Unsupported(vr)
    return tag, vr


def _header(tag: int, vr: str, length: int, implicit: bool) -> bytes:
    group_element = struct.pack("<HH", tag >> 16, tag & 0xFFFF)
    if implicit:
        return group_element + struct.pack("<I", length)
    if vr in LONG_VRS:
        return group_element + vr.encode() + b"\0\0" + struct.pack("<I", length)
    if length > 0xFFFF:
        raise Unsupported("value too long for a 16-bit length")
    return group_element + vr.encode() + struct.pack("<H", length)


def _text(value: Any, vr: str) -> bytes:
    if value is None or value == "" or value == []:
        return b""
    if isinstance(value, str):
        text = value
    elif isinstance(value, list) and all(isinstance(v, str) for v in value):
        text = "\\".join(value)
    else:
        raise Unsupported(type(value).__name__)
    if not text.isascii():
        raise Unsupported("text outside the default repertoire")
    data = text.encode("ascii")
    if len(data) % 2:
        data += b"\0" if vr == "UI" else b" "
    return data


def _element(tag: int, vr: str, value: Any, implicit: bool) -> bytes:
    if vr == "SQ":
        items = value if isinstance(value, list) else []
        return _sequence(tag, [_item_dict(item, implicit) for item in items], implicit)
    if isinstance(value, list) and value and isinstance(value[0], dict):
        raise Unsupported("items under a non-sequence keyword")
    data = _text(value, vr)
    return _header(tag, vr, len(data), implicit) + data


def _sequence(tag: int, items: list[bytes], implicit: bool) -> bytes:
    body = b"".join(struct.pack("<HHI", 0xFFFE, 0xE000, len(item)) + item for item in items)
    return _header(tag, "SQ", len(body), implicit) + body


def _item_dict(item: Any, implicit: bool) -> bytes:
    """A whole stored item (every attribute it holds), tags ascending."""
    if not isinstance(item, dict):
        raise Unsupported("sequence item is not a mapping")
    elements = sorted((element_info(keyword), value) for keyword, value in item.items())
    return b"".join(_element(tag, vr, value, implicit) for (tag, vr), value in elements)


@dataclass(frozen=True)
class ResponsePlan:
    """What one query asks for, in tag order; made once per C-FIND."""

    top: tuple[tuple[int, str, str], ...]  # (tag, VR, keyword)
    sps_item: tuple[tuple[int, str, str], ...] | None  # None: the step's own attributes
    implicit: bool

    @classmethod
    def from_query(cls, query: Dataset, *, implicit: bool) -> ResponsePlan:
        top, sps_item = [], None
        for keyword in requested_keywords(query):
            if keyword == "SpecificCharacterSet":
                continue  # only set for text outside the default repertoire (fallback)
            tag, vr = element_info(keyword)
            top.append((tag, vr, keyword))
            if keyword == SPS_SEQUENCE:
                seq = query[SPS_SEQUENCE].value
                wanted = requested_keywords(seq[0]) if seq else []
                if wanted:
                    sps_item = tuple(sorted((*element_info(k), k) for k in wanted))
        return cls(tuple(sorted(top)), sps_item, implicit)

    def encode(self, merged: dict[str, Any], step: dict[str, Any], *, zone: str,
               start_datetime: str) -> bytes:
        """The identifier of one step; raises Unsupported (see module doc)."""
        out = []
        for tag, vr, keyword in self.top:
            if keyword == SPS_SEQUENCE:
                out.append(_sequence(tag, [self._step_item(step)], self.implicit))
            elif keyword == "TimezoneOffsetFromUTC":
                out.append(_element(tag, vr, timezone_offset(zone, start_datetime),
                                    self.implicit))
            else:
                out.append(_element(tag, vr, merged.get(keyword), self.implicit))
        return b"".join(out)

    def _step_item(self, step: dict[str, Any]) -> bytes:
        fields = self.sps_item
        if fields is None:
            fields = tuple(sorted((*element_info(k), k) for k in SPS_ITEM_KEYWORDS
                                  if k in step or k in SPS_TYPE1_KEYWORDS))
        return b"".join(_element(tag, vr, step.get(keyword), self.implicit)
                        for tag, vr, keyword in fields)


def encode_item(plan: ResponsePlan, item: WorklistItem, zone: str) -> bytes:
    """The identifier of ``item`` for ``plan``; raises Unsupported."""
    return _encode_cached(plan, zone, item.status, item.start_datetime, item.step_text,
                          item.procedure_text, item.patient_text)


@lru_cache(maxsize=32768)
def _encode_cached(plan: ResponsePlan, zone: str, status: str, start_datetime: str,
                   step_text: str, procedure_text: str, patient_text: str) -> bytes:
    item = WorklistItem(0, status, start_datetime, "", step_text, procedure_text, patient_text)
    return plan.encode(item.merged, item.step, zone=zone, start_datetime=start_datetime)


def encode_answer(plan: ResponsePlan, answer: Answer, item: WorklistItem, zone: str) -> bytes:
    """The identifier of ``item`` for ``plan`` as ``answer``'s modality profile shapes
    it (``plan`` made from ``answer.query``); raises Unsupported."""
    return _encode_answer_cached(plan, answer.rules, answer.shape, zone, item.status,
                                 item.start_datetime, item.patient_charset, item.step_text,
                                 item.procedure_text, item.patient_text)


@lru_cache(maxsize=8192)
def _encode_answer_cached(plan: ResponsePlan, rules: ModalityRules, shape: Shape, zone: str,
                          status: str, start_datetime: str, patient_charset: str,
                          step_text: str, procedure_text: str, patient_text: str) -> bytes:
    item = WorklistItem(0, status, start_datetime, patient_charset, step_text,
                        procedure_text, patient_text)
    merged, step = rules.attributes(shape, item.merged, item.step, patient_charset)
    return plan.encode(merged, step, zone=zone, start_datetime=start_datetime)
