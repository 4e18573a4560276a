"""docker-compose.yml: valid for Compose, complete (healthchecks, ports, access control,
the first admin from a Docker secret), and its topology working: the services'
processes started on this host with the environment Compose gives them (PostgreSQL and
Redis of the test setup, `mwl-broker serve`, `mwl-broker worker`) take an order over
MLLP, serve it to a modality, let the admin log in and answer /metrics, and their
healthchecks pass. No Docker engine is needed."""

from __future__ import annotations

import ipaddress
import re
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from broker.config import load_settings
from broker.security.access import check_startup
from tests.conftest import REDIS_URL, REPO, sample
from tests.dcmtk import findscu, sps
from tests.integration.compose import (
    compose_config,
    environment_here,
    healthcheck_argv,
    host_path,
    published,
)
from tests.integration.conftest import Processes, free_port
from tests.integration.hl7util import send

ADMIN_PASSWORD = "Pelican-harbour-4719"  # synthetic


def test_compose_file_is_valid_and_complete(monkeypatch: pytest.MonkeyPatch) -> None:
    config = compose_config()
    services = config["services"]
    assert set(services) == {"postgres", "redis", "broker", "worker", "prometheus", "grafana"}
    for name, service in services.items():
        assert service["healthcheck"]["test"], name
    assert {name: s["profiles"] for name, s in services.items() if "profiles" in s} == {
        "prometheus": ["monitoring"], "grafana": ["monitoring"]}
    assert published(services["broker"]) == {2575, 11112, 8080}
    exposed = re.search(r"^EXPOSE (.+)$", (REPO / "Dockerfile").read_text(), re.M)
    assert exposed and {int(p) for p in exposed.group(1).split()} == published(services["broker"])
    for name in ("broker", "worker"):
        env = services[name]["environment"]
        assert env["MWLB_DATABASE_URL"].startswith("postgresql+psycopg://mwlb:mwlb@postgres:")
        assert env["MWLB_CELERY_BROKER_URL"] == "redis://redis:6379/0"
        assert {dep: d["condition"] for dep, d in services[name]["depends_on"].items()} == {
            "postgres": "service_healthy", "redis": "service_healthy"}

    # Distributed mode starts because the allow-lists are filled, not by an open door:
    # with the Docker host (the stack network's gateway) and loopback only.
    broker_env = services["broker"]["environment"]
    assert "MWLB_ALLOW_OPEN_ACCESS" not in broker_env
    for key, value in broker_env.items():
        monkeypatch.setenv(key, str(value))
    settings = load_settings()
    assert not settings.embedded and check_startup(settings) == []
    subnet = ipaddress.IPv4Network(config["networks"]["default"]["ipam"]["config"][0]["subnet"])
    assert "FINDSCU" in {e.ae_title for e in settings.dicom_allowed_calling}
    assert "EHR" in {e.sending_application for e in settings.hl7_allowed_senders}
    for hosts in ([e.hosts for e in settings.dicom_allowed_calling]
                  + [e.hosts for e in settings.hl7_allowed_senders]):
        networks = [ipaddress.IPv4Network(h) for h in hosts]
        assert networks and all(n.is_loopback or n.subnet_of(subnet) for n in networks), hosts

    # The first admin: its name from the environment, its password from a Docker secret
    # kept out of the repository.
    assert settings.admin_user == "admin"
    assert str(settings.admin_password_file) == "/run/secrets/mwlb_admin_password"
    assert {s["source"] for s in services["broker"]["secrets"]} == {"mwlb_admin_password"}
    assert config["secrets"]["mwlb_admin_password"]["file"] == str(
        REPO / "secrets" / "mwlb_admin_password")
    ignored = subprocess.run(["git", "-C", str(REPO), "check-ignore", "-q",
                              "secrets/mwlb_admin_password"], timeout=30)
    assert ignored.returncode == 0, "secrets/ must be git-ignored"


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.dcmtk
def test_the_compose_topology_takes_an_order_end_to_end(postgres_url: str,
                                                        tmp_path: Path) -> None:
    services = compose_config()["services"]
    secret = tmp_path / "mwlb_admin_password"
    secret.write_text(ADMIN_PASSWORD + "\n")
    mllp, dicom, http = free_port(), free_port(), free_port()
    here = {"PATH": host_path(), "MWLB_MLLP_HOST": "127.0.0.1", "MWLB_DICOM_HOST": "127.0.0.1",
            "MWLB_HTTP_HOST": "127.0.0.1", "MWLB_MLLP_PORT": str(mllp),
            "MWLB_DICOM_PORT": str(dicom), "MWLB_HTTP_PORT": str(http)}
    redis.Redis.from_url(REDIS_URL).flushdb()
    secrets = {"mwlb_admin_password": secret}
    worker = Processes({**environment_here("worker", postgres_url, secrets), **here}, tmp_path)
    serve = Processes({**environment_here("broker", postgres_url, secrets), **here}, tmp_path)
    try:
        assert services["worker"]["command"][:2] == ["mwl-broker", "worker"]
        worker.start(*services["worker"]["command"][1:])
        worker.wait_for("worker", r"ready\.")
        assert services["broker"]["command"] == ["mwl-broker", "serve"]
        serve.start("serve")
        serve.wait_for("serve", r"mwl-broker listening")
        logs = "\n".join(p.output() for p in (worker, serve))

        # Each service's healthcheck, as Docker would run it, passes.
        for name, replace in (("broker", {":8080/": f":{http}/"}),
                              ("worker", {})):
            env = {**environment_here(name, postgres_url, secrets), **here,
                   "HOSTNAME": socket.gethostname()}  # Docker sets the container's
            check = _passes(healthcheck_argv(name, replace), env)
            assert check.returncode == 0, f"{name}: {check.stdout}{check.stderr}\n{logs}"

        # An order over MLLP: AA after a worker applied it; a modality sees its steps.
        [ack] = send(mllp, sample("05"))
        assert (ack.code, ack.control_id) == ("AA", "ORM0005"), logs
        items = findscu(dicom, ["AccessionNumber=ACC0001",
                                "ScheduledProcedureStepSequence[0].ScheduledProcedureStepID"],
                        aet="FINDSCU")
        assert sorted(sps(ds).ScheduledProcedureStepID for ds in items) == ["SPS0001", "SPS0002"]
        with pytest.raises(AssertionError, match="Association Rejected"):
            findscu(dicom, ["AccessionNumber=ACC0001"], aet="NOT_LISTED")

        # The admin from MWLB_ADMIN_USER logs in to the console; /metrics answers.
        console = f"http://127.0.0.1:{http}"
        with httpx.Client(base_url=console, headers={"Origin": console}, timeout=30) as web:
            login = web.post("/login", data={"name": "admin", "password": ADMIN_PASSWORD})
            assert login.status_code == 303, login.text
            users = web.get("/api/users").json()
            assert [(u["name"], u["role"]) for u in users] == [("admin", "admin")]
            metrics = web.get("/metrics")
        assert metrics.status_code == 200
        assert 'mwlb_hl7_messages_total{status="processed",type="ORM^O01"} 1.0' in metrics.text
        assert "mwlb_cfind_duration_seconds_count 1.0" in metrics.text
        full_logs = "".join(log.read_text() for log in tmp_path.glob("*.log"))
        assert "console user admin created with role admin" in full_logs
        assert ADMIN_PASSWORD not in full_logs
    finally:
        serve.stop()
        worker.stop()


def _passes(argv: list[str], env: dict[str, str], within: float = 60) -> Any:
    """Run a healthcheck until it passes or ``within`` seconds are over (Docker retries
    it too); the last run."""
    deadline = time.monotonic() + within
    while True:
        proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=within)
        if proc.returncode == 0 or time.monotonic() > deadline:
            return proc
        time.sleep(1)
