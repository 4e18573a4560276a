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

A file whose top-level key is ``modalities`` holds modality profiles instead: how the
worklist answers each calling AE title (:mod:`broker.mapping.modality`). The files of a
set are read as text (:func:`read_sources`) and loaded from it (:func:`load_sources`),
so a deployed version, stored as its files' text, loads the same way.
"""

from __future__ import annotations

import fnmatch
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydicom.datadict import tag_for_keyword

from broker.domain.ups import EVERY_STEP, WorkitemSelection
from broker.hl7 import charsets
from broker.mapping import PACKAGED_PROFILES, modality
from broker.mapping.modality import ModalityProfile

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


ModelT = TypeVar("ModelT", bound=BaseModel)


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


def _read(text: str, path: Path) -> tuple[Any, list[str]]:
    """The YAML document of one file (a mapping), or the problems with it."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        return None, [f"{path}: not valid YAML: {exc}"]
    if not isinstance(data, dict):
        return None, [f"{path}: a profile is a mapping of keys"]
    return data, []


def _validated(model: type[ModelT], data: Any, path: Path) -> tuple[ModelT | None, list[str]]:
    try:
        return model.model_validate(data), []
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
    """All profiles in effect, resolved; picks the profile for a sender and the modality
    profile for a calling AE title. ``files`` gives the file each profile was read
    from; ``sources`` the text of every file of the set, keyed as
    :func:`read_sources` keys them (what a deployed version stores)."""

    def __init__(self, profiles: list[Profile], files: dict[str, Path] | None = None, *,
                 modalities: list[ModalityProfile] | None = None,
                 sources: dict[str, str] | None = None) -> None:
        self.profiles = profiles
        self.files = files or {}
        self.modalities = modalities or []
        self.sources = sources or {}

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

    def modality(self, calling_ae_title: str) -> ModalityProfile | None:
        """The modality profile for a calling AE title, or None (:mod:`broker.mapping.modality`)."""
        return modality.select(self.modalities, calling_ae_title)


# The key of a packaged file in a set's sources: packaged files are stored with a
# version too, so that a version is whole without the installed package.
PACKAGED_KEY = "packaged/"


def read_sources(directory: Path) -> dict[str, str]:
    """The text of every profile file for ``directory``: the packaged ones (keyed
    ``packaged/NAME``, unless ``directory`` is the packaged one) and the directory's
    own (keyed by file name). Raises ProfileError when it is not a directory."""
    if not directory.is_dir():
        raise ProfileError(f"{directory}: no such directory of mapping profiles")
    sources = {}
    if directory.resolve() != PACKAGED_PROFILES:
        sources = {PACKAGED_KEY + path.name: path.read_text(encoding="utf-8")
                   for path in _yaml_files(PACKAGED_PROFILES)}
    for path in _yaml_files(directory):
        sources[path.name] = path.read_text(encoding="utf-8")
    return sources


def _yaml_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.yaml")) + sorted(directory.glob("*.yml"))


def _display(key: str, directory: Path | None) -> Path:
    """Where a source is said to come from in messages: its file for a directory, the
    key itself for a stored set."""
    if key.startswith(PACKAGED_KEY):
        return PACKAGED_PROFILES / key[len(PACKAGED_KEY):]
    return directory / key if directory is not None else Path(key)


def load_sources(sources: dict[str, str], directory: Path | None = None,
                 ) -> tuple[ProfileSet | None, list[str], dict[str, Path]]:
    """Read, validate and resolve a set of profile files (:func:`read_sources`): the
    set, or None with every problem (each naming the file and key), and which file
    each profile came from. A site profile replaces the packaged profile of the same
    name. Messages name files in ``directory`` (None: by key)."""
    errors: list[str] = []
    found: dict[str, tuple[Profile, Path]] = {}
    modalities: list[ModalityProfile] = []
    modality_files: dict[str, Path] = {}
    # Packaged files first: a site file's profile then replaces one of the same name.
    ordered = sorted(sources, key=lambda key: (not key.startswith(PACKAGED_KEY), key))
    site_names: set[str] = set()
    for key in ordered:
        path = _display(key, directory)
        data, problems = _read(sources[key], path)
        errors += problems
        if data is None:
            continue
        if modality.is_modality_file(data):
            listed, problems = _validated(modality.ModalityFile, data, path)
            errors += problems
            for entry in listed.modalities if listed is not None else []:
                if entry.name in modality_files:
                    errors.append(f"{path}: modalities: modality profile {entry.name!r} "
                                  f"is also defined in {modality_files[entry.name]}")
                modality_files[entry.name] = path
                modalities.append(entry)
            continue
        parsed, problems = _validated(Profile, data, path)
        errors += problems
        if parsed is None:
            continue
        packaged = key.startswith(PACKAGED_KEY)
        if parsed.name in found and (packaged or parsed.name in site_names):
            errors.append(f"{path}: name: profile {parsed.name!r} is defined twice")
        if not packaged:
            site_names.add(parsed.name)
        found[parsed.name] = (parsed, path)
    errors += _duplicate_titles(modalities)
    profiles = {name: profile for name, (profile, _path) in found.items()}
    files = {name: path for name, (_profile, path) in found.items()}
    where = directory if directory is not None else "the profile set"
    if not profiles and not errors:
        return None, [f"{where}: no *.yaml mapping profiles"], files
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
        errors.append(f"{where}: no profile without `senders` to serve every sender")
    if errors:
        return None, errors, files
    return ProfileSet(resolved, files, modalities=modalities, sources=dict(sources)), [], files


def _duplicate_titles(modalities: list[ModalityProfile]) -> list[str]:
    """An AE title listed (not by a pattern) in two modality profiles is ambiguous."""
    owner: dict[str, str] = {}
    errors = []
    for profile in modalities:
        for title in profile.ae_titles:
            if "*" in title or "?" in title:
                continue
            if title in owner and owner[title] != profile.name:
                errors.append(f"modality profile {profile.name}: ae_titles: {title!r} is "
                              f"also listed by modality profile {owner[title]}")
            owner.setdefault(title, profile.name)
    return errors


def _load(directory: Path) -> tuple[ProfileSet | None, list[str], dict[str, Path]]:
    """The packaged profiles, then those of ``directory``: a site profile replaces the
    packaged profile of the same name."""
    try:
        sources = read_sources(directory)
    except ProfileError as exc:
        return None, [str(exc)], {}
    return load_sources(sources, directory)


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
