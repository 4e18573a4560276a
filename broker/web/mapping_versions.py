"""The deployed versions of the mapping profiles in the console: the versions and their
deployments, the difference between any two (or the server's mappings directory and
the version in force), the impact of deploying the directory, the deploy itself and a
rollback (:mod:`broker.mapping.versions` is the store and
:class:`broker.application.mapping.MappingUseCases` makes each change, audited; this
module shapes what the pages and the JSON API show).

A set of profiles is named in a diff by its version number or ``dir`` (the mappings
directory as it is on the server now). A unified diff (POSIX ``diff -u`` format: ``---``
/ ``+++`` file headers, ``@@`` hunks, lines prefixed ``+``, ``-`` or a space) is split
per file for display, each line tagged added, removed, context or hunk."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from broker.application import UseCases
from broker.application.mapping import Change
from broker.mapping import versions
from broker.mapping.profile import ProfileError, read_sources
from broker.mapping.versions import DeployRefused, VersionInfo
from broker.runtime import Runtime
from broker.services import mapping_impact
from broker.web.queries import iso

DIRECTORY = "dir"


class NotFound(LookupError):
    """An unknown version number (or a name that is neither a number nor ``dir``)."""


def info_row(info: VersionInfo) -> dict[str, Any]:
    """A version as the pages and the API show it (times ISO 8601, UTC)."""
    row = asdict(info)
    row["created_at"] = iso(info.created_at)
    row["deployed_at"] = iso(info.deployed_at)
    return row


def directory_sources(directory: Path) -> tuple[dict[str, str], list[str]]:
    """The text of the profile files of the mappings directory, or the reason it cannot
    be read."""
    try:
        return read_sources(directory), []
    except ProfileError as exc:
        return {}, [str(exc)]


def overview(session: Session, directory: Path) -> dict[str, Any]:
    """The versions (newest first), the deployment history (newest first), the version
    in force, and whether the mappings directory differs from it (then it has not been
    deployed: editing the files changes nothing until a deploy)."""
    active = versions.active(session)
    sources, problems = directory_sources(directory)
    digest = versions.digest(sources) if sources else ""
    return {
        "active": info_row(active) if active is not None else None,
        "versions": [info_row(v) for v in versions.history(session)],
        "deployments": [{"id": d.id, "version": d.version, "action": d.action,
                         "at": iso(d.at), "by": d.by, "comment": d.comment}
                        for d in versions.deployments(session)],
        "directory": {"path": str(directory), "digest": digest, "problems": problems,
                      "differs": bool(sources) and (active is None
                                                    or digest != active.digest)},
    }


def _sources(session: Session, name: str, directory: Path) -> tuple[dict[str, str], str]:
    """The files of a set named by version number or ``dir``, and its display name."""
    if name == DIRECTORY:
        sources, problems = directory_sources(directory)
        if problems:
            raise NotFound("; ".join(problems))
        return sources, f"directory {directory}"
    try:
        number = int(name)
        return versions.sources_of(session, number), f"version {number}"
    except (ValueError, KeyError):
        raise NotFound(f"no mapping version {name!r}") from None


def active_name(session: Session) -> str:
    """The version in force as a diff name ("" when nothing was ever deployed)."""
    active = versions.active(session)
    return str(active.version) if active is not None else ""


def split_diff(text: str) -> list[dict[str, Any]]:
    """A unified diff per file: ``[{"file", "lines": [{"kind", "text"}]}]``, kind one
    of ``added``, ``removed``, ``hunk``, ``context``."""
    files: list[dict[str, Any]] = []
    current: dict[str, Any] | None = None
    lines = text.splitlines()
    skip = 0
    for n, line in enumerate(lines):
        if skip:
            skip -= 1
            continue
        # A file's header: "--- old", "+++ new", then its first hunk.
        if (line.startswith("--- ") and lines[n + 1:n + 2] and lines[n + 1].startswith("+++ ")
                and lines[n + 2:n + 3] and lines[n + 2].startswith("@@")):
            old, new = line[4:].strip(), lines[n + 1][4:].strip()
            current = {"file": new if new != "/dev/null" else old, "old": old, "new": new,
                       "lines": []}
            files.append(current)
            skip = 1
            continue
        if current is None:
            continue
        kind = ("hunk" if line.startswith("@@") else "added" if line.startswith("+")
                else "removed" if line.startswith("-") else "context")
        current["lines"].append({"kind": kind, "text": line})
    return files


def diff(session: Session, old: str, new: str, directory: Path) -> dict[str, Any]:
    """The difference between two sets (version numbers or ``dir``): the unified text
    and the same per file; NotFound for an unknown name."""
    old_sources, old_name = _sources(session, old, directory)
    new_sources, new_name = _sources(session, new, directory)
    text = versions.diff(old_sources, new_sources, old_name=old_name, new_name=new_name)
    return {"old": old, "new": new, "old_name": old_name, "new_name": new_name,
            "diff": text, "files": split_diff(text)}


def version_detail(session: Session, number: int) -> dict[str, Any]:
    """One version: who made it, when, its files' text, and whether it is in force."""
    found = next((v for v in versions.history(session) if v.version == number), None)
    if found is None:
        raise NotFound(f"no mapping version {number}")
    sources = versions.sources_of(session, number)
    return {**info_row(found), "sources": dict(sorted(sources.items())),
            "deployments": [{"id": d.id, "action": d.action, "at": iso(d.at), "by": d.by,
                             "comment": d.comment}
                            for d in versions.deployments(session) if d.version == number]}


def deploy(use_cases: UseCases, directory: Path, *, user: str, address: str, comment: str,
           expected_digest: str = "") -> Change:
    """Deploy the mappings directory as it is now (:meth:`MappingUseCases.deploy`:
    validated, audited). ``expected_digest``: the digest of the files whose impact
    the user saw. Raises DeployRefused with every problem."""
    sources, problems = directory_sources(directory)
    if problems:
        raise DeployRefused(problems)
    return use_cases.mapping.deploy(sources, directory=directory, user=user,
                                    address=address, comment=comment,
                                    expected_digest=expected_digest)


def preview(session: Session, runtime: Runtime, *, per_sender: int) -> dict[str, Any]:
    """What deploying the mappings directory would do, nothing written: ``errors``
    (every problem, each naming file and key) when it does not validate; ``same`` when
    it is the version in force; else the impact of its profiles on the last
    ``per_sender`` stored messages of each sender (:mod:`broker.services.mapping_impact`),
    the difference from the version in force, and the ``digest`` of the files whose
    impact is shown (a deploy then refuses files changed since)."""
    directory = runtime.settings.mappings_dir
    sources, problems = directory_sources(directory)
    active = versions.active(session)
    out: dict[str, Any] = {"directory": str(directory), "errors": problems, "same": False,
                           "digest": versions.digest(sources) if sources else "",
                           "active": info_row(active) if active is not None else None,
                           "impact": None, "diff": None}
    if problems:
        return out
    try:
        candidate = versions.validate(sources)
    except DeployRefused as exc:
        return {**out, "errors": list(exc.errors)}
    if active is not None and active.digest == out["digest"]:
        return {**out, "same": True}
    current = runtime.mappings.current(session.connection()).profiles
    found = mapping_impact.impact(
        session, current, candidate, per_sender=per_sender, read=runtime.read,
        timezone=runtime.timezone,
        before=f"version {active.version}" if active is not None else "current",
        after="the mappings directory")
    if active is not None:
        out["diff"] = diff(session, str(active.version), DIRECTORY, directory)
    return {**out, "impact": impact_view(found)}


def _value(value: Any) -> str:
    """An attribute value as people read it: a multi-valued one with DICOM's value
    separator (PS3.5 6.4: backslash)."""
    if value is None:
        return "(absent)"
    if isinstance(value, list | tuple):
        return "\\".join(str(v) for v in value)
    return str(value)


def impact_view(found: mapping_impact.Impact) -> dict[str, Any]:
    """The impact report for the deploy page: totals, a row per sender, and every
    message that would now fail or pass, item added or removed, attribute changed."""
    totals = found.totals()
    return {
        "compared": totals["messages"], "totals": totals, "changed": found.changed,
        "lines": found.lines(),
        "senders": [{"sender": s.sender, "compared": s.messages,
                     "profile": (f"{s.profile_before} → {s.profile_after}"
                                 if s.profile_changed else s.profile_after),
                     "now_failing": len(s.now_failing), "now_passing": len(s.now_passing),
                     "items_added": len(s.items_added), "items_removed": len(s.items_removed),
                     "attributes_changed": len(s.attributes_changed)}
                    for s in found.senders],
        "now_failing": [{"id": f.message_id, "error": str(f.error)} for f in found.now_failing],
        "now_passing": [{"id": pk} for pk in found.now_passing],
        "items_added": [{"id": r.message_id, "accession": r.accession, "sps_id": r.sps_id}
                        for r in found.items_added],
        "items_removed": [{"id": r.message_id, "accession": r.accession, "sps_id": r.sps_id}
                          for r in found.items_removed],
        "attributes_changed": [{"id": c.message_id, "accession": c.accession,
                                "sps_id": c.sps_id, "keyword": c.keyword,
                                "old": _value(c.old), "new": _value(c.new)}
                               for c in found.attributes_changed],
        "profile_changes": [f"sender {s.sender}: profile {s.profile_before} → "
                            f"{s.profile_after}" for s in found.profile_changes],
    }
