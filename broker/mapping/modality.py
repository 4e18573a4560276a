"""Modality profiles: how the worklist answers one modality, chosen by its calling AE
title (PS3.8 7.1.1.4). They live in the mappings directory beside the mapping profiles,
in a file whose top-level key is ``modalities``, and are deployed with them.

A modality profile may

* ``stations``: limit a query that does not name a Scheduled Station AE Title (the key
  universal, PS3.4 C.2.2.2.3) to these stations' steps; on by default when stations
  are listed (``restrict_to_stations``). A query that names a station gets that station.
* ``character_sets``: the Specific Character Set (0008,0005) values it can show (PS3.3
  C.12.1.1.2); absent: any, ``[]``: the default repertoire only. A response whose text
  needs another is answered in ``fallback``: ``ascii`` (every character transliterated
  to the default repertoire) or ``ISO_IR 100`` (Latin-1 kept, the rest
  transliterated; ``ISO_IR 100`` is then accepted too), see
  :mod:`broker.dicom.transliteration`.
* ``coercions``: changes to each response on the way out, in order: ``copy`` a value
  from ``source``, ``default`` an empty or absent one to ``value``, ``truncate`` to
  ``length`` characters, ``upper``-case, ``drop`` a key it chokes on. ``copy`` and
  ``default`` return their attribute even when the query did not ask for it. A keyword
  of the Scheduled Procedure Step Sequence item (PS3.4 Table K.6-1) is changed in the
  item (and only when the query asks for the sequence).
* ``max_results``: its own cap on the matches answered (0xA700 beyond it, PS3.4 Table
  K.4-1), instead of the broker's.

Which profile applies: the one listing the calling AE title itself; else the first, by
name, whose ``ae_titles`` pattern (``*``, ``?``) matches; else none (the broker's
defaults).
"""

from __future__ import annotations

import fnmatch
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydicom.datadict import dictionary_VR, tag_for_keyword

Fallback = Literal["ascii", "ISO_IR 100"]
Action = Literal["copy", "default", "truncate", "upper", "drop"]

# Specific Character Set defined terms a modality may accept (PS3.3 C.12.1.1.2, single
# byte without code extensions and UTF-8; the ISO 2022 ones with code extensions).
CHARACTER_SETS = frozenset({
    "ISO_IR 6", "ISO_IR 100", "ISO_IR 101", "ISO_IR 109", "ISO_IR 110", "ISO_IR 144",
    "ISO_IR 127", "ISO_IR 126", "ISO_IR 138", "ISO_IR 148", "ISO_IR 166", "ISO_IR 13",
    "ISO_IR 192", "GB18030", "GBK", "ISO 2022 IR 6", "ISO 2022 IR 87", "ISO 2022 IR 13",
    "ISO 2022 IR 100", "ISO 2022 IR 149", "ISO 2022 IR 58",
})


def _keyword(value: str) -> str:
    if tag_for_keyword(value) is None:
        raise ValueError(f"{value!r} is not a DICOM attribute keyword (PS3.6)")
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Coercion(_Strict):
    """One change to a response on the way out (see the module doc)."""

    action: Action
    attribute: str
    source: str | None = None  # copy
    value: str | None = None  # default
    length: int | None = Field(default=None, gt=0)  # truncate

    @field_validator("attribute", "source")
    @classmethod
    def _known(cls, value: str | None) -> str | None:
        return None if value is None else _keyword(value)

    @model_validator(mode="after")
    def _arguments(self) -> Coercion:
        needed = {"copy": "source", "default": "value", "truncate": "length"}.get(self.action)
        if needed is not None and getattr(self, needed) is None:
            raise ValueError(f"{self.action} needs `{needed}`")
        sequence = dictionary_VR(self.attribute) == "SQ"
        if self.action in ("default", "truncate", "upper") and sequence:
            raise ValueError(f"{self.action} changes text; {self.attribute} is a sequence")
        if self.source is not None and (dictionary_VR(self.source) == "SQ") != sequence:
            raise ValueError(f"copy {self.source} to {self.attribute}: a sequence is "
                             "copied to a sequence only")
        if self.value is not None and not self.value.isascii():
            raise ValueError("`value` is in the default repertoire (ASCII), so that every "
                             "modality can show it")
        return self


class ModalityProfile(_Strict):
    """How the worklist answers the modalities calling with ``ae_titles``."""

    name: str
    description: str = ""
    ae_titles: list[str] = Field(min_length=1)
    stations: list[str] = Field(default_factory=list)
    restrict_to_stations: bool | None = None
    character_sets: list[str] | None = None
    fallback: Fallback = "ascii"
    coercions: list[Coercion] = Field(default_factory=list)
    max_results: int | None = Field(default=None, ge=1)

    @field_validator("ae_titles", "stations")
    @classmethod
    def _ae_titles(cls, value: list[str]) -> list[str]:
        for title in value:
            if not title.strip() or len(title) > 16 or "\\" in title:
                raise ValueError(f"{title!r}: an AE title has 1 to 16 characters and no "
                                 "backslash")
        return [title.strip() for title in value]

    @field_validator("character_sets")
    @classmethod
    def _defined_terms(cls, value: list[str] | None) -> list[str] | None:
        for term in value or []:
            if term and term not in CHARACTER_SETS:
                raise ValueError(f"{term!r} is not a Specific Character Set defined term "
                                 "(PS3.3 C.12.1.1.2), e.g. 'ISO_IR 100', 'ISO_IR 192'")
        return value

    @model_validator(mode="after")
    def _stations_to_restrict_to(self) -> ModalityProfile:
        if self.restrict_to_stations and not self.stations:
            raise ValueError("restrict_to_stations needs `stations` (the Scheduled Station "
                             "AE Titles its queries without a station get)")
        return self

    @property
    def restricts(self) -> bool:
        """Whether a query without a station is limited to :attr:`stations`."""
        if self.restrict_to_stations is None:
            return bool(self.stations)
        return self.restrict_to_stations and bool(self.stations)

    def serves(self, calling_ae_title: str) -> int:
        """How specifically this profile serves ``calling_ae_title``: 2 listed, 1 by a
        pattern, 0 not at all."""
        title = calling_ae_title.strip()
        if title in self.ae_titles:
            return 2
        return 1 if any(fnmatch.fnmatchcase(title, p) for p in self.ae_titles) else 0


class ModalityFile(_Strict):
    """A file of modality profiles: ``modalities: [...]``."""

    modalities: list[ModalityProfile]


def is_modality_file(data: object) -> bool:
    """Whether a parsed YAML document is a file of modality profiles."""
    return isinstance(data, dict) and "modalities" in data and "name" not in data


def select(profiles: list[ModalityProfile], calling_ae_title: str) -> ModalityProfile | None:
    """The profile for a calling AE title (see the module doc), or None."""
    best: tuple[int, ModalityProfile] | None = None
    for profile in sorted(profiles, key=lambda p: p.name):
        score = profile.serves(calling_ae_title)
        if score and (best is None or score > best[0]):
            best = (score, profile)
    return best[1] if best is not None else None
