"""docker-compose.yml as the tests read it: resolved by ``docker-compose config`` (the
test setup, scripts/test-services.sh, installs docker-compose; no Docker engine is
needed), and a service's environment and healthchecks carried over to this host."""

from __future__ import annotations

import os
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy.engine import make_url

from tests.conftest import REDIS_URL, REPO

COMPOSE_FILE = REPO / "docker-compose.yml"
SECRETS_DIR = "/run/secrets/"  # where Compose mounts a service's secrets


@cache
def compose_config() -> dict[str, Any]:
    """``docker-compose config`` of the repository's compose file (interpolated, YAML
    anchors merged), as a dict; raises when Compose finds the file invalid."""
    proc = subprocess.run(["docker-compose", "-f", str(COMPOSE_FILE), "config"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    config: dict[str, Any] = yaml.safe_load(proc.stdout)
    return config


def published(service: dict[str, Any]) -> set[int]:
    """The container ports a service publishes on the Docker host."""
    return {int(p["target"]) if isinstance(p, dict) else int(str(p).split(":")[-1].split("/")[0])
            for p in service.get("ports", [])}


def environment_here(name: str, database_url: str, secrets: dict[str, Path]) -> dict[str, str]:
    """The environment Compose gives service ``name``, for its process run on this host:
    other services' host names become 127.0.0.1, the database and the Redis database
    are the test's own (same driver, same scheme), container paths of the service's
    volumes become the host directories they mount, and its secrets are the files in
    ``secrets`` (by secret name)."""
    config = compose_config()
    service = config["services"][name]
    mounts = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith("/"):  # a bind mount, not a named volume
            mounts[target] = source
    for secret in service.get("secrets", []):
        secret_name = secret["source"] if isinstance(secret, dict) else secret
        mounts[SECRETS_DIR + secret_name] = str(secrets[secret_name])
    env = {}
    for key, value in service.get("environment", {}).items():
        value = str(value)
        for other in config["services"]:
            value = value.replace(f"@{other}:", "@127.0.0.1:").replace(f"//{other}:",
                                                                       "//127.0.0.1:")
        for target, source in mounts.items():
            if value == target or value.startswith(target + "/"):
                value = source + value[len(target):]
        env[key] = value
    if "MWLB_DATABASE_URL" in env:
        ours = make_url(database_url)
        env["MWLB_DATABASE_URL"] = make_url(env["MWLB_DATABASE_URL"]).set(
            host=ours.host, port=ours.port, database=ours.database, username=ours.username,
            password=ours.password).render_as_string(hide_password=False)
    if "MWLB_CELERY_BROKER_URL" in env:
        compose_url = env["MWLB_CELERY_BROKER_URL"]  # only the database number differs
        assert compose_url.rsplit("/", 1)[0] == REDIS_URL.rsplit("/", 1)[0], compose_url
        env["MWLB_CELERY_BROKER_URL"] = REDIS_URL
    return env


def healthcheck_argv(name: str, replace: dict[str, str]) -> list[str]:
    """Service ``name``'s healthcheck as a command line for this host (Compose's ``$$``
    unescaped; each ``replace`` key replaced by its value, e.g. a port)."""
    test = compose_config()["services"][name]["healthcheck"]["test"]
    argv = [test[1]] if test[0] == "CMD-SHELL" else list(test[1:])
    argv = [arg.replace("$$", "$") for arg in argv]
    for old, new in replace.items():
        argv = [arg.replace(old, new) for arg in argv]
    return ["sh", "-c", argv[0]] if test[0] == "CMD-SHELL" else argv


def host_path() -> str:
    """PATH with this virtual environment's scripts (mwl-broker, celery, python) first,
    as they are on the image's PATH."""
    return os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
