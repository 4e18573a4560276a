"""``mwl-broker messages reprocess`` by criteria: start a replay run, show its progress
on standard error until every message has an outcome, then the summary (passed, still
failing grouped by HL7 error) on standard output. The messages are applied by the
command itself in embedded mode, by the workers with Celery
(:class:`broker.application.mapping.MappingUseCases`)."""

from __future__ import annotations

import getpass
import threading
import time
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from broker.application.mapping import MappingUseCases
from broker.cli_common import console, err_console
from broker.cli_errors import USAGE_ERROR, CommandError
from broker.services.replay import ReplayCriteria, ReplayProgress

# Seconds between two reads of the run's progress.
POLL = 0.5
# Seconds without any message getting an outcome before the command says so (once).
STALLED = 60.0


def when(value: str | None, option: str, timezone: str) -> datetime | None:
    """An ISO 8601 date or date-time given to ``option``; without an offset it is in
    ``timezone`` (MWLB_TIMEZONE). In UTC."""
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise CommandError(f"{option} {value!r}: not an ISO 8601 date or date-time "
                           "(e.g. 2025-03-10 or 2025-03-10T14:30)", USAGE_ERROR) from exc
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=ZoneInfo(timezone))
    return parsed.astimezone(UTC)


def criteria(status: str | None, since: datetime | None, until: datetime | None,
             sender: str | None) -> ReplayCriteria:
    try:
        return ReplayCriteria(status or "failed", since, until, sender or None)
    except ValueError as exc:
        raise CommandError(str(exc), USAGE_ERROR) from exc


def replay(mapping: MappingUseCases, wanted: ReplayCriteria, *, wait: bool) -> int:
    """Run the replay; the exit status: 0 when every message passed (or, with ``wait``
    False, once dispatched: where the run is then is said), 1 when some still fail."""
    run_id = mapping.start_replay(wanted, getpass.getuser())
    if not wait:
        mapping.dispatch_replay(run_id)
        now = mapping.replay_progress(run_id)
        console.print(f"replay run {run_id}: {now.total} message(s): {now.passed} passed, "
                      f"{now.failing} failing, {now.waiting} waiting", highlight=False)
        return 0
    failure: list[BaseException] = []

    def dispatch() -> None:
        try:
            mapping.dispatch_replay(run_id)
        except BaseException as exc:  # said by the waiting thread
            failure.append(exc)

    # In embedded mode the messages are applied by the dispatch itself: in a thread,
    # while this one shows how far it got.
    dispatching = threading.Thread(target=dispatch, name="replay", daemon=True)
    dispatching.start()
    try:
        done = _wait(mapping, run_id, dispatching, failure)
    except KeyboardInterrupt:
        err_console.print(f"stopped waiting; replay run {run_id} goes on")
        raise
    return _summary(done)


def _wait(mapping: MappingUseCases, run_id: int, dispatching: threading.Thread,
          failure: list[BaseException]) -> ReplayProgress:
    columns = (TextColumn("replay run {task.fields[run]}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("passed {task.fields[passed]}, failing {task.fields[failing]}"),
               TimeElapsedColumn())
    with Progress(*columns, console=err_console, transient=True) as bar:
        now = mapping.replay_progress(run_id)
        task = bar.add_task("replay", total=now.total, run=run_id, passed=0, failing=0)
        last_change, last_done, said = time.monotonic(), -1, False
        while True:
            now = mapping.replay_progress(run_id)
            bar.update(task, completed=now.done, passed=now.passed, failing=now.failing)
            if failure:
                raise failure[0]
            if now.finished and not dispatching.is_alive():
                return now
            if now.done != last_done:
                last_change, last_done = time.monotonic(), now.done
            elif not said and time.monotonic() - last_change > STALLED:
                said = True
                bar.console.print(f"no message of replay run {run_id} got an outcome for "
                                  f"{STALLED:g} s: is a worker running? (Ctrl-C stops "
                                  "waiting; the run goes on)")
            time.sleep(POLL)


def _summary(done: ReplayProgress) -> int:
    if not done.total:
        console.print(f"replay run {done.run_id}: no message matches", highlight=False)
        return 0
    line = (f"replay run {done.run_id}: {done.total} message(s): {done.passed} passed, "
            f"{done.failing} still failing")
    if done.missing:
        line += f", {done.missing} no longer stored"
    console.print(line, highlight=False)
    for reason in done.reasons:
        console.print(f"  {reason.count} x {reason}", highlight=False, markup=False)
    return 0 if done.passed == done.total else 1
