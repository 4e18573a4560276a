"""What the domain refuses, in its own terms.

The domain rules (:mod:`broker.domain.lifecycle`, :mod:`broker.domain.mpps`) raise
these; they name the rule that was broken and what it was about, never a wire code.
The services translate them at the edge: an :class:`OrderRuleError` into an HL7 error
with its Table 0357 code and ERR location (HL7 v2.5.1 2.9.2), an :class:`MppsRuleError`
into a DIMSE status with Error Comment / Error ID / Attribute Identifier List (PS3.4
F.7.2, PS3.7 C).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class OrderRule(StrEnum):
    """The order rule an order group broke (HL7 v2.5.1 4.5.1, Tables 0119 / 0038)."""

    # No order control (ORC-1) at all.
    MISSING_CONTROL = "missing order control"
    # An order control / order status pair the order control table does not hold.
    UNSUPPORTED_CONTROL = "unsupported order control and status"
    # A change asked of a step that is final (completed, cancelled, discontinued).
    STEP_FINAL = "step is final"


@dataclass
class OrderRuleError(Exception):
    """An order group the lifecycle refuses.

    ``sequence`` is the group's position in the message (1 for the first ORC),
    ``control`` and ``status`` the order control and order status as read (upper
    case, stripped; an order status that is no Table 0038 value is read as empty and
    ``order_status_ignored`` set), ``current`` the status of the step concerned, where
    there is one.
    """

    rule: OrderRule
    sequence: int = 1
    control: str = ""
    status: str = ""
    current: str = ""
    order_status_ignored: bool = False

    def __str__(self) -> str:
        return f"{self.rule.value} (group {self.sequence})"


class MppsRule(StrEnum):
    """The Modality Performed Procedure Step rule a request broke (PS3.4 F.7.2)."""

    # N-CREATE without a Type 1 attribute (Table F.7.2-1).
    MISSING_ATTRIBUTE = "missing attribute"
    # N-CREATE with a Type 1 attribute present but empty (Table F.7.2-1).
    MISSING_VALUE = "missing value"
    # N-CREATE with a PPS Status other than IN PROGRESS (F.7.2.1.3).
    NOT_IN_PROGRESS = "status must be in progress"
    # N-SET of a step that is no longer IN PROGRESS (F.7.2.2.3).
    NO_LONGER_UPDATABLE = "no longer updatable"
    # N-SET of attributes Table F.7.2-1 marks "Not allowed".
    NOT_SETTABLE = "not settable"
    # N-SET of a PPS Status that is no defined term.
    UNKNOWN_STATUS = "unknown status"
    # COMPLETED / DISCONTINUED without end date/time or performed series (Table
    # F.7.2-1, final state requirements).
    FINAL_INCOMPLETE = "final state incomplete"


@dataclass
class MppsRuleError(Exception):
    """An MPPS request the rules refuse.

    ``keywords`` are the attributes concerned (DICOM keywords, or a path such as
    ``ScheduledStepAttributesSequence[1]>StudyInstanceUID``); ``value`` the offending
    value where that helps (the PPS Status given).
    """

    rule: MppsRule
    keywords: list[str] = field(default_factory=list)
    value: str = ""

    def __str__(self) -> str:
        return f"{self.rule.value}: {', '.join(self.keywords) or self.value}"
