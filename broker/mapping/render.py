"""Readable listings of what a message maps to, for people (the ``mapping test``
command): the worklist items of an order, the patient of an ADT, with the ACK live
processing would send."""

from __future__ import annotations

from typing import Any

from broker.domain.types import AdtMessage, OrderMessage
from broker.mapping.apply import render_items


def _show(value: Any, indent: str) -> list[str]:
    if isinstance(value, list) and value and isinstance(value[0], dict):
        lines = []
        for n, item in enumerate(value, start=1):
            lines.append(f"{indent}item {n}:")
            for key, sub in item.items():
                shown = _show(sub, indent + "    ")
                if len(shown) == 1 and not shown[0].startswith(indent + "    item"):
                    lines.append(f"{indent}  {key}: {shown[0].strip()}")
                else:
                    lines.append(f"{indent}  {key}:")
                    lines += shown
        return lines
    if isinstance(value, list):
        return [indent + "\\".join(str(v) for v in value)]
    return [indent + repr(value) if isinstance(value, str) and not value else indent + str(value)]


def describe(mapped: OrderMessage | AdtMessage) -> list[str]:
    """The patient an ADT carries, or one block per worklist item of an order."""
    out: list[str] = []
    if isinstance(mapped, AdtMessage):
        out.append(f"ADT {mapped.event}: patient {mapped.patient.patient_id}"
                   + (f", merges {mapped.prior_patient[0]}" if mapped.prior_patient else ""))
        for key, value in mapped.patient.attributes.items():
            out.append(f"  {key}: " + "\n".join(_show(value, "    ")).strip())
        return out
    items = render_items(mapped)
    steps = [s for p in mapped.procedures for s in p.steps]
    for n, (item, step) in enumerate(zip(items, steps, strict=True), start=1):
        out.append(f"-- worklist item {n} (ORC-1 {step.order_control}, station rule "
                   f"{step.station_rule or '-'})")
        for key, value in item.items():
            shown = _show(value, "    ")
            out.append(f"  {key}: {shown[0].strip()}" if len(shown) == 1 else f"  {key}:")
            if len(shown) > 1:
                out += shown
    return out
