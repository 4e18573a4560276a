"""The broker's use cases (see :mod:`broker.application`). Each method is one use case:
it opens its own transaction, and dispatches the follow-up work it committed only
after the commit. Jobs (:class:`broker.jobs.Job`) are idempotent: they take row ids,
a study UID or a destination name, and a second run finds nothing left to do."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from functools import cached_property
from typing import Any, TypeVar

from pydicom.dataset import Dataset
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from broker.application.mapping import MappingUseCases
from broker.application.reception import Reception
from broker.application.ups import UPSUseCases
from broker.audit import hooks as audit
from broker.config import StorageMode
from broker.db import is_sqlite, unit_of_work, unsynced_transaction
from broker.dispatch import CommandDispatcher, Dispatcher, JobRunner
from broker.jobs import Job
from broker.models import DicomRequest, InboundMessage, MessageStatus
from broker.outage import Outage
from broker.runtime import Runtime
from broker.services import mpps, outbound, studies
from broker.services.dry_run import DryRun, dry_run
from broker.services.forward import forward_pending
from broker.services.inbound import Inbox
from broker.services.processing import (
    MapperSource,
    lock_key,
    process_batch,
    process_through,
    reset_for_reprocess,
)
from broker.services.resolve import ResolveError, dismiss_item, link_item
from broker.services.sweeper import pending_messages, pending_tasks

log = logging.getLogger(__name__)

T = TypeVar("T")

# A database outage makes every job of this process fail or retry: it is logged when
# it starts, as a reminder while it lasts, and when it ends, not on every job.
DATABASE = Outage("database (tasks retry with back-off)", log)

# Messages read per query by :meth:`UseCases.sweep`.
SWEEP_PAGE = 1000

__all__ = ["DATABASE", "ResolveError", "UseCases"]


class UseCases:
    """The use cases of one process, on its :class:`~broker.runtime.Runtime`.
    ``make_dispatcher`` builds the dispatcher from this object's job runner
    (:meth:`run`) and the database outage log; :mod:`broker.bootstrap` chooses it."""

    def __init__(self, runtime: Runtime,
                 make_dispatcher: Callable[[JobRunner, Outage], Dispatcher]) -> None:
        self.runtime = runtime
        self.settings = runtime.settings
        self._jobs: dict[Job, Callable[..., Any]] = {
            Job.PROCESS_INBOUND: self.apply_message,
            Job.PROCESS_INBOUND_BATCH: self.apply_messages,
            Job.LINK_MPPS: self.link_mpps,
            Job.RECONCILE_STUDY: self.reconcile_study,
            Job.DELIVER_OUTBOUND: self.deliver_outbound,
            Job.FORWARD_INSTANCES: self.forward_instances,
        }
        assert set(self._jobs) == set(Job), "every job has its use case"
        self.dispatcher: Dispatcher = make_dispatcher(self.run, DATABASE)

    @cached_property
    def ups(self) -> UPSUseCases:
        """Unified Procedure Step workitems (PS3.4 Annex CC), for the UPS adapters;
        made on first use, so that commands that never open the database (``mapping
        test``) do not create it."""
        return UPSUseCases(self.runtime.session_factory, self.settings, self.start_delivery)

    @cached_property
    def mapping(self) -> MappingUseCases:
        """Impact of a candidate profile set and bulk replay of stored messages; a
        one-shot command hands replayed messages over (applied in the command in
        embedded mode, published to the workers otherwise)."""
        dispatcher = self.dispatcher
        dispatch = (dispatcher.hand_over if isinstance(dispatcher, CommandDispatcher)
                    else dispatcher.dispatch)
        return MappingUseCases(self.runtime, dispatch)

    # -- jobs ------------------------------------------------------------------------

    def run(self, job: Job, *args: Any) -> Any:
        """Run ``job`` here, now (the in-process dispatchers call this)."""
        return self._jobs[job](*args)

    def _submit(self, job: Job, *args: Any) -> None:
        """Hand over committed work; if the dispatcher fails (Redis away) the work is
        safe in the database and the sweeper dispatches it later."""
        try:
            self.dispatcher.submit(job, *args)
        except Exception as exc:
            log.warning("%s not dispatched (%s); left for the sweeper", job.value,
                        type(exc).__name__)

    def _locked(self, key: str, body: Callable[[Session], T]) -> T:
        """Run ``body`` in one transaction under the ordering lock ``key``."""
        with unit_of_work(self.runtime.session_factory) as session:
            lock_key(session, key)
            return body(session)

    # -- inbound messages --------------------------------------------------------------

    def reception(self, inbox: Inbox, *, ack_timeout: float,
                  failpoint: str = "") -> Reception:
        """The receive use case of the MLLP listener, on ``inbox``."""
        return Reception(inbox, self.dispatcher, self.runtime.session_factory,
                         ack_timeout=ack_timeout, failpoint=failpoint)

    def apply_message(self, message_pk: int, *, ahead: bool = False) -> int:
        """Apply inbound message ``message_pk`` (and any earlier pending message of the
        same patient); returns how many were applied. ``ahead``: with other waiting
        messages, as many as a transaction holds (:func:`process_batch`)."""
        runtime = self.runtime
        return process_through(runtime.session_factory, message_pk, runtime.mappings,
                               read=runtime.read, ahead=ahead)

    def apply_messages(self, message_pks: list[int], *, ahead: bool = False) -> int:
        """Apply several stored messages in one transaction (each under a savepoint of
        its own, per-patient order kept: :func:`process_batch`): what the serve process
        publishes when messages arrive faster than it could publish one job each. When
        the database fails the batch, each message is handed to a
        :attr:`Job.PROCESS_INBOUND` job of its own (with that task's retries)."""
        runtime = self.runtime
        try:
            applied = process_batch(runtime.session_factory, message_pks, runtime.mappings,
                                    read=runtime.read, ahead=ahead)
        except SQLAlchemyError as exc:
            DATABASE.failed(exc)
            for message_pk in message_pks:
                self.dispatcher.submit(Job.PROCESS_INBOUND, message_pk, countdown=1)
            return 0
        DATABASE.ok()
        return applied

    def waiting(self, message_pks: Sequence[int]) -> list[int]:
        """Which of ``message_pks`` still wait to be applied: one read outside any
        transaction (PostgreSQL autocommit), for a task whose messages another task's
        transaction may already have taken ahead; it then needs no transaction at all.
        On SQLite every transaction takes the write lock, so there all are returned and
        the transaction finds out."""
        engine = self.runtime.engine
        if is_sqlite(engine):
            return list(message_pks)
        with engine.connect() as conn:
            conn = conn.execution_options(isolation_level="AUTOCOMMIT")
            return list(conn.scalars(
                select(InboundMessage.id).where(
                    InboundMessage.id.in_(list(message_pks)),
                    InboundMessage.status == MessageStatus.RECEIVED.value)))

    def dry_run(self, raw: bytes, factory: sessionmaker[Session] | None = None, *,
                mapper: MapperSource | None = None) -> DryRun:
        """What live processing would answer to ``raw``, read and checked as the
        listener does, against ``factory``'s database (default: this broker's), with
        nothing kept (:mod:`broker.services.dry_run`); mapped by ``mapper`` (default:
        the version in force in that database)."""
        runtime, settings = self.runtime, self.settings
        return dry_run(raw, factory or runtime.session_factory, mapper or runtime.mappings,
                       read=runtime.read, versions=settings.hl7_versions,
                       accept_any_version=settings.accept_unknown_hl7_version)

    def reprocess(self, message_pks: Sequence[int]) -> list[dict[str, Any]]:
        """Queue messages again (failed or processed ones), each reset in its own
        transaction and dispatched after it; rejected ones are refused."""
        results = []
        for pk in message_pks:
            with unit_of_work(self.runtime.session_factory) as session:
                row = session.get(InboundMessage, pk)
                queued = row is not None and reset_for_reprocess(session, row)
            if queued:
                self.dispatcher.dispatch(pk)
            results.append({"id": pk, "queued": queued,
                            "reason": "" if queued else "not found, or rejected at the door"})
        return results

    # -- the reconciliation inbox -----------------------------------------------------

    def link_item(self, item_pk: int, procedure_ref: str, user: str) -> str:
        """Tie a reconciliation item to an order (the same status changes and
        messages as a direct match), then start delivery. Raises ResolveError with a
        message for people."""
        with unit_of_work(self.runtime.session_factory) as session:
            outcome = link_item(session, self.settings, item_pk, procedure_ref, user)
        self.start_delivery()
        return outcome

    def dismiss_item(self, item_pk: int, user: str) -> str:
        """Close an item without linking it. Raises ResolveError."""
        with unit_of_work(self.runtime.session_factory) as session:
            return dismiss_item(session, item_pk, user)

    # -- outbound messages ------------------------------------------------------------

    def start_delivery(self) -> None:
        """Dispatch delivery to every configured outbound destination."""
        for dest in self.settings.outbound_destinations:
            self._submit(Job.DELIVER_OUTBOUND, dest.name)

    def resend_outbound(self, message_pks: Sequence[int]) -> list[int]:
        """Send outbox messages again with their original MSH-10 (in one transaction);
        returns the ids found. Delivery starts after the commit when any was."""
        found = []
        with unit_of_work(self.runtime.session_factory) as session:
            for pk in message_pks:
                if outbound.resend(session, pk) is not None:
                    found.append(pk)
        if found:
            self.start_delivery()
        return found

    def deliver_outbound(self, destination: str) -> float | None:
        """Send the due outbox messages of ``destination``; schedule the next attempt
        (returns its delay, None when nothing is left)."""
        delay = outbound.deliver(self.runtime.session_factory, self.settings, destination)
        if delay is not None:
            self.dispatcher.submit(Job.DELIVER_OUTBOUND, destination,
                                   countdown=max(delay, 0.05))
        return delay

    # -- performed work (DICOM PS3.4 Annex F, R, B) -------------------------------------

    def record_mpps_create(self, uid: str, ds: Dataset, calling: str, address: str,
                           request: DicomRequest) -> None:
        """MPPS N-CREATE (PS3.4 F.7.2.1): the instance, its audit record and the
        ``request`` row in one transaction; then linking. Raises MppsError for a
        refusal with its status."""
        with unit_of_work(self.runtime.session_factory) as session:
            row = mpps.create(session, uid, ds, calling)
            audit.procedure_record(session, calling, address, "N-CREATE", row.patient_id,
                                   row.study_instance_uid)
            session.add(request)
            mpps_pk = row.id
        self._submit(Job.LINK_MPPS, mpps_pk)

    def record_mpps_set(self, uid: str, ds: Dataset, calling: str, address: str,
                        request: DicomRequest) -> None:
        """MPPS N-SET (PS3.4 F.7.2.2): like :meth:`record_mpps_create`."""
        with unit_of_work(self.runtime.session_factory) as session:
            row = mpps.update(session, uid, ds)
            audit.procedure_record(session, calling, address, "N-SET", row.patient_id,
                                   row.study_instance_uid)
            session.add(request)
            mpps_pk = row.id
        self._submit(Job.LINK_MPPS, mpps_pk)

    def record_availability(self, uid: str, ds: Dataset, calling: str,
                            request: DicomRequest) -> None:
        """Instance Availability Notification N-CREATE (PS3.4 R.3): the notice and the
        ``request`` row in one transaction; then the study's reconciliation."""
        with unit_of_work(self.runtime.session_factory) as session:
            notice = studies.record_availability(session, ds, sop_instance_uid=uid,
                                                 calling_ae_title=calling)
            session.add(request)
            study = notice.study_instance_uid
        self._submit(Job.RECONCILE_STUDY, study)

    def record_refusal(self, request: DicomRequest) -> None:
        """Keep a refused DIMSE request with the status answered."""
        with unit_of_work(self.runtime.session_factory) as session:
            session.add(request)

    def record_request(self, request: DicomRequest) -> None:
        """Keep a DIMSE request with the status answered, in a transaction of its own
        (a UPS request: after the use case it asked for, :mod:`broker.dicom.ups_scp`)."""
        with unit_of_work(self.runtime.session_factory) as session:
            session.add(request)

    def record_instance(self, ds: Dataset, *, sop_class_uid: str, sop_instance_uid: str,
                        calling_ae_title: str, transfer_syntax_uid: str,
                        file_path: str) -> None:
        """Index a stored instance (C-STORE, PS3.4 B.2) in a transaction committed
        before the response but without waiting for the disk; :meth:`instances_received`
        commits durably when the association ends, which makes its instances durable
        too (:func:`broker.db.unsynced_transaction`). Its study is reconciled then."""
        with unsynced_transaction(self.runtime.engine) as conn:
            studies.index_instance(
                conn, ds, sop_class_uid=sop_class_uid, sop_instance_uid=sop_instance_uid,
                calling_ae_title=calling_ae_title, transfer_syntax_uid=transfer_syntax_uid,
                file_path=file_path,
                forward=self.settings.storage_mode is StorageMode.FORWARD)

    def instances_received(self, calling: str, address: str,
                           stored: Mapping[str, tuple[int, str]]) -> None:
        """An association that stored instances ended: audit the transfer (study ->
        (count, patient id)), reconcile each study, forward in storage_mode forward.
        The audit's commit is durable, and so makes the association's instance rows
        durable too (:meth:`record_instance`)."""
        if not stored:
            return
        try:
            with unit_of_work(self.runtime.session_factory) as session:
                for study, (count, patient_id) in stored.items():
                    audit.instances_received(session, calling, address, study,
                                             patient_id, count)
        except SQLAlchemyError as exc:
            log.error("instances-transferred audit not recorded: %s", type(exc).__name__)
        for study in sorted(stored):
            self._submit(Job.RECONCILE_STUDY, study)
        if self.settings.storage_mode is StorageMode.FORWARD:
            self._submit(Job.FORWARD_INSTANCES)

    def link_mpps(self, mpps_pk: int) -> str:
        """Link MPPS ``mpps_pk`` to its scheduled steps and apply its state; then
        deliver the order status messages it queued."""
        settings = self.settings
        outcome = self._locked(f"mpps:{mpps_pk}", lambda s: mpps.link(s, settings, mpps_pk))
        self.start_delivery()
        return outcome

    def reconcile_study(self, study_instance_uid: str) -> str:
        """Tie the new instances and IANs of a study to their order; then deliver."""
        settings = self.settings
        outcome = self._locked(f"study:{study_instance_uid}",
                               lambda s: studies.reconcile_study(s, settings,
                                                                 study_instance_uid))
        self.start_delivery()
        return outcome

    def forward_instances(self) -> float | None:
        """Forward spooled instances to the PACS (storage_mode forward); schedule the
        next attempt (returns its delay, None when nothing is left)."""
        delay = forward_pending(self.runtime.session_factory, self.settings)
        if delay is not None:
            self.dispatcher.submit(Job.FORWARD_INSTANCES, countdown=delay)
        return delay

    # -- recovery ---------------------------------------------------------------------

    def sweep(self, older_than: timedelta, skip: Callable[[int], bool] | None = None) -> int:
        """Dispatch everything unfinished older than ``older_than``, except messages for
        which ``skip`` says so; returns the count. Messages are read a page at a time,
        but all of them in one pass: a backlog left by a Redis restart goes out at once,
        not a thousand per interval."""
        factory, dispatcher = self.runtime.session_factory, self.dispatcher
        messages, after = 0, 0
        while True:
            with factory() as session:
                page = pending_messages(session, older_than, SWEEP_PAGE, after)
            ids = [pk for pk in page if skip is None or not skip(pk)]
            for pk in ids:
                dispatcher.dispatch(pk)
            messages += len(ids)
            if len(page) < SWEEP_PAGE:
                break
            after = page[-1]
        with factory() as session:
            tasks = pending_tasks(session, older_than)
        for job, args in tasks:
            dispatcher.submit(job, *args)
        if messages or tasks:
            log.info("sweeper re-dispatched %d message(s) and %d task(s)", messages,
                     len(tasks))
        return messages + len(tasks)
