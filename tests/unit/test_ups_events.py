"""The UPS-RS event channel's pieces: the Event Report dataset (PS3.18 11.13, PS3.7
10.3.1, PS3.4 Table CC.2.4-1) and the wake-up signals."""

from __future__ import annotations

import asyncio
import json
import threading

from pydicom.dataset import Dataset

from broker.services.ups import UPSEventRow
from broker.web.dicomjson import to_json
from broker.web.ups_events import Wakeups, event_report


def test_event_report_carries_the_n_event_report_fields_and_the_event_information() -> None:
    info = Dataset()
    info.ProcedureStepState = "IN PROGRESS"
    info.InputReadinessState = "READY"
    event = UPSEventRow(id=41, workitem_uid="1.2.826.0.1.3680043.8.498.7",
                        event_type_id=1, payload=info)
    document = json.loads(json.dumps(to_json(event_report(event, 0x10002))))
    assert document == {
        "00000002": {"vr": "UI", "Value": ["1.2.840.10008.5.1.4.34.6.1"]},  # UPS Push, CC.2.4.3
        "00000100": {"vr": "US", "Value": [0x0100]},
        "00000110": {"vr": "US", "Value": [2]},  # Message ID wraps at 16 bits
        "00001000": {"vr": "UI", "Value": ["1.2.826.0.1.3680043.8.498.7"]},
        "00001002": {"vr": "US", "Value": [1]},
        "00404041": {"vr": "CS", "Value": ["READY"]},
        "00741000": {"vr": "CS", "Value": ["IN PROGRESS"]},
    }


def test_a_commit_in_another_thread_wakes_every_open_channel() -> None:
    async def scenario() -> list[bool]:
        wakeups = Wakeups()
        first, second = asyncio.Event(), asyncio.Event()
        wakeups.add(first)
        gone = wakeups.add(second)
        wakeups.discard(gone)
        thread = threading.Thread(target=wakeups)
        thread.start()
        thread.join()
        await asyncio.wait_for(first.wait(), timeout=5)
        await asyncio.sleep(0)
        return [first.is_set(), second.is_set()]

    assert asyncio.run(scenario()) == [True, False]
