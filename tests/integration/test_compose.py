"""docker-compose.yml wires postgres, redis, broker and worker with healthchecks.

Validated with `docker-compose config` (no engine needed; test setup installs it)."""

from __future__ import annotations

import subprocess

import yaml

from tests.conftest import REPO


def test_compose_file_is_valid_and_complete() -> None:
    proc = subprocess.run(["docker-compose", "-f", str(REPO / "docker-compose.yml"), "config"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    config = yaml.safe_load(proc.stdout)
    services = config["services"]
    assert set(services) == {"postgres", "redis", "broker", "worker"}
    for name in services:
        assert "healthcheck" in services[name], name
    for name in ("broker", "worker"):
        env = services[name]["environment"]
        assert env["MWLB_DATABASE_URL"].startswith("postgresql")
        assert env["MWLB_CELERY_BROKER_URL"].startswith("redis://")
        assert services[name]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert "2575:2575" in str(services["broker"]["ports"]) or any(
        p.get("target") == 2575 for p in services["broker"]["ports"] if isinstance(p, dict))
