"""The README and docs/ say what the code does: the settings table names exactly the
settings of broker/config.py with their defaults, the HL7 versions are the ones read,
test-only settings stay out, and every relative link resolves in a fresh clone."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from broker.config import Settings, user_settings
from broker.hl7.message import HL7_VERSIONS
from tests.conftest import REPO

README = REPO / "README.md"
DOCUMENTS = [README, *sorted((REPO / "docs").glob("*.md"))]


def settings_table() -> dict[str, str]:
    """The README's settings table (the first table under "## Configuration"): each
    setting named in a row's first cell, with its default from the second cell; a row
    naming several settings gives their defaults separated by " / " (or one for all)."""
    section = README.read_text().split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.split("\n\n", 2)[1].splitlines()
            if line.startswith("| `MWLB_")]
    assert rows, "no settings table under ## Configuration"
    table: dict[str, str] = {}
    for row in rows:
        names_cell, default_cell = (cell.strip() for cell in row.strip("|").split("|")[:2])
        names = re.findall(r"`(MWLB_[A-Z0-9_]+)`", names_cell)
        defaults = default_cell.split(" / ")
        if len(defaults) == 1:
            defaults *= len(names)
        assert len(defaults) == len(names), row
        for name, default in zip(names, defaults, strict=True):
            assert name not in table, f"{name} in two rows"
            table[name] = default.strip()
    return table


def test_the_settings_table_names_every_setting_and_no_other() -> None:
    documented = set(settings_table())
    settings = {f"MWLB_{name.upper()}" for name in user_settings()}
    assert sorted(settings - documented) == [], "settings missing from the README table"
    assert sorted(documented - settings) == [], "README names settings the code lacks"


def _agrees(shown: str, default: Any) -> bool:
    """Whether a default as the README shows it is the code's: ``empty``, a code
    literal in backticks, or "FIRST to LAST" for a list."""
    if shown == "empty":
        return default in (None, "", [])
    if isinstance(default, list) and " to " in shown:
        return shown.split(" to ") == [str(default[0]), str(default[-1])]
    literal = re.fullmatch(r"`([^`]*)`", shown)
    if literal is None:
        return True  # words ("host zone"): read by a person
    text = literal.group(1)
    if isinstance(default, bool):
        return text == str(default).lower()
    if isinstance(default, int | float):
        return float(text) == default
    if isinstance(default, list):
        return bool(json.loads(text) == default)
    return text == str(getattr(default, "value", default))


def test_the_settings_table_gives_the_defaults_of_the_code() -> None:
    wrong = {}
    for name, shown in settings_table().items():
        field = Settings.model_fields[name.removeprefix("MWLB_").lower()]
        default = field.get_default(call_default_factory=True)
        if not _agrees(shown, default):
            wrong[name] = (shown, default)
    assert wrong == {}


def test_test_only_settings_stay_out_of_the_readme() -> None:
    hidden = {f"MWLB_{name.upper()}" for name in Settings.model_fields} - {
        f"MWLB_{name.upper()}" for name in user_settings()}
    assert hidden == {"MWLB_FAILPOINT"}
    text = "\n".join(path.read_text() for path in DOCUMENTS)
    assert [name for name in hidden if name in text] == []


def test_the_hl7_versions_are_the_ones_read() -> None:
    text = README.read_text()
    ranges = re.findall(rf"(?<![\d.]){re.escape(HL7_VERSIONS[0])}(?: to |-)(\d+(?:\.\d+)+)", text)
    assert ranges and set(ranges) == {HL7_VERSIONS[-1]}
    assert ", ".join(HL7_VERSIONS) in text


def _tracked() -> set[str]:
    """Paths a clone has: tracked files and their directories."""
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True,
                           check=True).stdout.splitlines()
    return set(files) | {str(parent) for f in files for parent in Path(f).parents}


def _anchors(document: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    headings = re.findall(r"^#+ (.+)$", document.read_text(), re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def _links(document: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", document.read_text(), flags=re.DOTALL)
    inline = re.findall(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", text)
    reference = re.findall(r"^\[[^\]]+\]:\s*(\S+)", text, re.MULTILINE)
    return [link for link in inline + reference
            if not re.match(r"[a-z][a-z0-9+.-]*:", link)]  # http:, mailto: ...


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: p.name)
def test_relative_links_resolve_in_a_clone(document: Path) -> None:
    tracked = _tracked()
    broken = []
    for link in _links(document):
        target, _, anchor = link.partition("#")
        path = (document.parent / target).resolve() if target else document
        try:
            relative = str(path.relative_to(REPO))
        except ValueError:
            broken.append(f"{link} (outside the repository)")
            continue
        if target and relative not in tracked:
            broken.append(f"{link} (not in a clone)")
        elif anchor and path.suffix == ".md" and anchor not in _anchors(path):
            broken.append(f"{link} (no such heading)")
    assert broken == []
