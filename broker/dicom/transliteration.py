"""Transliteration of worklist text for a modality that cannot show its character set.

When a modality profile's accepted Specific Character Sets (0008,0005) cannot encode a
response (PS3.3 C.12.1.1.2), the broker answers in the profile's fallback repertoire:

* ``ascii``: the default repertoire (ISO-IR 6, PS3.5 6.1.2.2) only;
* ``ISO_IR 100``: Latin-1 (ISO 8859-1) kept as it is, everything else transliterated.

Each character outside the repertoire becomes, in this order: its entry in
:data:`LATIN` (letters without a decomposition: ß, Æ, Ø, Œ, Ł, Đ, Þ, ı, ...,
typographic punctuation, and the Greek and Cyrillic alphabets: Greek after ELOT 743
with its digraph ΟΥ -> OU, Cyrillic after the ICAO Doc 9303 table, both as plain Latin
letters without diacritics);
else its compatibility decomposition (Unicode NFKD) without combining marks
(é -> e, ő -> o, ﬁ -> fi), each remaining letter looked up again; else ``?``.

A Person Name (PN) value keeps its alphabetic component group only; the ideographic
and phonetic groups (PS3.5 6.2.1.1) are dropped: ``YAMADA^TARO=山田^太郎=やまだ^たろう``
-> ``YAMADA^TARO``.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from functools import lru_cache
from typing import Any

from pydicom.datadict import dictionary_VR

Keep = Callable[[str], bool]

_GREEK = {
    "Α": "A", "Β": "V", "Γ": "G", "Δ": "D", "Ε": "E", "Ζ": "Z", "Η": "I", "Θ": "TH",
    "Ι": "I", "Κ": "K", "Λ": "L", "Μ": "M", "Ν": "N", "Ξ": "X", "Ο": "O", "Π": "P",
    "Ρ": "R", "Σ": "S", "Τ": "T", "Υ": "Y", "Φ": "F", "Χ": "CH", "Ψ": "PS", "Ω": "O",
}
_CYRILLIC = {
    "А": "A", "Б": "B", "В": "V", "Г": "G", "Д": "D", "Е": "E", "Ё": "E", "Ж": "ZH",
    "З": "Z", "И": "I", "Й": "I", "К": "K", "Л": "L", "М": "M", "Н": "N", "О": "O",
    "П": "P", "Р": "R", "С": "S", "Т": "T", "У": "U", "Ф": "F", "Х": "KH", "Ц": "TS",
    "Ч": "CH", "Ш": "SH", "Щ": "SHCH", "Ъ": "IE", "Ы": "Y", "Ь": "", "Э": "E", "Ю": "IU",
    "Я": "IA", "Є": "IE", "І": "I", "Ї": "I", "Ґ": "G", "Ў": "U", "Ђ": "D", "Ј": "J",
    "Љ": "LJ", "Њ": "NJ", "Ћ": "C", "Џ": "DZ", "Ѕ": "DZ",
}
_LETTERS = {
    "ß": "ss", "ẞ": "SS", "Æ": "AE", "æ": "ae", "Ø": "O", "ø": "o", "Œ": "OE", "œ": "oe",
    "Ł": "L", "ł": "l", "Đ": "D", "đ": "d", "Ð": "D", "ð": "d", "Þ": "TH", "þ": "th",
    "ı": "i", "Ħ": "H", "ħ": "h", "Ŧ": "T", "ŧ": "t", "ĸ": "q", "Ŋ": "NG", "ŋ": "ng",
    "‘": "'", "’": "'", "‚": "'", "‛": "'", "“": '"', "”": '"', "„": '"', "‟": '"',
    "‐": "-", "‑": "-", "‒": "-", "–": "-", "—": "-", "―": "-", "−": "-", "€": "EUR",
    "«": '"', "»": '"', "×": "x", "·": ".",
}


def _with_lower_case(table: dict[str, str]) -> dict[str, str]:
    out = dict(table)
    for upper, latin in table.items():
        out.setdefault(upper.lower(), latin.lower())
    return out


LATIN: dict[str, str] = {**_LETTERS, **_with_lower_case(_GREEK), **_with_lower_case(_CYRILLIC),
                         "ς": "s"}
_REPLACEMENT = "?"
# ELOT 743 writes the Greek digraph ΟΥ as OU (Παπαδόπουλος -> Papadopoulos).
_GREEK_OU = re.compile("([Οο])([ΥυύΎ])")


def _ou(match: re.Match[str]) -> str:
    o, u = match.group(1), match.group(2)
    return ("OU" if u.isupper() else "Ou") if o.isupper() else "ou"


def is_ascii(char: str) -> bool:
    """Within the default repertoire (ISO-IR 6)."""
    return char.isascii()


def is_latin1(char: str) -> bool:
    """Within ISO 8859-1 (ISO_IR 100)."""
    return ord(char) < 0x100


@lru_cache(maxsize=4096)
def _character(char: str, keep: Keep) -> str:
    if keep(char):
        return char
    if char in LATIN:
        return LATIN[char]
    decomposed = "".join(c for c in unicodedata.normalize("NFKD", char)
                         if not unicodedata.combining(c))
    if decomposed and decomposed != char:
        parts = [c if keep(c) else LATIN.get(c, _REPLACEMENT) for c in decomposed]
        if any(part != _REPLACEMENT for part in parts):
            return "".join(parts)
    return _REPLACEMENT


def transliterate(text: str, keep: Keep = is_ascii) -> str:
    """``text`` with every character ``keep`` refuses transliterated (module doc). An
    upper-case letter written as several Latin letters is capitalised only when the
    next letter is lower case (Щукин -> Shchukin, ЩУКИН -> SHCHUKIN)."""
    if all(keep(c) for c in text):
        return text
    text = _GREEK_OU.sub(_ou, text)
    out = []
    for n, char in enumerate(text):
        latin = _character(char, keep)
        if len(latin) > 1 and char.isupper() and latin.isupper():
            following = text[n + 1:n + 2]
            if following.islower():
                latin = latin.capitalize()
        out.append(latin)
    return "".join(out)


def transliterate_name(value: str, keep: Keep = is_ascii) -> str:
    """A PN value: its alphabetic group only, transliterated (module doc)."""
    return transliterate(value.split("=", 1)[0], keep)


@lru_cache(maxsize=1024)
def _is_person_name(keyword: str) -> bool:
    try:
        return dictionary_VR(keyword) == "PN"
    except KeyError:
        return False


def transliterate_value(keyword: str, value: Any, keep: Keep = is_ascii) -> Any:
    """A stored attribute value (a string, a list of strings, or sequence items as
    keyword dicts) with its text transliterated; other values as they are."""
    if isinstance(value, str):
        return transliterate_name(value, keep) if _is_person_name(keyword) else \
            transliterate(value, keep)
    if isinstance(value, list):
        return [transliterate_attributes(v, keep) if isinstance(v, dict)
                else transliterate_value(keyword, v, keep) for v in value]
    return value


def transliterate_attributes(attributes: dict[str, Any], keep: Keep = is_ascii
                             ) -> dict[str, Any]:
    """A new keyword dict with every text value transliterated (sequences included)."""
    return {keyword: transliterate_value(keyword, value, keep)
            for keyword, value in attributes.items()}
