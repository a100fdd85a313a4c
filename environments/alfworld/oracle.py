"""A full-knowledge expert for the six ALFWorld task types.

ALFWorld ships two experts: Fast Downward's plan (``policy_commands``, optimal but it takes from
a fraction of a second in a bathroom to more than a minute in a kitchen with twenty cabinets) and
a hand-coded expert that explores receptacle by receptacle (``HandCodedTWAgent``). This one reads
the *true* PDDL state (where every object is, what the agent holds, which receptacles are open)
and follows the same recipe as the hand-coded expert without the search: fetch a target object,
apply the state change (clean with a sinkbasin, heat with a microwave, cool with a fridge), go
to a goal receptacle, open it if needed, put the object there; for ``look_at_obj_in_light``,
carry the object to the lamp and switch it on. It answers in microseconds, so it serves both as
``expert_action()`` and as the solver that certifies generated games (the engine's own goal
check decides whether the replayed commands win).
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["Goal", "next_action"]

_APPLIANCE = {
    "pick_clean_then_place_in_recep": ("sinkbasin", "isclean", "clean"),
    "pick_heat_then_place_in_recep": ("microwave", "ishot", "heat"),
    "pick_cool_then_place_in_recep": ("fridge", "iscool", "cool"),
}


@dataclass(frozen=True)
class Goal:
    """The task of a game, from ``traj_data.json``'s ``task_type`` and ``pddl_params``."""

    task_type: str
    object_target: str  # ALFRED class, e.g. "Mug"
    parent_target: str = ""
    toggle_target: str = ""

    @classmethod
    def from_traj(cls, traj: dict) -> Goal:
        p = traj.get("pddl_params", {})
        return cls(
            traj["task_type"],
            p.get("object_target", "") or "",
            p.get("parent_target", "") or "",
            p.get("toggle_target", "") or "",
        )


def _natural(name: str) -> tuple[object, ...]:
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name))


class _State:
    def __init__(self, facts: Iterable[tuple[str, tuple[str, ...]]], names: dict[str, str]) -> None:
        self.names = names
        self.by_pred: dict[str, set[tuple[str, ...]]] = defaultdict(set)
        for pred, args in facts:
            self.by_pred[pred].add(args)
        self.otype = {o: t for o, t in self.by_pred["objecttype"]}
        self.rtype = {r: t for r, t in self.by_pred["receptacletype"]}
        self.rloc = {r: loc for r, loc in self.by_pred["receptacleatlocation"]}
        self.inside = {o: r for o, r in self.by_pred["inreceptacle"]}
        self.agent_loc = next(iter(self.by_pred["atlocation"]), ("", ""))[1]
        self.held = next((o for _, o in self.by_pred["holds"]), None)

    def has(self, pred: str, *args: str) -> bool:
        return tuple(args) in self.by_pred[pred]

    def name(self, ident: str) -> str:
        return self.names.get(ident, ident)

    def of_type(self, type_name: str, table: dict[str, str]) -> list[str]:
        t = type_name.lower() + "type"
        return sorted(
            (i for i, ty in table.items() if ty == t), key=lambda i: _natural(self.name(i))
        )

    def at(self, receptacle: str) -> bool:
        return self.rloc.get(receptacle) == self.agent_loc

    def approach(self, receptacle: str) -> str | None:
        """The next command on the way to using ``receptacle`` (None once there and open)."""
        if not self.at(receptacle):
            return f"go to {self.name(receptacle)}"
        if self.has("openable", receptacle) and not self.has("opened", receptacle):
            return f"open {self.name(receptacle)}"
        return None


def _fetch(s: _State, candidates: list[str]) -> str | None:
    """Go to, open and take from the receptacle of the first reachable candidate object."""
    for o in candidates:
        r = s.inside.get(o)
        if r is None:
            continue
        return s.approach(r) or f"take {s.name(o)} from {s.name(r)}"
    return None


def _put_down(s: _State) -> str | None:
    """Get rid of a held object the task does not need (only after off-policy play)."""
    o = s.held
    assert o is not None
    for r in sorted(s.rloc, key=lambda r: (not s.at(r), _natural(s.name(r)))):
        if s.has("cancontain", s.rtype.get(r, ""), s.otype.get(o, "")):
            return s.approach(r) or f"move {s.name(o)} to {s.name(r)}"
    return None


def next_action(
    goal: Goal, facts: Iterable[tuple[str, tuple[str, ...]]], names: dict[str, str]
) -> str | None:
    """The expert's next command in the state ``facts``; ``None`` if it has no move."""
    s = _State(facts, names)
    targets = s.of_type(goal.object_target, s.otype)
    held = s.held

    if goal.task_type == "look_at_obj_in_light":
        lamps = s.of_type(goal.toggle_target, s.otype)
        if held is not None and held not in targets:
            return _put_down(s)
        if held is None:
            return _fetch(s, targets)
        for lamp in lamps:
            r = s.inside.get(lamp)
            if r is None:
                continue
            if not s.at(r):
                return f"go to {s.name(r)}"
            return f"use {s.name(lamp)}"
        return None

    parents = s.of_type(goal.parent_target, s.rtype)
    if not parents:
        return None
    parent = parents[0]
    if goal.task_type == "pick_two_obj_and_place":
        # Both objects must end in the same receptacle instance: reuse one already holding one.
        holding_one = [p for p in parents if any(s.inside.get(t) == p for t in targets)]
        parent = holding_one[0] if holding_one else parent
        remaining = [t for t in targets if s.inside.get(t) != parent]
    else:
        remaining = targets

    if held is not None and held not in targets:
        return _put_down(s)
    if held is None:
        # Prefer objects in open or non-openable receptacles, then by name.
        remaining = sorted(
            remaining,
            key=lambda o: (
                s.has("openable", s.inside.get(o, "")) and not s.has("opened", s.inside.get(o, "")),
                s.inside.get(o) not in s.rloc or not s.at(s.inside[o]),
            ),
        )
        return _fetch(s, remaining)

    if goal.task_type in _APPLIANCE:
        appliance_type, done_pred, verb = _APPLIANCE[goal.task_type]
        if not s.has(done_pred, held):
            appliances = s.of_type(appliance_type, s.rtype)
            if not appliances:
                return None
            a = appliances[0]
            if not s.at(a):
                return f"go to {s.name(a)}"
            return f"{verb} {s.name(held)} with {s.name(a)}"
    return s.approach(parent) or f"move {s.name(held)} to {s.name(parent)}"
