"""The application-mode ACK learns that its message was applied from PostgreSQL
LISTEN/NOTIFY (:mod:`broker.notify`): the processor's commit wakes the waiter at once;
when the listening connection is killed (pg_terminate_backend), the slow poll or the
re-listen's look at the waiting rows still delivers it. A real PostgreSQL and the real
processor; the waiter runs in a thread as in the MLLP listener."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
from sqlalchemy import text

from broker.notify import APPLICATION_NAME, CHANNEL, Notified, Waited
from tests.builders import order
from tests.service.conftest import Services

pytestmark = [pytest.mark.postgres,
              pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)]

LISTENERS = text("SELECT pid, query FROM pg_stat_activity WHERE application_name = :name "
                 "AND datname = current_database()")


def listeners(services: Services) -> list[tuple[int, str]]:
    with services.factory() as session:
        return [(pid, query) for pid, query in session.execute(
            LISTENERS, {"name": APPLICATION_NAME})]


def listening(services: Services, timeout: float = 20) -> int:
    """The pid of the session listening on the channel, once there is one."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [pid for pid, query in listeners(services) if query == f"LISTEN {CHANNEL}"]
        if found:
            return found[0]
        time.sleep(0.05)
    raise AssertionError("nobody listens for applied messages")


def kill(services: Services, pid: int) -> None:
    with services.factory() as session:
        assert session.scalar(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    deadline = time.monotonic() + 20
    while any(found == pid for found, _ in listeners(services)):
        assert time.monotonic() < deadline, "the listening session outlived its kill"
        time.sleep(0.05)


class Waiter(threading.Thread):
    """Waits for one message as the MLLP listener does; records when it was told."""

    def __init__(self, watch: Notified, message_pk: int) -> None:
        super().__init__()
        self.watch, self.message_pk = watch, message_pk
        self.applied: bool | None = None
        self.told_at = 0.0
        self.start()
        time.sleep(0.2)  # waiting by now

    def run(self) -> None:
        self.applied = self.watch.wait(self.message_pk, 30)
        self.told_at = time.monotonic()


@pytest.fixture
def started() -> Iterator[list[Notified]]:
    watches: list[Notified] = []
    yield watches
    for watch in watches:
        watch.close()


def watch(services: Services, started: list[Notified], **intervals: float) -> Notified:
    """A watch listening already (its first wait starts the listener)."""
    made = Notified(services.factory, **intervals)
    started.append(made)
    assert made.wait(services.store(order(999)), 0) is False  # not applied
    listening(services)
    return made


def apply(services: Services, message_pk: int) -> float:
    services.use_cases.apply_message(message_pk)
    assert services.message(message_pk).ack_code == "AA"
    return time.monotonic()


def test_the_commit_wakes_the_waiter_with_the_poll_an_hour_away(
        services: Services, started: list[Notified]) -> None:
    notified = watch(services, started, poll_interval=3600)
    pk = services.store(order(1))
    waiter = Waiter(notified, pk)
    committed_at = apply(services, pk)
    waiter.join(30)
    assert waiter.applied is True
    assert waiter.told_at - committed_at < 2.0
    # A waiter coming after the notice looks at the row instead of waiting an hour.
    began = time.monotonic()
    assert notified.wait(pk, 30) is True
    assert time.monotonic() - began < 2.0


def test_with_the_listening_session_killed_the_poll_still_tells(
        services: Services, started: list[Notified]) -> None:
    notified = watch(services, started, poll_interval=0.3, reconnect_interval=3600)
    kill(services, listening(services))
    pk = services.store(order(2))
    waiter = Waiter(notified, pk)
    committed_at = apply(services, pk)
    waiter.join(30)
    assert waiter.applied is True
    assert waiter.told_at - committed_at < 3.0
    assert listeners(services) == []  # told by the poll: nobody listened


def test_the_listener_reconnects_and_tells_what_was_applied_meanwhile(
        services: Services, started: list[Notified]) -> None:
    notified = watch(services, started, poll_interval=3600, reconnect_interval=2.0)
    pk = services.store(order(3))
    waiter = Waiter(notified, pk)
    killed = listening(services)
    kill(services, killed)
    committed_at = apply(services, pk)  # while nobody listens: its notice is lost
    waiter.join(30)
    assert waiter.applied is True
    assert waiter.told_at - committed_at < 10.0  # the re-listen, not the waiter's end
    assert listening(services) != killed
    # Listening again: the next commit is told by its notice.
    pk = services.store(order(4))
    waiter = Waiter(notified, pk)
    committed_at = apply(services, pk)
    waiter.join(30)
    assert waiter.applied is True and waiter.told_at - committed_at < 2.0


def test_the_waiter_is_told_the_stored_ack_with_the_notice(
        services: Services, started: list[Notified]) -> None:
    """The listening thread reads the ACK stored with the outcome, so the MLLP listener
    answers without reading the row: the same bytes as stored, an hour before any poll."""
    notified = watch(services, started, poll_interval=3600)
    pk = services.store(order(5))
    told: list[Waited] = []
    waiter = threading.Thread(target=lambda: told.append(notified.wait_ack(pk, 30)))
    waiter.start()
    time.sleep(0.2)  # waiting by now
    apply(services, pk)
    waiter.join(30)
    stored = services.message(pk).ack
    assert stored is not None and b"MSA|AA|" in bytes(stored)
    assert told == [Waited(True, bytes(stored))]
