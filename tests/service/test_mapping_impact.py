"""The impact of a candidate set of mapping profiles: the last stored messages of each
sender mapped by the set in force and by the candidate, compared, nothing written."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import func, select

from broker.mapping.profile import ProfileSet, load_profiles
from broker.models import InboundMessage, Patient
from broker.services.mapping_impact import (
    AttributeChange,
    ItemRef,
    last_per_sender,
)
from tests.builders import order
from tests.conftest import MAPPINGS, sample
from tests.integration.hl7util import set_field
from tests.service.conftest import Services
from tests.service.messages import edited

DEFAULT_YAML = (MAPPINGS / "default.yaml").read_text(encoding="utf-8")
ACCESSION_RULE = ("{attribute: AccessionNumber, level: procedure, source: {ORM: OBR-18, "
                  "OMI: IPC-1.1}, convert: identifier, max_length: 16}")
SITE = """\
name: site
extends: default
senders: [{application: EHR}]
%s
stations:
  - name: dx-room
    when: {modality: DX}
    ae_title: %s
    station_name: %s
"""
AE_PATH = "ScheduledProcedureStepSequence.ScheduledStationAETitle"


def profile_set(tmp_path: Path, name: str, **files: str) -> ProfileSet:
    """The packaged profiles with ``files`` (file name -> YAML) as a site directory."""
    directory = tmp_path / name
    directory.mkdir()
    for file, text in files.items():
        (directory / file).write_text(text, encoding="utf-8")
    return load_profiles(directory)


def default_with(tmp_path: Path, name: str, old: str, new: str) -> ProfileSet:
    """A site ``default`` profile: the packaged one with ``old`` replaced by ``new``."""
    assert old in DEFAULT_YAML
    return profile_set(tmp_path, name, **{"default.yaml": DEFAULT_YAML.replace(old, new)})


def no_start(raw: bytes) -> bytes:
    """An order without any scheduled start (ORC-7 and OBR-27 empty)."""
    return set_field(set_field(raw, "ORC", 7, ""), "OBR", 27, "")


def test_a_changed_station_rule_changes_the_items_attributes(services: Services,
                                                             tmp_path: Path) -> None:
    current = profile_set(tmp_path, "current", **{"site.yaml": SITE % ("", "DX01_AE", "DX01")})
    candidate = profile_set(tmp_path, "candidate",
                            **{"site.yaml": SITE % ("", "DX02_AE", "DX02")})
    first, second = services.process(order(1)).id, services.process(order(2)).id

    found = services.use_cases.mapping.impact(candidate, current=current)

    assert found.messages == 2 and found.changed
    assert not (found.now_failing or found.now_passing or found.items_added
                or found.items_removed or found.profile_changes)
    assert found.attributes_changed == [
        AttributeChange(first, "ACC1", "SPS1", AE_PATH, ["DX01_AE"], ["DX02_AE"]),
        AttributeChange(first, "ACC1", "SPS1", "ScheduledProcedureStepSequence."
                        "ScheduledStationName", "DX01", "DX02"),
        AttributeChange(second, "ACC2", "SPS2", AE_PATH, ["DX01_AE"], ["DX02_AE"]),
        AttributeChange(second, "ACC2", "SPS2", "ScheduledProcedureStepSequence."
                        "ScheduledStationName", "DX01", "DX02"),
    ]
    [sender] = found.senders
    assert (sender.sender, sender.profile_before, sender.profile_after) == (
        "EHR/HOSP", "site", "site")
    assert found.totals()["items_changed"] == 2
    lines = found.lines()
    assert f"  {AE_PATH} changes in 2 item(s): ['DX01_AE'] -> ['DX02_AE'] (2)" in lines
    assert "sender EHR/HOSP: 2 message(s), profile site" in lines
    assert found.as_dict()["senders"][0]["attributes_changed"][0] == {
        "message_id": first, "accession": "ACC1", "sps_id": "SPS1", "keyword": AE_PATH,
        "old": ["DX01_AE"], "new": ["DX02_AE"]}


def test_a_new_required_start_makes_a_message_fail(services: Services,
                                                   tmp_path: Path) -> None:
    """The candidate refuses orders without a scheduled start (missing_start: reject):
    the one stored without one would now fail with the error the sender would get."""
    site = SITE % ("", "DX01_AE", "DX01")
    current = profile_set(tmp_path, "current", **{"site.yaml": site})
    candidate = profile_set(tmp_path, "candidate",
                            **{"site.yaml": site + "missing_start: reject\n"})
    services.process(order(1))
    unscheduled = services.process(no_start(order(2)))
    assert unscheduled.status == "processed"  # scheduled at receipt under the current set

    found = services.use_cases.mapping.impact(candidate, current=current)

    [failing] = found.now_failing
    assert failing.message_id == unscheduled.id
    assert (failing.error.code, failing.error.location[:3]) == (101, "ORC")
    assert "start" in failing.error.text
    assert not (found.now_passing or found.attributes_changed or found.items_added)
    assert (f"  1 message(s) would now fail with {failing.error}: messages {unscheduled.id}"
            in found.lines())
    assert found.as_dict()["totals"]["now_failing"] == 1


def test_a_fixed_rule_makes_a_failed_message_pass(services: Services,
                                                  tmp_path: Path, profiles: ProfileSet) -> None:
    """A sender's 20-character accession numbers failed (AE 102); the candidate cuts
    them to 16 instead: the failed message would now pass."""
    long_accession = set_field(order(1), "OBR", 18, "ACC-0000000000000001")
    failed = services.process(long_accession)
    assert (failed.status, failed.error_code) == ("failed", 102)
    services.process(order(2))
    candidate = default_with(tmp_path, "fixed", ACCESSION_RULE,
                             ACCESSION_RULE[:-1] + ", on_overflow: truncate}")

    found = services.use_cases.mapping.impact(candidate, current=profiles)

    assert found.now_passing == [failed.id]
    assert not (found.now_failing or found.attributes_changed or found.profile_changes)
    assert f"  1 message(s) would now pass: {failed.id}" in found.lines()


def test_a_procedure_split_adds_and_removes_items(services: Services, tmp_path: Path,
                                                  profiles: ProfileSet) -> None:
    """Sample 05's two steps share accession ACC0001; a candidate taking the accession
    from each exam's filler number (OBR-3) makes two requested procedures of it."""
    raw = set_field(edited("05", "SPLIT-1"), "OBR", 3, "FIL-5002^RIS", occurrence=1)
    stored = services.process(raw)
    assert stored.status == "processed"
    candidate = default_with(tmp_path, "split", "source: {ORM: OBR-18, OMI: IPC-1.1}",
                             "source: {ORM: OBR-3.1, OMI: IPC-1.1}")

    found = services.use_cases.mapping.impact(candidate, current=profiles)

    assert found.items_removed == [ItemRef(stored.id, "ACC0001", "SPS0001"),
                                   ItemRef(stored.id, "ACC0001", "SPS0002")]
    assert found.items_added == [ItemRef(stored.id, "FIL-5001", "SPS0001"),
                                 ItemRef(stored.id, "FIL-5002", "SPS0002")]
    assert not (found.attributes_changed or found.now_failing)
    lines = found.lines()
    assert f"  message {stored.id}: item ACC0001/SPS0002 removed" in lines
    assert f"  message {stored.id}: item FIL-5002/SPS0002 added" in lines


def test_a_sender_moved_to_another_profile(services: Services, tmp_path: Path,
                                           profiles: ProfileSet) -> None:
    """A new profile for LABRIS takes that sender (and its DX station) from the
    default, and a patient attribute; the other sender is untouched. An ADT's patient
    is compared too."""
    lab = """\
name: lab-ris
extends: default
senders: [{application: LABRIS}]
rules:
  - {attribute: PatientComments, level: patient, source: PID-5.1, convert: text}
stations:
  - name: lab-dx
    when: {modality: DX}
    ae_title: LAB01_AE
"""
    candidate = profile_set(tmp_path, "moved", **{"lab.yaml": lab})
    services.process(order(1))
    moved = services.process(set_field(order(2), "MSH", 3, "LABRIS")).id
    adt = services.process(set_field(set_field(sample("03"), "MSH", 3, "LABRIS"),
                                     "MSH", 10, "ADT-LAB")).id

    found = services.use_cases.mapping.impact(candidate, current=profiles)

    assert [(s.sender, s.profile_before, s.profile_after, s.changed) for s in found.senders
            ] == [("LABRIS/HOSP", "default", "lab-ris", True),
                  ("EHR/HOSP", "default", "default", False)]
    assert [s.sender for s in found.profile_changes] == ["LABRIS/HOSP"]
    assert [(c.message_id, c.keyword, c.old, c.new) for c in found.attributes_changed
            if c.keyword == AE_PATH] == [(moved, AE_PATH, ["MWL_DEFAULT"], ["LAB01_AE"])]
    comments = {c.message_id: (c.accession, c.sps_id, c.old, c.new)
                for c in found.attributes_changed if c.keyword == "PatientComments"}
    assert comments == {moved: ("ACC2", "SPS2", None, "Bench"),  # the ADT's patient: no key
                        adt: ("", "", None, "Müller-Lüdenscheidt")}
    lines = found.lines()
    assert "sender LABRIS/HOSP: 2 message(s), profile default -> lab-ris" in lines
    assert "sender EHR/HOSP: 1 message(s), profile default, no change" in lines
    assert found.as_dict()["totals"]["profile_changes"] == 1


def test_the_last_messages_of_each_sender_are_compared_and_nothing_written(
        services: Services, tmp_path: Path, profiles: ProfileSet) -> None:
    """Rejected messages (never mapped) and waiting ones are not compared; at most
    ``per_sender`` messages of each sender, the latest."""
    ehr = [services.process(order(n)).id for n in range(1, 4)]
    other = services.process(set_field(order(4), "MSH", 4, "CLINIC")).id
    rejected = services.store(set_field(sample("03"), "MSH", 9, "XYZ^A01"))
    waiting = services.store(order(5))
    assert services.message(rejected).status == "rejected"
    with services.factory() as session:
        assert last_per_sender(session, 2) == [ehr[1], ehr[2], other]
        before = session.scalar(select(func.count()).select_from(Patient))
    assert waiting not in ehr

    found = services.use_cases.mapping.impact(profiles, current=profiles, per_sender=2)

    assert (found.messages, found.changed) == (3, False)
    assert "  no change" in found.lines()
    with services.factory() as session:
        assert session.scalar(select(func.count()).select_from(Patient)) == before
        assert session.get(InboundMessage, waiting).status == "received"


def test_the_set_in_force_is_the_default_current(services: Services, tmp_path: Path) -> None:
    """Without ``current``, the profiles in force are compared against (before any
    deployment, those loaded from the mappings directory)."""
    services.process(order(1))
    candidate = profile_set(tmp_path, "site", **{"site.yaml": SITE % ("", "DX01_AE", "DX01")})

    found = services.use_cases.mapping.impact(candidate)

    [change] = [c for c in found.attributes_changed if c.keyword == AE_PATH]
    assert (change.old, change.new) == (["MWL_DEFAULT"], ["DX01_AE"])
    assert found.lines()[0].startswith("impact of the candidate against the profiles loaded")
