"""Deployed versions of the mapping profiles (:mod:`broker.mapping.versions`) and the
processor mapping with the version in force (:mod:`broker.mapping.deployed`), on
SQLite and PostgreSQL: a refused deploy writes nothing, the same content makes no new
version, a rollback puts an older version back in force, each message records the
profile and version that mapped it, and two nodes starting together make one
version 1."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from broker.db import make_engine, make_session_factory, unit_of_work
from broker.hl7.errors import HL7Error
from broker.mapping import versions
from broker.mapping.deployed import DeployedMappings
from broker.mapping.follow import WATCH_USER, MappingsFollower, start_deployed
from broker.mapping.profile import load_profiles, read_sources
from broker.mapping.versions import VersionInfo
from broker.models import MappingDeployment, MappingVersion
from tests.builders import order
from tests.conftest import MAPPINGS
from tests.service.conftest import Services
from tests.site_profiles import DX_STATION as STATION

BROKEN = """name: site
extends: default
senders:
  - {application: EHR}
stations:
  - name: dx-room
    when: {modality: 7}
    ae_title: THIS_AE_TITLE_IS_FAR_TOO_LONG
"""


def site(ae: str) -> dict[str, str]:
    """The packaged profiles and a site profile sending DX steps to ``ae``."""
    return {**read_sources(MAPPINGS), "site.yaml": STATION.format(ae=ae)}


def count(services: Services, model: type) -> int:
    with services.factory() as session:
        return session.scalar(select(func.count()).select_from(model)) or 0


def deploy(services: Services, sources: dict[str, str], **kw: str) -> versions.VersionInfo:
    with unit_of_work(services.factory) as session:
        return versions.deploy(session, sources, user=kw.pop("user", "engineer"), **kw)


def station_of(services: Services, pk: int) -> list[str]:
    """The Scheduled Station AE Title(s) of order ``pk``'s step."""
    return list(services.steps()[f"SPS{pk}"].attributes["ScheduledStationAETitle"])


def test_a_refused_deploy_writes_nothing_and_names_file_and_key(services: Services) -> None:
    deploy(services, site("DX_OLD"))
    with pytest.raises(versions.DeployRefused) as refused:
        deploy(services, {**read_sources(MAPPINGS), "site.yaml": BROKEN})
    errors = refused.value.errors
    assert any(e.startswith("site.yaml: stations[0].when.modality:") for e in errors), errors
    assert any(e.startswith("site.yaml: stations[0].ae_title:") for e in errors), errors
    assert count(services, MappingVersion) == 1
    assert count(services, MappingDeployment) == 1
    with services.factory() as session:
        in_force = versions.active(session)
    assert in_force is not None and in_force.version == 1


def test_the_same_content_makes_no_new_version_and_an_older_one_is_reused(
        services: Services) -> None:
    first = deploy(services, site("DX_OLD"), comment="first")
    again = deploy(services, site("DX_OLD"))
    assert (first.version, again.version) == (1, 1)
    assert count(services, MappingDeployment) == 1  # nothing changed, nothing written
    second = deploy(services, site("DX_NEW"), user="someone else")
    assert second.version == 2 and second.active and second.deployed_by == "someone else"
    back = deploy(services, site("DX_OLD"))  # the content of version 1 again
    assert back.version == 1 and back.active
    assert count(services, MappingVersion) == 2
    with services.factory() as session:
        listed = versions.history(session)
        done = versions.deployments(session)
    assert [(v.version, v.active, v.comment) for v in listed] == [
        (2, False, ""), (1, True, "first")]
    assert [(d.version, d.action) for d in done] == [(1, "deploy"), (2, "deploy"),
                                                     (1, "deploy")]


def test_rollback_puts_an_older_version_in_force(services: Services) -> None:
    deploy(services, site("DX_OLD"))
    deploy(services, site("DX_NEW"))
    with unit_of_work(services.factory) as session:
        info = versions.rollback(session, 1, user="engineer", comment="DX room closed")
        with pytest.raises(KeyError):
            versions.rollback(session, 99, user="engineer")
    assert info.version == 1 and info.active
    with services.factory() as session:
        assert versions.active(session) == info
        assert versions.deployments(session)[0].action == "rollback"
        assert versions.deployments(session)[0].comment == "DX room closed"
        assert versions.sources_of(session, 2)["site.yaml"] == STATION.format(ae="DX_NEW")
        with pytest.raises(KeyError):
            versions.sources_of(session, 99)


def test_diff_is_unified_per_file() -> None:
    old, new = site("DX_OLD"), site("DX_NEW")
    text = versions.diff(old, new, old_name="v1", new_name="v2")
    assert text.splitlines()[:2] == ["--- v1/site.yaml", "+++ v2/site.yaml"]
    assert "-    ae_title: DX_OLD" in text.splitlines()
    assert "+    ae_title: DX_NEW" in text.splitlines()
    assert versions.diff(old, old, old_name="v1", new_name="v1") == ""
    added = versions.diff({}, {"x.yaml": "name: x\n"}, old_name="v1", new_name="dir")
    assert added.splitlines()[:3] == ["--- /dev/null", "+++ dir/x.yaml", "@@ -0,0 +1 @@"]


def test_each_message_records_the_profile_and_version_that_mapped_it(
        services: Services) -> None:
    """Messages processed before a deploy keep the old station and record version 1;
    after it, the new station and version 2; a failed message records the version that
    refused it too."""
    deploy(services, site("DX_OLD"))
    before = services.process(order(1))
    deploy(services, site("DX_NEW"))
    after = services.process(order(2))
    refused = services.process(order(3).replace(b"ORC|NW", b"ORC|XO"))  # unknown order
    assert (before.profile, before.profile_version) == ("site", 1)
    assert (after.profile, after.profile_version) == ("site", 2)
    assert station_of(services, 1) == ["DX_OLD"]
    assert station_of(services, 2) == ["DX_NEW"]
    assert refused.status == "failed"
    assert (refused.profile, refused.profile_version) == ("site", 2)


def test_before_any_deploy_the_directory_maps_with_no_version(services: Services) -> None:
    row = services.process(order(1))
    assert row.status == "processed"
    assert (row.profile, row.profile_version) == ("default", None)


def _site_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "mappings"
    directory.mkdir()
    (directory / "site.yaml").write_text(STATION.format(ae="DX_OLD"), encoding="utf-8")
    return directory


def test_ensure_initial_deploys_the_directory_once(services: Services, tmp_path: Path) -> None:
    directory = _site_dir(tmp_path)
    with unit_of_work(services.factory) as session:
        first = versions.ensure_initial(session, directory)
    (directory / "site.yaml").write_text(STATION.format(ae="DX_NEW"), encoding="utf-8")
    with unit_of_work(services.factory) as session:
        second = versions.ensure_initial(session, directory)
    assert first == second and first.version == 1
    with services.factory() as session:
        assert [d.action for d in versions.deployments(session)] == ["initial"]
        assert versions.sources_of(session, 1)["site.yaml"] == STATION.format(ae="DX_OLD")


def test_nodes_starting_together_make_one_version_1(services: Services,
                                                    tmp_path: Path) -> None:
    """Four nodes run ``ensure_initial`` at the same moment, each on its own
    connection: one deploys version 1, the others wait for it and find it."""
    nodes = 4
    directory = _site_dir(tmp_path)
    engines = [make_engine(services.settings.database_url) for _ in range(nodes)]
    barrier = threading.Barrier(nodes)
    found: list[int] = []
    failures: list[BaseException] = []

    def start(factory: object) -> None:
        try:
            with unit_of_work(factory) as session:  # type: ignore[arg-type]
                assert isinstance(session, Session)
                barrier.wait(10)
                found.append(versions.ensure_initial(session, directory).version)
        except BaseException as exc:  # reported below
            failures.append(exc)

    threads = [threading.Thread(target=start, args=(make_session_factory(e),))
               for e in engines]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    for engine in engines:
        engine.dispose()
    assert not failures, failures
    assert found == [1] * nodes
    assert count(services, MappingVersion) == 1
    assert count(services, MappingDeployment) == 1


def test_a_start_deploys_the_directory_once_and_warns_when_it_differs(
        services: Services, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The first start deploys the directory as version 1; a later start with edited
    files keeps version 1 in force and says to deploy."""
    directory = _site_dir(tmp_path)
    mappings = DeployedMappings(lambda: load_profiles(directory), timezone="UTC")
    assert start_deployed(services.factory, mappings, directory).version == 1
    assert mappings.latest().version == 1
    (directory / "site.yaml").write_text(STATION.format(ae="DX_NEW"), encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="broker.mapping.follow"):
        assert start_deployed(services.factory, mappings, directory).version == 1
    [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert f"{directory} differs from deployed version 1" in warning
    assert "mwl-broker mapping deploy" in warning
    assert count(services, MappingVersion) == 1


def test_the_file_watch_deploys_valid_changes_only(services: Services, tmp_path: Path) -> None:
    """With MWLB_MAPPINGS_WATCH, files changed after the start are deployed when they
    validate (user "file watch"); a change that does not validate is never deployed."""
    directory = _site_dir(tmp_path)
    mappings = DeployedMappings(lambda: load_profiles(directory), timezone="UTC")
    start_deployed(services.factory, mappings, directory)
    def deploy(sources: dict[str, str], user: str, comment: str) -> VersionInfo:
        return services.use_cases.mapping.deploy(sources, directory=directory, user=user,
                                                 comment=comment).info

    follower = MappingsFollower(services.factory, mappings, directory,
                                deploy=deploy, watch=True)
    assert follower.check_directory() is None  # unchanged since the start
    (directory / "site.yaml").write_text(BROKEN, encoding="utf-8")
    assert follower.check_directory() is None
    assert count(services, MappingVersion) == 1
    (directory / "site.yaml").write_text(STATION.format(ae="DX_NEW"), encoding="utf-8")
    deployed = follower.check_directory()
    assert deployed is not None and deployed.version == 2
    assert deployed.deployed_by == WATCH_USER
    assert mappings.latest().version == 2


def test_the_reader_follows_the_charset_aliases_in_force(services: Services) -> None:
    """A deployed profile adding an MSH-18 alias (HL7 v2.5.1 Table 0211) is used to
    read messages once a transaction has read it in force (what the serve process's
    follower does every 2 s): a Latin-1 name under that alias is refused before (AE
    103, an unknown character set on non-ASCII bytes) and read after."""
    runtime = services.use_cases.runtime
    raw = (order(1).replace(b"|P|2.3.1\r", b"|P|2.3.1||||||LATIN-X\r")
           .replace(b"Bench^Patient", "M\u00fcller^Patient".encode("latin-1")))
    with pytest.raises(HL7Error) as unknown:
        runtime.read(raw)
    assert unknown.value.code == 103
    aliased = STATION.format(ae="DX_OLD") + "charset_aliases: {LATIN-X: '8859/1'}\n"
    deploy(services, {**read_sources(MAPPINGS), "site.yaml": aliased})
    with services.factory() as session:
        runtime.mappings.current(session.connection())
    assert runtime.read(raw).get("PID-5.1") == "M\u00fcller"


def test_a_batch_reads_the_version_in_force_once(services: Services) -> None:
    """Ten messages applied in one transaction: one read of the version in force for
    all of them, not one per message; each records it."""
    deploy(services, site("DX_OLD"))
    pks = [services.store(order(n)) for n in range(1, 11)]
    mappings = services.use_cases.runtime.mappings
    reads = []
    read = mappings.current

    def counted(connection: Any) -> Any:
        reads.append(connection)
        return read(connection)

    mappings.current = counted  # type: ignore[method-assign]
    assert services.use_cases.apply_messages(pks) == 10
    assert len(reads) == 1
    assert {services.message(pk).profile_version for pk in pks} == {1}


def test_a_stored_version_that_no_longer_loads_leaves_the_previous_in_use(
        services: Services) -> None:
    """A version stored by a broker that accepted what this one refuses (put in force
    here by hand, as no deploy would): processing goes on with the version it had, and
    the message records that version."""
    deploy(services, site("DX_OLD"))
    services.process(order(1))
    sources = {**site("DX_OLD"), "site.yaml": BROKEN}
    with unit_of_work(services.factory) as session:
        session.add(MappingVersion(id=2, digest=versions.digest(sources), sources=sources))
        session.flush()
        session.add(MappingDeployment(version=2, action="deploy"))
    row = services.process(order(2))
    assert (row.status, row.profile_version) == ("processed", 1)
    assert station_of(services, 2) == ["DX_OLD"]
