"""What a candidate set of mapping profiles would change, before it is deployed: the
last stored messages of each sender (MSH-3 / MSH-4, HL7 v2.5.1 2.14.9.3-4) mapped by
the set in force and by the candidate, and the results compared.

Contract:

* Pure mapping (:func:`broker.mapping.apply.map_message`, then
  :func:`broker.mapping.apply.render_items`): nothing is written and order state is not
  consulted, so the comparison is of what the profiles make of each message, not of
  what applying it would do to the orders it names.
* Only messages the broker processed or failed are compared: a message rejected at the
  door (AR) was never mapped and would be rejected again.
* Worklist items are matched by (AccessionNumber, ScheduledProcedureStepID), the keys
  of a scheduled step (DICOM PS3.4 K.6.1.2.2); an item under one set only is added or
  removed, an item under both has its attributes compared by flat keyword path
  (``ScheduledProcedureStepSequence.ScheduledStationAETitle``; ``Sequence[i].Key``
  when a sequence holds more than one item). An ADT message's patient attributes are
  compared the same way, with no item key.
* A refusal is the HL7 error the broker would answer with (Table 0357 code, ERR
  location and text: HL7 v2.5.1 2.15.5). A message refused by both sets is not a
  change, whatever the reasons.
"""

from __future__ import annotations

import traceback
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from broker.domain.types import AdtMessage, Attributes, OrderMessage
from broker.hl7 import warnings
from broker.hl7.errors import ErrorCode, HL7Error
from broker.hl7.message import Message
from broker.mapping.apply import map_message, render_items
from broker.mapping.profile import ProfileError, ProfileSet
from broker.models import InboundMessage, MessageStatus
from broker.services.processing import Reader

# Messages read per query.
PAGE = 500
# Lines of each kind listed per sender by :meth:`Impact.lines` (the rest counted).
DETAIL = 10


@dataclass(frozen=True)
class Refusal:
    """Why a set refuses a message: the HL7 error it would answer with."""

    code: int
    location: str
    text: str

    def __str__(self) -> str:
        return f"{self.code} at {self.location or '-'}: {self.text}"

    def as_dict(self) -> dict[str, Any]:
        return {"code": self.code, "location": self.location, "text": self.text}


@dataclass(frozen=True)
class NowFailing:
    message_id: int
    error: Refusal


@dataclass(frozen=True)
class ItemRef:
    """A worklist item of a message, by its step's keys."""

    message_id: int
    accession: str
    sps_id: str

    @property
    def label(self) -> str:
        if not self.accession and not self.sps_id:
            return "patient"
        return f"item {self.accession or '-'}/{self.sps_id or '-'}"


@dataclass(frozen=True)
class AttributeChange:
    message_id: int
    accession: str
    sps_id: str
    keyword: str  # flat keyword path
    old: Any  # None: not in the item before
    new: Any  # None: not in the item after

    @property
    def label(self) -> str:
        return ItemRef(self.message_id, self.accession, self.sps_id).label


@dataclass
class SenderImpact:
    """The comparison for one sender (MSH-3 / MSH-4 as stored)."""

    application: str
    facility: str
    profile_before: str
    profile_after: str
    messages: int = 0
    now_failing: list[NowFailing] = field(default_factory=list)
    now_passing: list[int] = field(default_factory=list)
    still_failing: int = 0
    items_added: list[ItemRef] = field(default_factory=list)
    items_removed: list[ItemRef] = field(default_factory=list)
    attributes_changed: list[AttributeChange] = field(default_factory=list)

    @property
    def sender(self) -> str:
        return f"{self.application}/{self.facility}"

    @property
    def profile_changed(self) -> bool:
        return self.profile_before != self.profile_after

    @property
    def changed(self) -> bool:
        return bool(self.profile_changed or self.now_failing or self.now_passing
                    or self.items_added or self.items_removed or self.attributes_changed)

    @property
    def items_changed(self) -> int:
        """How many items have at least one attribute changed."""
        return len({(c.message_id, c.accession, c.sps_id) for c in self.attributes_changed})

    def as_dict(self) -> dict[str, Any]:
        return {
            "application": self.application, "facility": self.facility,
            "profile_before": self.profile_before, "profile_after": self.profile_after,
            "profile_changed": self.profile_changed, "messages": self.messages,
            "now_failing": [{"message_id": f.message_id, **f.error.as_dict()}
                            for f in self.now_failing],
            "now_passing": list(self.now_passing),
            "still_failing": self.still_failing,
            "items_added": [_ref(r) for r in self.items_added],
            "items_removed": [_ref(r) for r in self.items_removed],
            "attributes_changed": [
                {"message_id": c.message_id, "accession": c.accession, "sps_id": c.sps_id,
                 "keyword": c.keyword, "old": c.old, "new": c.new}
                for c in self.attributes_changed],
        }


def _ref(ref: ItemRef) -> dict[str, Any]:
    return {"message_id": ref.message_id, "accession": ref.accession, "sps_id": ref.sps_id}


@dataclass
class Impact:
    """Per-sender comparisons and their totals; ``before`` and ``after`` name the two
    sets for people (e.g. "version 3", "the mappings directory")."""

    senders: list[SenderImpact]
    per_sender: int
    before: str = "current"
    after: str = "candidate"

    @property
    def messages(self) -> int:
        return sum(s.messages for s in self.senders)

    @property
    def now_failing(self) -> list[NowFailing]:
        return [f for s in self.senders for f in s.now_failing]

    @property
    def now_passing(self) -> list[int]:
        return [pk for s in self.senders for pk in s.now_passing]

    @property
    def items_added(self) -> list[ItemRef]:
        return [r for s in self.senders for r in s.items_added]

    @property
    def items_removed(self) -> list[ItemRef]:
        return [r for s in self.senders for r in s.items_removed]

    @property
    def attributes_changed(self) -> list[AttributeChange]:
        return [c for s in self.senders for c in s.attributes_changed]

    @property
    def profile_changes(self) -> list[SenderImpact]:
        """The senders that would be served by another profile."""
        return [s for s in self.senders if s.profile_changed]

    @property
    def changed(self) -> bool:
        return any(s.changed for s in self.senders)

    def totals(self) -> dict[str, int]:
        return {
            "senders": len(self.senders), "messages": self.messages,
            "now_failing": len(self.now_failing), "now_passing": len(self.now_passing),
            "still_failing": sum(s.still_failing for s in self.senders),
            "items_added": len(self.items_added), "items_removed": len(self.items_removed),
            "attributes_changed": len(self.attributes_changed),
            "items_changed": sum(s.items_changed for s in self.senders),
            "profile_changes": len(self.profile_changes),
        }

    def as_dict(self) -> dict[str, Any]:
        """JSON-able: the totals and every sender's comparison, in full."""
        return {"before": self.before, "after": self.after, "per_sender": self.per_sender,
                "changed": self.changed, "totals": self.totals(),
                "senders": [s.as_dict() for s in self.senders]}

    def lines(self, detail: int = DETAIL) -> list[str]:
        """The report for a terminal: the totals, then per sender its profile before
        and after and what changes: messages that would now fail grouped by refusal,
        those that would now pass, items added and removed (up to ``detail`` of
        each, the rest counted), attribute changes summarised per keyword path."""
        t = self.totals()
        out = [f"impact of {self.after} against {self.before}: {t['messages']} message(s) "
               f"of {t['senders']} sender(s) compared (the last {self.per_sender} of each)",
               f"  now failing {t['now_failing']}, now passing {t['now_passing']}, "
               f"items added {t['items_added']}, items removed {t['items_removed']}, "
               f"attributes changed {t['attributes_changed']} in {t['items_changed']} "
               f"item(s), senders changing profile {t['profile_changes']}"]
        if not self.senders:
            out.append("  no processed or failed message stored: nothing to compare")
        elif not self.changed:
            out.append("  no change")
        for s in self.senders:
            profile = (f"profile {s.profile_before} -> {s.profile_after}" if s.profile_changed
                       else f"profile {s.profile_after}")
            out.append(f"sender {s.sender}: {s.messages} message(s), {profile}"
                       + ("" if s.changed else ", no change"))
            out += list(_failing_summary(s.now_failing, detail))
            if s.now_passing:
                out.append(f"  {len(s.now_passing)} message(s) would now pass: "
                           + _ids(s.now_passing, detail))
            out += _capped([f"  message {r.message_id}: {r.label} added"
                            for r in s.items_added], detail)
            out += _capped([f"  message {r.message_id}: {r.label} removed"
                            for r in s.items_removed], detail)
            out += _capped(list(_keyword_summary(s.attributes_changed)), detail)
        return out


def _capped(lines: list[str], detail: int) -> list[str]:
    if len(lines) <= detail:
        return lines
    return [*lines[:detail], f"  ... and {len(lines) - detail} more"]


def _ids(ids: list[int], detail: int) -> str:
    shown = ", ".join(str(pk) for pk in ids[:detail])
    return shown + (f" and {len(ids) - detail} more" if len(ids) > detail else "")


def _failing_summary(failing: list[NowFailing], detail: int) -> Iterator[str]:
    """One line per refusal: how many messages, which (the first ``detail``)."""
    by_error: dict[Refusal, list[int]] = {}
    for f in failing:
        by_error.setdefault(f.error, []).append(f.message_id)
    for error, ids in sorted(by_error.items(), key=lambda e: -len(e[1])):
        yield f"  {len(ids)} message(s) would now fail with {error}: messages {_ids(ids, detail)}"


def _keyword_summary(changes: list[AttributeChange]) -> Iterator[str]:
    """One line per keyword path: in how many items, and its commonest old -> new."""
    by_keyword: dict[str, Counter[tuple[str, str]]] = {}
    for c in changes:
        by_keyword.setdefault(c.keyword, Counter())[(_shown(c.old), _shown(c.new))] += 1
    for keyword, pairs in by_keyword.items():
        shown = ", ".join(f"{old} -> {new}" + (f" ({n})" if n > 1 else "")
                          for (old, new), n in pairs.most_common(3))
        more = len(pairs) - 3
        yield (f"  {keyword} changes in {sum(pairs.values())} item(s): {shown}"
               + (f", and {more} other change(s)" if more > 0 else ""))


def _shown(value: Any) -> str:
    return "(absent)" if value is None else repr(value)


# -- mapping a message by one set ------------------------------------------------------

@dataclass(frozen=True)
class _Outcome:
    """One set's result for one message: its items by key, or its refusal."""

    profile: str
    items: dict[tuple[str, str], Attributes] | None = None
    error: Refusal | None = None


def _outcome(msg: Message, received: Any, profiles: ProfileSet, timezone: str) -> _Outcome:
    profile = _profile_name(profiles, msg.msh.get(3), msg.msh.get(4))
    try:
        mapped, _found = warnings.collect(
            lambda: map_message(msg, profiles, timezone=timezone, received_at=received))
    except HL7Error as exc:
        return _Outcome(profile, error=_refusal(exc))
    except Exception as exc:  # as processing records it: class and where, no data
        where = traceback.extract_tb(exc.__traceback__)[-1]
        return _Outcome(profile, error=Refusal(
            int(ErrorCode.APPLICATION_INTERNAL_ERROR), "",
            f"internal error ({type(exc).__name__} at {where.name})"))
    return _Outcome(mapped.profile, items=_items(mapped))


def _refusal(exc: HL7Error) -> Refusal:
    return Refusal(exc.code, str(exc.location or ""), exc.text)


def _profile_name(profiles: ProfileSet, application: str, facility: str) -> str:
    try:
        return profiles.select(application, facility).name
    except ProfileError:
        return "(none)"


def _items(mapped: OrderMessage | AdtMessage) -> dict[tuple[str, str], Attributes]:
    if isinstance(mapped, AdtMessage):
        return {("", ""): dict(mapped.patient.attributes)}
    items: dict[tuple[str, str], Attributes] = {}
    for item in render_items(mapped):
        steps = item.get("ScheduledProcedureStepSequence") or [{}]
        key = (str(item.get("AccessionNumber") or ""),
               str(steps[0].get("ScheduledProcedureStepID") or ""))
        items[key] = item
    return items


_ABSENT = object()


def attribute_changes(old: Any, new: Any, path: str = "") -> Iterator[tuple[str, Any, Any]]:
    """(flat keyword path, old value, new value) for every leaf that differs between
    two items (dicts of DICOM keywords; a sequence is a list of dicts); a value only
    on one side has None on the other."""
    if isinstance(old, dict) or isinstance(new, dict):
        old_d = old if isinstance(old, dict) else {}
        new_d = new if isinstance(new, dict) else {}
        for key in [*old_d, *(k for k in new_d if k not in old_d)]:
            yield from attribute_changes(old_d.get(key, _ABSENT), new_d.get(key, _ABSENT),
                                         f"{path}.{key}" if path else key)
        return
    if _is_sequence(old) or _is_sequence(new):
        old_l = old if _is_sequence(old) else []
        new_l = new if _is_sequence(new) else []
        count = max(len(old_l), len(new_l))
        for i in range(count):
            yield from attribute_changes(old_l[i] if i < len(old_l) else _ABSENT,
                                         new_l[i] if i < len(new_l) else _ABSENT,
                                         path if count == 1 else f"{path}[{i}]")
        return
    if old != new:
        yield (path, None if old is _ABSENT else _plain(old),
               None if new is _ABSENT else _plain(new))


def _is_sequence(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def _plain(value: Any) -> Any:
    """A JSON-able form of an attribute value."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return str(value)


def _compare(row_id: int, before: _Outcome, after: _Outcome, into: SenderImpact) -> None:
    into.messages += 1
    if after.error is not None:
        if before.error is None:
            into.now_failing.append(NowFailing(row_id, after.error))
        else:
            into.still_failing += 1
        return
    if before.error is not None:
        into.now_passing.append(row_id)
        return
    assert before.items is not None and after.items is not None
    for key in before.items:
        if key not in after.items:
            into.items_removed.append(ItemRef(row_id, *key))
    for key, item in after.items.items():
        if key not in before.items:
            into.items_added.append(ItemRef(row_id, *key))
            continue
        for keyword, old, new in attribute_changes(before.items[key], item):
            into.attributes_changed.append(AttributeChange(row_id, *key, keyword, old, new))


# -- the messages compared -------------------------------------------------------------

def last_per_sender(session: Session, per_sender: int) -> list[int]:
    """Ids of the last ``per_sender`` processed or failed messages of each sender
    (MSH-3 / MSH-4 as stored), oldest first."""
    ranked = select(
        InboundMessage.id,
        func.row_number().over(
            partition_by=(InboundMessage.sending_application,
                          InboundMessage.sending_facility),
            order_by=InboundMessage.id.desc()).label("n"),
    ).where(InboundMessage.status.in_([MessageStatus.PROCESSED.value,
                                       MessageStatus.FAILED.value])).subquery()
    return list(session.scalars(select(ranked.c.id).where(ranked.c.n <= per_sender)
                                .order_by(ranked.c.id)))


def impact(session: Session, current: ProfileSet, candidate: ProfileSet, *,
           per_sender: int = 50, read: Reader, timezone: str, before: str = "current",
           after: str = "candidate") -> Impact:
    """Map the last ``per_sender`` stored messages of each sender with ``current`` and
    with ``candidate`` (read with ``read``; scheduled in ``timezone`` unless a profile
    names its own; each at its receipt time) and compare; writes nothing."""
    senders: dict[tuple[str, str], SenderImpact] = {}
    ids = last_per_sender(session, per_sender)
    for start in range(0, len(ids), PAGE):
        page = ids[start:start + PAGE]
        rows = session.execute(
            select(InboundMessage.id, InboundMessage.raw, InboundMessage.received_at,
                   InboundMessage.sending_application, InboundMessage.sending_facility)
            .where(InboundMessage.id.in_(page)).order_by(InboundMessage.id))
        for row_id, raw, received_at, application, facility in rows:
            sender = (application or "", facility or "")
            into = senders.get(sender)
            if into is None:
                into = senders[sender] = SenderImpact(
                    *sender, _profile_name(current, *sender),
                    _profile_name(candidate, *sender))
            try:
                msg, _found = warnings.collect(read, raw)
            except HL7Error:  # unreadable alike under both sets
                into.messages += 1
                into.still_failing += 1
                continue
            _compare(row_id, _outcome(msg, received_at, current, timezone),
                     _outcome(msg, received_at, candidate, timezone), into)
    ordered = sorted(senders.values(), key=lambda s: (not s.changed, s.sender))
    return Impact(ordered, per_sender, before, after)
