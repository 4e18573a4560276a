"""A thin, fast HL7 v2 reader for inbound messages (HL7 v2.5.1 Chapter 2).

hl7apy takes about 8 ms per ORM (DESIGN.md); this reader splits on the delimiters
declared in MSH-1/MSH-2 (checklist A4), decodes the message in the charset named by
MSH-18 (A6, A7), accepts CR, LF and CRLF segment ends (A3) and unescapes each
component after splitting (A5, HL7 2.7 "Use of escape sequences in text fields").

Addressing follows HL7 notation: ``PID-3.4.1`` is segment PID, field 3, component 4,
sub-component 1. Field numbers count like HL7: MSH-1 is the field separator, MSH-2 the
encoding characters. The explicit null ``""`` is returned as ``""`` (two quote
characters) so that callers can tell "clear this value" from "not sent" (empty).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass

from broker.hl7 import charsets
from broker.hl7.errors import ErrorCode, ErrorLocation, HL7Error, field_error
from broker.hl7.warnings import HL7Warning

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
    """One segment; fields are split lazily and unescaped on access."""

    __slots__ = ("_fields", "delimiters", "message", "name", "text")

    def __init__(self, text: str, message: Message) -> None:
        self.text = text
        self.message = message
        self.delimiters = message.delimiters
        self.name = text[:3]
        self._fields: list[str] | None = None

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
        fields = self.fields
        return fields[number] if 0 < number < len(fields) else ""

    def repetitions(self, number: int) -> list[str]:
        """Raw repetitions of a field (MSH-2 is never split)."""
        raw = self.raw_field(number)
        if self.name == "MSH" and number <= 2:
            return [raw]
        return raw.split(self.delimiters.repetition) if raw else []

    def components(self, number: int, repetition: int = 0) -> list[str]:
        """Unescaped components of one repetition of a field (sub-components kept
        joined by the sub-component delimiter, each part unescaped)."""
        reps = self.repetitions(number)
        if repetition >= len(reps):
            return []
        return [self._unescape_sub(c) for c in reps[repetition].split(self.delimiters.component)]

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
        if not component:
            if rep == NULL:
                return NULL
            d = self.delimiters
            return d.component.join(
                d.subcomponent.join(self.message.unescape(s) for s in c.split(d.subcomponent))
                for c in rep.split(d.component)
            )
        comps = rep.split(self.delimiters.component)
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
        self.segments = [Segment(s, self) for s in text.split("\r") if s.strip()]
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
        return self.msh.get(9, 2)

    @property
    def message_type(self) -> str:
        """``ORM^O01`` style type (message code ^ trigger event)."""
        return f"{self.message_code}^{self.trigger_event}"

    @property
    def version(self) -> str:
        return self.msh.get(12, 1)

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


def _split_header(raw: bytes) -> tuple[Delimiters, list[str]]:
    """Delimiters and MSH-18 from the header, read as Latin-1 (ASCII-safe)."""
    if not raw.startswith(b"MSH") or len(raw) < 8:
        raise HL7Error(ErrorCode.SEGMENT_SEQUENCE_ERROR, "message does not start with MSH",
                       ErrorLocation("MSH"))
    header = raw.split(b"\r", 1)[0].split(b"\n", 1)[0].decode("latin-1")
    sep = header[3]
    enc = header[4:].split(sep, 1)[0]
    if len(enc) < 4 or sep.isalnum() or len(set(enc[:4] + sep)) != 5:
        raise field_error(ErrorCode.DATA_TYPE_ERROR, "MSH", 2,
                          "MSH-1/MSH-2 must declare five distinct delimiters")
    delimiters = Delimiters(sep, enc[0], enc[1], enc[2], enc[3])
    fields = header.split(sep)
    msh18 = fields[17].split(delimiters.repetition) if len(fields) > 17 else []
    return delimiters, msh18


def parse(raw: bytes, default_charset: str = "ASCII") -> Message:
    """Decode and split one HL7 message (the bytes inside an MLLP frame).

    Raises :class:`HL7Error` for a message that cannot be read at all: no MSH, bad
    delimiters (102 at MSH-2), an unknown MSH-18 charset (103 at MSH-18) or bytes that
    are not valid in the declared charset (102 at MSH-18, checklist A6: nothing is
    written from such a message).
    """
    delimiters, msh18 = _split_header(raw)
    names = [m for m in msh18 if m.strip()] or ([default_charset] if default_charset else [])
    charset = charsets.lookup(names)
    if charset is None:
        raise field_error(ErrorCode.TABLE_VALUE_NOT_FOUND, "MSH", 18,
                          "unsupported character set in MSH-18")
    codec = charset.codec
    if codec == "ascii":
        # Undeclared 8-bit data is common; reading it as Latin-1 loses nothing and the
        # item is then tagged ISO_IR 100 when it needs to be.
        codec = "latin-1"
    try:
        text = raw.decode(codec)
    except UnicodeDecodeError as exc:
        error = field_error(ErrorCode.DATA_TYPE_ERROR, "MSH", 18,
                            f"byte at offset {exc.start} is not valid {charset.hl7}")
        # The header is still readable: keep a best-effort copy so the ACK can name
        # the message (MSA-2) and the duplicate key can be stored.
        lenient = raw.decode(codec, errors="replace").replace("\r\n", "\r").replace("\n", "\r")
        error.partial = Message(lenient, delimiters, charset, msh18)
        raise error from None
    text = text.replace("\r\n", "\r").replace("\n", "\r")
    return Message(text, delimiters, charset, msh18)


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
