"""Never lose an order (issue 5 §2): bursts of 2,000 distinct orders from 4 MLLP clients
that resend whatever did not get AA, against `mwl-broker serve` + `mwl-broker worker` on
a PostgreSQL and a Redis of the test's own, while things break. After each: one step per
order, none twice, every AA'd message applied; the figures go to
test-artifacts/faults.jsonl."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.faults.cluster import Broker, Burst, Postgres, Redis, outcome, report

pytestmark = [pytest.mark.faults, pytest.mark.timeout(420)]

ORDERS = 2000


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[dict[str, Any]]:
    pg = Postgres()
    redis = Redis(tmp_path)
    broker = Broker(tmp_path, pg, redis)
    try:
        yield {"pg": pg, "redis": redis, "broker": broker, "root": tmp_path}
    finally:
        broker.stop()
        redis.stop()
        pg.remove()


def start(cluster: dict[str, Any], first: int, **serve_env: str) -> Burst:
    broker: Broker = cluster["broker"]
    broker.start("worker")
    broker.supervise("worker")
    broker.start("serve", **serve_env)
    return Burst(broker.mllp_port, range(first, first + ORDERS)).start()


def until(burst: Burst, fraction: float, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while len(burst.acked) < fraction * ORDERS:
        assert time.monotonic() < deadline, "the burst does not progress"
        time.sleep(0.05)


def check(name: str, cluster: dict[str, Any], burst: Burst) -> dict[str, object]:
    burst.join(300)
    figures = outcome(cluster["pg"], burst, burst.finished)
    figures["process_restarts"] = len(cluster["broker"].restarts)
    report(name, figures)
    broker: Broker = cluster["broker"]
    assert burst.errors == [], broker.output()
    assert figures["aa"] == ORDERS, figures
    assert figures["steps"] == ORDERS, (figures, broker.output())
    assert figures["duplicated"] == 0, figures
    assert figures["lost"] == 0, figures
    return figures


def test_worker_child_killed(cluster: dict[str, Any]) -> None:
    burst = start(cluster, 100_000)
    until(burst, 0.3)
    cluster["broker"].kill_worker_child()
    check("worker child kill -9", cluster, burst)


def test_whole_worker_killed_and_restarted(cluster: dict[str, Any]) -> None:
    burst = start(cluster, 200_000)
    until(burst, 0.3)
    cluster["broker"].kill("worker")
    time.sleep(3)
    cluster["broker"].start("worker")
    cluster["broker"].supervise("worker")
    check("whole worker kill -9, restarted", cluster, burst)


def test_redis_restarted(cluster: dict[str, Any]) -> None:
    burst = start(cluster, 300_000)
    until(burst, 0.3)
    cluster["redis"].stop()
    time.sleep(3)
    cluster["redis"].start()
    check("Redis restarted (queue lost)", cluster, burst)


def test_postgres_stopped_for_30_seconds(cluster: dict[str, Any]) -> None:
    burst = start(cluster, 400_000)
    until(burst, 0.3)
    cluster["pg"].stop("fast")
    down_at = time.monotonic()
    time.sleep(30)
    up_at = time.monotonic()
    cluster["pg"].start()
    figures = check("PostgreSQL stopped 30 s", cluster, burst)
    # While it was down no message sent then was acknowledged AA (AR or no answer).
    during = [n for n, sent in burst.acked.items() if down_at + 1 < sent < up_at - 1]
    assert during == [], f"AA while the database was down: {during[:5]}"
    refused_codes = {code for _, code, sent in burst.refused if down_at < sent < up_at}
    assert refused_codes <= {"AR", "ConnectionResetError", "MLLPTimeout", "TimeoutError",
                             "ConnectionError", "ConnectionRefusedError"}, refused_codes
    assert figures["attempts"] > ORDERS  # clients did have to resend


def test_broker_killed_between_commit_and_publish(cluster: dict[str, Any]) -> None:
    broker: Broker = cluster["broker"]
    burst = start(cluster, 500_000, MWLB_FAILPOINT="crash-after-commit:600")
    broker.wait_exit("serve", timeout=120)  # the failpoint ended it mid-burst
    [(orphans,)] = cluster["pg"].query(
        "SELECT count(*) FROM inbound_message WHERE status='received'")
    broker.start("serve")
    figures = check("broker killed between commit and publish", cluster, burst)
    assert orphans >= 1 or figures["lost"] == 0
