"""The application layer: one home per use case.

Every adapter (the MLLP listener, the DICOM handlers, the console's routes, the
command line and the Celery tasks) calls a use case here and nothing else for the
operations below; a use case owns its transaction (:func:`broker.db.unit_of_work`)
and the dispatch of the work it commits, always after the commit, so a job never runs
ahead of the data it reads. Whether a job runs in this process or in a Celery worker
is the dispatcher's business, chosen in :mod:`broker.bootstrap`.

* :class:`Reception`: receive an HL7 message (store, dispatch, the ACK);
* :class:`UseCases`: apply and reprocess messages, resolve the reconciliation inbox,
  resend and deliver outbound messages, record MPPS / IAN / stored instances, link an
  MPPS, reconcile a study, forward instances, sweep; :meth:`UseCases.run` runs a
  :class:`broker.jobs.Job`;
* :class:`UPSUseCases` (``UseCases.ups``): the Unified Procedure Step operations of
  the UPS-RS and UPS DIMSE adapters;
* :class:`MappingUseCases` (``UseCases.mapping``): the impact of a candidate set of
  mapping profiles, and the bulk replay of stored messages with its progress.
"""

from broker.application.mapping import MappingUseCases
from broker.application.reception import Reception
from broker.application.ups import UPSUseCases
from broker.application.use_cases import DATABASE, ResolveError, UseCases

__all__ = ["DATABASE", "MappingUseCases", "Reception", "ResolveError", "UPSUseCases", "UseCases"]
