"""The order builder now lives in :mod:`tests.builders` (shared by the tests and the
benchmarks); re-exported here for importers not yet switched."""

from __future__ import annotations

from tests.builders import TEMPLATE, order

__all__ = ["TEMPLATE", "order"]
