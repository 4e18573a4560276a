"""C-FIND matching semantics (PS3.4 C.2.2.2) as pure data: what a key value asks for.

* Universal matching: an empty value, or ``*`` alone (C.2.2.2.3, C.2.2.2.4).
* Single value matching; case-sensitive except for PN (C.2.2.2.1).
* Wild card matching with ``*`` and ``?`` for AE CS LO LT PN SH ST UC UR UT only
  (C.2.2.2.4); in other VRs those characters are literal.
* Range matching ``d1-d2``, ``-d2``, ``d1-`` for DA, TM, DT (C.2.2.2.5); TM compares by
  meaning (``0930`` = ``093000``).
* List of UID matching, backslash-separated (C.2.2.2.2).
* A non-universal key never matches a zero-length stored value (K.2.2.1.1.1).

PN policy (declared as the standard asks): case-insensitive, accents significant, on
whole component groups; a key without ``=`` matches a name when it matches any one of
its alphabetic, ideographic or phonetic groups.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

WILDCARD_VRS = frozenset({"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UR", "UT"})
RANGE_VRS = frozenset({"DA", "TM", "DT"})
LIKE_ESCAPE = "\\"


class Kind(Enum):
    UNIVERSAL = "universal"
    SINGLE = "single"
    WILDCARD = "wildcard"
    RANGE = "range"
    UID_LIST = "uid_list"


@dataclass(frozen=True)
class Key:
    """A parsed matching key value."""

    kind: Kind
    value: str = ""
    low: str = ""  # range bounds ("" = open)
    high: str = ""
    values: tuple[str, ...] = ()

    @property
    def universal(self) -> bool:
        return self.kind is Kind.UNIVERSAL


UNIVERSAL = Key(Kind.UNIVERSAL)


def parse_key(value: object, vr: str) -> Key:
    """Classify a key value of the given VR."""
    if value is None:
        return UNIVERSAL
    if isinstance(value, list | tuple):
        values = tuple(str(v).strip() for v in value if str(v).strip())
        if not values:
            return UNIVERSAL
        if vr == "UI":
            return Key(Kind.UID_LIST, values=values)
        value = "\\".join(values)
    text = str(value).strip()
    if text in ("", "*") or (vr in WILDCARD_VRS and text.strip("*") == ""):
        return UNIVERSAL
    if vr in RANGE_VRS and "-" in text:
        low, _, high = text.partition("-")
        return Key(Kind.RANGE, low=low.strip(), high=high.strip())
    if vr == "UI" and "\\" in text:
        return Key(Kind.UID_LIST, values=tuple(v for v in text.split("\\") if v))
    if vr in WILDCARD_VRS and ("*" in text or "?" in text):
        return Key(Kind.WILDCARD, value=text)
    return Key(Kind.SINGLE, value=text)


def like_pattern(wildcard: str) -> str:
    """A DICOM wildcard value as an SQL LIKE pattern (escape char ``\\``)."""
    out = []
    for char in wildcard:
        if char in ("%", "_", LIKE_ESCAPE):
            out.append(LIKE_ESCAPE + char)
        elif char == "*":
            out.append("%")
        elif char == "?":
            out.append("_")
        else:
            out.append(char)
    return "".join(out)


def normalise_time(tm: str) -> str:
    """TM by meaning: ``0930`` -> ``093000``, ``09`` -> ``090000``; fractions kept."""
    whole, _, fraction = tm.strip().replace(":", "").partition(".")
    if not whole:
        return ""
    whole = (whole + "000000")[:6]
    return f"{whole}.{fraction}" if fraction else whole


def upper_time_bound(tm: str) -> str:
    """Upper end of a TM range: every stored time within the stated precision of the
    bound is included (``1000`` -> up to ``100000.999999``)."""
    base = normalise_time(tm)
    return base if "." in base else base + ".999999"


def pn_group_key(group: str) -> str:
    """Match key of one PN component group: upper-cased, trailing empty components
    dropped, surrounding spaces removed."""
    return "^".join(part.strip() for part in group.split("^")).rstrip("^").upper()


def person_name_keys(pn: str) -> tuple[str, str, str]:
    """Alphabetic, ideographic and phonetic match keys of a stored PN value."""
    groups = [*pn.split("="), "", ""][:3]
    return (pn_group_key(groups[0]), pn_group_key(groups[1]), pn_group_key(groups[2]))


def person_name_key(pn: str) -> str:
    """The alphabetic match key (used for physician names)."""
    return person_name_keys(pn)[0]
