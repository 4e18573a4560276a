"""The first console admin from MWLB_ADMIN_USER and MWLB_ADMIN_PASSWORD_FILE (a Docker
secret): created when the broker starts and the user is missing, never overwritten
afterwards, its password in no log; a configuration that cannot create it stops the
start with a message naming the setting."""

from __future__ import annotations

import logging
import os
import subprocess
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from broker.app import BrokerApp
from broker.config import Settings
from broker.db import unit_of_work
from broker.migrations import upgrade
from broker.models import AuditEvent, User
from broker.runtime import Runtime
from broker.security.first_admin import ACTOR, FirstAdminError, ensure_first_admin
from tests.conftest import broker_settings
from tests.integration.conftest import CLI, free_port

FIRST = "Pelican-harbour-4719"  # synthetic passwords
SECOND = "Otter-lighthouse-8352"


def _login(app: BrokerApp, name: str, password: str) -> int:
    origin = f"http://127.0.0.1:{app.http_port}"
    with httpx.Client(base_url=origin, headers={"Origin": origin}, timeout=30) as web:
        return web.post("/login", data={"name": name, "password": password}).status_code


def test_created_at_start_then_left_as_it_is(tmp_path: Path,
                                            caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    secret = tmp_path / "mwlb_admin_password"
    secret.write_text(FIRST + "\n")  # as `echo ... > file` leaves it
    settings = broker_settings(tmp_path, admin_user="siteadmin", admin_password_file=secret)
    app = BrokerApp(settings)
    app.start()
    try:
        assert _login(app, "siteadmin", FIRST) == 303
        with app.runtime.session_factory() as session:
            user = session.scalars(select(User)).one()
            created = session.scalars(select(AuditEvent).where(
                AuditEvent.detail == "user siteadmin created, role admin")).one()
        assert (user.name, user.role) == ("siteadmin", "admin")
        assert created.user == ACTOR
    finally:
        app.stop()

    secret.write_text(SECOND + "\n")  # the secret changed: the account does not
    again = BrokerApp(settings)
    again.start()
    try:
        assert _login(again, "siteadmin", FIRST) == 303
        assert _login(again, "siteadmin", SECOND) == 200  # the form again: wrong password
    finally:
        again.stop()
    assert "console user siteadmin created with role admin" in caplog.text
    assert "console user siteadmin exists: left as it is" in caplog.text
    assert FIRST not in caplog.text and SECOND not in caplog.text


@pytest.fixture
def migrated(tmp_path: Path) -> Settings:
    settings = broker_settings(tmp_path)
    upgrade(settings.database_url)
    return settings


@pytest.mark.parametrize(("content", "expected"), [
    (None, "MWLB_ADMIN_USER is set but MWLB_ADMIN_PASSWORD_FILE is not"),
    ("missing", "cannot read it (No such file or directory)"),
    ("\n", "is empty"),
    ("aaaaaaaaaaaaaaaa\n", "MWLB_ADMIN_USER siteadmin not created: the password is "
                           "repetitive or sequential"),
    ("Siteadmin-Siteadmin\n", "the password may not contain the user name"),
])
def test_a_first_admin_that_cannot_be_created_names_the_setting(
        migrated: Settings, tmp_path: Path, content: str | None, expected: str) -> None:
    secret = tmp_path / "secret"
    if content not in (None, "missing"):
        secret.write_text(content)
    settings = migrated.model_copy(update={
        "admin_user": "siteadmin", "admin_password_file": None if content is None else secret})
    runtime = Runtime(settings)
    try:
        with pytest.raises(FirstAdminError) as refused:
            ensure_first_admin(runtime.session_factory, settings)
        with runtime.session_factory() as session:
            assert session.scalars(select(User)).all() == []
    finally:
        runtime.dispose()
    assert expected in str(refused.value)
    password = (content or "").strip()
    assert not password or password not in str(refused.value)


@pytest.mark.parametrize("command", ["serve", "web"])
def test_a_server_refuses_to_start_with_a_weak_first_password(tmp_path: Path,
                                                             command: str) -> None:
    secret = tmp_path / "secret"
    secret.write_text("password1234\n")  # on the common-passwords list
    env = {**os.environ, "MWLB_DATABASE_URL": f"sqlite:///{tmp_path / 'broker.db'}",
           "MWLB_ADMIN_USER": "siteadmin", "MWLB_ADMIN_PASSWORD_FILE": str(secret),
           "MWLB_MLLP_HOST": "127.0.0.1", "MWLB_MLLP_PORT": str(free_port()),
           "MWLB_DICOM_HOST": "127.0.0.1", "MWLB_DICOM_PORT": str(free_port()),
           "MWLB_HTTP_HOST": "127.0.0.1", "MWLB_HTTP_PORT": str(free_port())}
    proc = subprocess.run([CLI, command], env=env, capture_output=True, text=True,
                          timeout=90)
    assert proc.returncode != 0
    assert "MWLB_ADMIN_PASSWORD_FILE" in proc.stderr and "common passwords" in proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert "password1234" not in proc.stdout + proc.stderr


@pytest.mark.postgres
def test_nodes_starting_at_once_create_the_admin_once(postgres_url: str,
                                                      tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text(FIRST)
    settings = broker_settings(tmp_path, database_url=postgres_url, admin_user="siteadmin",
                               admin_password_file=secret)
    upgrade(postgres_url)
    runtimes = [Runtime(settings) for _ in range(4)]
    start = threading.Barrier(len(runtimes))
    created: list[Any] = []

    def node(runtime: Runtime) -> None:
        start.wait()
        created.append(ensure_first_admin(runtime.session_factory, settings))

    threads = [threading.Thread(target=node, args=(r,)) for r in runtimes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    try:
        assert sorted(created) == [False, False, False, True]
        with unit_of_work(runtimes[0].session_factory) as session:
            assert session.scalars(select(User.name)).all() == ["siteadmin"]
    finally:
        for runtime in runtimes:
            runtime.dispose()
