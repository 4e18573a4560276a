"""Mapping profiles: YAML files that integration engineers edit.

A profile says, for the senders it serves, where each DICOM worklist attribute comes
from in the HL7 message (``rules``), which modality station gets a step
(``stations``, ``default_station``) and what a procedure code means (``procedures``).
``default.yaml`` implements the IHE mapping table (IHE RAD TF-2x Appendix B, HL7
order mapping to DICOM MWL) and serves every sender; a profile for one sender may
``extends: default`` and list only what differs (a rule replaces the parent's rule for
the same attribute).

``default.yaml`` ships in the package (:data:`broker.mapping.PACKAGED_PROFILES`) and is
always loaded, so the broker runs from any directory and a site directory
(``MWLB_MAPPINGS_DIR``) holds only its own profiles: they may ``extends: default``
without a copy of it, and a site profile named ``default`` replaces the packaged one.

Validation errors name the file, the key path and what is wrong, e.g.
``mappings/site.yaml: stations[2].when.modality: Input should be a valid string``.
"""

from __future__ import annotations

import fnmatch
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydicom.datadict import tag_for_keyword

from broker.domain.ups import EVERY_STEP, WorkitemSelection
from broker.hl7 import charsets
from broker.mapping import PACKAGED_PROFILES

Level = Literal["patient", "procedure", "step"]
Structure = Literal["ORM", "OMI", "ADT"]
Conversion = Literal[
    "text", "long_text", "formatted_text", "identifier", "uid", "ae_title",
    "person_name", "xcn_name", "cn_name", "date", "time", "birth_date",
    "priority", "sex", "code", "coded_text", "quantity", "allergies", "pregnancy",
    "location", "issuer_sequence", "hd_issuer_sequence", "start_date", "start_time",
]
Overflow = Literal["reject", "truncate"]
MissingStart = Literal["receipt", "reject"]

# Conversions whose over-long values are refused by default: identifiers (PS3.5 6.2
# VR lengths), where a cut value could merge two orders. Every other conversion cuts
# descriptive text with a warning.
REJECT_OVERFLOW: frozenset[str] = frozenset({"identifier", "uid", "ae_title"})


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Rule(Strict):
    """One worklist attribute: its level, HL7 source(s) and conversion.

    ``source`` is an HL7 path (``OBR-4.5``), a list of paths tried in order (the first
    non-empty wins), or a mapping from message structure (ORM, OMI, ADT) to either.

    ``on_overflow`` says what a value longer than ``max_length`` (or its VR's length,
    PS3.5 6.2) becomes: ``reject`` (AE 102 naming the field) or ``truncate`` (cut,
    with a warning); None is the default of the conversion: ``reject`` for
    ``identifier``, ``uid`` and ``ae_title``, ``truncate`` for everything else.
    """

    attribute: str
    level: Level
    source: str | list[str] | dict[Structure, str | list[str]]
    convert: Conversion = "text"
    max_length: int | None = Field(default=None, gt=0)
    on_overflow: Overflow | None = None
    params: dict[str, Any] = Field(default_factory=dict)

    @property
    def overflow(self) -> Overflow:
        """The effective ``on_overflow`` (the conversion's default when unset)."""
        if self.on_overflow is not None:
            return self.on_overflow
        return "reject" if self.convert in REJECT_OVERFLOW else "truncate"

    @field_validator("attribute")
    @classmethod
    def _known_keyword(cls, value: str) -> str:
        if tag_for_keyword(value) is None:
            raise ValueError(f"{value!r} is not a DICOM attribute keyword (PS3.6)")
        return value

    def sources_for(self, structure: str) -> list[str]:
        source = self.source
        if isinstance(source, dict):
            source = source.get(structure, [])  # type: ignore[call-overload]
        return [source] if isinstance(source, str) else list(source)


class StationMatch(Strict):
    """Conditions of a station rule; each is a value or a ``*``/``?`` pattern, and
    every condition given must hold."""

    modality: str | None = None
    procedure_code: str | None = None
    location: str | None = None
    sending_application: str | None = None
    sending_facility: str | None = None


class Station(Strict):
    """Where a matching step is performed: Scheduled Station AE Title(s), Name,
    Location (PS3.4 Table K.6-1)."""

    ae_title: str | list[str]
    station_name: str = ""
    location: str = ""

    @property
    def ae_titles(self) -> list[str]:
        return [self.ae_title] if isinstance(self.ae_title, str) else list(self.ae_title)

    @field_validator("ae_title")
    @classmethod
    def _ae_length(cls, value: str | list[str]) -> str | list[str]:
        for title in [value] if isinstance(value, str) else value:
            if not title or len(title) > 16 or "\\" in title:
                raise ValueError("an AE title has 1 to 16 characters and no backslash")
        return value


class StationRule(Station):
    name: str
    when: StationMatch = Field(default_factory=StationMatch)


class Code(Strict):
    code: str
    scheme: str
    meaning: str


class CatalogEntry(Strict):
    """What a requested procedure / protocol code means when the message lacks it."""

    modality: str | None = None
    description: str | None = None
    protocol: list[Code] = Field(default_factory=list)


class Workitems(Strict):
    """Which scheduled steps are also Unified Procedure Step workitems (PS3.4 Annex CC):
    none when ``enabled`` is false; else a step whose modality is one of
    ``modalities`` and one of whose Scheduled Protocol / Requested Procedure code
    values is one of ``codes`` (an empty list does not restrict)."""

    enabled: bool = True
    modalities: list[str] = Field(default_factory=list)
    codes: list[str] = Field(default_factory=list)

    def selection(self) -> WorkitemSelection:
        return WorkitemSelection(self.enabled, tuple(self.modalities), tuple(self.codes))


class Sender(Strict):
    application: str = "*"
    facility: str = "*"


class Profile(Strict):
    name: str
    description: str = ""
    extends: str | None = None
    senders: list[Sender] = Field(default_factory=list)
    preferred_patient_authority: str = ""
    default_character_set: str = "ASCII"
    # Extra MSH-18 spellings a sender uses: name -> HL7 Table 0211 value. The union of
    # every profile's is used to read all messages (the charset is needed before the
    # sender's profile can be chosen); each use is a warning on the message.
    charset_aliases: dict[str, str] = Field(default_factory=dict)
    timezone: str | None = None
    # A creating order (NW/SN) with no scheduled start in any source: ``receipt``
    # schedules it at the time the message was received (with a warning), ``reject``
    # refuses it with AE 101 at ORC-7 / TQ1-7. None inherits (default ``receipt``).
    missing_start: MissingStart | None = None
    rules: list[Rule] = Field(default_factory=list)
    stations: list[StationRule] = Field(default_factory=list)
    default_station: Station | None = None
    procedures: dict[str, CatalogEntry] = Field(default_factory=dict)
    # Which steps are also UPS workitems; None inherits (default: every step).
    workitems: Workitems | None = None

    @field_validator("charset_aliases")
    @classmethod
    def _table_0211_targets(cls, value: dict[str, str]) -> dict[str, str]:
        for name, target in value.items():
            if not charsets.is_known(target):
                raise ValueError(f"{name}: {target!r} is not an HL7 Table 0211 value the "
                                 "broker decodes (e.g. '8859/1', 'UNICODE UTF-8')")
        return {name.strip().upper(): target.strip() for name, target in value.items()}

    def specificity(self, application: str, facility: str) -> int:
        """How specifically this profile serves a sender (-1: not at all; the profile
        without senders serves everyone at 0)."""
        if not self.senders:
            return 0
        best = -1
        for s in self.senders:
            if fnmatch.fnmatchcase(application, s.application) and fnmatch.fnmatchcase(
                    facility, s.facility):
                best = max(best, 1 + (s.application != "*") + (s.facility != "*"))
        return best

    @property
    def start_policy(self) -> MissingStart:
        return self.missing_start or "receipt"

    @property
    def workitem_selection(self) -> WorkitemSelection:
        return self.workitems.selection() if self.workitems is not None else EVERY_STEP

    def rule_for(self, attribute: str) -> Rule | None:
        return next((r for r in self.rules if r.attribute == attribute), None)


class ProfileError(ValueError):
    """A profile file that cannot be used; the message names file and key."""


def _location(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _read(path: Path) -> tuple[Profile | None, list[str]]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        return None, [f"{path}: not valid YAML: {exc}"]
    if not isinstance(data, dict):
        return None, [f"{path}: a profile is a mapping of keys"]
    try:
        return Profile.model_validate(data), []
    except ValidationError as exc:
        return None, [f"{path}: {_location(e['loc'])}: {e['msg']}" for e in exc.errors()]


def _resolve(profile: Profile, by_name: dict[str, Profile], seen: tuple[str, ...] = ()) -> Profile:
    if profile.extends is None:
        return profile
    if profile.extends in seen or profile.extends not in by_name:
        raise ProfileError(f"profile {profile.name}: extends unknown or circular profile "
                           f"{profile.extends!r}")
    parent = _resolve(by_name[profile.extends], by_name, (*seen, profile.name))
    own = {r.attribute for r in profile.rules}
    return profile.model_copy(update={
        "rules": [*profile.rules, *(r for r in parent.rules if r.attribute not in own)],
        "stations": [*profile.stations, *parent.stations],
        "default_station": profile.default_station or parent.default_station,
        "procedures": {**parent.procedures, **profile.procedures},
        "timezone": profile.timezone or parent.timezone,
        "missing_start": profile.missing_start or parent.missing_start,
        "workitems": profile.workitems or parent.workitems,
        "preferred_patient_authority": (profile.preferred_patient_authority
                                        or parent.preferred_patient_authority),
    })


class ProfileSet:
    """All profiles in effect, resolved; picks the profile for a sender. ``files``
    gives the file each profile was read from."""

    def __init__(self, profiles: list[Profile], files: dict[str, Path] | None = None) -> None:
        self.profiles = profiles
        self.files = files or {}

    @property
    def charset_aliases(self) -> dict[str, str]:
        """The union of the profiles' ``charset_aliases`` (checked free of conflicts
        when loading)."""
        return {k: v for p in self.profiles for k, v in p.charset_aliases.items()}

    def select(self, application: str, facility: str) -> Profile:
        scored = [(p.specificity(application, facility), p) for p in self.profiles]
        scored = [(s, p) for s, p in scored if s >= 0]
        if not scored:
            raise ProfileError(f"no mapping profile serves sender {application}/{facility}")
        return max(scored, key=lambda sp: sp[0])[1]


def _read_directory(directory: Path, errors: list[str]) -> dict[str, tuple[Profile, Path]]:
    profiles: dict[str, tuple[Profile, Path]] = {}
    for path in sorted(directory.glob("*.yaml")) + sorted(directory.glob("*.yml")):
        profile, problems = _read(path)
        errors += problems
        if profile is not None:
            if profile.name in profiles:
                errors.append(f"{path}: name: profile {profile.name!r} is defined twice")
            profiles[profile.name] = (profile, path)
    return profiles


def _load(directory: Path) -> tuple[ProfileSet | None, list[str], dict[str, Path]]:
    """The packaged profiles, then those of ``directory``: a site profile replaces the
    packaged profile of the same name."""
    if not directory.is_dir():
        return None, [f"{directory}: no such directory of mapping profiles"], {}
    errors: list[str] = []
    found = {}
    if directory.resolve() != PACKAGED_PROFILES:
        found = _read_directory(PACKAGED_PROFILES, errors)
    found.update(_read_directory(directory, errors))
    profiles = {name: profile for name, (profile, _path) in found.items()}
    files = {name: path for name, (_profile, path) in found.items()}
    if not profiles and not errors:
        return None, [f"{directory}: no *.yaml mapping profiles"], files
    resolved = []
    for profile in profiles.values():
        try:
            resolved.append(_resolve(profile, profiles))
        except ProfileError as exc:
            errors.append(str(exc))
    seen_alias: dict[str, tuple[str, str]] = {}
    for profile in resolved:
        for name, target in profile.charset_aliases.items():
            first = seen_alias.setdefault(name, (target, profile.name))
            if first[0].upper() != target.upper():
                errors.append(f"profile {profile.name}: charset_aliases.{name}: {target!r} "
                              f"conflicts with {first[0]!r} in profile {first[1]}")
    if not errors and not any(p.specificity("", "") == 0 for p in resolved):
        errors.append(f"{directory}: no profile without `senders` to serve every sender")
    return (None if errors else ProfileSet(resolved, files)), errors, files


def check_directory(directory: Path) -> list[str]:
    """Every problem in the profiles of ``directory`` with the packaged ones (empty
    list: all valid)."""
    return _load(directory)[1]


def profile_files(directory: Path) -> dict[str, Path]:
    """Which file each profile in effect for ``directory`` comes from (packaged ones
    included), whether or not they are valid."""
    return _load(directory)[2]


def load_profiles(directory: Path) -> ProfileSet:
    """Load and resolve the packaged profiles and those of ``directory``; raises
    ProfileError listing every problem."""
    profiles, errors, _files = _load(directory)
    if profiles is None:
        raise ProfileError("; ".join(errors))
    return profiles
