"""Who may talk to the broker.

* DICOM: a calling AE title must be on MWLB_DICOM_ALLOWED_CALLING, from one of its hosts
  and, when its entry names a certificate subject, over TLS with a verified client
  certificate of that CN (never on plaintext or without a certificate); otherwise the
  association is rejected with PS3.8 Table 9-21 result 1 (permanent), source 1 (service
  user), reason 3 "calling AE title not recognized". The called AE title must be ours
  (reason 7), which pynetdicom checks.
* HL7: MSH-3 (and MSH-4 when listed) must be on MWLB_HL7_ALLOWED_SENDERS from one of its
  hosts; otherwise AR with ERR 207 and the message is stored as rejected.
* Empty lists mean open: the embedded quick start runs so; a distributed deployment
  must fill them or say MWLB_ALLOW_OPEN_ACCESS=true (see :func:`check_startup`).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from broker.config import AllowedAE, AllowedSender, Settings


class AccessConfigurationError(RuntimeError):
    """Distributed mode with nothing that closes the doors."""


def host_allowed(peer_ip: str, hosts: Sequence[str]) -> bool:
    """Whether ``peer_ip`` is one of ``hosts`` (addresses or networks; empty = any)."""
    if not hosts:
        return True
    try:
        address = ipaddress.ip_address(peer_ip.split("%")[0])
    except ValueError:
        return False
    for host in hosts:
        try:
            if address in ipaddress.ip_network(host, strict=False):
                return True
        except ValueError:
            continue
    return False


def calling_entry(allowed: Sequence[AllowedAE], ae_title: str, peer_ip: str,
                  certificate_cn: str | None) -> AllowedAE | None:
    """DICOM: the allow-list entry that admits ``ae_title`` from ``peer_ip`` with this
    verified client certificate CN (None: no certificate, or not over TLS), if any.

    An entry with a ``certificate_subject`` binds its AE title to that certificate:
    it matches only over TLS with a verified client certificate whose subject CN is
    that value (PS3.15 B.1 secure transport: the peer is authenticated by its
    certificate, not by the AE title it claims). Without a certificate, on plaintext
    or over TLS without one, such an entry never matches.
    """
    title = ae_title.strip()
    for entry in allowed:
        if entry.ae_title.strip() != title or not host_allowed(peer_ip, entry.hosts):
            continue
        if entry.certificate_subject and certificate_cn != entry.certificate_subject:
            continue
        return entry
    return None


def refusal_reason(allowed: Sequence[AllowedAE], ae_title: str, peer_ip: str,
                   certificate_cn: str | None) -> str:
    """Why :func:`calling_entry` found no entry, for the log and the console:
    ``calling-ae-title-not-recognized`` (no entry for this AE title),
    ``address-not-allowed`` (none from this address), else its entries bind it to a
    certificate: ``certificate-missing`` (none verified) or ``certificate-mismatch``."""
    title = ae_title.strip()
    entries = [entry for entry in allowed if entry.ae_title.strip() == title]
    if not entries:
        return "calling-ae-title-not-recognized"
    if not any(host_allowed(peer_ip, entry.hosts) for entry in entries):
        return "address-not-allowed"
    return "certificate-missing" if certificate_cn is None else "certificate-mismatch"


def calling_allowed(allowed: Sequence[AllowedAE], ae_title: str, peer_ip: str,
                    certificate_cn: str | None) -> bool:
    """DICOM: may ``ae_title`` associate from ``peer_ip`` (with this certificate)?
    An empty list admits anyone; see :func:`calling_entry` for a listed one."""
    if not allowed:
        return True
    return calling_entry(allowed, ae_title, peer_ip, certificate_cn) is not None


def uses_reserve(entry: AllowedAE | None) -> bool:
    """Whether a peer admitted by ``entry`` may use the reserved associations: its
    entry binds the AE title to addresses or a certificate, so the title is not just
    a claim anyone can make."""
    return entry is not None and bool(entry.hosts or entry.certificate_subject)


def sender_allowed(allowed: Sequence[AllowedSender], application: str, facility: str,
                   peer_ip: str) -> bool:
    """HL7: may MSH-3/MSH-4 deliver from ``peer_ip``?"""
    if not allowed:
        return True
    for entry in allowed:
        if entry.sending_application != application:
            continue
        if entry.sending_facility and entry.sending_facility != facility:
            continue
        if host_allowed(peer_ip, entry.hosts):
            return True
    return False


def check_startup(settings: Settings) -> list[str]:
    """Refuse an open distributed deployment, and TLS only without a certificate;
    returns warnings for an open embedded one and for plaintext ports left open beside
    mandatory mutual TLS."""
    open_parts = [name for name, allowed in (("DICOM", settings.dicom_allowed_calling),
                                              ("HL7", settings.hl7_allowed_senders))
                  if not allowed]
    if settings.tls_only and settings.tls_cert_file is None:
        raise AccessConfigurationError(
            "MWLB_TLS_ONLY needs MWLB_TLS_CERT_FILE and MWLB_TLS_KEY_FILE: without them "
            "nothing would listen")
    warnings = []
    plaintext = [name for name, port in (("MLLP", settings.mllp_port),
                                         ("DICOM", settings.dicom_port)) if port >= 0]
    if settings.tls_require_client_cert and plaintext and not settings.tls_only:
        warnings.append(f"mutual TLS is required but the plaintext {' and '.join(plaintext)} "
                        "port(s) still accept peers without a certificate; set "
                        "MWLB_TLS_ONLY=true (README, 'Access control and TLS')")
    if not open_parts or settings.allow_open_access:
        return warnings
    if not settings.embedded:
        raise AccessConfigurationError(
            f"{' and '.join(open_parts)} open to any peer: set MWLB_DICOM_ALLOWED_CALLING / "
            "MWLB_HL7_ALLOWED_SENDERS (README, 'Access control'), or MWLB_ALLOW_OPEN_ACCESS="
            "true to run open on purpose")
    return warnings + [f"{part} is open to any peer (embedded quick start); see README "
                       "'Access control'" for part in open_parts]


def peer_ip(peer: str) -> str:
    """The address of an "ip:port" peer string (IPv6 addresses keep their colons)."""
    return peer.rsplit(":", 1)[0] if ":" in peer else peer
