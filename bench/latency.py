"""Order to worklist latency: from sending an ORM^O01 to the moment a C-FIND returns
its step, in application ACK mode.

The modality side keeps one association open and asks by Accession Number until the
item is there. It is the lean SCU of :mod:`bench.scu` (requests framed before the
clock starts, answers read as bytes), not pynetdicom's ``send_c_find``, whose own
DUL/DIMSE threads and Dataset decoding cost several milliseconds of client time per
query: the figure is the broker's time (the ACK, then the query that finds the step)
plus the loopback, not the client's."""

from __future__ import annotations

import time

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from bench.ingest import percentile
from bench.scu import WorklistSCU, encode_identifier
from broker.hl7.client import MLLPClient
from tests.builders import order


def _query(accession: str) -> bytes:
    ds = Dataset()
    ds.AccessionNumber = accession
    ds.PatientName = None
    item = Dataset()
    item.ScheduledProcedureStepStartDate = ""
    ds.ScheduledProcedureStepSequence = Sequence([item])
    return encode_identifier(ds)


def order_to_worklist(mllp_port: int, dicom_port: int, first: int,
                      count: int) -> tuple[float, float]:
    """(p50, p99) milliseconds over ``count`` orders sent one after the other."""
    latencies = []
    with WorklistSCU(dicom_port, "MWL_BROKER", "BENCH_MOD") as scu, \
            MLLPClient("127.0.0.1", mllp_port, timeout=30) as mllp:
        for n in range(first, first + count):
            message, identifier = order(n), _query(f"ACC{n}")
            began = time.perf_counter()
            assert b"MSA|AA|" in mllp.send(message)
            deadline = began + 30
            while True:
                found, status, _ = scu.find(scu.request(identifier))
                if status != 0x0000:
                    raise AssertionError(f"C-FIND failed with status {status:#06x}")
                if found:
                    break
                if time.perf_counter() > deadline:
                    raise TimeoutError(f"order {n} never reached the worklist")
            latencies.append((time.perf_counter() - began) * 1000)
    return percentile(latencies, 0.5), percentile(latencies, 0.99)
