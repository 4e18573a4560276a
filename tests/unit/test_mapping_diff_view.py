"""The console's reading of a unified diff of profile sets (broker.web.mapping_versions
.split_diff): one block per file, each line tagged added, removed, hunk or context,
even when a changed line itself looks like a file header."""

from __future__ import annotations

from broker.mapping.versions import diff
from broker.web.mapping_versions import split_diff


def test_each_file_its_own_block_with_lines_tagged() -> None:
    old = {"a.yaml": "name: a\nx: 1\n", "b.yaml": "name: b\n", "gone.yaml": "name: g\n"}
    new = {"a.yaml": "name: a\nx: 2\n", "b.yaml": "name: b\n", "new.yaml": "name: n\n"}
    files = split_diff(diff(old, new, old_name="version 1", new_name="version 2"))
    assert [(f["file"], f["old"]) for f in files] == [
        ("version 2/a.yaml", "version 1/a.yaml"),
        ("version 1/gone.yaml", "version 1/gone.yaml"),  # removed: named by its old path
        ("version 2/new.yaml", "/dev/null")]
    assert [(line["kind"], line["text"]) for line in files[0]["lines"]] == [
        ("hunk", "@@ -1,2 +1,2 @@"), ("context", " name: a"), ("removed", "-x: 1"),
        ("added", "+x: 2")]
    assert [line["kind"] for line in files[1]["lines"]] == ["hunk", "removed"]


def test_a_changed_line_that_looks_like_a_header_stays_in_its_file() -> None:
    old = {"a.yaml": "name: a\n-- old\n++ kept\n"}
    new = {"a.yaml": "name: a\n++ new\n++ kept\n"}
    files = split_diff(diff(old, new, old_name="v1", new_name="v2"))
    assert len(files) == 1
    assert ("removed", "--- old") in [(x["kind"], x["text"]) for x in files[0]["lines"]]
    assert ("added", "+++ new") in [(x["kind"], x["text"]) for x in files[0]["lines"]]


def test_no_difference_no_files() -> None:
    same = {"a.yaml": "name: a\n"}
    assert split_diff(diff(same, same, old_name="v1", new_name="v1")) == []
