"""Order to worklist latency: from sending an ORM^O01 to the moment a
C-FIND returns its step. The modality side keeps one association open (Nagle off)
and asks by Accession Number until the item is there."""

from __future__ import annotations

import socket
import time
from typing import Any

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pynetdicom import AE, evt

from bench.ingest import percentile
from broker.dicom import fastpath
from broker.hl7.client import MLLPClient
from tests.builders import order

MWL = "1.2.840.10008.5.1.4.31"


def _nodelay(event: Any) -> None:
    sock = fastpath.transport_socket(event.assoc)
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _query(accession: str) -> Dataset:
    ds = Dataset()
    ds.AccessionNumber = accession
    ds.PatientName = None
    item = Dataset()
    item.ScheduledProcedureStepStartDate = ""
    ds.ScheduledProcedureStepSequence = Sequence([item])
    return ds


def order_to_worklist(mllp_port: int, dicom_port: int, first: int,
                      count: int) -> tuple[float, float]:
    """(p50, p99) milliseconds over ``count`` orders sent one after the other."""
    ae = AE(ae_title="BENCH_MOD")
    ae.add_requested_context(MWL)
    assoc = ae.associate("127.0.0.1", dicom_port, ae_title="MWL_BROKER",
                         evt_handlers=[(evt.EVT_CONN_OPEN, _nodelay)])
    assert assoc.is_established, "association refused"
    latencies = []
    try:
        with MLLPClient("127.0.0.1", mllp_port, timeout=30) as mllp:
            for n in range(first, first + count):
                began = time.perf_counter()
                assert b"MSA|AA|" in mllp.send(order(n))
                deadline = began + 30
                while True:
                    found = sum(1 for status, _ in assoc.send_c_find(_query(f"ACC{n}"), MWL)
                                if status and status.Status in (0xFF00, 0xFF01))
                    if found:
                        break
                    if time.perf_counter() > deadline:
                        raise TimeoutError(f"order {n} never reached the worklist")
                latencies.append((time.perf_counter() - began) * 1000)
    finally:
        assoc.release()
    return percentile(latencies, 0.5), percentile(latencies, 0.99)
