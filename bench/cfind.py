"""Modality Worklist C-FIND, the broker and DCMTK ``wlmscpfs`` side by side.

Each query is one DCMTK ``findscu -W`` process (one association), timed from start to
exit, with TCP_NODELAY=1 in the environment of every DCMTK process (client and
wlmscpfs) so that neither side waits on Nagle's algorithm. The number of responses
is checked for every query, so a fast wrong answer cannot pass.

Queries: (a) one Patient ID (1 result); (b) one station AE title + today (N/100);
(c) universal (N, or the broker's result cap); and 8 findscu loops on (b) for
BENCH_CONCURRENT_SECONDS, as queries per second.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path

RETURN_KEYS = [
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber",
    "RequestedProcedureID", "RequestedProcedureDescription", "StudyInstanceUID",
    "ScheduledProcedureStepSequence[0].Modality",
    "ScheduledProcedureStepSequence[0].ScheduledProcedureStepID",
    "ScheduledProcedureStepSequence[0].ScheduledProcedureStepDescription",
    "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartTime",
]
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}
_PENDING = re.compile(rb"Find Response: \d+ \(Pending")


@dataclass(frozen=True)
class Query:
    name: str
    keys: list[str]
    expected: int  # responses


def _keys(*matching: str) -> list[str]:
    """findscu -k arguments: the matching keys, then the return keys not among them
    (a later -k for the same attribute would replace the value)."""
    given = {key.split("=")[0] for key in matching}
    return [*matching, *(key for key in RETURN_KEYS if key not in given)]


def queries(count: int, today: date, cap: int) -> list[Query]:
    sps = "ScheduledProcedureStepSequence[0]."
    universal = min(count, cap) if cap else count
    return [
        Query("a", _keys(f"PatientID=WLP{count // 2:06d}"), 1),
        Query("b", _keys(f"{sps}ScheduledStationAETitle=STATION07",
                         f"{sps}ScheduledProcedureStepStartDate={today:%Y%m%d}"),
              count // 100),
        Query("c", _keys(f"{sps}ScheduledStationAETitle",
                         f"{sps}ScheduledProcedureStepStartDate"), universal),
    ]


def findscu(port: int, called: str, query: Query, *, check: bool = False) -> float:
    """Milliseconds for one findscu -W run. With ``check`` (verbose output, not for
    timing: printing every response costs findscu more than receiving it) the number
    of pending responses is checked."""
    args = ["findscu", "-W", "-aec", called] + (["-v"] if check else ["-sr"])
    for key in query.keys:
        args += ["-k", key]
    began = time.perf_counter()
    done = subprocess.run([*args, "127.0.0.1", str(port)], capture_output=True,
                          env=DCMTK_ENV, check=True)
    elapsed = (time.perf_counter() - began) * 1000
    found = len(_PENDING.findall(done.stdout + done.stderr))
    if check and found != query.expected:
        raise AssertionError(f"query {query.name}: {found} responses, "
                             f"expected {query.expected}")
    return elapsed


def concurrent_rate(port: int, called: str, query: Query, clients: int,
                    seconds: float) -> float:
    """Queries per second completed by ``clients`` findscu loops in ``seconds``."""
    done = [0] * clients
    deadline = time.monotonic() + seconds

    def loop(n: int) -> None:
        while time.monotonic() < deadline:
            findscu(port, called, query)
            done[n] += 1

    threads = [threading.Thread(target=loop, args=(n,)) for n in range(clients)]
    began = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(done) / (time.monotonic() - began)


class Wlmscpfs:
    """DCMTK's worklist SCP on a directory of .wl files (AE title subdirectory); it
    forks a process per association."""

    AE_TITLE = "WLMSCPFS"

    def __init__(self, files: Path, port: int) -> None:
        self.root, self.port = files.parent, port
        assert files.name == self.AE_TITLE
        # A session of its own: stop() ends the per-association children with it.
        self.proc = subprocess.Popen(
            ["wlmscpfs", "-dfp", str(self.root), str(port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=DCMTK_ENV,
            start_new_session=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if subprocess.run(["echoscu", "-aec", self.AE_TITLE, "127.0.0.1", str(port)],
                              capture_output=True, env=DCMTK_ENV).returncode == 0:
                return
            time.sleep(0.1)
        raise RuntimeError("wlmscpfs did not start")

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGTERM)
        self.proc.wait(10)
