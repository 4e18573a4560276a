"""PS3.4 C.2.2.2 matching semantics (pure)."""

from __future__ import annotations

import pytest

from broker.domain.matching import (
    Kind,
    like_pattern,
    normalise_time,
    parse_key,
    person_name_keys,
    upper_time_bound,
)


@pytest.mark.parametrize(("value", "vr", "kind"), [
    ("", "LO", Kind.UNIVERSAL), ("*", "PN", Kind.UNIVERSAL), ("**", "SH", Kind.UNIVERSAL),
    (None, "DA", Kind.UNIVERSAL), ("Doe*", "PN", Kind.WILDCARD), ("D?e", "LO", Kind.WILDCARD),
    ("ACC0001", "SH", Kind.SINGLE), ("20250310-20250311", "DA", Kind.RANGE),
    ("-1000", "TM", Kind.RANGE), ("1.2\\1.3", "UI", Kind.UID_LIST),
    ("2025*", "DA", Kind.SINGLE),  # no wildcards for DA: the '*' is literal
    ("1.2*", "UI", Kind.SINGLE),
])
def test_key_kinds(value: str | None, vr: str, kind: Kind) -> None:
    assert parse_key(value, vr).kind is kind


def test_ranges_keep_open_ends() -> None:
    key = parse_key("20250311-", "DA")
    assert (key.low, key.high) == ("20250311", "")
    key = parse_key("-1000", "TM")
    assert (key.low, key.high) == ("", "1000")


def test_uid_list_from_multi_value() -> None:
    assert parse_key(["1.2", "1.3"], "UI").values == ("1.2", "1.3")


def test_wildcards_become_escaped_like_patterns() -> None:
    assert like_pattern("D?e*") == "D_e%"
    assert like_pattern("50%_off\\") == "50\\%\\_off\\\\"


def test_time_by_meaning() -> None:
    assert normalise_time("0930") == "093000"
    assert normalise_time("09") == "090000"
    assert normalise_time("093000.5") == "093000.5"
    assert upper_time_bound("1000") == "100000.999999"


def test_person_name_keys_are_per_group_and_case_folded() -> None:
    assert person_name_keys("Doe^Jane^Marie^^") == ("DOE^JANE^MARIE", "", "")
    assert person_name_keys("YAMADA^TARO=山田^太郎=やまだ^たろう") == (
        "YAMADA^TARO", "山田^太郎", "やまだ^たろう")
