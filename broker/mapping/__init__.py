"""HL7 -> DICOM worklist mapping: profiles, conversions and their application."""

from pathlib import Path

# The profiles shipped in the package (package data): ``default.yaml``, the IHE
# mapping, is always available to a site's profiles (see :mod:`broker.mapping.profile`).
PACKAGED_PROFILES = Path(__file__).resolve().parent / "profiles"
