"""The HL7 reader takes real EHR traffic: framing quirks, MSH-18 spellings and versions
are accepted with a warning; what would corrupt data is refused, and whenever the
header can be read the refusal still carries a reading of it (for MSA-2 and routing)."""

from __future__ import annotations

import pytest

from broker.hl7 import charsets
from broker.hl7.errors import HL7Error
from broker.hl7.message import (
    HL7_VERSIONS,
    W_BLANK,
    W_BOM,
    W_CRLF,
    W_EIGHT_BIT,
    W_INDENT,
    W_LEADING,
    W_LF,
    W_UNKNOWN_CHARSET,
    W_UNKNOWN_VERSION,
    ReadOptions,
    parse,
    version_at_least,
    version_key,
)
from tests.conftest import sample

ORM = sample("05")  # 2.3.1, empty MSH-18
ADT_UTF8 = sample("01")  # UNICODE UTF-8, "Müller^Jürgen..."


def with_charset(message: bytes, value: str) -> bytes:
    """``message`` (MSH with 12 fields) with MSH-18 set."""
    header, rest = message.split(b"\r", 1)
    fields = header.split(b"|")[:12]
    fields += [b""] * (17 - len(fields)) + [value.encode()]
    return b"|".join(fields) + b"\r" + rest


def texts(message: bytes, options: ReadOptions | None = None) -> list[str]:
    return [w.text for w in parse(message, options).warnings]


# -- framing ---------------------------------------------------------------------------

def test_clean_message_has_no_warnings() -> None:
    assert parse(ORM).warnings == []


@pytest.mark.parametrize(("framing", "expected"), [
    (lambda m: b"\xef\xbb\xbf" + m, [W_BOM]),
    (lambda m: m.replace(b"\r", b"\n"), [W_LF]),
    (lambda m: m.replace(b"\r", b"\r\n"), [W_CRLF]),
    (lambda m: b"\xef\xbb\xbf" + m.replace(b"\r", b"\n"), [W_BOM, W_LF]),
    (lambda m: b"\r\n \t" + m, [W_LEADING]),
    (lambda m: m.replace(b"\rPID", b"\r\r\rPID"), [W_BLANK]),
    (lambda m: m.replace(b"\rPID", b"\r  PID"), [W_INDENT]),
    # Tails carry nothing and are silent: extra segment ends and white space.
    (lambda m: m + b"\r\r\n", []),
    (lambda m: m + b"\n", []),
    (lambda m: m + b"   \t ", []),
    (lambda m: m + b"\r", []),
    (lambda m: m.rstrip(b"\r"), []),
])
def test_framing_quirks_read_the_same_message(framing, expected) -> None:  # type: ignore[no-untyped-def]
    msg = parse(framing(ORM))
    assert msg.warnings == expected
    reference = parse(ORM)
    assert [s.text for s in msg.segments] == [s.text for s in reference.segments]
    assert msg.control_id == "ORM0005" and msg.get("PID-5.1") == "Doe"


def test_warnings_are_deterministic_and_name_no_value() -> None:
    quirky = b"\xef\xbb\xbf" + with_charset(ADT_UTF8, "utf-8").replace(b"\r", b"\r\n")
    first, second = parse(quirky).warnings, parse(quirky).warnings
    assert first == second and len(first) == 3
    for warning in first:
        assert "Müller" not in warning.text and "utf-8" not in warning.text


def test_mixed_crlf_and_lf_gives_both_warnings() -> None:
    segments = ORM.split(b"\r")
    mixed = b"\r\n".join(segments[:3]) + b"\n" + b"\n".join(segments[3:])
    assert set(parse(mixed).warnings) == {W_CRLF, W_LF}


# -- unreadable headers ----------------------------------------------------------------

@pytest.mark.parametrize(("raw", "code", "field"), [
    (b"MSH\r^~\\&|EHR|HOSP|R|F|2025||ORM^O01|X1|P|2.3.1\rPID|1", 102, 1),
    (b"MSH\n^~\\&|EHR|HOSP\n", 102, 1),
    (b"MSHA^~\\&|EHR|HOSP|R|F|2025||ORM^O01|X1|P|2.3.1", 102, 1),
    (b"MSH ^~\\&|EHR", 102, 1),
    (b"PID|1||123", 100, 0),
    (b"", 100, 0),
])
def test_unreadable_header_is_ar_without_a_reading(raw: bytes, code: int, field: int) -> None:
    with pytest.raises(HL7Error) as caught:
        parse(raw)
    error = caught.value
    assert (error.code, error.ack_code, error.partial) == (code, "AR", None)
    assert error.location is not None and error.location.field == field


def test_bad_encoding_characters_still_give_the_header() -> None:
    raw = ORM.replace(b"MSH|^~\\&|", b"MSH|^~^&|", 1)
    with pytest.raises(HL7Error) as caught:
        parse(b"\xef\xbb\xbf" + raw)
    error = caught.value
    assert (error.code, error.ack_code, str(error.location)) == (102, "AR", "MSH^1^2")
    assert error.partial.control_id == "ORM0005"
    assert error.partial.msh.get(3) == "EHR" and error.partial.version == "2.3.1"
    assert error.partial.warnings == [W_BOM]


# -- character sets --------------------------------------------------------------------

@pytest.mark.parametrize(("value", "codec", "dicom"), [
    ("ASCII", "ascii", ()),
    ("ISO IR6", "ascii", ()),
    ("8859/1", "iso8859_1", ("ISO_IR 100",)),
    ("8859/2", "iso8859_2", ("ISO_IR 101",)),
    ("8859/3", "iso8859_3", ("ISO_IR 109",)),
    ("8859/4", "iso8859_4", ("ISO_IR 110",)),
    ("8859/5", "iso8859_5", ("ISO_IR 144",)),
    ("8859/6", "iso8859_6", ("ISO_IR 127",)),
    ("8859/7", "iso8859_7", ("ISO_IR 126",)),
    ("8859/8", "iso8859_8", ("ISO_IR 138",)),
    ("8859/9", "iso8859_9", ("ISO_IR 148",)),
    ("8859/15", "iso8859_15", ("ISO_IR 203",)),
    ("ISO IR14", "shift_jis", ("ISO_IR 13",)),
    ("ISO IR87", "iso2022_jp", ("", "ISO 2022 IR 87")),
    ("ISO IR159", "iso2022_jp_2", ("", "ISO 2022 IR 159")),
    ("KS X 1001", "euc_kr", ("", "ISO 2022 IR 149")),
    ("UNICODE UTF-8", "utf_8", ("ISO_IR 192",)),
    ("UNICODE", "utf_8", ("ISO_IR 192",)),
    ("GB 18030-2000", "gb18030", ("GB18030",)),
    ("BIG-5", "big5", ("ISO_IR 192",)),
    ("CNS 11643-1992", "big5", ("ISO_IR 192",)),
])
def test_table_0211_values_map_to_dicom_terms(value: str, codec: str,
                                              dicom: tuple[str, ...]) -> None:
    found = charsets.resolve(value)
    assert found is not None and not found.alias
    assert (found.charset.hl7, found.charset.codec, found.charset.dicom) == (value, codec, dicom)
    assert parse(with_charset(ORM, value)).warnings == []


@pytest.mark.parametrize(("spelling", "standard"), [
    ("UTF-8", "UNICODE UTF-8"), ("UTF8", "UNICODE UTF-8"), ("utf-8", "UNICODE UTF-8"),
    ("ISO_IR 192", "UNICODE UTF-8"),
    ("Latin1", "8859/1"), ("LATIN-1", "8859/1"), ("ISO-8859-1", "8859/1"),
    ("ISO8859-1", "8859/1"), ("ISO_8859-1", "8859/1"), ("8859-1", "8859/1"),
    ("iso-8859-15", "8859/15"), ("ISO_IR 100", "8859/1"), ("US-ASCII", "ASCII"),
    ("ISO-2022-JP", "ISO IR87"), ("EUC-KR", "KS X 1001"), ("GB18030", "GB 18030-2000"),
    ("BIG5", "BIG-5"), ("windows-1252", "WINDOWS-1252"), ("CP1252", "WINDOWS-1252"),
])
def test_field_spellings_are_aliases_with_a_warning(spelling: str, standard: str) -> None:
    found = charsets.resolve(spelling)
    assert found is not None and found.alias and found.charset.hl7 == standard
    [warning] = parse(with_charset(ORM, spelling)).warnings
    assert (warning.code, str(warning.location)) == (103, "MSH^1^18")
    assert "not an HL7 Table 0211 value" in warning.text
    assert ("Windows-1252" if standard == "WINDOWS-1252" else standard) in warning.text


def test_aliased_utf8_decodes_non_ascii() -> None:
    msg = parse(with_charset(ADT_UTF8, "UTF-8"))
    assert msg.get("PID-5.1") == "Müller" and msg.charset.dicom == ("ISO_IR 192",)


def test_latin1_alias_decodes_latin1_bytes() -> None:
    raw = with_charset(ADT_UTF8, "Latin1").decode("utf-8").encode("latin-1")
    msg = parse(raw)
    assert msg.get("PID-5.1") == "Müller" and msg.charset.dicom == ("ISO_IR 100",)


def test_windows_1252_is_tagged_latin1_when_it_fits_else_utf8() -> None:
    latin = with_charset(ADT_UTF8, "windows-1252").decode("utf-8").encode("cp1252")
    msg = parse(latin)
    assert msg.get("PID-5.1") == "Müller" and msg.charset.dicom == ("ISO_IR 100",)
    beyond = latin.replace("Müller".encode("cp1252"), "Œuvre€".encode("cp1252"))
    msg = parse(beyond)
    assert msg.get("PID-5.1") == "Œuvre€" and msg.charset.dicom == ("ISO_IR 192",)
    assert charsets.WINDOWS_1252.dicom == ("ISO_IR 100",)  # the shared entry is untouched


def test_profile_aliases_are_used_and_warned() -> None:
    raw = with_charset(ADT_UTF8, "HOSP-LATIN").decode("utf-8").encode("latin-1")
    with pytest.raises(HL7Error):
        parse(raw)
    options = ReadOptions(charset_aliases={"hosp-latin": "8859/1"})
    msg = parse(raw, options)
    assert msg.get("PID-5.1") == "Müller"
    assert [w.text for w in msg.warnings] == [
        "MSH-18 is not an HL7 Table 0211 value: read as 8859/1"]


def test_unknown_charset_on_ascii_is_read_as_ascii_with_a_warning() -> None:
    msg = parse(with_charset(ORM, "X-MAC-ROMAN"))
    assert msg.warnings == [W_UNKNOWN_CHARSET]
    assert msg.charset is charsets.ASCII and msg.msh18 == []
    assert msg.get("PID-5.1") == "Doe"


@pytest.mark.parametrize("value", ["X-MAC-ROMAN", "UNICODE UTF-16", "UNICODE UTF-32"])
def test_unknown_charset_on_non_ascii_is_refused_naming_msh18(value: str) -> None:
    raw = with_charset(ADT_UTF8, value)
    with pytest.raises(HL7Error) as caught:
        parse(b"\xef\xbb\xbf" + raw)
    error = caught.value
    assert (error.code, error.ack_code, str(error.location)) == (103, "AE", "MSH^1^18")
    assert error.partial.control_id == "ADT0001" and error.partial.msh18 == []
    assert error.partial.warnings == [W_BOM]


def test_unknown_charset_with_iso2022_escapes_is_refused() -> None:
    raw = with_charset(ORM, "X-JIS").replace(b"Doe", b"\x1b$B$3\x1b(B")
    with pytest.raises(HL7Error):
        parse(raw)


def test_undeclared_8bit_is_latin1_with_a_warning() -> None:
    raw = ORM.replace(b"Doe", "Døe".encode("latin-1"))
    msg = parse(raw)
    assert msg.get("PID-5.1") == "Døe" and msg.warnings == [W_EIGHT_BIT]


def test_invalid_bytes_in_declared_charset_keep_a_reading() -> None:
    raw = ADT_UTF8.replace("Müller".encode(), b"M\xfcller")
    with pytest.raises(HL7Error) as caught:
        parse(raw)
    assert (caught.value.code, caught.value.ack_code) == (102, "AE")
    assert caught.value.partial.control_id == "ADT0001"


def test_korean_designation_escape_is_removed() -> None:
    name = "홍길동".encode("euc_kr")
    raw = with_charset(ORM, "KS X 1001").replace(b"Doe", b"\x1b$)C" + name)
    assert parse(raw).get("PID-5.1") == "홍길동"


def test_japanese_iso2022_sample_still_reads() -> None:
    msg = parse(sample("02"))
    assert msg.warnings == [] and msg.charset.dicom[-1] == "ISO 2022 IR 87"


# -- versions --------------------------------------------------------------------------

def test_version_comparison() -> None:
    assert version_key("2.5.1") == (2, 5, 1) and version_key("") is None
    assert version_at_least("2.5.1", "2.5") and version_at_least("2.8", "2.5")
    assert not version_at_least("2.4", "2.5") and not version_at_least("2.2", "2.5")
    assert not version_at_least("2.3.1", "2.4") and version_at_least("2.10", "2.9")
    assert version_at_least("", "2.5") and version_at_least("v2", "2.5")


@pytest.mark.parametrize("version", HL7_VERSIONS)
def test_known_versions_read_without_warning(version: str) -> None:
    msg = parse(ORM.replace(b"|P|2.3.1", f"|P|{version}".encode(), 1))
    assert msg.version == version and msg.warnings == []
    assert msg.version_at_least("2.5") == (version_key(version) >= (2, 5))  # type: ignore[operator]


def test_unknown_version_reads_with_a_warning() -> None:
    msg = parse(ORM.replace(b"|P|2.3.1", b"|P|2.9", 1))
    assert msg.warnings == [W_UNKNOWN_VERSION] and msg.version_at_least("2.5")


def test_v21_trigger_event_is_implied() -> None:
    orm = parse(ORM.replace(b"|ORM^O01|", b"|ORM|", 1).replace(b"|P|2.3.1", b"|P|2.1", 1))
    assert orm.message_type == "ORM^O01"
    adt = parse(sample("03").replace(b"|ADT^A08^ADT_A01|", b"|ADT|", 1)
                .replace(b"|P|2.3.1", b"|P|2.1", 1))
    assert adt.message_type == "ADT^A08"
    later = parse(ORM.replace(b"|ORM^O01|", b"|ORM|", 1))
    assert later.trigger_event == ""  # from 2.2 MSH-9 carries the event


# -- profile aliases -------------------------------------------------------------------

def _profiles(tmp_path, extra: str):  # type: ignore[no-untyped-def]
    import shutil

    from broker.mapping.profile import check_directory, load_profiles
    from tests.conftest import MAPPINGS

    shutil.copytree(MAPPINGS, tmp_path / "m")
    (tmp_path / "m" / "zz_site.yaml").write_text(extra, encoding="utf-8")
    problems = check_directory(tmp_path / "m")
    return (load_profiles(tmp_path / "m") if not problems else None), problems


def test_profile_charset_aliases_union(tmp_path) -> None:  # type: ignore[no-untyped-def]
    profiles, problems = _profiles(tmp_path, "name: site\nextends: default\nsenders:\n"
                                   "  - application: X\ncharset_aliases:\n"
                                   "  hosp-west: '8859/1'\n  pc8: windows-1252\n")
    assert problems == [] and profiles is not None
    assert profiles.charset_aliases == {"HOSP-WEST": "8859/1", "PC8": "windows-1252"}


def test_profile_charset_alias_must_name_a_table_0211_value(tmp_path) -> None:  # type: ignore[no-untyped-def]
    _, problems = _profiles(tmp_path, "name: site\nsenders:\n  - application: X\n"
                            "charset_aliases:\n  hosp: cp850\n")
    assert len(problems) == 1 and "charset_aliases" in problems[0]
    assert "Table 0211" in problems[0]


def test_conflicting_profile_aliases_are_refused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    _profiles(tmp_path, "name: site\nsenders:\n  - application: X\n"
              "charset_aliases:\n  HOSP: '8859/1'\n")
    (tmp_path / "m" / "zz_other.yaml").write_text(
        "name: other\nsenders:\n  - application: Y\ncharset_aliases:\n  hosp: '8859/2'\n",
        encoding="utf-8")
    from broker.mapping.profile import check_directory

    problems = check_directory(tmp_path / "m")
    assert len(problems) == 1 and "conflicts" in problems[0]


# -- bounded, linear reading -----------------------------------------------------------

def test_field_splits_are_cached() -> None:
    pid = parse(ORM).segment("PID")
    assert pid is not None
    assert pid.repetitions(3) is pid.repetitions(3)
    assert pid.get(3, 4, 2) == "2.16.840.1.113883.3.9999.1" and pid.get(3, 1) == "135790"
    assert pid.components(3) == ["135790", "", "", "HOSP&2.16.840.1.113883.3.9999.1&ISO", "MR"]
    assert pid.get(3, 1, repetition=1) == "" and pid.components(3, 1) == []


def test_field_parts_are_split_before_unescaping() -> None:
    msg = parse(b"MSH|^~\\&|EHR|HOSP|MWL||20250310||ORM^O01|1|P|2.3.1\r"
                b"PID|1||A\\T\\B&C^^D\\S\\E~F&G||Smith\r")
    pid = msg.segment("PID")
    assert pid is not None
    assert pid.parts(3) == [["A&B", "C"], [""], ["D^E"]]
    assert pid.parts(3, 1) == [["F", "G"]] and pid.parts(3, 2) == []
    assert pid.parts(5) == [["Smith"]] and pid.parts(4) == [] and pid.parts(40) == []
    assert pid.parts(3) is pid.parts(3)
    assert msg.msh.parts(1) == [["|"]] and msg.msh.parts(2) == [["^~\\&"]]


def test_many_repetitions_are_refused_quickly_naming_the_field() -> None:
    import time

    from tests.integration.hl7util import set_field

    raw = set_field(ORM, "PID", 3, "~" * 60000)
    assert len(raw) > 60000
    started = time.monotonic()
    with pytest.raises(HL7Error) as caught:
        parse(raw)
    assert time.monotonic() - started < 1
    error = caught.value
    assert (error.code, error.ack_code, str(error.location)) == (102, "AE", "PID^1^3")
    assert error.text == "PID-3 has more than 1000 repetitions"
    assert error.partial.control_id == "ORM0005"


def test_reading_every_repetition_is_linear() -> None:
    """Before the splits were cached, 60,000 PID-3 repetitions took 40 s to map."""
    import time

    from broker.mapping.apply import map_message
    from broker.mapping.profile import load_profiles
    from tests.conftest import MAPPINGS
    from tests.integration.hl7util import set_field

    raw = set_field(ORM, "PID", 3, "~".join(f"{i}^^^HOSP^MR" for i in range(60000)))
    options = ReadOptions(max_repetitions=100000)
    started = time.monotonic()
    mapped = map_message(parse(raw, options), load_profiles(MAPPINGS), timezone="UTC")
    assert time.monotonic() - started < 10
    assert len(mapped.patient.attributes["OtherPatientIDsSequence"]) == 59999


@pytest.mark.parametrize(("field", "value", "text"), [
    (5, "^" * 100, "PID-5 has more than 100 components"),
    (5, "a&" * 100, "PID-5 has more than 100 sub-components in a component"),
    (5, ("^" * 99 + "~") * 3, ""),  # within the caps in each repetition
])
def test_component_caps(field: int, value: str, text: str) -> None:
    from tests.integration.hl7util import set_field

    raw = set_field(ORM, "PID", field, value)
    if not text:
        assert parse(raw).get("PID-5.100") == ""
        return
    with pytest.raises(HL7Error) as caught:
        parse(raw)
    assert (caught.value.code, str(caught.value.location), caught.value.text) == (
        102, f"PID^1^{field}", text)


def test_segment_cap_is_ar_at_the_first_segment_over() -> None:
    raw = ORM + b"NTE|1||x\r" * 1999
    with pytest.raises(HL7Error) as caught:
        parse(raw)
    error = caught.value
    assert (error.code, error.ack_code, str(error.location)) == (100, "AR", "NTE")
    assert parse(raw, ReadOptions(max_segments=3000)).control_id == "ORM0005"


def test_caps_name_the_occurrence_of_the_segment() -> None:
    from tests.integration.hl7util import set_field

    raw = set_field(ORM, "OBR", 13, "~" * 5, occurrence=1)
    with pytest.raises(HL7Error) as caught:
        parse(raw, ReadOptions(max_repetitions=5))
    assert str(caught.value.location) == "OBR^2^13"


@pytest.mark.parametrize("declared", [b"^\\&", b"^~\\\\&"])
def test_standard_encoding_characters_with_one_missing_or_doubled_are_read(
        declared: bytes) -> None:
    """ruby-hl7's ``^\\&`` and LinuxForHealth's ``^~\\\\&``: the meaning is obvious, so
    the message is read with the standard ``^~\\&`` and a warning at MSH-2."""
    msg = parse(ORM.replace(b"MSH|^~\\&|", b"MSH|" + declared + b"|", 1))
    assert msg.delimiters.encoding_characters == "^~\\&"
    assert msg.control_id == "ORM0005" and msg.get("PID-5.1") == "Doe"
    assert [str(w.location) for w in msg.warnings] == ["MSH^1^2"]
