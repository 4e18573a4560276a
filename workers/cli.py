"""The ``mwl-broker`` command line: the broker's commands (:mod:`broker.main`) plus
``worker``, which runs the Celery worker of this package (the broker never imports
it, so the command is added here, on the outside)."""

from __future__ import annotations

import logging
from typing import Annotated

import typer

from broker.cli_common import ConfigOption, configure_logging, settings_from
from broker.cli_errors import ConfigurationError
from broker.main import app

__all__ = ["app"]


# Celery logs two INFO lines per task ("received", "succeeded"): at the default level
# a busy worker spent its time writing them. Their errors and warnings are kept
# (a task that raised, a retry given up); --loglevel=DEBUG shows them all again.
TASK_LINE_LOGGERS = ("celery.app.trace", "celery.worker.strategy")
POOLS = ("prefork", "solo", "threads")


def quiet_task_lines(loglevel: str) -> None:
    """Per-task lines only at DEBUG: at INFO the worker logs what is not routine."""
    if logging.getLevelName(loglevel.upper()) != logging.DEBUG:
        for name in TASK_LINE_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)


@app.command()
def worker(
    config: ConfigOption = None,
    concurrency: Annotated[int, typer.Option(help="Worker processes.")] = 2,
    loglevel: Annotated[str, typer.Option(help="Celery log level.")] = "INFO",
    pool: Annotated[str, typer.Option(
        help="Celery pool: prefork (child processes; a killed child's task is "
             "requeued at once), solo or threads (no child process; a killed worker's "
             "tasks are re-dispatched by serve when its presence lapses).")] = "prefork",
) -> None:
    """Run a Celery worker (distributed mode: MWLB_CELERY_BROKER_URL=redis://...)."""
    from broker.bootstrap import Role, build
    from broker.mapping.follow import start_deployed
    from broker.migrations import upgrade
    from workers.celery_app import configure, install

    if pool not in POOLS:
        raise ConfigurationError(f"--pool must be one of {', '.join(POOLS)}")
    configure_logging(loglevel)
    quiet_task_lines(loglevel)
    settings = settings_from(config)
    if settings.embedded:
        raise ConfigurationError("MWLB_CELERY_BROKER_URL is empty: nothing to work for "
                                 "(embedded mode processes in `mwl-broker serve`)")
    upgrade(settings.database_url)
    root = build(settings, Role.WORKER)
    # The deployed profiles (the directory as version 1 on a first start: a broken one
    # fails now, not per message); each task then reads the version in force.
    start_deployed(root.runtime.session_factory, root.runtime.mappings,
                   settings.mappings_dir, user="system")
    root.runtime.dispose()
    install(root)
    celery = configure(settings)
    # Announced in Redis, so that a kill -9 is noticed by serve within seconds and the
    # tasks this worker held are re-dispatched (broker/presence.py).
    presence = root.start_presence("worker")
    try:
        celery.worker_main(["worker", f"--loglevel={loglevel}",
                            f"--concurrency={concurrency}", f"--pool={pool}", "-Q",
                            "mwl_broker", "--without-gossip", "--without-mingle"])
    finally:
        if presence is not None:
            presence.stop()
