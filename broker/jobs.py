"""The jobs committed work hands over to the processor: one value per kind of
follow-up work, shared by every dispatcher (in-process or Celery) and by the Celery
task functions. A job names its Celery task (``mwl_broker.<value>``); its arguments
are row ids, a study UID or a destination name, so every job is idempotent."""

from __future__ import annotations

from enum import StrEnum


class Job(StrEnum):
    """A kind of work; the value is the job's name in logs and in its Celery task."""

    PROCESS_INBOUND = "process_inbound"  # (message_pk,)
    PROCESS_INBOUND_BATCH = "process_inbound_batch"  # ([message_pk, ...],)
    LINK_MPPS = "link_mpps"  # (mpps_pk,)
    RECONCILE_STUDY = "reconcile_study"  # (study_instance_uid,)
    DELIVER_OUTBOUND = "deliver_outbound"  # (destination name,)
    FORWARD_INSTANCES = "forward_instances"  # ()

    @property
    def task_name(self) -> str:
        """The Celery task that runs this job in distributed mode."""
        return f"mwl_broker.{self.value}"
