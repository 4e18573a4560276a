"""How the serve process publishes inbound messages to the Celery workers (the
composition root's dispatcher, a real Redis, no worker: the test reads the queue and
plays the worker's part on the rows): a lone message goes out at once; messages
arriving while a published message's sender waits for its application ACK gather into
one batch task, published as soon as that message is applied."""

from __future__ import annotations

import ast
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from sqlalchemy import update

from broker.bootstrap import Role, Root, build
from broker.db import unit_of_work
from broker.dispatch import BackgroundDispatcher
from broker.migrations import upgrade
from broker.models import InboundMessage, MessageStatus
from tests.conftest import REDIS_URL, broker_settings

pytestmark = [pytest.mark.redis]

QUEUE = "mwl_broker"


@pytest.fixture
def root(tmp_path: Path) -> Iterator[Root]:
    url = f"sqlite:///{tmp_path / 'broker.db'}"
    upgrade(url)
    redis.Redis.from_url(REDIS_URL).flushdb()
    made = build(broker_settings(tmp_path, database_url=url, celery_broker_url=REDIS_URL),
                 Role.SERVE)
    yield made
    made.close()


def queued() -> list[tuple[str, str]]:
    """The tasks waiting in Redis, oldest first: (task name, its arguments)."""
    raw = redis.Redis.from_url(REDIS_URL).lrange(QUEUE, 0, -1)
    headers = [json.loads(item)["headers"] for item in reversed(raw)]
    return [(h["task"].removeprefix("mwl_broker."), h["argsrepr"]) for h in headers]


def until_queued(count: int, timeout: float = 2.0) -> list[tuple[str, str]]:
    deadline = time.monotonic() + timeout
    while len(tasks := queued()) < count:
        assert time.monotonic() < deadline, tasks
        time.sleep(0.01)
    return tasks


def stored(root: Root, count: int) -> list[int]:
    with unit_of_work(root.runtime.session_factory) as session:
        rows = [InboundMessage(raw=b"MSH|", ordering_key=f"P{n}") for n in range(count)]
        session.add_all(rows)
        session.flush()
        return [row.id for row in rows]


def applied(root: Root, message_pk: int) -> None:
    with unit_of_work(root.runtime.session_factory) as session:
        session.execute(update(InboundMessage).where(InboundMessage.id == message_pk)
                        .values(status=MessageStatus.PROCESSED.value))


def test_messages_gather_while_a_sender_waits_for_the_worker(root: Root) -> None:
    dispatcher = root.dispatcher
    assert isinstance(dispatcher, BackgroundDispatcher)
    dispatcher.LINGER = 5.0  # longer than the test: only the applied message ends it
    first, *later = stored(root, 4)
    dispatcher.dispatch(first)
    assert until_queued(1) == [("process_inbound", f"({first},)")]  # at once
    waiter = threading.Thread(target=dispatcher.wait, args=(first, 30))
    waiter.start()  # its sender waits for the application ACK
    time.sleep(0.2)
    for pk in later:
        dispatcher.dispatch(pk)
        time.sleep(0.1)
    time.sleep(0.3)
    assert len(queued()) == 1  # held while the worker applies the first
    applied(root, first)
    began = time.monotonic()
    assert until_queued(2)[1] == ("process_inbound_batch", f"({later},)")
    assert time.monotonic() - began < 2.0  # when the first was applied, not the linger
    waiter.join(5)


def test_a_backlog_arriving_is_published_in_transaction_sized_tasks(root: Root) -> None:
    """Store ACK mode, a backlog arriving (several connections replaying, a few
    messages at a time, every couple of milliseconds): it goes out as tasks of about
    BURST_BATCH messages, not as one task per few messages."""
    dispatcher = root.dispatcher
    assert isinstance(dispatcher, BackgroundDispatcher)
    dispatcher.BURST_BATCH = 20
    pks = stored(root, 200)
    for n, pk in enumerate(pks, 1):
        dispatcher.dispatch(pk)
        if n % 5 == 0:
            time.sleep(0.002)
    deadline = time.monotonic() + 10
    published = published_messages()
    while sum(len(args) for args in published) < len(pks):
        assert time.monotonic() < deadline, published
        time.sleep(0.05)
        published = published_messages()
    assert sorted(pk for args in published for pk in args) == pks  # each once
    in_full_tasks = sum(len(args) for args in published if len(args) >= 15)
    assert in_full_tasks >= 0.6 * len(pks), [len(args) for args in published]


def published_messages() -> list[list[int]]:
    """The message ids of each queued inbound task, oldest first."""
    tasks = []
    for name, args in queued():
        value = ast.literal_eval(args)  # a tuple of ints, or of one list of ints
        tasks.append(list(value[0]) if name == "process_inbound_batch" else [value[0]])
    return tasks
