"""HL7 errors with their HL7 Table 0357 code and the location they concern.

Every refusal the broker sends back carries one of these in an ERR segment
(AR for an unsupported message, AE for a content error): the code from Table 0357
and the location as segment^sequence^field (v2.3.1 ERR-1 / v2.5.1 ERR-2).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Any


class ErrorCode(IntEnum):
    """HL7 Table 0357 message error condition codes."""

    SEGMENT_SEQUENCE_ERROR = 100
    REQUIRED_FIELD_MISSING = 101
    DATA_TYPE_ERROR = 102
    TABLE_VALUE_NOT_FOUND = 103
    UNSUPPORTED_MESSAGE_TYPE = 200
    UNSUPPORTED_EVENT_CODE = 201
    UNSUPPORTED_PROCESSING_ID = 202
    UNSUPPORTED_VERSION_ID = 203
    UNKNOWN_KEY_IDENTIFIER = 204
    DUPLICATE_KEY_IDENTIFIER = 205
    APPLICATION_RECORD_LOCKED = 206
    APPLICATION_INTERNAL_ERROR = 207


ERROR_TEXT: dict[int, str] = {
    100: "Segment sequence error",
    101: "Required field missing",
    102: "Data type error",
    103: "Table value not found",
    200: "Unsupported message type",
    201: "Unsupported event code",
    202: "Unsupported processing id",
    203: "Unsupported version id",
    204: "Unknown key identifier",
    205: "Duplicate key identifier",
    206: "Application record locked",
    207: "Application internal error",
}

# Codes answered with AR (the message as a whole is refused: resending it unchanged
# cannot help, or the receiver could not process it at all); the others get AE.
REJECT_CODES = frozenset({200, 201, 202, 203, 207})


@dataclass(frozen=True)
class ErrorLocation:
    """segment^sequence^field[^component] as in ERR-1 (2.3.1) / ERR-2 (2.5.1)."""

    segment: str
    field: int = 0
    component: int = 0
    sequence: int = 1

    def __str__(self) -> str:
        text = f"{self.segment}^{self.sequence}^{self.field}" if self.field else self.segment
        if self.component:
            text += f"^{self.component}"
        return text


class HL7Error(Exception):
    """A message the broker refuses, with the Table 0357 code and where the fault is.

    ``text`` is for the sender and for the message store: it names the field and what
    is wrong and never quotes patient data.
    """

    def __init__(
        self, code: int, text: str, location: ErrorLocation | None = None, *,
        reject: bool = False,
    ) -> None:
        super().__init__(text)
        self.code = int(code)
        self.text = text
        self.location = location
        # AR whatever the code (a header that cannot be read: HL7 v2.5.1 2.9.2, the
        # message could not be processed at all).
        self.reject = reject
        # For a refused message whose header can still be read: a best-effort reading
        # of it (a broker.hl7.message.Message) so that the answer can still name it
        # (MSA-2) and route it back (MSH-5/6), and its duplicate key can be stored.
        self.partial: Any = None

    @property
    def ack_code(self) -> str:
        return "AR" if self.reject or self.code in REJECT_CODES else "AE"

    def __str__(self) -> str:
        where = f" at {self.location}" if self.location else ""
        return f"{self.code} {ERROR_TEXT.get(self.code, 'Error')}{where}: {self.text}"


def field_error(code: int, segment: str, field: int, text: str, component: int = 0,
                sequence: int = 1, *, reject: bool = False) -> HL7Error:
    """Shorthand for an error located at segment-field[.component]."""
    return HL7Error(code, text, ErrorLocation(segment, field, component, sequence),
                    reject=reject)
