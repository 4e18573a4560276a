"""TLS for MLLP and DICOM (DICOM PS3.15 Annex B "Secure Transport
Connection Profiles", BCP 195): TLS 1.2 and 1.3 only, the broker's certificate and
key from settings, optional mutual TLS against a CA bundle."""

from __future__ import annotations

import ssl
from typing import Any

from broker.config import Settings


def server_context(settings: Settings) -> ssl.SSLContext | None:
    """The server context, or None when no certificate is configured."""
    if settings.tls_cert_file is None:
        return None
    if settings.tls_key_file is None:
        raise ValueError("MWLB_TLS_CERT_FILE is set but MWLB_TLS_KEY_FILE is not")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.maximum_version = ssl.TLSVersion.TLSv1_3
    context.load_cert_chain(settings.tls_cert_file, settings.tls_key_file)
    if settings.tls_ca_file is not None:
        context.load_verify_locations(cafile=str(settings.tls_ca_file))
        context.verify_mode = (ssl.CERT_REQUIRED if settings.tls_require_client_cert
                               else ssl.CERT_OPTIONAL)
    elif settings.tls_require_client_cert:
        raise ValueError("MWLB_TLS_REQUIRE_CLIENT_CERT needs MWLB_TLS_CA_FILE")
    return context


def certificate_cn(peer_certificate: dict[str, Any] | None) -> str | None:
    """The subject CN of a verified peer certificate (None without one)."""
    if not peer_certificate:
        return None
    for rdn in peer_certificate.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None
