"""HL7 character sets (MSH-18, HL7 Table 0211) and their DICOM counterparts.

Conversion rule M3 of the conformance checklist: MSH-18 names the message charset;
its DICOM Specific Character Set (0008,0005) term is what the worklist item is tagged
with. MSH-18 repeats when ISO 2022 code extensions are used (``~ISO IR87``: default
repertoire ASCII, extension JIS X 0208); the first repetition is the default.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Charset:
    """One HL7 charset: the Python codec that decodes it and the DICOM term(s)."""

    hl7: str
    codec: str
    dicom: tuple[str, ...]  # value(s) of (0008,0005); () = default repertoire


_TABLE: dict[str, Charset] = {
    c.hl7: c
    for c in (
        Charset("ASCII", "ascii", ()),
        Charset("8859/1", "iso8859_1", ("ISO_IR 100",)),
        Charset("8859/2", "iso8859_2", ("ISO_IR 101",)),
        Charset("8859/3", "iso8859_3", ("ISO_IR 109",)),
        Charset("8859/4", "iso8859_4", ("ISO_IR 110",)),
        Charset("8859/5", "iso8859_5", ("ISO_IR 144",)),
        Charset("8859/6", "iso8859_6", ("ISO_IR 127",)),
        Charset("8859/7", "iso8859_7", ("ISO_IR 126",)),
        Charset("8859/8", "iso8859_8", ("ISO_IR 138",)),
        Charset("8859/9", "iso8859_9", ("ISO_IR 148",)),
        Charset("ISO IR14", "shift_jis", ("ISO_IR 13",)),
        Charset("ISO IR87", "iso2022_jp", ("", "ISO 2022 IR 87")),
        Charset("ISO IR159", "iso2022_jp_2", ("", "ISO 2022 IR 159")),
        Charset("KS X 1001", "iso2022_kr", ("", "ISO 2022 IR 149")),
        Charset("UNICODE UTF-8", "utf_8", ("ISO_IR 192",)),
        Charset("UNICODE", "utf_8", ("ISO_IR 192",)),
        Charset("GB 18030-2000", "gb18030", ("GB18030",)),
        # CNS 11643 is Traditional Chinese; dcm4chee's ISO_IR 166 (Thai) is wrong. We
        # decode it as Big5 and tag the item UTF-8 (checklist M3).
        Charset("CNS 11643-1992", "big5", ("ISO_IR 192",)),
        Charset("BIG-5", "big5", ("ISO_IR 192",)),
    )
}

ASCII = _TABLE["ASCII"]


def lookup(msh18_repetitions: list[str]) -> Charset | None:
    """The charset named by MSH-18 (all repetitions), or None when unknown.

    Empty MSH-18 means ASCII. With several repetitions the last non-empty one carries
    the extension in use (``~ISO IR87``), which is what decoding needs.
    """
    names = [r.strip().upper() for r in msh18_repetitions if r.strip()]
    if not names:
        return ASCII
    key = names[-1]
    for name, charset in _TABLE.items():
        if name.upper() == key:
            return charset
    return None


def python_codec_for_dicom(term: str) -> str | None:
    """Python codec of a DICOM (0008,0005) single-byte or UTF-8 term, if we emit it."""
    for charset in _TABLE.values():
        if charset.dicom and charset.dicom[-1] == term and charset.hl7 != "UNICODE":
            return charset.codec
    return None
