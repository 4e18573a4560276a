"""Modality profiles applied by the Modality Worklist SCP (PS3.4 Annex K): the calling
AE title's profile (:mod:`broker.mapping.modality`) shapes the query and each response.

* Station restriction: a query that leaves Scheduled Station AE Title universal gets
  the profile's stations only (:class:`~broker.services.worklist_query.StationRestriction`,
  matched in SQL).
* Result cap: the profile's ``max_results`` instead of MWLB_WORKLIST_MAX_RESULTS
  (0xA700 beyond it, Table K.4-1).
* Each response: the coercions in order, on the item's attribute dicts; then, when no
  character set the profile accepts encodes the response's text (PS3.3 C.12.1.1.2),
  the item transliterated to the fallback repertoire
  (:mod:`broker.dicom.transliteration`) and the coercions applied to that (so that a
  truncation holds for the transliterated text). The response is built from
  :meth:`ModalityRules.response_query`: the query with the attributes ``copy`` and
  ``default`` set, and without those dropped.

A calling AE title without a profile costs one dictionary lookup
(:class:`ModalityProfiles`); a profile that only restricts or caps is answered by the
same encoders as no profile.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset

from broker.dicom.items import (
    SPS_ITEM_KEYWORDS,
    Unrepresentable,
    build_response,
    character_set,
)
from broker.dicom.transliteration import Keep, is_ascii, is_latin1, transliterate_attributes
from broker.mapping.modality import Coercion, ModalityProfile
from broker.services.worklist_query import SPS_SEQUENCE, StationRestriction, requested_keywords

if TYPE_CHECKING:
    from sqlalchemy import Connection

    from broker.dicom.worklist import WorklistItem
    from broker.mapping.profile import ProfileSet

# Attributes of the Scheduled Procedure Step Sequence item (PS3.4 Table K.6-1): a
# coercion of one of these changes the item.
SPS_KEYWORDS = frozenset({
    *SPS_ITEM_KEYWORDS, "CommentsOnTheScheduledProcedureStep",
    "ScheduledStationClassCodeSequence", "ScheduledStationGeographicLocationCodeSequence",
    "ScheduledStationNameCodeSequence", "ScheduledPerformingPhysicianIdentificationSequence",
})
# Response attributes whose value the SCP computes (never text of the item).
_COMPUTED = frozenset({"SpecificCharacterSet", "TimezoneOffsetFromUTC"})


class Deployed(Protocol):
    """The mapping profiles in force and their deployed version (None: read from the
    mappings directory, not deployed)."""

    @property
    def version(self) -> int | None: ...

    @property
    def profiles(self) -> ProfileSet: ...


ProfilesInForce = Callable[["Connection"], Deployed]


@dataclass(frozen=True)
class Shape:
    """The attributes a response carries: its top-level keywords and its SPS item's
    (None: the whole step, a universal SPS item, C.2.2.2.6)."""

    top: tuple[str, ...]
    sps: tuple[str, ...] | None

    @classmethod
    def of(cls, query: Dataset) -> Shape:
        top = tuple(k for k in requested_keywords(query) if k not in _COMPUTED)
        sps = None
        if SPS_SEQUENCE in top:
            seq = query[SPS_SEQUENCE].value
            wanted = requested_keywords(seq[0]) if seq else []
            sps = tuple(wanted) or None
        return cls(top, sps)

    def texts(self, merged: dict[str, Any], step: dict[str, Any]) -> list[str]:
        """Every string the response would carry."""
        out: list[str] = []
        for keyword in self.top:
            if keyword == SPS_SEQUENCE:
                for sub in self.sps or [k for k in SPS_ITEM_KEYWORDS if k in step]:
                    _strings(step.get(sub), out)
            else:
                _strings(merged.get(keyword), out)
        return out


def _strings(value: Any, out: list[str]) -> None:
    if isinstance(value, str):
        out.append(value)
    elif isinstance(value, list):
        for v in value:
            _strings(v, out)
    elif isinstance(value, dict):
        for v in value.values():
            _strings(v, out)


def _is_empty(value: Any) -> bool:
    return value is None or value == "" or value == [] or (
        isinstance(value, list) and all(v in ("", None) for v in value))


def _text_map(value: Any, change: Callable[[str], str]) -> Any:
    if isinstance(value, str):
        return change(value)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return [change(v) for v in value]
    return value


@dataclass(frozen=True, eq=False)
class ModalityRules:
    """One modality profile, compiled for the SCP; equal (and hashed) by profile name,
    deployed version and content, so that it can key the SCP's caches."""

    name: str
    version: int | None
    restriction: StationRestriction | None
    accepted: frozenset[str] | None
    keep: Keep
    coercions: tuple[Coercion, ...]
    max_results: int | None
    key: tuple[str, int | None, str] = field(repr=False)

    @classmethod
    def of(cls, profile: ModalityProfile, version: int | None) -> ModalityRules:
        accepted = None
        if profile.character_sets is not None:
            accepted = frozenset(t for t in profile.character_sets if t)
            if profile.fallback == "ISO_IR 100":
                accepted |= {"ISO_IR 100"}
        restriction = (StationRestriction(profile.name, tuple(profile.stations))
                       if profile.restricts else None)
        return cls(profile.name, version, restriction, accepted,
                   is_latin1 if profile.fallback == "ISO_IR 100" else is_ascii,
                   tuple(profile.coercions), profile.max_results,
                   (profile.name, version, profile.model_dump_json()))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ModalityRules) and other.key == self.key

    def __hash__(self) -> int:
        return hash(self.key)

    @property
    def transforms(self) -> bool:
        """Whether responses differ from the broker's own (coercions, character sets)."""
        return bool(self.coercions) or self.accepted is not None

    def response_query(self, identifier: Dataset) -> Dataset:
        """The query the responses are built from: ``identifier`` with the attributes
        of ``copy`` and ``default`` coercions added (empty) and those of ``drop``
        removed, in order. An SPS attribute changes the SPS item (a universal item is
        made explicit first: Table K.6-1's attributes)."""
        changes = [c for c in self.coercions if c.action in ("copy", "default", "drop")]
        if not changes:
            return identifier
        ds = copy.deepcopy(identifier)
        seq = ds.get(SPS_SEQUENCE)
        item = seq[0] if seq is not None and len(seq) == 1 else None
        for coercion in changes:
            keyword = coercion.attribute
            container = ds
            if keyword in SPS_KEYWORDS:
                if item is None:
                    continue
                if not requested_keywords(item):
                    for universal in SPS_ITEM_KEYWORDS:
                        _add(item, universal)
                container = item
            if coercion.action == "drop":
                if keyword in container:
                    del container[keyword]
            else:
                _add(container, keyword)
        return ds

    def attributes(self, shape: Shape, merged: dict[str, Any], step: dict[str, Any],
                   patient_charset: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """The item's (patient and procedure, step) attributes as this modality gets
        them (module doc); the arguments are left unchanged."""
        coerced = self._coerced(merged, step)
        if self.accepted is None:
            return coerced
        try:
            character_set(shape.texts(*coerced), patient_charset, self.accepted)
            return coerced
        except Unrepresentable:
            pass
        return self._coerced(transliterate_attributes(merged, self.keep),
                             transliterate_attributes(step, self.keep))

    def _coerced(self, merged: dict[str, Any], step: dict[str, Any]
                 ) -> tuple[dict[str, Any], dict[str, Any]]:
        if not self.coercions:
            return merged, step
        merged, step = dict(merged), dict(step)
        for c in self.coercions:
            target = step if c.attribute in SPS_KEYWORDS else merged
            if c.action == "copy":
                assert c.source is not None
                source = step if c.source in SPS_KEYWORDS else merged
                target[c.attribute] = source.get(c.source)
            elif c.action == "default":
                if _is_empty(target.get(c.attribute)):
                    target[c.attribute] = c.value
            elif c.action == "truncate":
                target[c.attribute] = _text_map(target.get(c.attribute),
                                                functools.partial(_truncated, c.length))
            elif c.action == "upper":
                target[c.attribute] = _text_map(target.get(c.attribute), str.upper)
            else:  # drop
                target.pop(c.attribute, None)
        return merged, step


def _truncated(length: int | None, text: str) -> str:
    return text[:length]


def _add(ds: Dataset, keyword: str) -> None:
    if keyword not in ds:
        setattr(ds, keyword, [] if dictionary_VR(keyword) == "SQ" else None)


class Answer:
    """One C-FIND's responses for a profile that :attr:`~ModalityRules.transforms`."""

    def __init__(self, rules: ModalityRules, identifier: Dataset) -> None:
        self.rules = rules
        self.query = rules.response_query(identifier)
        self.shape = Shape.of(self.query)

    def attributes(self, item: WorklistItem) -> tuple[dict[str, Any], dict[str, Any]]:
        return self.rules.attributes(self.shape, item.merged, item.step,
                                     item.patient_charset)

    def dataset(self, item: WorklistItem, zone: str) -> Dataset:
        """The response identifier of ``item`` (pydicom)."""
        merged, step = self.attributes(item)
        return build_response(self.query, merged, step, patient_charset=item.patient_charset,
                              zone=zone, start_datetime=item.start_datetime,
                              accepted=self.rules.accepted)


class _Table:
    def __init__(self, deployed: Deployed) -> None:
        self.profiles = deployed.profiles
        self.version = deployed.version
        self.by_title: dict[str, ModalityRules | None] = {}


class ModalityProfiles:
    """The compiled profile of each calling AE title, for the profiles in force:
    ``profiles(connection)`` at each query (in the query's transaction), compiled once
    per profile set and calling AE title."""

    def __init__(self, profiles: ProfilesInForce | None) -> None:
        self._profiles = profiles
        self._table: _Table | None = None

    def for_query(self, connection: Connection, calling_ae_title: str
                  ) -> tuple[ModalityRules | None, int | None]:
        """The calling AE title's rules (None: no profile) and the version in force."""
        if self._profiles is None:
            return None, None
        deployed = self._profiles(connection)
        table = self._table
        if table is None or table.profiles is not deployed.profiles \
                or table.version != deployed.version:
            table = self._table = _Table(deployed)
        try:
            return table.by_title[calling_ae_title], table.version
        except KeyError:
            pass
        profile = table.profiles.modality(calling_ae_title)
        rules = None if profile is None else ModalityRules.of(profile, table.version)
        table.by_title[calling_ae_title] = rules
        return rules, table.version
