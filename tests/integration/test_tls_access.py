"""TLS for MLLP and DICOM, and who may connect: DCMTK findscu +tls and a
Python ssl MLLP client; wrong CA, expired certificate, plaintext to a TLS port and TLS
1.1 refused; calling AE title bound to IP and certificate; HL7 senders bound to IP."""

from __future__ import annotations

import socket
import ssl
import subprocess
import tempfile
import warnings
from pathlib import Path
from typing import Any

import pytest
from pynetdicom import AE
from sqlalchemy import select

from broker.app import BrokerApp
from broker.hl7.client import MLLPClient
from broker.models import AuditEvent, InboundMessage
from broker.security.access import AccessConfigurationError
from tests.conftest import broker_settings, sample
from tests.integration.hl7util import Ack, send, set_field
from tests.pki import CA

pytestmark = [pytest.mark.dcmtk]


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Any]:
    ca = CA(tmp_path, "Hospital CA")
    rogue = CA(tmp_path, "Rogue CA")
    return {"ca": ca, "server": ca.issue("mwl-broker", server=True),
            "ct": ca.issue("CT01_AE"), "mr": ca.issue("MR01_AE"),
            "expired": ca.issue("CT01_AE", expired=True), "rogue": rogue,
            "rogue_server": rogue.issue("mwl-broker", server=True)}


def tls_broker(make_broker: Any, pki: dict[str, Any], **overrides: Any) -> Any:
    return make_broker(tls_cert_file=pki["server"].cert, tls_key_file=pki["server"].key,
                       tls_ca_file=pki["ca"].files.cert, mllp_tls_port=0, dicom_tls_port=0,
                       **overrides)


def client_context(pki: dict[str, Any], *, trust: Path | None = None,
                   cert: Any = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(trust or pki["ca"].files.cert))
    if cert is not None:
        context.load_cert_chain(cert.cert, cert.key)
    return context


def mllp_tls_send(app: Any, context: ssl.SSLContext, message: bytes) -> Ack:
    with MLLPClient("127.0.0.1", app.mllp_tls.port, timeout=10, ssl=context) as client:
        return Ack.parse(client.send(message))


def test_mllp_over_tls(make_broker: Any, pki: dict[str, Any]) -> None:
    app = tls_broker(make_broker, pki)
    ack = mllp_tls_send(app, client_context(pki), sample("05"))
    assert (ack.code, ack.control_id) == ("AA", "ORM0005")
    with MLLPClient("127.0.0.1", app.mllp_tls.port, timeout=10,
                    ssl=client_context(pki)) as client:
        assert client._sock is not None
        assert client._sock.version() in ("TLSv1.2", "TLSv1.3")  # type: ignore[attr-defined]


def test_findscu_over_tls_with_a_client_certificate(make_broker: Any, pki: dict[str, Any],
                                                    tmp_path: Path) -> None:
    app = tls_broker(make_broker, pki, tls_require_client_cert=True)
    assert [a.code for a in send(app.mllp_port, sample("09"))] == ["AA"]
    with tempfile.TemporaryDirectory() as out:
        proc = subprocess.run(
            ["findscu", "-W", "-aet", "CT01_AE", "-aec", "MWL_BROKER", "+tls",
             str(pki["ct"].key), str(pki["ct"].cert), "+cf", str(pki["ca"].files.cert),
             "-k", "AccessionNumber=ACC0002", "-X", "-od", out,
             "127.0.0.1", str(app.dicom.tls_port)], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        assert len(list(Path(out).glob("rsp*.dcm"))) == 2


def _handshake_fails(app: Any, context: ssl.SSLContext) -> None:
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        mllp_tls_send(app, context, sample("05"))


def test_wrong_ca_expired_certificate_plaintext_and_tls11_are_refused(
        make_broker: Any, pki: dict[str, Any]) -> None:
    app = tls_broker(make_broker, pki, tls_require_client_cert=True)
    good = client_context(pki, cert=pki["ct"])
    assert mllp_tls_send(app, good, sample("05")).code == "AA"
    # The client does not trust the broker's CA.
    _handshake_fails(app, client_context(pki, trust=pki["rogue"].files.cert, cert=pki["ct"]))
    # The client's certificate expired, or comes from another CA: the broker refuses.
    _handshake_fails(app, client_context(pki, cert=pki["expired"]))
    _handshake_fails(app, client_context(pki, cert=pki["rogue_server"]))
    # No client certificate at all (mutual TLS required).
    _handshake_fails(app, client_context(pki))
    # TLS 1.1 offered (the client allows it at any security level): refused.
    with warnings.catch_warnings():  # asking for TLS 1.1 on purpose
        warnings.simplefilter("ignore", DeprecationWarning)
        old = client_context(pki, cert=pki["ct"])
        old.set_ciphers("DEFAULT:@SECLEVEL=0")
        old.minimum_version = ssl.TLSVersion.TLSv1_1
        old.maximum_version = ssl.TLSVersion.TLSv1_1
        with pytest.raises(ssl.SSLError, match=r"(?i)protocol|version"):
            mllp_tls_send(app, old, sample("05"))
    # Plaintext HL7 to the TLS port: no ACK, nothing stored.
    with socket.create_connection(("127.0.0.1", app.mllp_tls.port), timeout=10) as raw:
        raw.sendall(b"\x0b" + set_field(sample("05"), "MSH", 10, "PLAIN") + b"\x1c\r")
        try:
            answer = raw.recv(4096)
        except (ConnectionError, TimeoutError):
            answer = b""
        assert b"MSA" not in answer
    with app.runtime.session_factory() as session:
        assert session.scalars(select(InboundMessage).where(
            InboundMessage.control_id == "PLAIN")).all() == []
    # The broker still serves well-behaved clients.
    assert mllp_tls_send(app, good, sample("09")).code == "AA"


def associate(port: int, calling: str, called: str = "MWL_BROKER",
              tls: tuple[ssl.SSLContext, str] | None = None) -> Any:
    ae = AE(ae_title=calling)
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = ae.associate("127.0.0.1", port, ae_title=called, tls_args=tls)
    result = (assoc.is_established, None)
    if assoc.is_rejected:
        rj = assoc.acceptor.primitive
        result = (False, (rj.result, rj.result_source, rj.diagnostic))
    if assoc.is_established:
        assoc.release()
    return result


def test_calling_ae_bound_to_address_and_called_ae_checked(make_broker: Any) -> None:
    app = make_broker(dicom_allowed_calling=[
        {"ae_title": "CT01_AE", "hosts": ["127.0.0.0/8"]},
        {"ae_title": "MR01_AE", "hosts": ["10.20.30.40"]}])
    assert associate(app.dicom_port, "CT01_AE") == (True, None)
    # PS3.8 A-ASSOCIATE-RJ: rejected-permanent, service user, calling AE not recognized.
    assert associate(app.dicom_port, "MR01_AE") == (False, (1, 1, 3))  # wrong address
    assert associate(app.dicom_port, "INTRUDER") == (False, (1, 1, 3))
    assert associate(app.dicom_port, "CT01_AE", called="OTHER_AE") == (False, (1, 1, 7))


def test_calling_ae_bound_to_its_certificate(make_broker: Any, pki: dict[str, Any]) -> None:
    app = tls_broker(make_broker, pki, dicom_allowed_calling=[
        {"ae_title": "CT01_AE", "certificate_subject": "CT01_AE"}])
    good = client_context(pki, cert=pki["ct"])
    assert associate(app.dicom.tls_port, "CT01_AE", tls=(good, "localhost")) == (True, None)
    other = client_context(pki, cert=pki["mr"])  # a valid certificate of another device
    assert associate(app.dicom.tls_port, "CT01_AE", tls=(other, "localhost")) \
        == (False, (1, 1, 3))


def test_hl7_sender_bound_to_address(make_broker: Any) -> None:
    app = make_broker(hl7_allowed_senders=[
        {"sending_application": "EHR", "sending_facility": "HOSP", "hosts": ["127.0.0.1"]},
        {"sending_application": "LAB", "hosts": ["10.0.0.0/8"]}])
    assert [a.code for a in send(app.mllp_port, sample("05"))] == ["AA"]
    rogue = set_field(set_field(sample("05"), "MSH", 3, "ROGUE"), "MSH", 10, "R1")
    from_elsewhere = set_field(set_field(sample("05"), "MSH", 3, "LAB"), "MSH", 10, "R2")
    acks = send(app.mllp_port, rogue, from_elsewhere)
    assert [a.code for a in acks] == ["AR", "AR"]
    assert "207" in acks[0].err and "not allowed" in acks[0].raw.decode()
    with app.runtime.session_factory() as session:
        kept = session.scalars(select(InboundMessage).where(
            InboundMessage.control_id.in_(["R1", "R2"]))).all()
        assert {m.status for m in kept} == {"rejected"}  # the raw input stays in the store
        alerts = session.scalars(select(AuditEvent).where(AuditEvent.event_id == "110113")
                                 ).all()
        assert len(alerts) == 2  # a security alert beside each refused message
        assert all("ROGUE" in a.message or "LAB" in a.message for a in alerts)


def test_distributed_mode_does_not_start_open(tmp_path: Path) -> None:
    settings = broker_settings(tmp_path, celery_broker_url="redis://127.0.0.1:6379/9")
    with pytest.raises(AccessConfigurationError, match="MWLB_ALLOW_OPEN_ACCESS"):
        BrokerApp(settings)


def test_dicom_tls_refuses_plaintext_and_an_expired_certificate(
        make_broker: Any, pki: dict[str, Any]) -> None:
    app = tls_broker(make_broker, pki, tls_require_client_cert=True)
    port = str(app.dicom.tls_port)
    plain = subprocess.run(["echoscu", "-aec", "MWL_BROKER", "127.0.0.1", port],
                           capture_output=True, text=True, timeout=60)
    assert plain.returncode != 0
    expired = subprocess.run(
        ["echoscu", "-aet", "CT01_AE", "-aec", "MWL_BROKER", "+tls", str(pki["expired"].key),
         str(pki["expired"].cert), "+cf", str(pki["ca"].files.cert), "127.0.0.1", port],
        capture_output=True, text=True, timeout=60)
    assert expired.returncode != 0
    good = subprocess.run(
        ["echoscu", "-aet", "CT01_AE", "-aec", "MWL_BROKER", "+tls", str(pki["ct"].key),
         str(pki["ct"].cert), "+cf", str(pki["ca"].files.cert), "127.0.0.1", port],
        capture_output=True, text=True, timeout=60)
    assert good.returncode == 0, good.stderr


def _alerts(app: Any) -> list[AuditEvent]:
    with app.runtime.session_factory() as session:
        return list(session.scalars(select(AuditEvent).where(AuditEvent.event_id == "110113")))


def test_certificate_bound_ae_is_refused_without_its_certificate(
        make_broker: Any, pki: dict[str, Any]) -> None:
    # Client certificates optional: the handshake succeeds without one, so only the
    # allow-list stands between a certificate-less peer and the pinned AE title.
    app = tls_broker(make_broker, pki, dicom_allowed_calling=[
        {"ae_title": "CT01_AE", "certificate_subject": "CT01_AE"}])
    no_cert = client_context(pki)
    assert associate(app.dicom.tls_port, "CT01_AE", tls=(no_cert, "localhost")) \
        == (False, (1, 1, 3))
    assert associate(app.dicom_port, "CT01_AE") == (False, (1, 1, 3))  # plaintext claim
    good = client_context(pki, cert=pki["ct"])
    assert associate(app.dicom.tls_port, "CT01_AE", tls=(good, "localhost")) == (True, None)
    alerts = _alerts(app)
    assert len(alerts) == 2
    assert all("without its certificate" in a.detail for a in alerts)


def test_certificate_bound_ae_refused_on_plaintext_beside_mutual_tls(
        make_broker: Any, pki: dict[str, Any]) -> None:
    app = tls_broker(make_broker, pki, tls_require_client_cert=True, dicom_allowed_calling=[
        {"ae_title": "CT01_AE", "certificate_subject": "CT01_AE"}])
    assert associate(app.dicom_port, "CT01_AE") == (False, (1, 1, 3))
    plain = subprocess.run(["echoscu", "-aet", "CT01_AE", "-aec", "MWL_BROKER", "127.0.0.1",
                            str(app.dicom_port)], capture_output=True, text=True, timeout=60)
    assert plain.returncode != 0
    good = subprocess.run(
        ["echoscu", "-aet", "CT01_AE", "-aec", "MWL_BROKER", "+tls", str(pki["ct"].key),
         str(pki["ct"].cert), "+cf", str(pki["ca"].files.cert), "127.0.0.1",
         str(app.dicom.tls_port)], capture_output=True, text=True, timeout=60)
    assert good.returncode == 0, good.stderr
    assert len(_alerts(app)) == 2


def _refused(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            return False
    except ConnectionRefusedError:
        return True


def test_tls_only_closes_the_plaintext_ports(make_broker: Any, pki: dict[str, Any]) -> None:
    from tests.integration.conftest import free_port

    mllp, dicom = free_port(), free_port()
    app = tls_broker(make_broker, pki, tls_require_client_cert=True, tls_only=True,
                     mllp_port=mllp, dicom_port=dicom, dicom_allowed_calling=[
                         {"ae_title": "CT01_AE", "certificate_subject": "CT01_AE"}])
    assert app.mllp is None and app.ports()["mllp"] is None and app.ports()["dicom"] is None
    assert _refused(mllp) and _refused(dicom)  # nothing listens: no plaintext peer at all
    good = client_context(pki, cert=pki["ct"])
    assert mllp_tls_send(app, good, sample("05")).code == "AA"
    assert associate(app.dicom.tls_port, "CT01_AE", tls=(good, "localhost")) == (True, None)


def test_tls_only_without_a_certificate_does_not_start(tmp_path: Path) -> None:
    with pytest.raises(AccessConfigurationError, match="MWLB_TLS_ONLY"):
        BrokerApp(broker_settings(tmp_path, tls_only=True))


@pytest.mark.parametrize("off", ["MLLP", "DICOM"])
def test_a_listener_switched_off_with_port_minus_one(off: str, tmp_path: Path) -> None:
    import os

    from tests.conftest import MAPPINGS
    from tests.integration.conftest import Processes, free_port

    mllp, dicom = free_port(), free_port()
    env = {**os.environ, "MWLB_DATABASE_URL": f"sqlite:///{tmp_path / 'broker.db'}",
           "MWLB_MLLP_HOST": "127.0.0.1", "MWLB_MLLP_PORT": str(mllp),
           "MWLB_DICOM_HOST": "127.0.0.1", "MWLB_DICOM_PORT": str(dicom),
           "MWLB_HTTP_PORT": "-1", "MWLB_MAPPINGS_DIR": str(MAPPINGS),
           "MWLB_TIMEZONE": "America/Chicago", f"MWLB_{off}_PORT": "-1"}
    procs = Processes(env, tmp_path)
    try:
        procs.start("serve")
        procs.wait_for("serve", r"mwl-broker listening", timeout=60)
        banner = (tmp_path / "serve.log").read_text()
        label = "HL7 MLLP" if off == "MLLP" else "DICOM"
        assert f"  {label:<17}off" in banner, banner
        if off == "MLLP":
            assert _refused(mllp)
            echo = subprocess.run(["echoscu", "-aec", "MWL_BROKER", "127.0.0.1", str(dicom)],
                                  capture_output=True, text=True, timeout=60)
            assert echo.returncode == 0, echo.stderr
        else:
            assert _refused(dicom)
            assert [a.code for a in send(mllp, sample("05"))] == ["AA"]
    finally:
        procs.stop()
