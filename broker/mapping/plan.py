"""Profiles compiled for mapping: each profile's rules per message structure and level
as :class:`~broker.mapping.converters.CompiledRule` (sources parsed, converters looked
up) and its station rules' conditions, built once per loaded
:class:`~broker.mapping.profile.ProfileSet` instead of once per message.

A loaded profile set does not change (a new directory is a new set), so what is
compiled from it is kept for as long as the set itself is.
"""

from __future__ import annotations

from typing import get_args
from weakref import WeakKeyDictionary

from broker.mapping.converters import CompiledRule
from broker.mapping.profile import Level, Profile, ProfileSet, StationRule, Structure


class Plan:
    """One profile, compiled: ``rules(structure, level)`` in profile order and
    ``stations`` with the conditions each one's ``when`` gives."""

    def __init__(self, profile: Profile) -> None:
        self.profile = profile
        self._rules = {
            (structure, level): tuple(CompiledRule.of(rule, structure)
                                      for rule in profile.rules if rule.level == level)
            for structure in get_args(Structure) for level in get_args(Level)
        }
        self.stations: tuple[tuple[StationRule, tuple[tuple[str, str], ...]], ...] = tuple(
            (rule, tuple(rule.when.model_dump(exclude_none=True).items()))
            for rule in profile.stations)

    def rules(self, structure: str, level: str) -> tuple[CompiledRule, ...]:
        return self._rules[(structure, level)]


_PLANS: WeakKeyDictionary[ProfileSet, dict[int, Plan]] = WeakKeyDictionary()


def plan_for(profiles: ProfileSet, profile: Profile) -> Plan:
    """The compiled form of ``profile``, one of ``profiles`` (compiled with all of them
    the first time the set is used)."""
    plans = _PLANS.get(profiles)
    if plans is None:
        plans = _PLANS[profiles] = {id(p): Plan(p) for p in profiles.profiles}
    return plans[id(profile)]
