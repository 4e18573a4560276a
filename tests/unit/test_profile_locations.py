"""Where the mapping profiles come from: the packaged default profile is always there, a
site directory (./mappings, or MWLB_MAPPINGS_DIR) adds to it or replaces it by name."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from broker.config import Settings
from broker.domain.types import OrderMessage
from broker.hl7.message import parse
from broker.mapping import PACKAGED_PROFILES
from broker.mapping.apply import map_message
from broker.mapping.profile import ProfileError, ProfileSet, check_directory, load_profiles
from tests.conftest import REPO, sample
from tests.integration.hl7util import set_all, set_field

SITE = ("name: site\nextends: default\nsenders: [{application: EHR2}]\n"
        "stations:\n  - {name: dx-room, when: {modality: DX}, ae_title: DX01_AE}\n")


def stations(raw: bytes, profiles: ProfileSet) -> tuple[str, list[list[str]]]:
    mapped = map_message(parse(raw), profiles, timezone="UTC")
    assert isinstance(mapped, OrderMessage)
    return mapped.profile, [s.attributes["ScheduledStationAETitle"]
                            for p in mapped.procedures for s in p.steps]


def test_from_an_empty_directory_the_packaged_default_is_used(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = Settings()
    assert settings.mappings_dir == PACKAGED_PROFILES
    profiles = load_profiles(settings.mappings_dir)
    assert profiles.files == {"default": PACKAGED_PROFILES / "default.yaml"}
    assert stations(sample("05"), profiles) == ("default", [["MWL_DEFAULT"]] * 2)
    ct = set_all(sample("05"), "OBR", 24, "CT")
    assert stations(ct, profiles) == ("default", [["CT01_AE"]] * 2)


def test_a_mappings_directory_here_is_the_default(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "mappings").mkdir()
    monkeypatch.chdir(tmp_path)
    assert Settings().mappings_dir == Path("mappings")
    assert load_profiles(Path("mappings")).files == {
        "default": PACKAGED_PROFILES / "default.yaml"}, "an empty site directory is valid"


def test_a_site_profile_extends_the_packaged_default(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "site.yaml").write_text(SITE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MWLB_MAPPINGS_DIR", str(site))
    settings = Settings()
    assert settings.mappings_dir == site
    assert check_directory(site) == []
    profiles = load_profiles(settings.mappings_dir)
    assert profiles.files == {"default": PACKAGED_PROFILES / "default.yaml",
                              "site": site / "site.yaml"}
    ehr2 = set_field(sample("05"), "MSH", 3, "EHR2")
    assert stations(ehr2, profiles) == ("site", [["DX01_AE"]] * 2)
    ehr2_ct = set_all(ehr2, "OBR", 24, "CT")  # the default's station rules are inherited
    assert stations(ehr2_ct, profiles) == ("site", [["CT01_AE"]] * 2)
    assert stations(sample("05"), profiles) == ("default", [["MWL_DEFAULT"]] * 2)


def test_a_site_default_replaces_the_packaged_one(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    text = (PACKAGED_PROFILES / "default.yaml").read_text()
    (site / "ours.yaml").write_text(text.replace("ae_title: MWL_DEFAULT", "ae_title: OUR_DEFAULT"))
    (site / "site.yaml").write_text(SITE)
    profiles = load_profiles(site)
    assert profiles.files == {"default": site / "ours.yaml", "site": site / "site.yaml"}
    assert stations(sample("05"), profiles) == ("default", [["OUR_DEFAULT"]] * 2)
    ehr2_ct = set_all(set_field(sample("05"), "MSH", 3, "EHR2"), "OBR", 24, "US")
    assert stations(ehr2_ct, profiles) == ("site", [["OUR_DEFAULT"]] * 2), "extends the site's"


def test_a_mappings_directory_that_does_not_exist_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match="no such directory"):
        load_profiles(tmp_path / "nowhere")


def test_the_repository_example_profile(tmp_path: Path) -> None:
    """mappings/ holds an example site profile for one sender; everyone else keeps the
    packaged default."""
    assert check_directory(REPO / "mappings") == []
    profiles = load_profiles(REPO / "mappings")
    assert set(profiles.files) == {"default", "example-site"}
    assert stations(sample("05"), profiles) == ("default", [["MWL_DEFAULT"]] * 2)
    raw = set_field(set_field(sample("05"), "MSH", 3, "EXAMPLE_RIS"), "MSH", 4, "EXAMPLE_HOSP")
    raw = set_field(set_all(raw, "OBR", 24, "US"), "PV1", 3, "ER1^B2^^HOSP")
    assert stations(raw, profiles) == ("example-site", [["US02_AE"]] * 2)
    mapped = map_message(parse(raw), profiles, timezone="UTC")
    assert isinstance(mapped, OrderMessage)
    assert mapped.procedures[0].attributes["MedicalAlerts"] == "Contact isolation"


def test_the_packaged_profile_is_the_tests_default(tmp_path: Path) -> None:
    """Tests copy the packaged directory as a site directory and edit its default."""
    site = tmp_path / "mappings"
    shutil.copytree(PACKAGED_PROFILES, site)
    assert load_profiles(site).files == {"default": site / "default.yaml"}
