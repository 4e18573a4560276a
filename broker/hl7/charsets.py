"""HL7 character sets (MSH-18, HL7 Table 0211) and their DICOM counterparts.

MSH-18 names the message charset; its DICOM Specific Character Set (0008,0005) defined
term (PS3.3 C.12.1.1.2) is what the worklist item is tagged with. MSH-18 repeats when
ISO 2022 code extensions are used (``~ISO IR87``: default repertoire ASCII, extension
JIS X 0208, HL7 v2.5.1 2.15.9.18); the last non-empty repetition is the extension in
use and decides how the message is decoded.

Every Table 0211 value Python can decode is accepted. Values that cannot be carried in
an MLLP frame (``UNICODE UTF-16``/``UTF-32``: their code units contain 0x0B/0x1C/0x0D
bytes, and a message whose MSH reads as single bytes is evidently not in them) are
treated like an unknown name. Spellings seen in the field (``UTF-8``, ``Latin1``,
``ISO-8859-1``, DICOM terms such as ``ISO_IR 100`` ...) are aliases of the standard
value; a mapping profile may add its own (``charset_aliases``). Whoever resolves an
alias records a warning naming the standard value.

Windows-1252 (``windows-1252``, ``CP1252``) is not in Table 0211; it is decoded as
cp1252 (a superset of 8859/1 in 0xA0-0xFF) and the item is tagged ISO_IR 100 when every
decoded character is in Latin-1, else ISO_IR 192 (the text is stored as Unicode, so
UTF-8 represents it without loss; see :func:`for_text`).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Charset:
    """One HL7 charset: the Python codec that decodes it and the DICOM term(s)."""

    hl7: str
    codec: str
    dicom: tuple[str, ...]  # value(s) of (0008,0005); () = default repertoire


# HL7 Table 0211 (v2.3 to v2.8) -> Python codec and DICOM defined term(s).
_TABLE: dict[str, Charset] = {
    c.hl7: c
    for c in (
        Charset("ASCII", "ascii", ()),
        Charset("ISO IR6", "ascii", ()),  # ISO 646, the G0 default of ISO 2022
        Charset("8859/1", "iso8859_1", ("ISO_IR 100",)),
        Charset("8859/2", "iso8859_2", ("ISO_IR 101",)),
        Charset("8859/3", "iso8859_3", ("ISO_IR 109",)),
        Charset("8859/4", "iso8859_4", ("ISO_IR 110",)),
        Charset("8859/5", "iso8859_5", ("ISO_IR 144",)),
        Charset("8859/6", "iso8859_6", ("ISO_IR 127",)),
        Charset("8859/7", "iso8859_7", ("ISO_IR 126",)),
        Charset("8859/8", "iso8859_8", ("ISO_IR 138",)),
        Charset("8859/9", "iso8859_9", ("ISO_IR 148",)),
        Charset("8859/15", "iso8859_15", ("ISO_IR 203",)),
        # JIS X 0201 (Roman and half-width katakana); shift_jis decodes its bytes.
        Charset("ISO IR14", "shift_jis", ("ISO_IR 13",)),
        Charset("ISO IR87", "iso2022_jp", ("", "ISO 2022 IR 87")),
        Charset("ISO IR159", "iso2022_jp_2", ("", "ISO 2022 IR 159")),
        # KS X 1001 is sent in GR (EUC-KR bytes), as DICOM's ISO 2022 IR 149 does; the
        # designation ESC $ ) C, when present, is removed before decoding.
        Charset("KS X 1001", "euc_kr", ("", "ISO 2022 IR 149")),
        Charset("UNICODE UTF-8", "utf_8", ("ISO_IR 192",)),
        Charset("UNICODE", "utf_8", ("ISO_IR 192",)),
        Charset("GB 18030-2000", "gb18030", ("GB18030",)),
        # CNS 11643 is Traditional Chinese; dcm4chee's ISO_IR 166 (Thai) is wrong. Python
        # has no CNS 11643 codec: we decode it as Big5 and tag the item UTF-8.
        Charset("CNS 11643-1992", "big5", ("ISO_IR 192",)),
        Charset("BIG-5", "big5", ("ISO_IR 192",)),
    )
}

# Windows-1252: not in Table 0211, accepted as an alias (see the module doc).
WINDOWS_1252 = Charset("WINDOWS-1252", "cp1252", ("ISO_IR 100",))

# Table 0211 values that cannot be carried in an 8-bit MLLP frame.
UNFRAMEABLE = frozenset({"UNICODE UTF-16", "UNICODE UTF-32"})

ASCII = _TABLE["ASCII"]


def _squash(name: str) -> str:
    """Upper case without separators: ``iso_8859-1`` and ``ISO 8859/1`` both give
    ``ISO88591``."""
    return re.sub(r"[\s_\-/.:]+", "", name).upper()


# Field spellings -> standard value (keys squashed). The squashed forms of the standard
# values themselves (``8859-1``, ``BIG5``, ``ISOIR87``) are aliases too.
_SPELLINGS: dict[str, str] = {
    "US-ASCII": "ASCII", "ANSI_X3.4-1968": "ASCII", "ISO646": "ISO IR6", "ISOIR6": "ISO IR6",
    "UTF8": "UNICODE UTF-8", "ISOIR192": "UNICODE UTF-8",
    "LATIN1": "8859/1", "L1": "8859/1", "ISOIR100": "8859/1",
    "LATIN2": "8859/2", "ISOIR101": "8859/2",
    "LATIN3": "8859/3", "ISOIR109": "8859/3",
    "LATIN4": "8859/4", "ISOIR110": "8859/4",
    "CYRILLIC": "8859/5", "ISOIR144": "8859/5",
    "ARABIC": "8859/6", "ISOIR127": "8859/6",
    "GREEK": "8859/7", "ISOIR126": "8859/7",
    "HEBREW": "8859/8", "ISOIR138": "8859/8",
    "LATIN5": "8859/9", "ISOIR148": "8859/9",
    "LATIN9": "8859/15", "ISOIR203": "8859/15",
    "ISOIR13": "ISO IR14", "JISX0201": "ISO IR14",
    "ISO2022JP": "ISO IR87", "ISO2022IR87": "ISO IR87", "JISX0208": "ISO IR87",
    "ISO2022IR159": "ISO IR159", "JISX0212": "ISO IR159",
    "EUCKR": "KS X 1001", "KSC5601": "KS X 1001", "ISO2022IR149": "KS X 1001",
    "GB18030": "GB 18030-2000",
    "CNS11643": "CNS 11643-1992",
    "WINDOWS1252": WINDOWS_1252.hl7, "CP1252": WINDOWS_1252.hl7,
    "WIN1252": WINDOWS_1252.hl7, "MSWIN1252": WINDOWS_1252.hl7,
}
_ALIASES: dict[str, str] = {
    _squash(name): target
    for name, target in [*((n, n) for n in (*_TABLE, WINDOWS_1252.hl7)), *_SPELLINGS.items(),
                         *((f"ISO-8859-{n}", f"8859/{n}") for n in (*range(1, 10), 15))]
}


def _standard(name: str) -> Charset | None:
    """The charset of a standard value (or ``WINDOWS-1252``), case-insensitively."""
    key = name.strip().upper()
    if key == WINDOWS_1252.hl7:
        return WINDOWS_1252
    return next((c for standard, c in _TABLE.items() if standard.upper() == key), None)


def is_known(name: str) -> bool:
    """True for a Table 0211 value we decode (or ``WINDOWS-1252``): what a profile's
    ``charset_aliases`` may point to."""
    return _standard(name) is not None


@dataclass(frozen=True)
class Resolved:
    """A charset name resolved: ``alias`` is True when it was not the standard value."""

    charset: Charset
    alias: bool


def resolve(name: str, aliases: Mapping[str, str] | None = None) -> Resolved | None:
    """The charset of one MSH-18 repetition, or None when unknown.

    A standard Table 0211 value matches case-insensitively. Otherwise ``aliases`` (the
    profiles' own, names compared case-insensitively) and then the built-in spellings
    are tried; such a match is flagged ``alias``.
    """
    key = name.strip().upper()
    if key != WINDOWS_1252.hl7:
        standard = _standard(key)
        if standard is not None:
            return Resolved(standard, alias=False)
    if key in UNFRAMEABLE:
        return None
    for alias, target in (aliases or {}).items():
        if alias.strip().upper() == key:
            charset = _standard(target)
            return Resolved(charset, alias=True) if charset is not None else None
    spelled = _ALIASES.get(_squash(name))
    charset = _standard(spelled) if spelled is not None else None
    return Resolved(charset, alias=True) if charset is not None else None


def lookup(msh18_repetitions: list[str],
           aliases: Mapping[str, str] | None = None) -> Charset | None:
    """The charset named by MSH-18 (all repetitions), or None when unknown.

    Empty MSH-18 means ASCII. With several repetitions the last non-empty one carries
    the extension in use (``~ISO IR87``), which is what decoding needs.
    """
    names = [r for r in msh18_repetitions if r.strip()]
    if not names:
        return ASCII
    found = resolve(names[-1], aliases)
    return found.charset if found is not None else None


def for_text(charset: Charset, text: str) -> Charset:
    """The charset to tag a message decoded with ``charset`` by: Windows-1252 text is
    ISO_IR 100 when it fits Latin-1, else ISO_IR 192 (PS3.3 C.12.1.1.2)."""
    if charset is not WINDOWS_1252:
        return charset
    try:
        text.encode("latin-1")
    except UnicodeEncodeError:
        return dataclasses.replace(charset, dicom=("ISO_IR 192",))
    return charset


def python_codec_for_dicom(term: str) -> str | None:
    """Python codec of a DICOM (0008,0005) single-byte or UTF-8 term, if we emit it."""
    for charset in _TABLE.values():
        if charset.dicom and charset.dicom[-1] == term and charset.hl7 != "UNICODE":
            return charset.codec
    return None
