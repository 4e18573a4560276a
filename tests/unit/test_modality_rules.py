"""Modality profiles applied to worklist responses (broker.dicom.modality_rules): the
same identifier from the fast path's encoder and from pydicom, coercions in order,
the character-set fallback, the station restriction's SQL condition, and the caches
keyed on the profile."""

from __future__ import annotations

from io import BytesIO
from typing import Any

import orjson
import pytest
from pydantic import ValidationError
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pynetdicom.dsutils import decode, encode

from broker.dicom.encoder import ResponsePlan, Unsupported, encode_answer
from broker.dicom.items import Unrepresentable, character_set
from broker.dicom.modality_rules import Answer, ModalityProfiles, ModalityRules
from broker.dicom.worklist import WorklistItem
from broker.mapping.deployed import Deployed
from broker.mapping.modality import ModalityProfile
from broker.mapping.profile import ProfileSet
from broker.services.worklist_query import names_no_station
from tests.unit.test_worklist_encoding import MERGED, STEP

ZONE, START = "Europe/Berlin", "20250310093000"


def profile(**fields: Any) -> ModalityProfile:
    return ModalityProfile.model_validate({"name": "p", "ae_titles": ["US1"], **fields})


def item(merged: dict[str, Any], step: dict[str, Any], charset: str = "ISO_IR 192"
         ) -> WorklistItem:
    return WorklistItem(1, "SCHEDULED", START, charset, orjson.dumps(step).decode(), "",
                        orjson.dumps(merged).decode())


def query(top: list[str], sps: list[str] | None) -> Dataset:
    ds = Dataset()
    for keyword in top:
        setattr(ds, keyword, None)
    if sps is not None:
        item_ = Dataset()
        for keyword in sps:
            setattr(item_, keyword, None)
        ds.ScheduledProcedureStepSequence = Sequence([item_])
    return ds


def both(answer: Answer, worklist_item: WorklistItem, implicit: bool = True
         ) -> tuple[Dataset | None, Dataset]:
    """The identifier from the fast path's encoder (None where it declines) and from
    pydicom."""
    slow = encode(answer.dataset(worklist_item, ZONE), implicit, True)
    assert slow is not None
    try:
        fast = encode_answer(ResponsePlan.from_query(answer.query, implicit=implicit),
                             answer, worklist_item, ZONE)
    except Unsupported:
        return None, decode(BytesIO(slow), implicit, True)
    return decode(BytesIO(fast), implicit, True), decode(BytesIO(slow), implicit, True)


LEGACY = profile(character_sets=[], fallback="ascii", coercions=[
    {"action": "copy", "attribute": "RequestedProcedureID", "source": "AccessionNumber"},
    {"action": "truncate", "attribute": "PatientName", "length": 12},
    {"action": "upper", "attribute": "ScheduledProcedureStepDescription"},
    {"action": "default", "attribute": "AdmissionID", "value": "NONE"},
    {"action": "drop", "attribute": "PatientBirthDate"},
    {"action": "drop", "attribute": "Modality"},
])


@pytest.mark.parametrize("implicit", [True, False])
def test_fast_and_pydicom_agree_for_a_transforming_profile(implicit: bool) -> None:
    answer = Answer(ModalityRules.of(LEGACY, 3), query(
        ["PatientName", "PatientBirthDate", "AccessionNumber", "SpecificCharacterSet"],
        ["ScheduledProcedureStepDescription", "Modality", "ScheduledProcedureStepID"]))
    merged = {**MERGED, "PatientName": "Straße^Jürgen=シュトラーセ"}
    fast, slow = both(answer, item(merged, STEP), implicit)
    assert fast is not None, "transliterated to ASCII: the fast path encodes it"
    assert fast == slow
    assert slow.PatientName == "Strasse^Jurg", "transliterated, then truncated to 12"
    assert "SpecificCharacterSet" not in slow
    assert slow.RequestedProcedureID == "ACC0001" and slow.AdmissionID == "NONE"
    assert "PatientBirthDate" not in slow
    assert set(slow.ScheduledProcedureStepSequence[0].dir()) == {
        "ScheduledProcedureStepDescription", "ScheduledProcedureStepID"}
    assert slow.ScheduledProcedureStepSequence[0].ScheduledProcedureStepDescription == "CHEST"


def test_a_universal_sps_item_loses_a_dropped_type_1_key() -> None:
    answer = Answer(ModalityRules.of(LEGACY, None), query(["PatientID"], []))
    fast, slow = both(answer, item(MERGED, STEP))
    assert fast is not None and fast == slow
    step = slow.ScheduledProcedureStepSequence[0]
    assert "Modality" not in step and step.ScheduledProcedureStepID == "SPS0001"


def test_only_text_the_modality_cannot_show_is_transliterated() -> None:
    latin1 = ModalityRules.of(profile(character_sets=["ISO_IR 100"], fallback="ISO_IR 100"),
                              None)
    answer = Answer(latin1, query(["PatientName", "RequestedProcedureDescription"], None))
    german = item({**MERGED, "PatientName": "Müller^Jürgen",
                   "RequestedProcedureDescription": "Rö Thorax — 2 Ebenen"}, STEP)
    ds = answer.dataset(german, ZONE)
    assert ds.SpecificCharacterSet == "ISO_IR 100"
    assert (ds.PatientName, ds.RequestedProcedureDescription) == (
        "Müller^Jürgen", "Rö Thorax - 2 Ebenen")
    # Text of an attribute not asked for does not decide: nothing changes.
    names_only = Answer(latin1, query(["PatientName"], None))
    assert names_only.attributes(german)[0]["RequestedProcedureDescription"] == \
        "Rö Thorax — 2 Ebenen"
    # A modality accepting UTF-8 gets it unchanged.
    utf8 = Answer(ModalityRules.of(profile(character_sets=["ISO_IR 192"]), None),
                  query(["PatientName"], None))
    greek = item({**MERGED, "PatientName": "Παπαδόπουλος"}, STEP)
    assert utf8.dataset(greek, ZONE).PatientName == "Παπαδόπουλος"


def test_character_set_among_those_accepted() -> None:
    assert character_set(["Müller"], "ISO_IR 192") == ["ISO_IR 192"]
    assert character_set(["Müller"], "ISO_IR 192", frozenset({"ISO_IR 100"})) == ["ISO_IR 100"]
    assert character_set(["Doe"], "ISO_IR 192", frozenset()) is None
    assert character_set(["Щукин"], "", frozenset({"ISO_IR 100", "ISO_IR 144"})) == [
        "ISO_IR 144"]
    with pytest.raises(Unrepresentable):
        character_set(["Müller"], "ISO_IR 192", frozenset())


def test_the_encoded_cache_is_keyed_on_the_profile() -> None:
    """The same profile name and version with other content must not be served from
    the cache of the first."""
    q = query(["PatientName"], None)
    first = Answer(ModalityRules.of(profile(), 1), q)
    upper = Answer(ModalityRules.of(profile(coercions=[
        {"action": "upper", "attribute": "PatientName"}]), 1), q)
    worklist_item = item(MERGED, STEP)
    plan = ResponsePlan.from_query(q, implicit=True)
    assert encode_answer(plan, first, worklist_item, ZONE) != \
        encode_answer(plan, upper, worklist_item, ZONE)
    assert ModalityRules.of(profile(), 1) == ModalityRules.of(profile(), 1)
    assert ModalityRules.of(profile(), 1) != ModalityRules.of(profile(), 2)


def test_profiles_per_calling_ae_title_follow_the_set_in_force() -> None:
    in_force: list[ProfileSet] = [ProfileSet([], modalities=[profile(stations=["US01"])])]
    profiles = ModalityProfiles(lambda connection: Deployed(7, in_force[0]))
    rules, version = profiles.for_query(None, "US1")  # type: ignore[arg-type]
    assert rules is not None and version == 7
    assert rules.restriction is not None and rules.restriction.stations == ("US01",)
    assert profiles.for_query(None, "CT1") == (None, 7)  # type: ignore[arg-type]
    in_force[0] = ProfileSet([], modalities=[])
    assert profiles.for_query(None, "US1") == (None, 7)  # type: ignore[arg-type]
    assert ModalityProfiles(None).for_query(None, "US1") == (None, None)  # type: ignore[arg-type]


def test_a_query_names_a_station_or_not() -> None:
    assert names_no_station(query(["PatientID"], None))
    assert names_no_station(query(["PatientID"], ["ScheduledStationAETitle"]))
    star = query([], ["ScheduledStationAETitle"])
    star.ScheduledProcedureStepSequence[0].ScheduledStationAETitle = "*"
    assert names_no_station(star)
    star.ScheduledProcedureStepSequence[0].ScheduledStationAETitle = "CT*"
    assert not names_no_station(star)


@pytest.mark.parametrize(("coercion", "message"), [
    ({"action": "copy", "attribute": "PatientName"}, "copy needs `source`"),
    ({"action": "copy", "attribute": "PatientName",
      "source": "RequestedProcedureCodeSequence"}, "a sequence is copied to a sequence only"),
    ({"action": "upper", "attribute": "ScheduledProtocolCodeSequence"}, "is a sequence"),
    ({"action": "default", "attribute": "AdmissionID", "value": "Ü"}, "default repertoire"),
    ({"action": "drop", "attribute": "NoSuchKeyword"}, "not a DICOM attribute keyword"),
])
def test_a_coercion_that_cannot_work_is_refused(coercion: dict[str, Any],
                                                 message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        profile(coercions=[coercion])


def test_a_restriction_without_stations_is_refused() -> None:
    with pytest.raises(ValidationError, match="restrict_to_stations needs `stations`"):
        profile(restrict_to_stations=True)
    assert not profile(stations=["US01"], restrict_to_stations=False).restricts
