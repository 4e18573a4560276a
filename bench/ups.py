"""UPS-RS Search Workitems (PS3.18 11.9) next to Modality Worklist C-FIND, on one
broker holding the same scheduled steps as both.

The broker (``mwl-broker serve``, SQLite, the embedded default) is loaded by
:func:`bench.loader.load` with ``count`` steps and their UPS workitems. Two queries,
each asked of both services in the same run, alternating (MWL then UPS-RS, run after
run):

* (a) one patient: Patient ID (1 result);
* (b) one station + today: MWL Scheduled Station AE Title + Scheduled Procedure Step
  Start Date; UPS-RS Scheduled Station Name Code Sequence > Code Value + Scheduled
  Procedure Step Start DateTime over today (``count`` / 100 results).

MWL C-FIND goes over one open association (:mod:`bench.open_association`, the lean
SCU: the server's time). UPS-RS goes over one kept-alive ``httpx`` connection with an
API token of the performer role, ``GET /dicomweb/workitems`` asking for the patient
and request keys a modality's query returns, each timed from the request to the whole
body read; the number of workitems in every answer is checked (after the clock stops).
The HTTP floor of that connection is ``GET /healthz`` timed the same way (the web
server and client, no database).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import date

import httpx
from sqlalchemy.orm import Session

from bench import cfind, loader, open_association
from bench.ingest import percentile
from bench.processes import Broker
from broker.db import make_engine
from broker.hl7.client import MLLPClient
from broker.models import Role
from broker.security.accounts import create_api_token, create_user
from tests.builders import order

DICOM_JSON = "application/dicom+json"
# What the MWL queries of bench.cfind return, as UPS-RS return keys (the required
# return keys of Table CC.2.5-3 come with every answer).
INCLUDE = "PatientBirthDate,PatientSex,ReferencedRequestSequence,ScheduledWorkitemCodeSequence"


@dataclass(frozen=True)
class Search:
    name: str
    params: dict[str, str]
    expected: int  # workitems


def searches(count: int, today: date) -> list[Search]:
    """(a) and (b) of :func:`bench.cfind.queries`, as UPS-RS searches."""
    day = f"{today:%Y%m%d}"
    return [
        Search("a", {"PatientID": f"WLP{count // 2:06d}", "includefield": INCLUDE}, 1),
        Search("b", {"ScheduledStationNameCodeSequence.CodeValue": "STATION07",
                     "ScheduledProcedureStepStartDateTime": f"{day}000000-{day}235959",
                     "includefield": INCLUDE}, count // 100),
    ]


def performer_token(database_url: str) -> str:
    """An API token of a new user of the performer role."""
    engine = make_engine(database_url)
    try:
        with Session(engine) as session, session.begin():
            user = create_user(session, "bench-performer", "correct horse battery",
                               Role.PERFORMER)
            return create_api_token(session, user, "bench")
    finally:
        engine.dispose()


def search_times(client: httpx.Client, search: Search, count: int) -> list[float]:
    """Milliseconds of ``count`` searches one after the other on one connection (after
    one untimed search that opens it and warms the server's caches)."""
    times = []
    for n in range(count + 1):
        began = time.perf_counter()
        answer = client.get("/dicomweb/workitems", params=search.params)
        elapsed = (time.perf_counter() - began) * 1000
        found = len(answer.json()) if answer.status_code == 200 else 0
        if found != search.expected:
            raise AssertionError(f"search {search.name}: HTTP {answer.status_code}, {found} "
                                 f"workitems, expected {search.expected}")
        if n:
            times.append(elapsed)
    return times


@dataclass
class Figures:
    """p50 per run, by query and service."""

    mwl: dict[str, list[float]]
    ups: dict[str, list[float]]
    http_floor: list[float]


def floor_times(client: httpx.Client, count: int) -> list[float]:
    """Milliseconds of ``count`` ``GET /healthz`` on the same connection."""
    times = []
    for _ in range(count):
        began = time.perf_counter()
        answer = client.get("/healthz")
        times.append((time.perf_counter() - began) * 1000)
        if answer.status_code != 200:
            raise AssertionError(f"/healthz: HTTP {answer.status_code}")
    return times


def measure(workdir_url: str, count: int, runs: int, queries: int, http_port: int
            ) -> Figures:
    """Load ``count`` steps and workitems into a new broker on ``workdir_url`` and time
    (a) and (b) on both services, ``runs`` times, ``queries`` per run for (a) and a
    tenth as many for (b)."""
    today = date.today()
    figures = Figures({"a": [], "b": []}, {"a": [], "b": []}, [])
    with Broker(workdir_url, http_host="127.0.0.1", http_port=str(http_port)) as broker:
        with MLLPClient("127.0.0.1", broker.mllp_port) as mllp:
            assert b"MSA|AA|" in mllp.send(order(1))  # the template order and workitem
        engine = make_engine(broker.database_url)
        with Session(engine) as session:
            loader.load(session, count, today, workitems=True)
        engine.dispose()
        token = performer_token(broker.database_url)
        mwl = cfind.queries(count, today, 0)[:2]
        ups = searches(count, today)
        with httpx.Client(base_url=f"http://127.0.0.1:{http_port}", timeout=120, headers={
                "Authorization": f"Bearer {token}", "Accept": DICOM_JSON}) as client:
            for _ in range(runs):
                for query, search in zip(mwl, ups, strict=True):
                    many = queries if query.name == "a" else max(queries // 10, 1)
                    figures.mwl[query.name].append(percentile(open_association.query_times(
                        broker.dicom_port, "MWL_BROKER", query, many), 0.5))
                    figures.ups[search.name].append(percentile(
                        search_times(client, search, many), 0.5))
                figures.http_floor.append(percentile(floor_times(client, queries), 0.5))
    return figures
