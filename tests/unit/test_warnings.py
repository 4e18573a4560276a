"""Collecting the adjustments made to accept a message (HL7 v2.5.1 2.9.2, ERR-4
severity W): one collection per message, warnings deduplicated, a call's own
warnings collected apart and dropped when it fails."""

from __future__ import annotations

import pytest

from broker.hl7 import warnings
from broker.hl7.errors import ErrorLocation, HL7Error
from broker.hl7.warnings import DATA_TYPE, HL7Warning, warn

HERE = ErrorLocation("PID", 7)


def adjusting(value: str) -> str:
    warn(DATA_TYPE, "PatientBirthDate: truncated")
    warn(DATA_TYPE, "PatientBirthDate: truncated")
    if not value:
        raise HL7Error(DATA_TYPE, "PatientBirthDate: needs YYYYMMDD")
    return value[:8]


def test_a_collection_keeps_each_warning_once() -> None:
    with warnings.collecting() as found:
        warn(DATA_TYPE, "PatientSex: code not used", HERE)
        warn(DATA_TYPE, "PatientSex: code not used", HERE)
        with warnings.collecting() as inner:
            warn(DATA_TYPE, "PatientName: truncated")
    assert found == [HL7Warning(DATA_TYPE, "PatientSex: code not used", HERE)]
    assert inner == [HL7Warning(DATA_TYPE, "PatientName: truncated")]


def test_collect_gives_the_result_and_the_warnings_of_one_call() -> None:
    with warnings.collecting() as found:
        value, own = warnings.collect(adjusting, "199005051200")
    assert value == "19900505"
    assert own == [HL7Warning(DATA_TYPE, "PatientBirthDate: truncated")]
    assert found == [], "the enclosing collection gets them only when passed on"


def test_collect_drops_the_warnings_of_a_call_that_fails() -> None:
    with warnings.collecting() as found:
        with pytest.raises(HL7Error):
            warnings.collect(adjusting, "")
        warn(DATA_TYPE, "PatientSex: code not used", HERE)
    assert found == [HL7Warning(DATA_TYPE, "PatientSex: code not used", HERE)]
