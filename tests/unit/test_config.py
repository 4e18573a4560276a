"""Settings: defaults, MWLB_* environment, TOML file, precedence."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.config import AckMode, load_settings


def test_defaults_are_the_embedded_quick_start() -> None:
    s = load_settings()
    assert s.database_url.startswith("sqlite:///var/")
    assert s.embedded
    assert (s.mllp_port, s.dicom_port, s.ae_title) == (2575, 11112, "MWL_BROKER")
    assert s.ack_mode is AckMode.APPLICATION


def test_environment_beats_file_and_file_beats_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tmp_path / "broker.toml"
    cfg.write_text('mllp_port = 3000\ndicom_port = 4000\nack_mode = "store"\n')
    monkeypatch.setenv("MWLB_DICOM_PORT", "5000")
    s = load_settings(cfg)
    assert s.mllp_port == 3000
    assert s.dicom_port == 5000
    assert s.ack_mode is AckMode.STORE


def test_unknown_key_in_file_is_named(tmp_path: Path) -> None:
    cfg = tmp_path / "broker.toml"
    cfg.write_text("mlp_port = 1\n")
    with pytest.raises(ValueError, match="mlp_port"):
        load_settings(cfg)


def test_celery_url_selects_distributed_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MWLB_CELERY_BROKER_URL", "redis://127.0.0.1:6379/0")
    assert not load_settings().embedded


def test_hl7_versions_default_and_narrowing(monkeypatch: pytest.MonkeyPatch) -> None:
    from broker.hl7.message import HL7_VERSIONS

    assert load_settings().hl7_versions == list(HL7_VERSIONS)
    assert "2.1" in HL7_VERSIONS and "2.8.2" in HL7_VERSIONS
    monkeypatch.setenv("MWLB_HL7_VERSIONS", '["2.3.1", "2.5.1"]')
    assert load_settings().hl7_versions == ["2.3.1", "2.5.1"]
    monkeypatch.setenv("MWLB_HL7_VERSIONS", '["2.5.1", "2.9"]')
    with pytest.raises(ValueError, match="unknown HL7 version"):
        load_settings()
    monkeypatch.setenv("MWLB_HL7_VERSIONS", "[]")
    with pytest.raises(ValueError, match="at least one"):
        load_settings()


def test_reading_caps_defaults() -> None:
    s = load_settings()
    assert (s.hl7_max_segments, s.hl7_max_repetitions, s.hl7_max_components) == (
        2000, 1000, 100)
