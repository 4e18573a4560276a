"""Transliteration for modalities that cannot show a response's character set: German,
Nordic, Polish, Greek and Cyrillic names to ASCII; Latin-1 kept for ISO_IR 100; a
Person Name keeps its alphabetic group."""

from __future__ import annotations

import pytest

from broker.dicom.transliteration import (
    is_latin1,
    transliterate,
    transliterate_attributes,
    transliterate_name,
)


@pytest.mark.parametrize(("text", "ascii"), [
    ("Müller^Jürgen", "Muller^Jurgen"),
    ("Straße", "Strasse"),
    ("Ærøskøbing^Søren", "Aeroskobing^Soren"),
    ("ÅSE ØSTERGÅRD", "ASE OSTERGARD"),
    ("Þórður Guðmundsson", "Thordur Gudmundsson"),
    ("Œuvre^Cœur", "Oeuvre^Coeur"),
    ("Wałęsa^Łukasz", "Walesa^Lukasz"),
    ("Żółć Ślązak", "Zolc Slazak"),
    ("Kıraç", "Kirac"),
    ("Παπαδόπουλος^Θεόδωρος", "Papadopoulos^Theodoros"),
    ("ΧΑΤΖΗΣ^ΨΑΡΑΣ", "CHATZIS^PSARAS"),
    ("Щукин^Юрий", "Shchukin^Iurii"),
    ("ЖУКОВ^ЁЖИК", "ZHUKOV^EZHIK"),
    ("Чайковский^Пётр", "Chaikovskii^Petr"),
    ("Шевченко^Тарас^Григорович", "Shevchenko^Taras^Grigorovich"),
    ("O’Brien – “Jr”", "O'Brien - \"Jr\""),
    ("Doe^Jane", "Doe^Jane"),
])
def test_to_ascii(text: str, ascii: str) -> None:
    assert transliterate(text) == ascii
    assert transliterate(text).isascii()


def test_d_with_stroke_has_no_decomposition() -> None:
    assert transliterate("Đorđević") == "Dordevic"


@pytest.mark.parametrize(("text", "latin1"), [
    ("Müller^Jürgen", "Müller^Jürgen"),
    ("Ærøskøbing Straße Þór", "Ærøskøbing Straße Þór"),
    ("Wałęsa-Müller^Łukasz", "Walesa-Müller^Lukasz"),
    ("Dvořák^Antonín", "Dvorák^Antonín"),
    ("Παπαδόπουλος", "Papadopoulos"),
    ("Щукин", "Shchukin"),
])
def test_latin1_kept_for_iso_ir_100(text: str, latin1: str) -> None:
    assert transliterate(text, is_latin1) == latin1
    latin1.encode("latin-1")


def test_a_character_without_a_latin_form_is_a_question_mark() -> None:
    assert transliterate("山田") == "??"
    assert transliterate("ﬁle") == "file"


def test_a_person_name_keeps_its_alphabetic_group() -> None:
    assert transliterate_name("YAMADA^TARO=山田^太郎=やまだ^たろう") == "YAMADA^TARO"
    assert transliterate_name("Müller^Jürgen") == "Muller^Jurgen"


def test_attributes_and_sequences() -> None:
    attributes = {
        "PatientName": "Ёлкин^Пётр=Ёлкин^Пётр", "PatientID": "42",
        "OtherPatientIDs": ["Ø1", "Ä2"], "PatientWeight": 82.5,
        "RequestedProcedureCodeSequence": [{"CodeMeaning": "Röntgen Thorax"}],
        "ReferringPhysicianName": ["Schröder^Anna=シュレーダー"],
    }
    assert transliterate_attributes(attributes) == {
        "PatientName": "Elkin^Petr", "PatientID": "42", "OtherPatientIDs": ["O1", "A2"],
        "PatientWeight": 82.5,
        "RequestedProcedureCodeSequence": [{"CodeMeaning": "Rontgen Thorax"}],
        "ReferringPhysicianName": ["Schroder^Anna"],
    }
    assert attributes["PatientName"] == "Ёлкин^Пётр=Ёлкин^Пётр", "the input is unchanged"
