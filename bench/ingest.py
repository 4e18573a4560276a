"""HL7 ingest over MLLP: ORM^O01 messages on 1 or 8 connections, each
connection waiting for its ACK before sending the next; messages per second and
p50/p99 ACK latency. Every ACK must be AA."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from broker.hl7.client import MLLPClient
from tests.builders import order


@dataclass(frozen=True)
class IngestResult:
    rate: float  # messages per second
    p50_ms: float
    p99_ms: float


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


def ingest(port: int, first: int, count: int, connections: int) -> IngestResult:
    """Send orders ``first`` .. ``first + count - 1`` spread over ``connections``."""
    latencies: list[list[float]] = [[] for _ in range(connections)]
    errors: list[str] = []

    def client(k: int) -> None:
        try:
            with MLLPClient("127.0.0.1", port, timeout=60) as mllp:
                for n in range(first + k, first + count, connections):
                    began = time.perf_counter()
                    ack = mllp.send(order(n))
                    latencies[k].append((time.perf_counter() - began) * 1000)
                    if b"MSA|AA|" not in ack:
                        errors.append(ack.decode(errors="replace"))
                        return
        except OSError as exc:
            errors.append(repr(exc))

    threads = [threading.Thread(target=client, args=(k,)) for k in range(connections)]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    if errors:
        raise AssertionError(f"ingest: not every message got AA: {errors[0][:300]}")
    flat = [x for per in latencies for x in per]
    return IngestResult(count / elapsed, percentile(flat, 0.5), percentile(flat, 0.99))
