"""The dashboard's traffic chart and the stations' sparklines as SVG geometry.

Plain numbers and text for the templates to draw as inline SVG with classes from the
console's style sheet: no script, no ``style`` attribute and nothing from elsewhere,
so the Content-Security-Policy (broker.web.protections) holds. Clock labels are in the
configured zone. Input is what broker.web.traffic returns.
"""

from __future__ import annotations

import math
from typing import Any
from zoneinfo import ZoneInfo

from broker.web.display import instant

WIDTH, HEIGHT = 960, 200
LEFT, RIGHT, TOP, BOTTOM = 44, 12, 10, 24
SERIES = ("received", "sent", "failed")
TICK_MINUTES = {1: 10, 3: 30, 6: 60, 12: 120, 24: 240}  # a clock label every ... minutes


def ceiling(value: float) -> int:
    """The smallest 1, 2 or 5 times a power of ten at or above ``value`` (1 at least)."""
    if value <= 1:
        return 1
    power = 10 ** math.floor(math.log10(value))
    return next(m * power for m in (1, 2, 5, 10) if m * power >= value)


def _number(value: float) -> str:
    return f"{value:.1f}".rstrip("0").rstrip(".")


def traffic_chart(traffic: dict[str, Any], zone: ZoneInfo) -> dict[str, Any]:
    """Lines for received and sent, bars for failed, per bucket; a hover column per
    bucket whose title gives its counts; value gridlines and clock ticks."""
    buckets = traffic["buckets"]
    count = len(buckets)
    top = ceiling(max((b[s] for b in buckets for s in SERIES), default=0))
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    step = plot_w / count

    def x(index: float) -> float:
        return round(LEFT + index * step, 1)

    def y(value: float) -> float:
        return round(TOP + plot_h * (1 - value / top), 1)

    starts = [instant(b["start"]) for b in buckets]
    local = [s.astimezone(zone) for s in starts if s is not None]
    minutes = TICK_MINUTES[traffic["hours"]]
    width_min = traffic["bucket_seconds"] // 60
    unit = "per minute" if width_min == 1 else f"per {width_min} minutes"
    return {
        "width": WIDTH, "height": HEIGHT, "left": LEFT, "right": WIDTH - RIGHT,
        "top": TOP, "bottom": TOP + plot_h, "unit": unit,
        "lines": {s: " ".join(f"{x(i + 0.5)},{y(b[s])}" for i, b in enumerate(buckets))
                  for s in ("received", "sent")},
        "bars": [{"x": x(i + 0.15), "y": y(b["failed"]), "w": round(step * 0.7, 1),
                  "h": round(TOP + plot_h - y(b["failed"]), 1)}
                 for i, b in enumerate(buckets) if b["failed"]],
        "columns": [{"x": x(i), "w": round(step, 1),
                     "title": f"{t:%H:%M} · {b['received']} received, {b['sent']} sent, "
                              f"{b['failed']} failed"}
                    for i, (t, b) in enumerate(zip(local, buckets, strict=True))],
        "gridlines": [{"y": y(v), "label": _number(v)} for v in (0, top / 2, top)],
        "ticks": [{"x": x(i), "label": f"{t:%H:%M}"} for i, t in enumerate(local)
                  if (t.hour * 60 + t.minute) % minutes == 0],
        "totals": traffic["totals"],
    }


def sparkline(values: list[int], width: int = 240, height: int = 24) -> dict[str, Any]:
    """A small line of ``values`` (one point per bucket) scaled to its own peak."""
    peak = max(values, default=0) or 1
    step = width / max(len(values) - 1, 1)
    points = " ".join(f"{round(i * step, 1)},{round(height - 1 - (height - 2) * v / peak, 1)}"
                      for i, v in enumerate(values))
    return {"width": width, "height": height, "points": points}
