"""The states the broker's records go through, as the domain names them.

Plain enums with no storage or wire dependency: the database tables store their
values in string columns (and the models module re-exports them), the DICOM and HL7
adapters read and write the same values. The SPS and PPS values are the DICOM defined terms (PS3.3
C.4.10 Scheduled Procedure Step Status (0040,0020), C.4.14 Performed Procedure Step
Status (0040,0252)).
"""

from __future__ import annotations

from enum import StrEnum


class MessageStatus(StrEnum):
    """Life of an inbound message row."""

    RECEIVED = "received"  # committed, waiting to be applied
    PROCESSED = "processed"  # applied to patients / orders
    FAILED = "failed"  # could not be applied; error_* says why; reprocessable
    REJECTED = "rejected"  # refused at the door (AR: unparseable, unsupported type)


class SPSStatus(StrEnum):
    """Scheduled Procedure Step Status (0040,0020), PS3.3 C.4.10 defined terms."""

    SCHEDULED = "SCHEDULED"
    ARRIVED = "ARRIVED"
    READY = "READY"
    STARTED = "STARTED"
    DEPARTED = "DEPARTED"
    COMPLETED = "COMPLETED"
    DISCONTINUED = "DISCONTINUED"
    CANCELLED = "CANCELLED"


class PPSStatus(StrEnum):
    """Performed Procedure Step Status (0040,0252), PS3.3 C.4.14."""

    IN_PROGRESS = "IN PROGRESS"
    COMPLETED = "COMPLETED"
    DISCONTINUED = "DISCONTINUED"


class ReconciliationKind(StrEnum):
    """Why performed work waits in the reconciliation inbox for a person."""

    UNSCHEDULED_MPPS = "unscheduled_mpps"  # unscheduled: no scheduled step referenced or found
    CANCELLED_ORDER = "cancelled_order"  # MPPS for a step that was cancelled
    UNMATCHED_STUDY = "unmatched_study"  # instances / IAN matching no order
    DEMOGRAPHICS = "demographic_mismatch"  # linked, but patient id or name differs


class OutboundStatus(StrEnum):
    """Life of an outbound (order status) message."""

    PENDING = "pending"  # waiting to be sent (or retried after AR / no answer)
    SENT = "sent"  # AA received
    FAILED = "failed"  # AE received (or given up); visible, resendable
