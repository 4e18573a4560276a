"""How ``make bench`` prints: markdown tables of medians with (min-max), and the
machine the figures come from."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
from collections.abc import Sequence
from pathlib import Path


def fmt(values: Sequence[float], unit: str = "", digits: int = 1) -> str:
    """Median (min-max) of one figure's runs; "-" when none ran."""
    if not values:
        return "-"
    return (f"{statistics.median(values):.{digits}f}{unit} "
            f"({min(values):.{digits}f}-{max(values):.{digits}f})")


def table(title: str, header: list[str], rows: list[list[str]]) -> None:
    print(f"\n### {title}\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")


def machine(runs: int) -> str:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    dcmtk = subprocess.run(["findscu", "--version"], capture_output=True, text=True
                           ).stdout.splitlines()[0:1]
    return (f"{platform.node()}: {cpu}, {os.cpu_count()} cores, "
            f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB, "
            f"{platform.system()} {platform.release()}, Python {platform.python_version()}, "
            f"{' '.join(dcmtk)}; {runs} runs per figure")
