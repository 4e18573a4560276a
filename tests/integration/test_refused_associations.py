"""The broker says why it refused a DICOM peer: one log line with the calling and
called AE titles, the address and the reason; a count in /metrics; a row on the
dashboard. DCMTK and raw sockets as the peers, the console over real HTTP."""

from __future__ import annotations

import logging
import re
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.console import add_users, client
from tests.integration.conftest import Processes, free_port
from tests.pki import CA
from tests.workflow import wait_until

pytestmark = [pytest.mark.dcmtk]

HL7 = (b"\x0bMSH|^~\\&|EHR|HOSP|MWL|RAD|20250310120000||ORM^O01|WRONG-PORT|P|2.5.1\r"
       b"PID|1||PAT-WRONG-PORT^^^HOSP||SYNTHETIC^PERSON\r\x1c\r")


def echoscu(port: int, aet: str, aec: str = "MWL_BROKER",
            extra: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["echoscu", "-aet", aet, "-aec", aec, "-to", "10", "-ta", "10",
                           *(extra or []), "127.0.0.1", str(port)],
                          capture_output=True, text=True, timeout=60)


def refusal_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "broker.dicom.refusals"]


def warnings_and_errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [f"{r.name}: {r.getMessage()}" for r in caplog.records
            if r.levelno >= logging.WARNING]


def metric_lines(port: int) -> dict[tuple[str, str], float]:
    """``mwlb_dicom_associations_refused_total`` by (reason, calling AE title)."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=30).text
    return {(reason, calling): float(value) for calling, reason, value in re.findall(
        r'^mwlb_dicom_associations_refused_total\{calling_ae="([^"]*)",reason="([^"]*)"\} '
        r"(\S+)$", text, re.MULTILINE)}


def counted(port: int, expected: dict[tuple[str, str], float]) -> None:
    """Wait for /metrics to show ``expected`` (counts are written within a second)."""
    wait_until(lambda: metric_lines(port) == expected, timeout=15,
               what=f"refusals counted as {expected}")


def send_raw(port: int, data: bytes) -> bytes:
    """Send ``data`` as a peer that is not DICOM would; what came back before the close."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        answer = b""
        try:
            while chunk := sock.recv(4096):
                answer += chunk
        except ConnectionResetError:
            pass
    return answer


def test_wrong_called_ae_title_is_logged_counted_and_shown(
        make_broker: Any, caplog: pytest.LogCaptureFixture) -> None:
    app = make_broker()
    add_users(app)
    caplog.set_level(logging.INFO)
    caplog.clear()
    proc = echoscu(app.dicom_port, "CT01_AE", aec="OTHER_AE")
    assert proc.returncode != 0
    assert "Called AE Title Not Recognized" in proc.stdout + proc.stderr
    assert refusal_lines(caplog) == [
        "DICOM association from 127.0.0.1 refused (calling AE 'CT01_AE', called AE "
        "'OTHER_AE'): called AE title not recognized"]
    assert warnings_and_errors(caplog) == [f"broker.dicom.refusals: {refusal_lines(caplog)[0]}"]
    counted(app.http_port, {("called-ae-title-not-recognized", "CT01_AE"): 1.0})

    viewer = client(app, "viewer")
    page = viewer.get("/").text
    panel = page[page.index('id="refused-associations"'):]
    panel = panel[:panel.index("</section>")]
    assert "Refused associations, last hour" in panel
    row = re.search(r"<tr><td>CT01_AE</td>.*?</tr>", panel)
    assert row is not None, panel
    assert "called-ae-title-not-recognized" in row.group(0)
    assert "OTHER_AE" in row.group(0) and "127.0.0.1" in row.group(0)
    [entry] = viewer.get("/api/dashboard").json()["refused_associations"]
    assert (entry["calling_ae_title"], entry["reason"], entry["count"],
            entry["called_ae_titles"]) == ("CT01_AE", "called-ae-title-not-recognized", 1,
                                           ["OTHER_AE"])
    assert echoscu(app.dicom_port, "CT01_AE").returncode == 0  # the right AE title works


def test_calling_ae_titles_refused_by_the_allow_list(
        make_broker: Any, caplog: pytest.LogCaptureFixture) -> None:
    app = make_broker(dicom_allowed_calling=[
        {"ae_title": "CT01_AE", "hosts": ["127.0.0.0/8"]},
        {"ae_title": "MR01_AE", "hosts": ["10.20.30.40"]}])
    add_users(app)
    caplog.set_level(logging.INFO)
    caplog.clear()
    for aet in ("INTRUDER", "MR01_AE", "INTRUDER"):
        proc = echoscu(app.dicom_port, aet)
        assert proc.returncode != 0
        assert "Calling AE Title Not Recognized" in proc.stdout + proc.stderr
    assert refusal_lines(caplog) == [
        "DICOM association from 127.0.0.1 refused (calling AE 'INTRUDER', called AE "
        "'MWL_BROKER'): calling AE title not on the allow-list",
        "DICOM association from 127.0.0.1 refused (calling AE 'MR01_AE', called AE "
        "'MWL_BROKER'): calling AE title not allowed from this address",
        "DICOM association from 127.0.0.1 refused (calling AE 'INTRUDER', called AE "
        "'MWL_BROKER'): calling AE title not on the allow-list"]
    assert len(warnings_and_errors(caplog)) == 3
    counted(app.http_port, {("calling-ae-title-not-recognized", "INTRUDER"): 2.0,
                            ("address-not-allowed", "MR01_AE"): 1.0})
    page = client(app, "viewer").get("/").text
    assert re.search(r"<td>INTRUDER</td><td><span[^>]*>calling-ae-title-not-recognized"
                     r"</span></td><td>2</td>", page), page
    assert re.search(r"<td>MR01_AE</td><td><span[^>]*>address-not-allowed</span></td>"
                     r"<td>1</td>", page), page


def test_plaintext_client_on_the_tls_port(make_broker: Any, tmp_path: Path,
                                          caplog: pytest.LogCaptureFixture) -> None:
    ca = CA(tmp_path, "Hospital CA")
    server, ct = ca.issue("mwl-broker", server=True), ca.issue("CT01_AE")
    app = make_broker(tls_cert_file=server.cert, tls_key_file=server.key,
                      tls_ca_file=ca.files.cert, tls_require_client_cert=True,
                      mllp_tls_port=0, dicom_tls_port=0)
    caplog.set_level(logging.INFO)
    caplog.clear()
    assert echoscu(app.dicom.tls_port, "CT01_AE").returncode != 0
    no_certificate = echoscu(app.dicom.tls_port, "CT01_AE",
                             extra=["+tla", "+cf", str(ca.files.cert)])
    assert no_certificate.returncode != 0
    assert refusal_lines(caplog) == [
        "DICOM connection from 127.0.0.1 refused: TLS handshake failed: 0x01, plaintext "
        "DICOM on the TLS port",
        "DICOM connection from 127.0.0.1 refused: TLS handshake failed: "
        "PEER_DID_NOT_RETURN_A_CERTIFICATE"]
    assert len(warnings_and_errors(caplog)) == 2, warnings_and_errors(caplog)
    counted(app.http_port, {("tls-handshake-failed", ""): 2.0})
    good = echoscu(app.dicom.tls_port, "CT01_AE",
                   extra=["+tls", str(ct.key), str(ct.cert), "+cf", str(ca.files.cert)])
    assert good.returncode == 0, good.stderr


def test_non_dicom_bytes_give_one_line_per_connection(
        make_broker: Any, caplog: pytest.LogCaptureFixture) -> None:
    app = make_broker()
    caplog.set_level(logging.DEBUG)
    caplog.clear()
    # An HL7 sender pointed at the DICOM port, five times: no A-ABORT for every six
    # bytes, no ACK; the connection is closed.
    for _ in range(5):
        assert send_raw(app.dicom_port, HL7 * 20) == b""
    assert send_raw(app.dicom_port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n") == b""
    assert send_raw(app.dicom_port, b"\x16\x03\x01\x00\x04" + b"\x01" * 4) == b""
    time.sleep(0.5)  # whatever pynetdicom would log about those connections
    line = ("DICOM connection from 127.0.0.1 refused: not DICOM: 0x0B, an MLLP start "
            "block: an HL7 sender on the DICOM port?")
    assert refusal_lines(caplog) == [line] * 5 + [
        "DICOM connection from 127.0.0.1 refused: not DICOM: 0x47",
        "DICOM connection from 127.0.0.1 refused: not DICOM: 0x16, a TLS handshake on the "
        "plaintext port"]
    assert [r for r in caplog.records if r.name.startswith("pynetdicom")
            and r.levelno >= logging.WARNING] == []
    assert "PAT-WRONG-PORT" not in caplog.text and "SYNTHETIC" not in caplog.text
    counted(app.http_port, {("not-dicom", ""): 7.0})
    assert echoscu(app.dicom_port, "CT01_AE").returncode == 0


@pytest.mark.postgres
@pytest.mark.redis
def test_refusals_at_serve_are_counted_by_a_separate_console(start_distributed: Any,
                                                             tmp_path: Path) -> None:
    """serve (DICOM) and web (the console) as separate processes on PostgreSQL: the
    console's /metrics counts what serve refused, and serve's log has one line."""
    distributed = start_distributed(http_port="-1")
    web_port = free_port()
    web = Processes({**distributed.env, "MWLB_HTTP_PORT": str(web_port)}, tmp_path)
    try:
        web.start("web")
        web.wait_for("web", "console on")
        assert send_raw(distributed.dicom_port, HL7 * 20) == b""
        assert echoscu(distributed.dicom_port, "CT01_AE", aec="OTHER_AE").returncode != 0
        counted(web_port, {("not-dicom", ""): 1.0,
                           ("called-ae-title-not-recognized", "CT01_AE"): 1.0})
    finally:
        web.stop()
    distributed.stop()
    log = (tmp_path / "serve.log").read_text()
    assert len(re.findall(r"DICOM (connection|association) from .* refused", log)) == 2, log
    assert log.count("not DICOM: 0x0B") == 1
    assert "pynetdicom" not in log and "Traceback" not in log
    assert "PAT-WRONG-PORT" not in log
