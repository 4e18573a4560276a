"""ADT applied by the processor, in-process on SQLite and PostgreSQL (IHE RAD-1 Patient
Registration, RAD-12 Patient Update; HL7 v2.5.1 3.3.8 A08, 3.3.40 A40; HL7 v2.5.1
2.5.3 null semantics: an empty field leaves the stored value, ``""`` clears it)."""

from __future__ import annotations

from sqlalchemy import select

from broker.models import ImagingOrder, MessageStatus
from tests.conftest import sample
from tests.integration.hl7util import set_field
from tests.service.conftest import Services
from tests.service.messages import edited

REGISTERED = "123456"  # samples 01, 03 and 04
PRIOR = "777777"  # MRG-1 of sample 04


def test_a08_updates_demographics_empty_keeps_and_null_clears(services: Services) -> None:
    """A04 registers; the A08 of sample 03 changes name and birth date, its empty PID-8
    leaves the sex as registered and PV1-3 ``""`` clears the patient's location."""
    assert services.process(sample("01")).status == MessageStatus.PROCESSED.value
    registered = services.patient(REGISTERED)
    assert (registered.birth_date, registered.sex) == ("19750602", "M")
    assert registered.attributes["CurrentPatientLocation"]
    a08 = set_field(set_field(sample("03"), "PID", 8, ""), "PV1", 3, '""')
    row = services.process(a08)
    assert (row.status, row.ack_code) == (MessageStatus.PROCESSED.value, "AA")
    updated = services.patient(REGISTERED)
    assert updated.patient_name.startswith("Müller-Lüdenscheidt^Jürgen")
    assert (updated.birth_date, updated.sex) == ("19750620", "M")
    assert updated.attributes["CurrentPatientLocation"] == ""
    assert updated.last_adt_datetime == "20250310083000"


def test_a08_older_than_the_last_update_is_acknowledged_not_applied(
        services: Services) -> None:
    """An A08 whose EVN-2 is older than the last ADT applied to the patient arrived out
    of order: acknowledged AA, the newer data kept."""
    services.process(sample("01"))
    services.process(sample("03"))
    stale = set_field(set_field(edited("03", "ADT-STALE"), "EVN", 2, "20250310082000"),
                      "PID", 7, "19800101")
    row = services.process(stale)
    assert (row.status, row.ack_code) == (MessageStatus.PROCESSED.value, "AA")
    assert "not applied" in (row.outcome or "")
    patient = services.patient(REGISTERED)
    assert (patient.birth_date, patient.last_adt_datetime) == ("19750620", "20250310083000")


def test_a40_merge_moves_the_orders_to_the_survivor(services: Services) -> None:
    """A40 (sample 04) merges MRG-1 777777 into PID-3 123456: the prior record's order
    moves to the survivor, the prior record is marked merged, and a later order
    message for the prior identifier is applied to the survivor."""
    services.process(sample("01"))
    services.process(edited("05", "ORM-PRIOR", patient_id=PRIOR))
    row = services.process(sample("04"))
    assert (row.status, row.ack_code) == (MessageStatus.PROCESSED.value, "AA")
    survivor, prior = services.patient(REGISTERED), services.patient(PRIOR)
    assert prior.merged_into_id == survivor.id
    assert [o.placer_order_number for o in survivor.orders] == ["PLC-1001"]
    assert prior.orders == []
    xo = services.process(edited("06", "XO-PRIOR", patient_id=PRIOR))
    assert xo.status == MessageStatus.PROCESSED.value
    assert "merged into" in (xo.outcome or "")
    assert services.steps()["SPS0001"].start_datetime == "20250310110000"
    with services.factory() as session:
        owners = set(session.scalars(select(ImagingOrder.patient_pk)))
    assert owners == {survivor.id}


def test_a47_change_of_identifier_moves_the_orders_to_the_new_one(
        services: Services) -> None:
    """A47 (HL7 v2.5.1 3.3.47), MRG-1 the old identifier and PID-3 the new one: the
    orders under the old identifier follow the new one, as for an A40."""
    services.process(edited("05", "ORM-OLD", patient_id=PRIOR))
    change = set_field(set_field(set_field(sample("04"), "MSH", 9, "ADT^A47^ADT_A30"),
                                 "MSH", 10, "ADT-A47"), "EVN", 1, "A47")
    row = services.process(change)
    assert (row.status, row.ack_code) == (MessageStatus.PROCESSED.value, "AA")
    new, old = services.patient(REGISTERED), services.patient(PRIOR)
    assert old.merged_into_id == new.id
    assert [o.placer_order_number for o in new.orders] == ["PLC-1001"]


def test_a40_naming_the_survivor_as_prior_is_refused_205(services: Services) -> None:
    """MRG-1 equal to PID-3 is no merge: AE 205 at MRG-1."""
    services.process(sample("01"))
    same = set_field(sample("04"), "MRG", 1,
                     "123456^^^HOSP&2.16.840.1.113883.3.9999.1&ISO^MR")
    row = services.process(same)
    assert (row.status, row.error_code, row.error_location) == (
        MessageStatus.FAILED.value, 205, "MRG^1^1")


def test_an_order_does_not_change_a_registered_patient(services: Services) -> None:
    """ADT is authoritative for demographics (IHE RAD-1/RAD-12): an NW (sample 08)
    whose PID-5 and PID-7 differ from the registration creates its order and leaves
    the registered name and birth date as they are."""
    services.process(sample("01"))
    nw = set_field(edited("08", "ORM0008-NW", order_control="NW", order_status="SC"),
                   "PID", 7, "19800101")
    assert services.process(nw).status == MessageStatus.PROCESSED.value
    patient = services.patient(REGISTERED)
    assert patient.patient_name.startswith("Müller^Jürgen")
    assert patient.birth_date == "19750602"
    assert [o.placer_order_number for o in patient.orders] == ["PLC-1003"]
