"""DICOMweb plumbing of the UPS-RS adapter: the DICOM JSON Model (PS3.18 F.2) in and
out, the media types a request may send and accept (PS3.18 8.7), and errors answered
with a PS3.18 HTTP status and a ``Warning: 299 <service>: <text>`` header (PS3.18 8.6,
11.x.3). Datasets are pydicom's; pydicom's ``Dataset.to_json_dict`` /
``Dataset.from_json`` do the element encoding (BulkDataURI is not used: every value is
inline)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from typing import Any

import orjson
from fastapi import Request
from fastapi.responses import Response
from pydicom.config import RAISE
from pydicom.dataset import Dataset
from pydicom.valuerep import VR, validate_value
from starlette.requests import HTTPConnection

DICOM_JSON = "application/dicom+json"
# Accepted as well (liberal in what we accept): plain JSON, as DICOMweb clients before
# PS3.18 2015 sent it.
JSON_TYPES = frozenset({DICOM_JSON, "application/json"})
ACCEPTABLE = frozenset({DICOM_JSON, "application/json", "application/*", "*/*"})

# PS3.18 8.4 (UID values in target URIs and query parameters): PS3.5 9.1 UID syntax.
VR_NAMES = frozenset(vr.value for vr in VR if len(vr.value) == 2)
_UID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")


class DicomWebError(Exception):
    """A request refused with ``status`` (PS3.18 HTTP status) and ``text`` for the
    ``Warning`` header; ``headers`` are added to the response."""

    def __init__(self, status: int, text: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(text)
        self.status = status
        self.text = text
        self.headers = headers or {}


def valid_uid(value: str) -> bool:
    """PS3.5 9.1: digits and dots, no leading zero in a component, 64 characters at
    most."""
    return 0 < len(value) <= 64 and _UID.fullmatch(value) is not None


def require_uid(value: str, what: str) -> str:
    """``value`` when it is a UID, else a 400 naming ``what``."""
    value = value.strip()
    if not valid_uid(value):
        raise DicomWebError(400, f"{what} {value[:70]!r} is not a valid UID")
    return value


def service_name(request: HTTPConnection) -> str:
    """The ``<service>`` of a Warning header (PS3.18 8.6, RFC 7234 5.5: the warn-agent):
    the host and port the request was addressed to."""
    return request.headers.get("host") or request.url.netloc or "mwl-broker"


def warning_value(request: HTTPConnection, text: str) -> str:
    """``299 <service>: <text>``, the form PS3.18 11.x.3 gives its warnings in (the
    text unquoted); control characters and what a header cannot carry are dropped."""
    clean = "".join(c for c in text if c.isprintable() and ord(c) < 256)
    return f"299 {service_name(request)}: {clean}"


def add_warnings(request: HTTPConnection, response: Response, texts: Iterable[str]) -> Response:
    """One Warning header line per text."""
    for text in texts:
        response.headers.append("Warning", warning_value(request, text))
    return response


def error_response(request: HTTPConnection, exc: DicomWebError,
                   dimse_status: int | None = None) -> Response:
    """The answer to a refused request: its status, the Warning header and the text as
    a small JSON body for people reading it with curl (with the DIMSE status of PS3.4
    CC.2 the UPS service refused with, when it did)."""
    content: dict[str, str] = {"detail": exc.text}
    if dimse_status is not None:
        content["status"] = f"0x{dimse_status:04X}"
    response = Response(orjson.dumps(content), status_code=exc.status,
                        media_type="application/json", headers=exc.headers)
    return add_warnings(request, response, [exc.text])


# -- media types -------------------------------------------------------------------------

def _media_type(header: str) -> str:
    return header.split(";", 1)[0].strip().lower()


def require_json_body(request: Request) -> None:
    """The request's Content-Type is the DICOM JSON media type (PS3.18 8.7.3.2); 415
    Unsupported Media Type otherwise (application/dicom+xml included: only JSON is
    supported)."""
    content_type = _media_type(request.headers.get("content-type", ""))
    if content_type not in JSON_TYPES:
        raise DicomWebError(415, f"Content-Type {content_type or '(none)'!r} is not "
                                 f"supported: send {DICOM_JSON}")


def require_acceptable(request: Request) -> None:
    """The request's Accept header allows the DICOM JSON media type (PS3.18 8.7.5);
    406 Not Acceptable otherwise. No Accept header accepts anything."""
    accept = request.headers.get("accept", "")
    if not accept.strip():
        return
    for part in accept.split(","):
        media, _, params = part.partition(";")
        quality = re.search(r"q\s*=\s*([0-9.]+)", params)
        if media.strip().lower() in ACCEPTABLE and not (
                quality and _float(quality.group(1)) == 0.0):
            return
    raise DicomWebError(406, f"none of the accepted media types ({accept[:100]}) can be "
                             f"answered: this service answers {DICOM_JSON}")


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return 1.0


# -- datasets ----------------------------------------------------------------------------

def to_json(ds: Dataset) -> dict[str, Any]:
    """One dataset in the DICOM JSON Model (PS3.18 F.2), values inline."""
    result: dict[str, Any] = ds.to_json_dict(bulk_data_threshold=2**31)
    return result


def json_response(datasets: Sequence[Dataset] | Dataset, status_code: int = 200,
                  headers: dict[str, str] | None = None) -> Response:
    """An ``application/dicom+json`` response: an array of datasets for a sequence, a
    single dataset as a one-element array too (PS3.18 F.2: the payload is an array)."""
    items = [datasets] if isinstance(datasets, Dataset) else list(datasets)
    return Response(orjson.dumps([to_json(ds) for ds in items]), status_code=status_code,
                    media_type=DICOM_JSON, headers=headers)


def documents_response(documents: Sequence[dict[str, Any]], status_code: int = 200,
                       headers: dict[str, str] | None = None) -> Response:
    """An ``application/dicom+json`` response of documents already in the DICOM JSON
    model (PS3.18 F.2), e.g. a search's (no Dataset built)."""
    return Response(orjson.dumps(list(documents)), status_code=status_code,
                    media_type=DICOM_JSON, headers=headers)


async def body_dataset(request: Request, *, required: bool = True) -> Dataset:
    """The request payload as a dataset: a DICOM JSON object, or an array holding one
    (PS3.18 F.2). 415 for another media type, 400 for a payload that is not DICOM JSON;
    an empty body is an empty dataset when not ``required``."""
    raw = await request.body()
    if not raw.strip():
        if required:
            raise DicomWebError(400, "the request has no payload: send a DICOM JSON dataset")
        return Dataset()
    require_json_body(request)
    try:
        document = json.loads(raw)
    except ValueError as exc:
        raise DicomWebError(400, f"the payload is not JSON: {exc}") from None
    return from_json(document)


def from_json(document: Any) -> Dataset:
    """A dataset from a parsed DICOM JSON document (an object, or an array of exactly
    one); 400 naming what is wrong otherwise. A value that does not fit its VR (PS3.5
    6.2) is refused, not kept with a warning: strict in what we keep (and pydicom's
    warning would put the value in the log)."""
    if isinstance(document, list):
        if len(document) != 1:
            raise DicomWebError(400, f"the payload holds {len(document)} datasets: send one")
        document = document[0]
    if not isinstance(document, dict):
        raise DicomWebError(400, "the payload is not a DICOM JSON dataset (a JSON object "
                                 "keyed by tags)")
    _check_elements(document)
    try:
        return Dataset.from_json(document)
    except (ValueError, TypeError, KeyError, AttributeError, NotImplementedError) as exc:
        raise DicomWebError(400, f"the payload is not valid DICOM JSON: {exc}") from None


def _check_elements(document: dict[Any, Any]) -> None:
    """Every key a tag, every element an object with a VR of PS3.5 6.2, through the
    sequences (pydicom takes an unknown VR as is)."""
    for tag, element in document.items():
        if not (isinstance(tag, str) and re.fullmatch(r"[0-9A-Fa-f]{8}", tag)):
            raise DicomWebError(400, f"{str(tag)[:40]!r} is not a tag (eight hex digits, "
                                     "PS3.18 F.2.1)")
        if not isinstance(element, dict):
            raise DicomWebError(400, f"{tag}: an element is a JSON object (PS3.18 F.2.2)")
        vr = element.get("vr")
        if vr not in VR_NAMES:
            raise DicomWebError(400, f"{tag}: {str(vr)[:10]!r} is not a VR (PS3.5 6.2)")
        values = element.get("Value") or []
        if not isinstance(values, list):
            raise DicomWebError(400, f"{tag}: Value is a JSON array (PS3.18 F.2.4)")
        if vr == "SQ":
            for item in values:
                if not isinstance(item, dict):
                    raise DicomWebError(400, f"{tag}: a sequence item is a JSON object")
                _check_elements(item)
            continue
        for value in values:
            check_value(tag, vr, value)


def check_value(name: str, vr: str, value: Any) -> None:
    """400 when ``value`` (a string, or a PN object of component groups) cannot be a
    value of ``vr`` (PS3.5 6.2)."""
    texts = list(value.values()) if vr == "PN" and isinstance(value, dict) else [value]
    for text in texts:
        if not isinstance(text, str):
            continue
        try:
            validate_value(vr, text, RAISE)
        except ValueError as exc:
            words = str(exc).split(" Please see ")[0]
            raise DicomWebError(400, f"{name}: {words[:200]}") from None
