"""Synthetic ORM^O01 messages for tests and benchmarks: sample 05's shape, unique
identifiers (``bench`` builds its load from these too)."""

from __future__ import annotations

TEMPLATE = (
    "MSH|^~\\&|EHR|HOSP|MWLBROKER|RADIOLOGY|20250310084500||ORM^O01|{cid}|P|2.3.1\r"
    "PID|1||{pid}^^^HOSP&2.16.840.1.113883.3.9999.1&ISO^MR||Bench^Patient^{n}^^^^L||19900214|F\r"
    "PV1|1|O|RAD^XR1^^HOSP|||||||||||||||||V{n}^^^HOSP^VN\r"
    "ORC|NW|PLC-{n}^EHR|FIL-{n}^RIS||SC||1^once^^{date}{time}^^R||20250310084500\r"
    "OBR|1|PLC-{n}^EHR|FIL-{n}^RIS|71046^XR CHEST 2 VIEWS^C4^XRCHPA^Chest PA^99HOSP"
    "||||||||||||||ACC{n}|RP{n}|SPS{n}||||DX|||1^once^^{date}{time}^^R\r"
    "ZDS|2.25.{uid}^100^Application^DICOM\r"
)


def order(n: int, *, patients: int = 1000, date: str = "20250310") -> bytes:
    """Order number ``n`` (one requested procedure, one step)."""
    minute = n % 600
    time = f"{8 + minute // 60:02d}{minute % 60:02d}00"
    return TEMPLATE.format(cid=f"B{n}", pid=f"BP{n % patients}", n=n, date=date, time=time,
                           uid=10**12 + n).encode()
