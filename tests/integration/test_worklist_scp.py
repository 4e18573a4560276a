"""The Modality Worklist SCP with a pynetdicom SCU and DCMTK: PS3.4 Annex K status
flow, return keys, character sets, C-CANCEL, multi-valued AE titles, the result cap.

Every test runs twice: with the C-FIND fast path (responses written beneath
pynetdicom, :mod:`broker.dicom.fastpath`) and with it off (pynetdicom's public API
only); the modality must see the same thing."""

from __future__ import annotations

import functools
import subprocess
import threading
from collections.abc import Callable, Iterator
from datetime import date
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pynetdicom import AE

from bench.loader import load
from broker.dicom import fastpath
from tests.builders import order
from tests.conftest import sample
from tests.dcmtk import findscu, sps
from tests.integration.hl7util import send, set_field

MWL = "1.2.840.10008.5.1.4.31"


def query(**top: Any) -> Dataset:
    ds = Dataset()
    for key, value in top.items():
        if key != "step":
            setattr(ds, key, value)
    step = Dataset()
    for key, value in top.get("step", {}).items():
        setattr(step, key, value)
    ds.ScheduledProcedureStepSequence = Sequence([step])
    return ds


@pytest.fixture(params=[True, False], ids=["fast-path", "plain"])
def make_broker(request: pytest.FixtureRequest, make_broker: Callable[..., Any],
                monkeypatch: pytest.MonkeyPatch) -> Callable[..., Any]:
    """The conftest broker with MWLB_DICOM_FAST_PATH on, then off; off, nothing may
    write beneath pynetdicom."""
    if not request.param:
        def forbidden(*args: Any, **kwargs: Any) -> None:
            raise AssertionError("fast path used with MWLB_DICOM_FAST_PATH=false")

        monkeypatch.setattr(fastpath, "PendingWriter", forbidden)
        monkeypatch.setattr(fastpath, "tune_server", forbidden)
        monkeypatch.setattr(fastpath, "serve_on_arrival", forbidden)
    return functools.partial(make_broker, dicom_fast_path=request.param)


@pytest.fixture
def scu_find() -> Iterator[Any]:
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(MWL)
    assocs = []

    def _find(port: int, ds: Dataset) -> list[tuple[int, Dataset | None]]:
        assoc = ae.associate("127.0.0.1", port, ae_title="MWL_BROKER")
        assocs.append(assoc)
        assert assoc.is_established
        out = [(status.Status, ident) for status, ident in assoc.send_c_find(ds, MWL)]
        assoc.release()
        return out

    yield _find
    for assoc in assocs:
        if assoc.is_established:
            assoc.release()


def test_e8_only_requested_attributes_type_2_present_empty(make_broker: Any,
                                                            scu_find: Any) -> None:
    broker = make_broker()
    send(broker.mllp_port, sample("05"))
    responses = scu_find(broker.dicom_port, query(
        AccessionNumber="ACC0001", PatientWeight="",
        step={"ScheduledProcedureStepID": "SPS0001", "Modality": ""}))
    [(status, ident), (final, none)] = responses
    assert status == 0xFF00 and (final, none) == (0x0000, None)
    assert ident.AccessionNumber == "ACC0001"  # matching key echoed
    assert "PatientWeight" in ident and ident.PatientWeight is None  # Type 2, unknown
    assert "PatientSex" not in ident and "PatientName" not in ident  # not requested
    item = sps(ident)
    assert set(item.dir()) == {"ScheduledProcedureStepID", "Modality"}
    assert item.Modality == "DX"
    assert "SpecificCharacterSet" not in ident  # ASCII only


def test_e9_unsupported_matching_key_is_ignored_with_ff01(make_broker: Any,
                                                          scu_find: Any) -> None:
    broker = make_broker()
    send(broker.mllp_port, sample("05"))
    responses = scu_find(broker.dicom_port, query(EthnicGroup="X", PatientID=""))
    statuses = [s for s, _ in responses]
    assert statuses == [0xFF01, 0xFF01, 0x0000]
    assert all("EthnicGroup" in ident for s, ident in responses if s == 0xFF01)


def test_e10_no_match_is_a_single_success(make_broker: Any, scu_find: Any) -> None:
    broker = make_broker()
    send(broker.mllp_port, sample("05"))
    assert scu_find(broker.dicom_port, query(PatientID="NOSUCHID")) == [(0x0000, None)]


def test_e7_two_sps_items_is_a900(make_broker: Any, scu_find: Any) -> None:
    broker = make_broker()
    send(broker.mllp_port, sample("05"))
    ds = query(PatientID="135790")
    ds.ScheduledProcedureStepSequence.append(Dataset())
    [(status, ident)] = scu_find(broker.dicom_port, ds)
    assert (status, ident) == (0xA900, None)


def test_e4_empty_stored_value_only_matches_universal(make_broker: Any,
                                                      scu_find: Any) -> None:
    broker = make_broker()
    no_physician = set_field(set_field(sample("05"), "OBR", 34, "", occurrence=1),
                             "MSH", 10, "NOPHYS")
    no_physician = set_field(no_physician, "OBR", 34, "", occurrence=0)
    send(broker.mllp_port, no_physician, sample("09"))
    def ids(key: str) -> list[str]:
        responses = scu_find(broker.dicom_port, query(step={
            "ScheduledPerformingPhysicianName": key, "ScheduledProcedureStepID": ""}))
        return sorted(sps(i).ScheduledProcedureStepID for s, i in responses if i)
    assert ids("Ng*") == []
    assert ids("*") == ["SPS0001", "SPS0002", "SPS0003", "SPS0004"]
    assert ids("") == ["SPS0001", "SPS0002", "SPS0003", "SPS0004"]


def test_e5_combined_date_time_range(make_broker: Any, scu_find: Any) -> None:
    """Date 20250310-20250311 + Time 1000-1800: 03-11 09:00 matches, 03-10 09:30 not."""
    broker = make_broker()
    late = set_field(sample("05"), "MSH", 10, "LATE")
    for field, value in ((2, "PLC-2^EHR"), (7, "1^once^^20250311090000^^A")):
        late = set_field(late, "ORC", field, value)
    late = set_field(late, "OBR", 27, "1^once^^20250311090000^^A")
    late = set_field(late, "OBR", 20, "SPS0311")
    late = late.replace(b"\rORC|NW|PLC-1001", b"\rXXX|").split(b"\rXXX|")[0]
    send(broker.mllp_port, sample("05"), late)
    responses = scu_find(broker.dicom_port, query(step={
        "ScheduledProcedureStepStartDate": "20250310-20250311",
        "ScheduledProcedureStepStartTime": "1000-1800", "ScheduledProcedureStepID": ""}))
    assert [sps(i).ScheduledProcedureStepID for s, i in responses if i] == ["SPS0311"]


def test_e12_character_sets(make_broker: Any) -> None:
    """ISO_IR 192 for UTF-8 sources, ISO_IR 100 for Latin-1 ones (byte 0xFC for ü) and
    ISO 2022 IR 87 for Japanese, checked in the bytes findscu received."""
    broker = make_broker()
    utf8 = set_all_pid(sample("01"), "111111")
    latin1 = set_all_pid(sample("01"), "222222").decode("utf-8").replace(
        "UNICODE UTF-8", "8859/1").replace("ADT0001", "ADT-L1").encode("latin-1")
    japanese = sample("02")
    orders = [_order_for(pid, n) for n, pid in enumerate(("111111", "222222", "246810"))]
    acks = send(broker.mllp_port, utf8, latin1, japanese, *orders)
    assert {a.code for a in acks} == {"AA"}
    by_id = {ds.PatientID: ds for ds in findscu(broker.dicom_port, [
        "PatientID", "PatientName", "SpecificCharacterSet", "AccessionNumber=BENCH*"])}
    assert by_id["111111"].SpecificCharacterSet == "ISO_IR 192"
    assert str(by_id["111111"].PatientName) == "Müller^Jürgen^Karl^Dr^Jr PhD"
    assert by_id["222222"].SpecificCharacterSet == "ISO_IR 100"
    assert str(by_id["222222"].PatientName) == "Müller^Jürgen^Karl^Dr^Jr PhD"
    raw = by_id["222222"]["PatientName"]
    assert raw is not None
    assert list(by_id["246810"].SpecificCharacterSet) == ["", "ISO 2022 IR 87"]
    assert str(by_id["246810"].PatientName) == "YAMADA^TARO=山田^太郎=やまだ^たろう"


def _order_for(pid: str, n: int) -> bytes:
    raw = order(900 + n).decode().replace(f"BP{900 + n}^^^", f"{pid}^^^")
    return raw.replace(f"ACC{900 + n}", f"BENCH{n}").encode()


def set_all_pid(message: bytes, pid: str) -> bytes:
    raw = set_field(message, "PID", 3, f"{pid}^^^HOSP&2.16.840.1.113883.3.9999.1&ISO^MR")
    return set_field(raw, "MSH", 10, f"ADT-{pid}")


def test_e12_latin1_bytes_on_the_wire(make_broker: Any, tmp_path: Any) -> None:
    broker = make_broker()
    latin1 = set_all_pid(sample("01"), "222222").decode("utf-8").replace(
        "UNICODE UTF-8", "8859/1").encode("latin-1")
    send(broker.mllp_port, latin1, _order_for("222222", 1))
    out = tmp_path / "rsp"
    out.mkdir()
    subprocess.run(["findscu", "-W", "-aec", "MWL_BROKER", "-X", "-od", str(out), "-k",
                    "PatientID=222222", "-k", "PatientName", "127.0.0.1",
                    str(broker.dicom_port)], check=True, capture_output=True)
    data = next(out.glob("rsp*.dcm")).read_bytes()
    assert b"M\xfcller^J\xfcrgen" in data and b"ISO_IR 100" in data


def test_e15_multi_valued_station_ae(make_broker: Any, scu_find: Any, tmp_path: Any) -> None:
    import shutil

    from tests.conftest import MAPPINGS

    site = tmp_path / "mappings"
    shutil.copytree(MAPPINGS, site)
    text = (site / "default.yaml").read_text().replace(
        "ae_title: CT01_AE\n", "ae_title: [CT01_AE, CT02_AE]\n", 1)
    (site / "default.yaml").write_text(text)
    broker = make_broker(mappings_dir=site)
    no_ae = set_field(sample("09"), "IPC", 9, "", occurrence=0)
    no_ae = set_field(no_ae, "IPC", 9, "", occurrence=1)
    send(broker.mllp_port, no_ae)
    responses = scu_find(broker.dicom_port, query(step={"ScheduledStationAETitle": "CT02_AE"}))
    items = [i for s, i in responses if i]
    assert len(items) == 2
    assert list(sps(items[0]).ScheduledStationAETitle) == ["CT01_AE", "CT02_AE"]


def test_e11_c_cancel_stops_the_query(make_broker: Any) -> None:
    """20,000 items are sent in well under a second, so the worklist is loaded by the
    bench loader (rows cloned from one processed order) to give C-CANCEL time."""
    broker = make_broker(worklist_max_results=0)
    assert {a.code for a in send(broker.mllp_port, order(1))} == {"AA"}
    with broker.runtime.session_factory() as session:
        load(session, 20_000, date.today())
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(MWL)
    assoc = ae.associate("127.0.0.1", broker.dicom_port, ae_title="MWL_BROKER")
    statuses = []
    cancelled = threading.Event()
    for status, _ in assoc.send_c_find(query(PatientID=""), MWL, msg_id=77):
        statuses.append(status.Status)
        if not cancelled.is_set():
            assoc.send_c_cancel(77, query_model=MWL)
            cancelled.set()
    assert statuses[-1] == 0xFE00
    assert set(statuses[:-1]) == {0xFF00}
    assert len(statuses) - 1 < 20_000
    # The association is still usable afterwards.
    again = [s.Status for s, _ in assoc.send_c_find(query(PatientID="WLP000007"), MWL)]
    assert again == [0xFF00, 0x0000]
    assoc.release()


def test_result_cap_ends_with_a700(make_broker: Any, scu_find: Any) -> None:
    broker = make_broker(worklist_max_results=3)
    send(broker.mllp_port, sample("05"), sample("09"))
    statuses = [s for s, _ in scu_find(broker.dicom_port, query(PatientID=""))]
    assert statuses == [0xFF00, 0xFF00, 0xFF00, 0xA700]


def test_echoscu(make_broker: Any) -> None:
    broker = make_broker()
    proc = subprocess.run(["echoscu", "-aec", "MWL_BROKER", "127.0.0.1",
                           str(broker.dicom_port)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_the_switch_decides_the_context_copy(make_broker: Any) -> None:
    broker = make_broker()
    shared = isinstance(broker.dicom._server.contexts, fastpath._Contexts)
    assert shared is broker.dicom.settings.dicom_fast_path


def test_a_repeated_query_sees_the_worklist_as_it_is_now(make_broker: Any,
                                                         scu_find: Any) -> None:
    """A modality asks the same thing again and again: each answer is the current
    worklist, never the one of an earlier identical query."""
    broker = make_broker()
    day = query(PatientID="", step={"ScheduledProcedureStepStartDate": "20250310"})
    send(broker.mllp_port, order(1))
    assert [s for s, _ in scu_find(broker.dicom_port, day)] == [0xFF00, 0x0000]
    send(broker.mllp_port, order(2))
    answers = scu_find(broker.dicom_port, day)
    assert [s for s, _ in answers] == [0xFF00, 0xFF00, 0x0000]
    assert {i.PatientID for s, i in answers if i is not None} == {"BP1", "BP2"}
    assert [s for s, _ in scu_find(broker.dicom_port, query(PatientID="BP2"))] == [
        0xFF00, 0x0000]
