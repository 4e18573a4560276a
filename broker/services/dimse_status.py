"""The DIMSE statuses the broker's N-services refuse with, and the translation of the
MPPS rules' refusals into them (PS3.4 F.7.2, Table F.7.2-2; PS3.7 Annex C).

:class:`MppsError` is what the DICOM adapter answers: the status, the Error Comment
(0000,0902), the Error ID (0000,0903) and the Attribute Identifier List (0000,1005).
:func:`mpps_refusal` builds it from a :class:`~broker.domain.errors.MppsRuleError`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pydicom.tag import Tag

from broker.domain.errors import MppsRule, MppsRuleError

NO_SUCH_ATTRIBUTE, INVALID_ATTRIBUTE_VALUE = 0x0105, 0x0106
PROCESSING_FAILURE, DUPLICATE_INSTANCE, NO_SUCH_INSTANCE = 0x0110, 0x0111, 0x0112
MISSING_ATTRIBUTE, MISSING_ATTRIBUTE_VALUE = 0x0120, 0x0121
ATTRIBUTE_LIST_ERROR = 0x0107  # N-SET warning: some attributes were not set (PS3.7 C.4.2)
NO_SUCH_ACTION = 0x0123  # N-ACTION: Action Type ID not defined for the SOP Class (PS3.7 C.5.16)
MAY_NO_LONGER_BE_UPDATED = 0xA710  # Error ID (0000,0903), US, Table F.7.2-2


@dataclass
class MppsError(Exception):
    """A request we refuse: the DIMSE status and what to tell the modality."""

    status: int
    comment: str
    error_id: int | None = None
    tags: list[int] = field(default_factory=list)

    def __str__(self) -> str:
        return f"0x{self.status:04X} {self.comment}"


def _tag_text(keyword: str) -> str:
    tag = Tag(keyword)
    return f"({tag.group:04X},{tag.element:04X}) {keyword}"


def _tags(keywords: list[str]) -> list[int]:
    return [int(Tag(k)) for k in keywords]


def mpps_refusal(err: MppsRuleError) -> MppsError:
    """The DIMSE refusal of a broken MPPS rule (PS3.4 F.7.2.1.3, F.7.2.2.3):

    * a Type 1 attribute missing: 0x0120 with the tags; present but empty: 0x0121;
    * PPS Status other than IN PROGRESS on N-CREATE, an unknown PPS Status or a "Not
      allowed" attribute on N-SET: 0x0106 with the tags;
    * N-SET of a finished step: 0x0110 with Error ID A710 (Table F.7.2-2);
    * a final state without end date/time or performed series: 0x0121 with the tags.
    """
    keywords = err.keywords
    match err.rule:
        case MppsRule.MISSING_ATTRIBUTE:
            return MppsError(MISSING_ATTRIBUTE,
                             "missing " + ", ".join(_tag_text(k) for k in keywords),
                             tags=_tags(keywords))
        case MppsRule.MISSING_VALUE:
            return MppsError(MISSING_ATTRIBUTE_VALUE, "empty " + ", ".join(keywords))
        case MppsRule.NOT_IN_PROGRESS:
            return MppsError(INVALID_ATTRIBUTE_VALUE,
                             f"PPS Status (0040,0252) must be IN PROGRESS, not {err.value[:16]}",
                             tags=_tags(keywords))
        case MppsRule.NO_LONGER_UPDATABLE:
            return MppsError(PROCESSING_FAILURE,
                             "Performed Procedure Step Object may no longer be updated",
                             error_id=MAY_NO_LONGER_BE_UPDATED)
        case MppsRule.NOT_SETTABLE:
            return MppsError(INVALID_ATTRIBUTE_VALUE, "not allowed in N-SET: "
                             + ", ".join(_tag_text(k) for k in keywords),
                             tags=_tags(keywords))
        case MppsRule.UNKNOWN_STATUS:
            return MppsError(INVALID_ATTRIBUTE_VALUE, f"unknown PPS status {err.value!r}",
                             tags=_tags(keywords))
        case MppsRule.FINAL_INCOMPLETE:
            return MppsError(MISSING_ATTRIBUTE_VALUE, "final state needs "
                             + ", ".join(_tag_text(k) for k in keywords),
                             tags=_tags(keywords))
