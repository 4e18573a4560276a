"""DCMTK ``storescp`` as the C-STORE floor: the same ``storescu`` run the broker gets,
against DCMTK's own Storage SCP receiving and discarding (``--ignore``), both sides
with Nagle's algorithm off (``TCP_NODELAY=1``), so the broker's instances per second
read against this machine's limit."""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from pydicom.uid import generate_uid

from bench.processes import free_port
from tests.modality import storescu
from tests.modality import write_images as synthetic_images

DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}


class Storescp:
    """``storescp --ignore`` on a free port (it accepts any called AE title)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(["storescp", "--ignore", str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     env=DCMTK_ENV)
        deadline = time.monotonic() + 10
        while subprocess.run(["echoscu", "127.0.0.1", str(self.port)], capture_output=True,
                             env=DCMTK_ENV).returncode != 0:
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("storescp did not start")
            time.sleep(0.1)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)

    def __enter__(self) -> Storescp:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def storescp_rate(port: int, count: int) -> float:
    """Instances per second for one storescu run of ``count`` synthetic CT images."""
    with tempfile.TemporaryDirectory() as tmp:
        files = synthetic_images(Path(tmp), count, accession="ACC1", study_uid=generate_uid())
        began = time.perf_counter()
        storescu(port, files, nodelay=True)
        return count / (time.perf_counter() - began)
