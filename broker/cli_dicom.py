"""The DICOM client side of ``mwl-broker echo`` and ``worklist query``: an association
whose failure is said in words, and the SPS Start Date key built from a date as a
person types it."""

from __future__ import annotations

import re
import socket
import time
from datetime import date
from typing import TYPE_CHECKING, Any

from broker.cli_errors import USAGE_ERROR, CommandError, connection_failure

if TYPE_CHECKING:
    from pynetdicom import AE
    from pynetdicom.association import Association

# A-ASSOCIATE-RJ (PS3.8 9.3.4, Table 9-21): result, source, and reason by source.
_RESULTS = {1: "rejected-permanent", 2: "rejected-transient: the peer may accept later"}
_SOURCES = {1: "the service user", 2: "the service provider (ACSE)",
            3: "the service provider (presentation)"}
_REASONS = {
    1: {1: "no reason given", 2: "application context name not supported",
        3: "calling AE title not recognised", 7: "called AE title not recognised"},
    2: {1: "no reason given", 2: "protocol version not supported"},
    3: {1: "temporary congestion", 2: "local limit exceeded"},
}


def rejection(result: int, source: int, reason: int, calling: str, called: str) -> str:
    """An A-ASSOCIATE-RJ in words, with the AE title it is about."""
    words = _REASONS.get(source, {}).get(reason, f"reason {reason}")
    if (source, reason) == (1, 3):
        words += f" (we called as {calling})"
    elif (source, reason) == (1, 7):
        words += f" (we called {called})"
    return (f"{words}; {_RESULTS.get(result, f'result {result}')}, from "
            f"{_SOURCES.get(source, f'source {source}')}")


def associate(ae: AE, host: str, port: int, called: str, timeout: float) -> Association:
    """An established association with ``called`` at ``host:port``, or a
    CommandError saying why not: the connection's own error (nothing listening, an
    unknown host, no answer), the A-ASSOCIATE-RJ in words, no presentation context
    accepted, an A-ABORT, or no answer to the A-ASSOCIATE-RQ within ``timeout``."""
    from pynetdicom import evt

    ae.connection_timeout = ae.acse_timeout = ae.dimse_timeout = timeout
    connected: list[bool] = []
    started = time.monotonic()
    try:
        assoc = ae.associate(host, port, ae_title=called, evt_handlers=[
            (evt.EVT_CONN_OPEN, lambda _event: connected.append(True))])
    except OSError as exc:  # the host name did not resolve
        raise CommandError(connection_failure(host, port, exc, timeout)) from exc
    if assoc.is_established:
        return assoc
    elapsed = time.monotonic() - started
    peer = f"{host}:{port}"
    if not connected:
        raise CommandError(_connection_failure(host, port, timeout, elapsed))
    answer: Any = assoc.acceptor.primitive
    if assoc.is_rejected and answer is not None:
        raise CommandError(f"association rejected by {peer}: " + rejection(
            answer.result, answer.result_source, answer.diagnostic, ae.ae_title, called))
    if answer is not None and answer.result == 0:
        raise CommandError(f"{called} at {peer} accepted the association but none of "
                           "the services asked for")
    if elapsed >= timeout:
        raise CommandError(f"no answer to the association request from {peer} within "
                           f"{timeout:g} s")
    raise CommandError(f"{peer} aborted the association request (A-ABORT)")


def _connection_failure(host: str, port: int, timeout: float, elapsed: float) -> str:
    """Why pynetdicom could not connect (it logs the reason, it does not return it):
    a failure in the connection timeout was a timeout; otherwise one more plain
    connection attempt (no association: nothing reaches a DICOM application) gets the
    operating system's reason."""
    if elapsed >= timeout:
        return connection_failure(host, port, TimeoutError(), timeout)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        return connection_failure(host, port, exc, timeout)
    return f"cannot connect to {host}:{port}"


_DATE = r"(\d{4}-\d{2}-\d{2}|\d{8})"


def sps_start_date(text: str) -> str:
    """The Scheduled Procedure Step Start Date key (DA, PS3.5 Table 6.2-1; range
    matching, PS3.4 C.2.2.2.5) for a date as typed: ISO 8601 ``2025-03-10`` or DICOM
    ``20250310``, or a range ``FROM-TO``, ``FROM/TO`` or ``FROM..TO`` with either end
    left out; empty for no date key."""
    text = text.strip()
    if not text:
        return ""
    found = re.fullmatch(rf"{_DATE}?(?:(-|/|\.\.){_DATE}?)?", text)
    try:
        if found is None or found.group(1) is found.group(3) is None:
            raise ValueError(text)
        first, separator, last = found.groups()
        start, end = (_da(value) for value in (first, last))
        if start and end and start > end:
            raise ValueError(text)
    except ValueError:
        raise CommandError(f"--date {text}: give a date as YYYY-MM-DD or YYYYMMDD, or a "
                           "range FROM-TO (FROM/TO, FROM..TO; either end may be left out)",
                           USAGE_ERROR) from None
    return start if separator is None else f"{start}-{end}"


def _da(value: str | None) -> str:
    """A DA value (YYYYMMDD) of a valid calendar date; ValueError otherwise."""
    if value is None:
        return ""
    digits = value.replace("-", "")
    date(int(digits[:4]), int(digits[4:6]), int(digits[6:]))
    return digits
