"""Modality Worklist C-FIND on open associations: the server's time per query, without
a findscu process start per query.

The queries are those of :mod:`bench.cfind` (the same keys, the same expected number
of responses, checked on every query), sent by :class:`bench.scu.WorklistSCU`: one
association kept open for many queries, each timed from the request's first byte
written to the final response read. Two figures: the p50 (and p99) of ``count``
queries one after the other, and the queries per second that ``clients``
associations complete together, each asking again as soon as it has its answer.
"""

from __future__ import annotations

import threading
import time

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from bench.cfind import Query
from bench.scu import WorklistSCU, encode_identifier

SUCCESS = 0x0000


def identifier(query: Query) -> bytes:
    """The identifier findscu builds from ``-k`` keys (``Keyword[=value]``, one level
    of ``Sequence[0].Keyword``), encoded as the SCU sends it."""
    ds = Dataset()
    for key in query.keys:
        path, _, value = key.partition("=")
        target = ds
        if "[0]." in path:
            sequence, path = path.split("[0].")
            if sequence not in target:
                setattr(target, sequence, Sequence([Dataset()]))
            target = getattr(target, sequence)[0]
        setattr(target, path, value or None)
    return encode_identifier(ds)


def _checked(scu: WorklistSCU, request: bytes, query: Query) -> float:
    pending, status, elapsed = scu.find(request)
    if (pending, status) != (query.expected, SUCCESS):
        raise AssertionError(f"query {query.name}: {pending} responses and status "
                             f"0x{status:04X}, expected {query.expected} and 0x0000")
    return elapsed


def query_times(port: int, called: str, query: Query, count: int) -> list[float]:
    """Milliseconds of ``count`` queries one after the other on one association (after
    one untimed query that warms the server's caches)."""
    data = identifier(query)
    with WorklistSCU(port, called) as scu:
        _checked(scu, scu.request(data), query)
        times = []
        for _ in range(count):
            times.append(_checked(scu, scu.request(data), query))
    return times


def concurrent_rate(port: int, called: str, query: Query, clients: int,
                    seconds: float) -> float:
    """Queries per second completed by ``clients`` associations in ``seconds``; the
    associations are open before the clock starts."""
    data = identifier(query)
    scus = [WorklistSCU(port, called) for _ in range(clients)]
    done = [0] * clients
    errors: list[BaseException] = []
    start = threading.Barrier(clients + 1)
    deadline = 0.0

    def loop(n: int) -> None:
        scu = scus[n]
        start.wait()
        try:
            while time.monotonic() < deadline:
                _checked(scu, scu.request(data), query)
                done[n] += 1
        except BaseException as exc:  # reported below, in the calling thread
            errors.append(exc)

    threads = [threading.Thread(target=loop, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    try:
        began = time.monotonic()
        deadline = began + seconds
        start.wait()
        for thread in threads:
            thread.join()
        elapsed = time.monotonic() - began
    finally:
        for scu in scus:
            if errors:
                scu.close()
            else:
                scu.release()
    if errors:
        raise errors[0]
    return sum(done) / elapsed
