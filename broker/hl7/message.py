"""A thin, fast HL7 v2 reader for inbound messages (HL7 v2.5.1 Chapter 2).

hl7apy takes about 8 ms per ORM here (a cap of about 80 messages/s); this reader splits
on the delimiters declared in MSH-1/MSH-2 (HL7 v2.5.1 2.5.4), decodes the message in the
charset named by MSH-18 (HL7 Table 0211, :mod:`broker.hl7.charsets`) and unescapes each
component after splitting (HL7 v2.5.1 2.7 "Use of escape sequences in text fields").

Real senders' quirks (a byte order mark, CR LF or LF segment ends, blank lines, an
MSH-18 spelled ``UTF-8``, a version outside our list let through by the settings) are
accepted and listed in ``Message.warnings``; only what would corrupt data is refused
(:func:`parse`).

Addressing follows HL7 notation: ``PID-3.4.1`` is segment PID, field 3, component 4,
sub-component 1. Field numbers count like HL7: MSH-1 is the field separator, MSH-2 the
encoding characters. The explicit null ``""`` is returned as ``""`` (two quote
characters) so that callers can tell "clear this value" from "not sent" (empty).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from functools import lru_cache

from broker.hl7 import charsets
from broker.hl7.errors import ErrorCode, ErrorLocation, HL7Error, field_error
from broker.hl7.warnings import DATA_TYPE, TABLE_VALUE, HL7Warning

NULL = '""'
_PATH = re.compile(r"^([A-Z0-9]{3})-(\d+)(?:\.(\d+))?(?:\.(\d+))?$")


@dataclass(frozen=True)
class Delimiters:
    """The five delimiters of a message, from MSH-1 and MSH-2."""

    field: str = "|"
    component: str = "^"
    repetition: str = "~"
    escape: str = "\\"
    subcomponent: str = "&"
    # What a field of nothing but spaces and delimiters is made of ("not sent").
    blank: str = dataclass_field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "blank",
                           " " + self.component + self.subcomponent + self.repetition)

    @property
    def encoding_characters(self) -> str:
        return self.component + self.repetition + self.escape + self.subcomponent



@dataclass(frozen=True)
class Path:
    """A parsed HL7 location: segment-field[.component[.subcomponent]] (1-based)."""

    segment: str
    field: int
    component: int = 0
    subcomponent: int = 0

    @classmethod
    def parse(cls, text: str) -> Path:
        match = _PATH.match(text.strip())
        if not match:
            raise ValueError(f"not an HL7 path like 'PID-3.4.1': {text!r}")
        seg, fld, comp, sub = match.groups()
        return cls(seg, int(fld), int(comp or 0), int(sub or 0))

    def __str__(self) -> str:
        text = f"{self.segment}-{self.field}"
        if self.component:
            text += f".{self.component}"
        if self.subcomponent:
            text += f".{self.subcomponent}"
        return text


class Segment:
    """One segment; fields are split lazily and unescaped on access.

    Splits are cached: a field's repetitions are split once, and each repetition's
    components once, so reading every repetition of a field costs time linear in its
    length (callers loop ``get(..., repetition=i)``).
    """

    __slots__ = ("_components", "_fields", "_parts", "_repetitions", "delimiters", "message",
                 "name", "text")

    def __init__(self, text: str, message: Message) -> None:
        self.text = text
        self.message = message
        self.delimiters = message.delimiters
        self.name = text[:3]
        self._fields: list[str] | None = None
        self._repetitions: dict[int, list[str]] | None = None
        self._components: dict[tuple[int, int], list[str]] | None = None
        self._parts: dict[tuple[int, int], list[list[str]]] | None = None

    @property
    def fields(self) -> list[str]:
        """Raw (still escaped) fields; index i is HL7 field i (MSH included)."""
        if self._fields is None:
            parts = self.text.split(self.delimiters.field)
            if self.name == "MSH":
                # MSH-1 is the separator itself; MSH-2 the encoding characters.
                parts = ["MSH", self.delimiters.field, *parts[1:]]
            self._fields = parts
        return self._fields

    def raw_field(self, number: int) -> str:
        fields = self._fields or self.fields
        return fields[number] if 0 < number < len(fields) else ""

    def repetitions(self, number: int) -> list[str]:
        """Raw repetitions of a field (MSH-2 is never split). The list is shared with
        later calls: do not modify it."""
        cache = self._repetitions
        if cache is None:
            cache = self._repetitions = {}
        reps = cache.get(number)
        if reps is None:
            raw = self.raw_field(number)
            if self.name == "MSH" and number <= 2:
                reps = [raw]
            else:
                reps = raw.split(self.delimiters.repetition) if raw else []
            cache[number] = reps
        return reps

    def _raw_components(self, number: int, repetition: int) -> list[str] | None:
        """Raw components of one repetition (cached); None when it is absent."""
        cache = self._components
        if cache is None:
            cache = self._components = {}
        key = (number, repetition)
        comps = cache.get(key)
        if comps is None:
            reps = self.repetitions(number)
            if repetition >= len(reps):
                return None
            comps = reps[repetition].split(self.delimiters.component)
            cache[key] = comps
        return comps

    def components(self, number: int, repetition: int = 0) -> list[str]:
        """Unescaped components of one repetition of a field (sub-components kept
        joined by the sub-component delimiter, each part unescaped)."""
        comps = self._raw_components(number, repetition)
        if comps is None:
            return []
        return [self._unescape_sub(c) for c in comps]

    def parts(self, number: int, repetition: int = 0) -> list[list[str]]:
        """One repetition of a field as components of unescaped sub-components (cached;
        do not modify): split at the delimiters first, then each part unescaped (HL7
        v2.5.1 2.7), so an escaped delimiter stays inside its part. MSH-1 and MSH-2
        are one part each; an absent repetition has no components."""
        cache = self._parts
        if cache is None:
            cache = self._parts = {}
        key = (number, repetition)
        found = cache.get(key)
        if found is None:
            if self.name == "MSH" and number <= 2:
                reps = self.repetitions(number)
                found = [[reps[repetition]]] if repetition < len(reps) else []
            else:
                raw = self.raw_field(number)
                if not repetition and self.delimiters.repetition not in raw:
                    found = self._split_parts(raw) if raw else []  # one repetition or none
                else:
                    reps = self.repetitions(number)
                    found = self._split_parts(reps[repetition]) if repetition < len(reps) else []
            cache[key] = found
        return found

    def _split_parts(self, rep: str) -> list[list[str]]:
        d = self.delimiters
        comps = rep.split(d.component)
        if d.escape in rep:
            unescape = self.message.unescape
            return [[unescape(s) for s in c.split(d.subcomponent)] for c in comps]
        if d.subcomponent in rep:
            return [c.split(d.subcomponent) for c in comps]
        return [[c] for c in comps]

    def get(self, number: int, component: int = 0, subcomponent: int = 0,
            repetition: int = 0) -> str:
        """The unescaped value at field[.component[.subcomponent]] of a repetition.

        With component 0 the whole repetition is returned, each (sub)component
        unescaped and the delimiters between them kept.
        """
        reps = self.repetitions(number)
        if repetition >= len(reps):
            return ""
        rep = reps[repetition]
        if self.name == "MSH" and number <= 2:
            return rep
        d = self.delimiters
        if not component:
            if rep == NULL or d.escape not in rep:
                return rep
            return d.component.join(
                d.subcomponent.join(self.message.unescape(s) for s in c.split(d.subcomponent))
                for c in rep.split(d.component)
            )
        comps = self._raw_components(number, repetition) or []
        if component > len(comps):
            return ""
        comp = comps[component - 1]
        if not subcomponent:
            return self._unescape_sub(comp) if self.delimiters.subcomponent in comp else (
                self.message.unescape(comp)
            )
        subs = comp.split(self.delimiters.subcomponent)
        if subcomponent > len(subs):
            return ""
        return self.message.unescape(subs[subcomponent - 1])

    def _unescape_sub(self, component: str) -> str:
        d = self.delimiters
        if d.subcomponent not in component:
            return self.message.unescape(component)
        parts = component.split(d.subcomponent)
        return d.subcomponent.join(self.message.unescape(s) for s in parts)

    def __repr__(self) -> str:  # ids only: never print a segment's content
        return f"<Segment {self.name}>"


class Message:
    """An inbound HL7 v2 message, decoded and split into segments.

    Build with :func:`parse`. ``charset`` is the MSH-18 charset in force; the text has
    already been decoded with it, so every accessor returns ``str``.
    """

    def __init__(self, text: str, delimiters: Delimiters, charset: charsets.Charset,
                 msh18: list[str]) -> None:
        self.delimiters = delimiters
        self.charset = charset
        self.msh18 = msh18
        # Adjustments made to read the message (framing, charset); see broker.hl7.warnings.
        self.warnings: list[HL7Warning] = []
        self.segments = [Segment(s.lstrip(" \t"), self) for s in text.split("\r")
                         if s.strip()]
        self._escape_re = re.compile(
            re.escape(delimiters.escape) + r"([^" + re.escape(delimiters.escape) + r"\r]*)"
            + re.escape(delimiters.escape)
        )

    # -- segment access -------------------------------------------------------------
    @property
    def msh(self) -> Segment:
        return self.segments[0]

    def segment(self, name: str) -> Segment | None:
        for seg in self.segments:
            if seg.name == name:
                return seg
        return None

    def all(self, name: str) -> list[Segment]:
        return [seg for seg in self.segments if seg.name == name]

    def __iter__(self) -> Iterator[Segment]:
        return iter(self.segments)

    def get(self, path: str | Path) -> str:
        """Unescaped value at a path such as ``PID-3.4.1`` in the first such segment."""
        p = Path.parse(path) if isinstance(path, str) else path
        seg = self.segment(p.segment)
        return seg.get(p.field, p.component, p.subcomponent) if seg else ""

    # -- header shortcuts -----------------------------------------------------------
    @property
    def control_id(self) -> str:
        return self.msh.get(10)

    @property
    def message_code(self) -> str:
        return self.msh.get(9, 1)

    @property
    def trigger_event(self) -> str:
        """MSH-9.2; HL7 v2.1 has no trigger component in MSH-9, so an ORM without one
        is O01 and an ADT takes EVN-1 (the event type code of v2.1 3.3.1)."""
        event = self.msh.get(9, 2)
        if event or version_at_least(self.version, "2.2"):
            return event
        code = self.message_code.upper()
        return "O01" if code == "ORM" else self.get("EVN-1") if code == "ADT" else ""

    @property
    def message_type(self) -> str:
        """``ORM^O01`` style type (message code ^ trigger event)."""
        return f"{self.message_code}^{self.trigger_event}"

    @property
    def version(self) -> str:
        """MSH-12.1, the version id (``2.5.1``)."""
        return self.msh.get(12, 1).strip()

    def version_at_least(self, minimum: str) -> bool:
        """True when MSH-12 is ``minimum`` or later (see :func:`version_at_least`)."""
        return version_at_least(self.version, minimum)

    # -- escapes --------------------------------------------------------------------
    def unescape(self, text: str) -> str:
        """Resolve HL7 escape sequences in one (sub)component (HL7 2.7).

        ``\\F\\ \\S\\ \\T\\ \\R\\ \\E\\`` give the delimiters; ``\\Xhh..\\`` gives bytes
        decoded in the message charset; ``\\.br\\`` and ``\\.sp\\`` give CR LF;
        highlighting (``\\H\\ \\N\\``), other formatting commands and ``\\Z..\\`` are
        dropped. Charset switches (``\\C..\\``, ``\\M..\\``) are dropped too: the text
        was decoded once with MSH-18.
        """
        if self.delimiters.escape not in text:
            return text
        return self._escape_re.sub(self._replace_escape, text)

    def _replace_escape(self, match: re.Match[str]) -> str:
        d = self.delimiters
        seq = match.group(1)
        simple = {"F": d.field, "S": d.component, "T": d.subcomponent,
                  "R": d.repetition, "E": d.escape}
        if seq in simple:
            return simple[seq]
        if seq.startswith("X") and len(seq) > 1:
            try:
                return bytes.fromhex(seq[1:]).decode(self.charset.codec)
            except (ValueError, UnicodeDecodeError):
                return ""
        if seq in (".br", ".sp") or seq.startswith(".sp"):
            return "\r\n"
        return ""


# Versions whose MSH, PID, PV1, ORC, OBR, OMI and ADT segments the broker reads
# (HL7 v2 is backward compatible for them: later versions only add fields).
HL7_VERSIONS: tuple[str, ...] = ("2.1", "2.2", "2.3", "2.3.1", "2.4", "2.5", "2.5.1",
                                 "2.6", "2.7", "2.7.1", "2.8", "2.8.1", "2.8.2")


@lru_cache(maxsize=256)  # a few versions, read for every message and its ACK
def version_key(version: str) -> tuple[int, ...] | None:
    """``2.5.1`` -> ``(2, 5, 1)``; None when MSH-12 is empty or not a dotted number."""
    parts = version.strip().split(".")
    if not all(p.isdigit() for p in parts):
        return None
    return tuple(int(p) for p in parts)


def version_at_least(version: str, minimum: str) -> bool:
    """True when ``version`` is ``minimum`` or later (``2.5.1`` >= ``2.5``; ``2.10`` >
    ``2.9``). An empty or unreadable version counts as the newest: such a message (let
    through by ``accept_unknown_hl7_version``) is read with the current rules."""
    key, floor = version_key(version), version_key(minimum)
    return key is None or floor is None or key >= floor


@dataclass(frozen=True)
class ReadOptions:
    """How :func:`parse` reads: extra MSH-18 spellings (``name -> Table 0211 value``,
    from the mapping profiles' ``charset_aliases``), the charset assumed when MSH-18 is
    empty, and the caps that keep reading bounded (defaults real traffic never meets:
    HL7 data types have at most a few dozen components)."""

    charset_aliases: Mapping[str, str] = dataclass_field(default_factory=dict)
    default_charset: str = "ASCII"
    max_segments: int = 2000
    max_repetitions: int = 1000  # per field
    max_components: int = 100  # per repetition, and sub-components per component


DEFAULT_OPTIONS = ReadOptions()

BOM = b"\xef\xbb\xbf"
_WHITE = b" \t\r\n\x0b\x0c"
_HEADER = ErrorLocation("MSH")
_CHARSET = ErrorLocation("MSH", 18)

# Reading adjustments (HL7Warning texts name the field and what was done, never a value).
W_BOM = HL7Warning(DATA_TYPE, "UTF-8 byte order mark before MSH ignored", _HEADER)
W_LEADING = HL7Warning(DATA_TYPE, "white space before MSH ignored", _HEADER)
W_CRLF = HL7Warning(DATA_TYPE, "segments end with CR LF: read as CR (HL7 v2.5.1 2.5 "
                    "segment terminator)")
W_LF = HL7Warning(DATA_TYPE, "segments end with LF: read as CR (HL7 v2.5.1 2.5 segment "
                  "terminator)")
W_BLANK = HL7Warning(DATA_TYPE, "empty segments (blank lines) ignored")
W_INDENT = HL7Warning(DATA_TYPE, "white space before a segment ID ignored")
W_EIGHT_BIT = HL7Warning(DATA_TYPE, "MSH-18 is empty or ASCII but the message has 8-bit "
                         "bytes: read as 8859/1", _CHARSET)
W_UNKNOWN_CHARSET = HL7Warning(TABLE_VALUE, "MSH-18 names a character set the broker does "
                               "not support; the message is 7-bit ASCII and was read as "
                               "ASCII", _CHARSET)
W_ENCODING_CHARACTERS = HL7Warning(
    DATA_TYPE, "MSH-2 is not four distinct encoding characters but only uses the standard "
    "ones: read with the standard ^~\\& (HL7 v2.5.1 2.5.4)", ErrorLocation("MSH", 2))
W_UNKNOWN_VERSION = HL7Warning(ErrorCode.UNSUPPORTED_VERSION_ID, "MSH-12 is not a known "
                               "HL7 v2 version: read with the v2.5.1 rules",
                               ErrorLocation("MSH", 12))


def _alias_warning(charset: charsets.Charset) -> HL7Warning:
    if charset is charsets.WINDOWS_1252:
        done = "read as Windows-1252 (a superset of 8859/1, not in Table 0211)"
    else:
        done = f"read as {charset.hl7}"
    return HL7Warning(TABLE_VALUE, f"MSH-18 is not an HL7 Table 0211 value: {done}", _CHARSET)


def _body(raw: bytes, found: list[HL7Warning]) -> bytes:
    """The message without framing that carries nothing: a UTF-8 byte order mark and
    white space before MSH (each a warning), white space and segment ends after the
    last segment (silently: an MLLP tail such as ``\\r\\r\\n`` before 0x1C is common).
    Segment ends are normalised to CR, with a warning for CR LF or LF (HL7 v2.5.1 2.5:
    a segment ends with CR)."""
    data, leading = raw, False
    while True:
        stripped = data.lstrip(_WHITE)
        leading = leading or len(stripped) != len(data)
        if not stripped.startswith(BOM):
            break
        if W_BOM not in found:
            found.append(W_BOM)
        data = stripped[len(BOM):]
    if leading:
        found.append(W_LEADING)
    data = stripped.rstrip(_WHITE)
    lf = data.count(b"\n")
    if lf:
        crlf = data.count(b"\r\n")
        if crlf:
            found.append(W_CRLF)
        if lf > crlf:
            found.append(W_LF)
        data = data.replace(b"\r\n", b"\r").replace(b"\n", b"\r")
    return data


def _delimiter_ok(char: str) -> bool:
    """A delimiter is a printable, non-alphanumeric ASCII character (HL7 v2.5.1 2.5.4)."""
    return "!" <= char <= "~" and not char.isalnum()


def _split_header(data: bytes, found: list[HL7Warning]) -> tuple[Delimiters, list[str]]:
    """Delimiters and MSH-18 from the header, read as Latin-1 (ASCII-safe).

    A header that cannot be read is refused with AR (HL7 v2.5.1 2.9.2): no MSH (100),
    MSH-1 missing because a segment end follows ``MSH`` or not a valid delimiter (102 at
    MSH-1), MSH-2 not four more distinct delimiters (102 at MSH-2). In the last case,
    when MSH-1 is still usable, the error carries a best-effort reading (``partial``)
    so the ACK can name the message. An MSH-2 that only uses the standard encoding
    characters, one missing (``^\\&``) or one doubled (``^~\\\\&``), is a sender's
    slip with an obvious meaning: read with the standard ones, with a warning.
    """
    if not data.startswith(b"MSH"):
        raise HL7Error(ErrorCode.SEGMENT_SEQUENCE_ERROR, "message does not start with MSH",
                       _HEADER, reject=True)
    header = data.split(b"\r", 1)[0].decode("latin-1")
    if len(header) < 4:
        raise field_error(ErrorCode.DATA_TYPE_ERROR, "MSH", 1,
                          "MSH-1 is missing: the segment ends after MSH", reject=True)
    sep = header[3]
    if not _delimiter_ok(sep):
        raise field_error(ErrorCode.DATA_TYPE_ERROR, "MSH", 1,
                          "MSH-1 must be a printable, non-alphanumeric character",
                          reject=True)
    enc = header[4:].split(sep, 1)[0]
    if len(enc) >= 4 and all(_delimiter_ok(c) for c in enc[:4]) and len(
            set(enc[:4] + sep)) == 5:
        delimiters = Delimiters(sep, enc[0], enc[1], enc[2], enc[3])
    else:
        delimiters = Delimiters(field=sep)  # the standard encoding characters
        standard = delimiters.encoding_characters
        if sep in standard or not _standard_slip(enc, standard):
            error = field_error(ErrorCode.DATA_TYPE_ERROR, "MSH", 2,
                                "MSH-1/MSH-2 must declare five distinct delimiters",
                                reject=True)
            if sep not in standard:
                # Fields can still be told apart: read the header with the usual
                # encoding characters so MSH-10 is echoed and MSH-3/4 routed back.
                error.partial = Message(data.decode("latin-1"), delimiters,
                                        charsets.ASCII, [])
            raise error
        found.append(W_ENCODING_CHARACTERS)
    fields = header.split(sep)
    msh18 = fields[17].split(delimiters.repetition) if len(fields) > 17 else []
    return delimiters, msh18


def _standard_slip(declared: str, standard: str) -> bool:
    """Whether MSH-2 is the standard encoding characters with one left out or one
    doubled (``^\\&``, ``^~\\\\&``): in their order, at least three of them."""
    collapsed = "".join(c for i, c in enumerate(declared) if not i or declared[i - 1] != c)
    remaining = iter(standard)
    return len(collapsed) >= 3 and all(c in remaining for c in collapsed)


def _seven_bit(data: bytes) -> bool:
    """True when ``data`` is plain ASCII: no 8-bit byte and no ISO 2022 escape or shift
    (ESC, SO, SI), which would mean an undeclared multi-byte set."""
    return data.isascii() and not any(c in data for c in (b"\x1b", b"\x0e", b"\x0f"))


def parse(raw: bytes, options: ReadOptions | None = None, *,
          default_charset: str | None = None) -> Message:
    """Decode and split one HL7 message (the bytes inside an MLLP frame).

    Liberal in what it accepts, each adjustment listed in ``Message.warnings`` (the same
    list for the same bytes, every time): see :func:`_body` for framing; an MSH-18
    spelling that is not a Table 0211 value but names one (``UTF-8``, ``Latin1``, a
    profile's ``charset_aliases``) is read as that value; an unknown MSH-18 on a pure
    ASCII message is read as ASCII; 8-bit bytes under an empty or ASCII MSH-18 are read
    as 8859/1.

    Raises :class:`HL7Error` for a message that cannot be read: an unreadable header
    (AR, see :func:`_split_header`), an unknown MSH-18 on non-ASCII bytes (103 at MSH-18)
    or bytes that are not valid in the declared charset (102 at MSH-18: nothing is
    written from such a message). Whenever the header can be read the error carries a
    best-effort ``partial`` Message, so the ACK echoes MSH-10 and swaps MSH-3/4.
    """
    options = options or DEFAULT_OPTIONS
    found: list[HL7Warning] = []
    data = _body(raw, found)
    try:
        delimiters, msh18 = _split_header(data, found)
    except HL7Error as exc:
        if exc.partial is not None:
            exc.partial.warnings = found
        raise
    names = [m for m in msh18 if m.strip()]
    if names:
        resolved = charsets.resolve(names[-1], options.charset_aliases)
    else:
        resolved = charsets.resolve(default_charset or options.default_charset) or (
            charsets.Resolved(charsets.ASCII, alias=False))
    if resolved is None:
        if not _seven_bit(data):
            error = field_error(ErrorCode.TABLE_VALUE_NOT_FOUND, "MSH", 18,
                                "unsupported character set in MSH-18")
            error.partial = _partial(data.decode("latin-1"), delimiters, charsets.ASCII, [],
                                     found)
            raise error
        found.append(W_UNKNOWN_CHARSET)
        charset, msh18 = charsets.ASCII, []
    else:
        charset = resolved.charset
        if resolved.alias and names:
            found.append(_alias_warning(charset))
    codec = charset.codec
    if codec == "ascii":
        # Undeclared 8-bit data is common; reading it as Latin-1 loses nothing and the
        # item is then tagged ISO_IR 100 when it needs to be.
        codec = "latin-1"
        if not data.isascii():
            found.append(W_EIGHT_BIT)
    elif codec == "euc_kr":
        if b"\x0e" in data:  # SO/SI shifts: ISO-2022-KR proper
            codec = "iso2022_kr"
        else:
            data = data.replace(b"\x1b$)C", b"")
    try:
        text = data.decode(codec)
    except UnicodeDecodeError as exc:
        error = field_error(ErrorCode.DATA_TYPE_ERROR, "MSH", 18,
                            f"byte at offset {exc.start} is not valid {charset.hl7}")
        error.partial = _partial(data.decode(codec, errors="replace"), delimiters, charset,
                                 msh18, found)
        raise error from None
    message = _partial(text, delimiters, charsets.for_text(charset, text), msh18, found)
    if message.version and message.version not in HL7_VERSIONS:
        found.append(W_UNKNOWN_VERSION)
    try:
        _check_limits(message, options)
    except HL7Error as exc:
        exc.partial = message
        raise
    return message


def _check_limits(message: Message, options: ReadOptions) -> None:
    """Refuse a message beyond the reading caps (nothing is kept from it): more than
    ``max_segments`` segments (AR 100 at the first one over), a field with more than
    ``max_repetitions`` repetitions or a repetition with more than ``max_components``
    components (or a component with more sub-components): AE 102 naming the field.
    Linear in the message size (a count per field; only a field over the cap as a
    whole is split)."""
    segments = message.segments
    if len(segments) > options.max_segments:
        over = segments[options.max_segments]
        sequence = sum(1 for s in segments[:options.max_segments + 1] if s.name == over.name)
        raise HL7Error(ErrorCode.SEGMENT_SEQUENCE_ERROR,
                       f"the message has more than {options.max_segments} segments",
                       ErrorLocation(over.name, sequence=sequence), reject=True)
    d = message.delimiters
    max_reps, max_comps = options.max_repetitions, options.max_components

    def within(text: str) -> bool:
        return (text.count(d.repetition) < max_reps and text.count(d.component) < max_comps
                and text.count(d.subcomponent) < max_comps)

    seen: dict[str, int] = {}
    for seg in segments:
        sequence = seen[seg.name] = seen.get(seg.name, 0) + 1
        if within(seg.text):
            continue
        for number, raw in enumerate(seg.fields):
            if not number or not raw or (seg.name == "MSH" and number <= 2):
                continue
            where = f"{seg.name}-{number}"
            if raw.count(d.repetition) >= max_reps:
                raise field_error(ErrorCode.DATA_TYPE_ERROR, seg.name, number,
                                  f"{where} has more than {max_reps} repetitions",
                                  sequence=sequence)
            if raw.count(d.component) < max_comps and raw.count(d.subcomponent) < max_comps:
                continue
            for rep in seg.repetitions(number):
                comps = rep.split(d.component)
                if len(comps) > max_comps:
                    raise field_error(ErrorCode.DATA_TYPE_ERROR, seg.name, number,
                                      f"{where} has more than {max_comps} components",
                                      sequence=sequence)
                if any(c.count(d.subcomponent) >= max_comps for c in comps):
                    raise field_error(ErrorCode.DATA_TYPE_ERROR, seg.name, number,
                                      f"{where} has more than {max_comps} sub-components "
                                      "in a component", sequence=sequence)


def _partial(text: str, delimiters: Delimiters, charset: charsets.Charset, msh18: list[str],
             found: list[HL7Warning]) -> Message:
    """A Message over decoded text, with the segment-level reading warnings added."""
    lines = text.split("\r")
    if any(not line.strip() for line in lines):
        found.append(W_BLANK)
    if any(line[:1] in (" ", "\t") and line.strip() for line in lines):
        found.append(W_INDENT)
    message = Message(text, delimiters, charset, msh18)
    message.warnings = found
    return message


def content_hash(raw: bytes) -> str:
    """SHA-256 of a message's content for duplicate detection (HL7 v2.5.1 2.10.1:
    a resent message keeps its MSH-10): the bytes with MSH-7 (the time of sending,
    which a resend may renew) left out, segment ends normalised to CR, and framing
    that carries no content (a byte order mark, blank lines, white space at either
    end) ignored."""
    text = raw.removeprefix(b"\xef\xbb\xbf").strip()
    segments = [s for s in text.replace(b"\r\n", b"\r").replace(b"\n", b"\r").split(b"\r")
                if s.strip()]
    if segments and segments[0].startswith(b"MSH") and len(segments[0]) > 3:
        separator = segments[0][3:4]
        fields = segments[0].split(separator)
        if len(fields) > 6:
            fields[6] = b""
            segments[0] = separator.join(fields)
    return hashlib.sha256(b"\r".join(segments)).hexdigest()
