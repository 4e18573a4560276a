"""Modality profiles (per calling AE title) with DCMTK findscu as the modalities: a
universal station query restricted to the caller's station, ASCII or Latin-1 names
for a modality that cannot show UTF-8, coercions, a per-AE result cap; a modality
without a profile gets the broker's own answer. The answers are recorded with the
profile, and the console's explainer names the restriction.

Every SCP test runs with the C-FIND fast path and without it (the modality must see
the same thing)."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pynetdicom import AE
from sqlalchemy import select

from broker.dicom import fastpath
from broker.models import WorklistQuery
from tests.builders import order
from tests.conftest import MAPPINGS, sample
from tests.console import add_users, client
from tests.dcmtk import findscu, sps
from tests.integration.hl7util import send, set_field
from tests.workflow import wait_until

pytestmark = [pytest.mark.dcmtk]

MWL = "1.2.840.10008.5.1.4.31"
MODALITIES = """\
modalities:
  - name: ct-room
    ae_titles: [CT_ROOM_SCU]
    stations: [CT01_AE]
  - name: old-us
    ae_titles: [OLD_US_SCU]
    character_sets: []
    fallback: ascii
  - name: latin1
    ae_titles: [LATIN1_SCU]
    character_sets: ["ISO_IR 100"]
    fallback: "ISO_IR 100"
  - name: accession-as-rp
    ae_titles: [COERCE_SCU]
    coercions:
      - {action: copy, attribute: RequestedProcedureID, source: AccessionNumber}
      - {action: drop, attribute: PatientBirthDate}
      - {action: upper, attribute: ScheduledProcedureStepDescription}
  - name: capped
    ae_titles: [CAPPED_SCU]
    max_results: 2
"""
STEP_KEYS = ["PatientID", "ScheduledProcedureStepSequence[0].ScheduledProcedureStepID",
             "ScheduledProcedureStepSequence[0].ScheduledStationAETitle"]


@pytest.fixture(params=[True, False], ids=["fast-path", "plain"])
def fast_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    if not request.param:
        def forbidden(*args: Any, **kwargs: Any) -> None:
            raise AssertionError("fast path used with MWLB_DICOM_FAST_PATH=false")

        monkeypatch.setattr(fastpath, "PendingWriter", forbidden)
    return bool(request.param)


@pytest.fixture
def broker(make_broker: Callable[..., Any], tmp_path: Path, fast_path: bool) -> Any:
    """A broker whose mappings are the packaged default plus MODALITIES, with sample 05
    (two DX steps, station MWL_DEFAULT) and sample 09 (two CT steps, CT01_AE)."""
    site = tmp_path / "mappings"
    shutil.copytree(MAPPINGS, site)
    (site / "modalities.yaml").write_text(MODALITIES)
    app = make_broker(mappings_dir=site, dicom_fast_path=fast_path)
    assert {a.code for a in send(app.mllp_port, sample("05"), sample("09"))} == {"AA"}
    return app


def step_ids(port: int, aet: str, *keys: str) -> list[str]:
    return sorted(sps(ds).ScheduledProcedureStepID
                  for ds in findscu(port, [*STEP_KEYS, *keys], aet=aet))


def recorded(app: Any, aet: str) -> list[tuple[str, int | None, int]]:
    with app.runtime.session_factory() as session:
        return [(q.modality_profile, q.profile_version, q.result_count)
                for q in session.scalars(select(WorklistQuery).where(
                    WorklistQuery.calling_ae_title == aet).order_by(WorklistQuery.id))]


def test_a_universal_query_gets_only_the_callers_station(broker: Any) -> None:
    port = broker.dicom_port
    assert step_ids(port, "CT_ROOM_SCU") == ["SPS0003", "SPS0004"]
    station = "ScheduledProcedureStepSequence[0].ScheduledStationAETitle"
    assert step_ids(port, "CT_ROOM_SCU", f"{station}=*") == ["SPS0003", "SPS0004"]
    # A query naming another station gets that station.
    assert step_ids(port, "CT_ROOM_SCU", f"{station}=MWL_DEFAULT") == ["SPS0001", "SPS0002"]
    # A modality without a profile: everything, as before.
    assert step_ids(port, "MODALITY1") == ["SPS0001", "SPS0002", "SPS0003", "SPS0004"]
    wait_until(lambda: len(recorded(broker, "MODALITY1")) == 1, what="queries recorded")
    assert recorded(broker, "CT_ROOM_SCU") == [("ct-room", 1, 2)] * 3
    assert recorded(broker, "MODALITY1") == [("", 1, 4)]


def names(port: int, aet: str) -> dict[str, Dataset]:
    return {ds.PatientID: ds for ds in findscu(port, [
        "PatientID", "PatientName", "SpecificCharacterSet", "AccessionNumber=BENCH*"],
        aet=aet)}


def _order_for(pid: str, n: int) -> bytes:
    raw = order(900 + n).decode().replace(f"BP{900 + n}^^^", f"{pid}^^^")
    return raw.replace(f"ACC{900 + n}", f"BENCH{n}").encode()


def _patient(pid: str, name: str | None = None) -> bytes:
    raw = set_field(sample("01"), "PID", 3, f"{pid}^^^HOSP&2.16.840.1.113883.3.9999.1&ISO^MR")
    if name is not None:
        raw = set_field(raw, "PID", 5, name)
    return set_field(raw, "MSH", 10, f"ADT-{pid}")


def test_names_in_the_character_sets_a_modality_accepts(broker: Any) -> None:
    """A UTF-8 German name, a UTF-8 Polish one and a Japanese one (ISO 2022), as a
    modality with the default repertoire only, one with Latin-1, and one without a
    profile see them."""
    acks = send(broker.mllp_port, _patient("111111"),
                _patient("333333", "Wałęsa-Müller^Łukasz"), sample("02"),
                *(_order_for(pid, n) for n, pid in enumerate(("111111", "333333", "246810"))))
    assert {a.code for a in acks} == {"AA"}
    port = broker.dicom_port

    ascii_only = names(port, "OLD_US_SCU")
    assert {pid: str(ds.PatientName) for pid, ds in ascii_only.items()} == {
        "111111": "Muller^Jurgen^Karl^Dr^Jr PhD", "333333": "Walesa-Muller^Lukasz",
        "246810": "YAMADA^TARO"}
    assert all("SpecificCharacterSet" not in ds for ds in ascii_only.values())

    latin1 = names(port, "LATIN1_SCU")
    assert latin1["111111"].SpecificCharacterSet == "ISO_IR 100"
    assert str(latin1["111111"].PatientName) == "Müller^Jürgen^Karl^Dr^Jr PhD"
    assert latin1["333333"].SpecificCharacterSet == "ISO_IR 100"
    assert str(latin1["333333"].PatientName) == "Walesa-Müller^Lukasz"
    assert str(latin1["246810"].PatientName) == "YAMADA^TARO"
    assert "SpecificCharacterSet" not in latin1["246810"]

    unchanged = names(port, "MODALITY1")
    assert unchanged["333333"].SpecificCharacterSet == "ISO_IR 192"
    assert str(unchanged["333333"].PatientName) == "Wałęsa-Müller^Łukasz"
    assert list(unchanged["246810"].SpecificCharacterSet) == ["", "ISO 2022 IR 87"]
    assert str(unchanged["246810"].PatientName) == "YAMADA^TARO=山田^太郎=やまだ^たろう"


def test_coercions_on_the_way_out(broker: Any) -> None:
    keys = ["AccessionNumber=ACC0002", "RequestedProcedureID", "PatientBirthDate",
            "ScheduledProcedureStepSequence[0].ScheduledProcedureStepDescription",
            "ScheduledProcedureStepSequence[0].ScheduledProcedureStepID"]
    port = broker.dicom_port
    plain = {sps(ds).ScheduledProcedureStepID: ds for ds in findscu(port, keys)}
    coerced = {sps(ds).ScheduledProcedureStepID: ds
               for ds in findscu(port, keys, aet="COERCE_SCU")}
    assert sorted(coerced) == sorted(plain) == ["SPS0003", "SPS0004"]
    for step, ds in coerced.items():
        assert plain[step].RequestedProcedureID != "ACC0002"
        assert ds.RequestedProcedureID == "ACC0002"
        assert plain[step].PatientBirthDate
        assert "PatientBirthDate" not in ds
        description = sps(plain[step]).ScheduledProcedureStepDescription
        assert description != description.upper()
        assert sps(ds).ScheduledProcedureStepDescription == description.upper()
    # The copy is answered even when the query does not ask for its attribute.
    [unasked, _] = findscu(port, ["AccessionNumber=ACC0002", "PatientID"], aet="COERCE_SCU")
    assert unasked.RequestedProcedureID == "ACC0002"


def _statuses(port: int, aet: str) -> list[int]:
    ae = AE(ae_title=aet)
    ae.add_requested_context(MWL)
    assoc = ae.associate("127.0.0.1", port, ae_title="MWL_BROKER")
    assert assoc.is_established
    query = Dataset()
    query.PatientID = ""
    query.ScheduledProcedureStepSequence = Sequence([Dataset()])
    statuses = [status.Status for status, _ in assoc.send_c_find(query, MWL)]
    assoc.release()
    return statuses


def test_a_per_ae_result_cap_ends_with_a700(broker: Any) -> None:
    port = broker.dicom_port
    assert _statuses(port, "CAPPED_SCU") == [0xFF00, 0xFF00, 0xA700]
    assert len(findscu(port, STEP_KEYS, aet="CAPPED_SCU")) == 2
    assert _statuses(port, "MODALITY1") == [0xFF00] * 4 + [0x0000]


@pytest.mark.parametrize("fast_path", [True], indirect=True, ids=["fast-path"])
def test_the_explainer_names_the_station_restriction(broker: Any) -> None:
    add_users(broker)
    viewer = client(broker, "viewer")
    [dx_step, _] = sorted(viewer.get("/api/worklist", params={"ae_title": "MWL_DEFAULT"}
                                     ).json(), key=lambda i: i["sps_id"])
    assert step_ids(broker.dicom_port, "CT_ROOM_SCU") == ["SPS0003", "SPS0004"]
    why_url = f"/api/worklist/items/{dx_step['sps_pk']}/why"

    def explained(ae_title: str) -> Any:
        return viewer.get(why_url, params={"ae_title": ae_title}).json()

    wait_until(lambda: explained("CT_ROOM_SCU")["query"], what="the query recorded")
    why = explained("CT_ROOM_SCU")
    assert why["excluded_by"] == [
        "modality profile ct-room: a query without a station gets only CT01_AE"]
    assert why["modality_profile"]["name"] == "ct-room"
    assert why["query"]["modality_profile"] == "ct-room"
    page = viewer.get(f"/worklist/items/{dx_step['sps_pk']}",
                      params={"ae_title": "CT_ROOM_SCU"}).text
    assert "excluded by modality profile ct-room" in page
    assert "steps are hidden from it" in page
    worklist = viewer.get("/worklist", params={"ae_title": "CT_ROOM_SCU", "date": ""}).text
    assert "Modality profile for calling AE title CT_ROOM_SCU: <strong>ct-room</strong>" \
        in worklist
    other = viewer.get("/worklist", params={"ae_title": "MODALITY1", "date": ""}).text
    assert "No modality profile applies to calling AE title MODALITY1" in other
    # A modality without a profile: its universal query is no reason to hide the step.
    findscu(broker.dicom_port, STEP_KEYS, aet="MODALITY1")
    wait_until(lambda: explained("MODALITY1")["query"], what="the query recorded")
    assert explained("MODALITY1")["excluded_by"] == []


def test_no_profiles_at_all(make_broker: Callable[..., Any]) -> None:
    """Without a modality file every AE title gets the broker's own answer."""
    app = make_broker()
    send(app.mllp_port, sample("05"), sample("09"))
    assert step_ids(app.dicom_port, "CT_ROOM_SCU") == ["SPS0001", "SPS0002", "SPS0003",
                                                       "SPS0004"]

