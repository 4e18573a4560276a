"""Each command's expected failures, as a user meets them: the real `mwl-broker`
process against closed ports, a silent listener, a running broker that refuses, and
settings it cannot use. Each says one line on standard error (one paragraph for a
configuration error), no traceback, and exits non-zero."""

from __future__ import annotations

import os
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import MAPPINGS, SAMPLES, sample
from tests.integration.conftest import free_port
from tests.integration.hl7util import send
from tests.workflow import CLI

pytestmark = [pytest.mark.dcmtk]

ORDER = str(SAMPLES / "05_orm_o01_nw_two_sps.hl7")
SETTINGS_HINT = ("Settings come from MWLB_* environment variables and the --config file; "
                 "`mwl-broker serve --help` lists them.")


def run(*args: str, env: dict[str, str] | None = None, stdin: str = ""
        ) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("MWLB_")}
    full.update(env or {})
    return subprocess.run([CLI, *args], capture_output=True, text=True, env=full,
                          input=stdin, timeout=60)


def one_line(proc: subprocess.CompletedProcess[str], code: int = 1) -> str:
    """The single line the command said on standard error, having exited ``code``."""
    lines = proc.stderr.splitlines()
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


@pytest.fixture
def silent_listener() -> Iterator[int]:
    """A TCP port that accepts connections and never says anything."""
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    server.close()


def test_send_hl7_to_a_closed_port() -> None:
    port = free_port()
    proc = run("send-hl7", "--port", str(port), ORDER)
    assert one_line(proc) == f"cannot connect to localhost:{port}: connection refused"
    assert proc.stdout == ""


def test_send_hl7_to_an_unknown_host() -> None:
    """RFC 6761: .invalid names never resolve."""
    proc = run("send-hl7", "--host", "nonexistent.invalid", "--port", "2575", ORDER)
    assert one_line(proc).startswith("cannot connect to nonexistent.invalid:2575: ")


def test_send_hl7_to_a_listener_that_never_acknowledges(silent_listener: int) -> None:
    proc = run("send-hl7", "--host", "127.0.0.1", "--port", str(silent_listener),
               "--timeout", "1", ORDER)
    assert one_line(proc) == (f"no ACK from 127.0.0.1:{silent_listener} within 1 s for "
                              "message 1 of 05_orm_o01_nw_two_sps.hl7")


def test_send_hl7_refuses_an_empty_file_before_connecting(tmp_path: Path) -> None:
    empty = tmp_path / "empty.hl7"
    empty.write_bytes(b"")
    proc = run("send-hl7", "--port", str(free_port()), ORDER, str(empty))
    assert one_line(proc) == (f"{empty}: no HL7 message in the file (a message starts "
                              "with MSH)")


def test_send_hl7_and_echo_use_the_configured_ports(make_broker: Any) -> None:
    """Like a site's scripts: MWLB_MLLP_PORT / MWLB_DICOM_PORT (and the hosts, when they
    are addresses rather than "every address") instead of --host and --port."""
    broker = make_broker()
    env = {"MWLB_MLLP_HOST": "127.0.0.1", "MWLB_MLLP_PORT": str(broker.mllp_port),
           "MWLB_DICOM_HOST": "127.0.0.1", "MWLB_DICOM_PORT": str(broker.dicom_port)}
    sent = run("send-hl7", ORDER, env=env)
    assert sent.returncode == 0, sent.stderr
    assert "MSA|AA|ORM0005" in sent.stdout
    echoed = run("echo", env=env)
    assert echoed.returncode == 0, echoed.stderr
    assert f"C-ECHO MWL_BROKER at 127.0.0.1:{broker.dicom_port}: success" in echoed.stdout


def test_send_hl7_without_a_fixed_port_asks_for_one() -> None:
    proc = run("send-hl7", ORDER, env={"MWLB_MLLP_PORT": "0"})
    assert one_line(proc, 2) == ("MWLB_MLLP_PORT is 0 (no fixed port to send to): give "
                                 "--port")


def test_echo_with_nothing_listening() -> None:
    port = free_port()
    proc = run("echo", "--port", str(port))
    assert one_line(proc) == f"cannot connect to localhost:{port}: connection refused"


def test_echo_to_a_listener_that_never_answers(silent_listener: int) -> None:
    proc = run("echo", "--host", "127.0.0.1", "--port", str(silent_listener),
               "--timeout", "1")
    assert one_line(proc) == (f"no answer to the association request from "
                              f"127.0.0.1:{silent_listener} within 1 s")


def test_echo_says_why_the_association_was_rejected(make_broker: Any) -> None:
    """The A-ASSOCIATE-RJ result, source and reason (PS3.8 Table 9-21) in words."""
    broker = make_broker(dicom_allowed_calling=[{"ae_title": "CT01_AE"}])
    peer = f"localhost:{broker.dicom_port}"
    wrong_called = run("echo", "--port", str(broker.dicom_port), "--aet", "CT01_AE",
                       "--aec", "NOT_US")
    assert one_line(wrong_called) == (
        f"association rejected by {peer}: called AE title not recognised (we called "
        "NOT_US); rejected-permanent, from the service user")
    not_listed = run("echo", "--port", str(broker.dicom_port))
    assert one_line(not_listed) == (
        f"association rejected by {peer}: calling AE title not recognised (we called as "
        "MWLB_ECHO); rejected-permanent, from the service user")
    allowed = run("echo", "--port", str(broker.dicom_port), "--aet", "CT01_AE")
    assert allowed.returncode == 0, allowed.stderr


def test_worklist_query_takes_iso_dates_and_ranges(make_broker: Any) -> None:
    broker = make_broker()
    assert send(broker.mllp_port, sample("05"))[0].code == "AA"
    port = str(broker.dicom_port)
    for date, found in (("2025-03-10", 2), ("20250310", 2), ("2025-03-09/2025-03-10", 2),
                        ("20250311-", 0), ("-2025-03-09", 0)):
        proc = run("worklist", "query", "--port", port, "--date", date,
                   env={"COLUMNS": "250"})
        assert proc.returncode == 0, proc.stderr
        assert f"{found} item(s); final status 0x0000" in proc.stdout, (date, proc.stdout)


@pytest.mark.parametrize("date", ["2025-13-10", "10.03.2025", "2025-03-11/2025-03-10", "-"])
def test_worklist_query_names_the_date_format(date: str) -> None:
    proc = run("worklist", "query", "--port", str(free_port()), "--date", date)
    assert one_line(proc, 2) == (
        f"--date {date}: give a date as YYYY-MM-DD or YYYYMMDD, or a range FROM-TO "
        "(FROM/TO, FROM..TO; either end may be left out)")


def test_a_bad_setting_is_named(tmp_path: Path) -> None:
    proc = run("send-hl7", ORDER, env={"MWLB_MLLP_PORT": "two thousand"})
    assert one_line(proc, 2) == (
        "configuration error: MWLB_MLLP_PORT: Input should be a valid integer, unable to "
        f"parse string as an integer (got 'two thousand'). {SETTINGS_HINT}")
    proc = run("db", "upgrade", env={"MWLB_TIMEZONE": "Europe/Atlantis",
                                     "MWLB_DATABASE_URL": f"sqlite:///{tmp_path / 'b.db'}"})
    assert one_line(proc, 2).startswith(
        "configuration error: MWLB_TIMEZONE: no IANA time zone 'Europe/Atlantis'")
    proc = run("users", "list", env={"MWLB_DATABASE_URL": "postgresql://db/mwlb"})
    assert one_line(proc, 2).startswith(
        "configuration error: MWLB_DATABASE_URL: give sqlite:///path/to/file.db or "
        "postgresql+psycopg://")
    proc = run("echo", env={"MWLB_DICOM_ALLOWED_CALLING": "CT01_AE"})
    assert one_line(proc, 2).startswith(
        "configuration error: MWLB_DICOM_ALLOWED_CALLING: not valid JSON")


def test_a_config_file_with_an_unknown_key_is_named(tmp_path: Path) -> None:
    config = tmp_path / "broker.toml"
    config.write_text('mllp_prot = 2575\n')
    proc = run("db", "upgrade", "--config", str(config))
    assert one_line(proc, 2) == (f"configuration error: {config}: unknown setting(s): "
                                 f"mllp_prot. {SETTINGS_HINT}")


def test_an_open_distributed_broker_refuses_to_start_in_one_paragraph(tmp_path: Path) -> None:
    proc = run("serve", env={"MWLB_DATABASE_URL": f"sqlite:///{tmp_path / 'd.db'}",
                             "MWLB_CELERY_BROKER_URL": "redis://127.0.0.1:6379/15"})
    assert one_line(proc, 2) == (
        "configuration error: DICOM and HL7 open to any peer: set "
        "MWLB_DICOM_ALLOWED_CALLING / MWLB_HL7_ALLOWED_SENDERS (README, 'Access control'), "
        f"or MWLB_ALLOW_OPEN_ACCESS=true to run open on purpose. {SETTINGS_HINT}")


def test_a_missing_mappings_directory_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-mappings"
    proc = run("mapping", "test", ORDER,
               env={"MWLB_MAPPINGS_DIR": str(missing),
                    "MWLB_DATABASE_URL": f"sqlite:///{tmp_path / 'never.db'}"})
    assert one_line(proc, 2) == (f"configuration error: MWLB_MAPPINGS_DIR: {missing}: no "
                                 f"such directory of mapping profiles. {SETTINGS_HINT}")


def test_serve_on_a_port_in_use(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        proc = run("serve", env={"MWLB_DATABASE_URL": f"sqlite:///{tmp_path / 's.db'}",
                                 "MWLB_MAPPINGS_DIR": str(MAPPINGS),
                                 "MWLB_MLLP_HOST": "127.0.0.1", "MWLB_MLLP_PORT": str(port),
                                 "MWLB_DICOM_PORT": "0", "MWLB_HTTP_PORT": "-1",
                                 "MWLB_LOG_FORMAT": "json"})
    errors = [line for line in proc.stderr.splitlines() if not line.startswith("{")]
    assert proc.returncode == 1 and len(errors) == 1, proc.stderr
    assert errors[0].startswith("could not start: ") and "address already in use" in errors[0]


def test_database_not_answering(tmp_path: Path) -> None:
    url = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/mwlb"
    proc = run("messages", "list", env={"MWLB_DATABASE_URL": url})
    line = one_line(proc)
    assert line.startswith("cannot use the database (MWLB_DATABASE_URL): ")
    assert "Connection refused" in line


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    empty = tmp_path / "empty.hl7"
    empty.write_bytes(b"")
    for args, env in ((["--debug"], {}), ([], {"MWLB_DEBUG": "1"})):
        proc = run(*args, "send-hl7", str(empty), env=env)
        assert proc.returncode == 1
        assert "Traceback" in proc.stderr and "no HL7 message in the file" in proc.stderr


def test_version() -> None:
    from importlib.metadata import version

    proc = run("--version")
    assert proc.returncode == 0 and proc.stdout == f"mwl-broker {version('mwl-broker')}\n"
