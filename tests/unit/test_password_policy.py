"""The console's password policy (NIST SP 800-63B 5.1.1.2) and its bundled list."""

from __future__ import annotations

import pytest

from broker.security.accounts import check_password, common_passwords


def test_the_bundled_list_is_there() -> None:
    words = common_passwords()
    assert len(words) > 8000 and "password" in words and "12345678" in words
    assert all(len(w) >= 8 for w in words)


@pytest.mark.parametrize(("password", "reason"), [
    ("password", "at least 12"), ("12345678", "at least 12"), ("x" * 257, "at most 256"),
    ("password1234", "common"), ("Password1234", "common"), ("qwertyuiop[]", "common"),
    ("aaaaaaaaaaaaaa", "repetitive"), ("abababababab", "repetitive"),
    ("345678901234", "sequential"), ("lmnopqrstuvw", "sequential"), ("987654321098", "sequential"),
    ("dr.house.md-1", "user name"), ("mwl-broker-2025!", "product"),
])
def test_refused(password: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        check_password(password, "dr.house")


@pytest.mark.parametrize("password", ["correct horse battery", "tulip kettle 42",
                                      "Ünïcödé pässwörd", "12 chars ok!"])
def test_accepted(password: str) -> None:
    check_password(password, "dr.house")


def test_a_lower_minimum_still_uses_the_list() -> None:
    check_password("tulip-42", "bob", min_length=8)
    with pytest.raises(ValueError, match="common"):
        check_password("baseball", "bob", min_length=8)
