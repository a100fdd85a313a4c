"""Built-in ALFWorld game generator: real ``game.tw-pddl`` + ``traj_data.json`` files, offline.

The ``alfworld`` wheel ships the PDDL domain (``alfred.pddl``), the text grammar
(``alfred.twl2``), ALFRED's goal library and the THOR scene layouts
(``alfworld/gen/layouts/FloorPlan*-{objects,openable}.json``), but no games: the official games
are a separate download. This module builds games in the official format from those parts:

* the **receptacles** of a game are the static receptacles of one THOR scene, with the instance
  ids (``Cabinet|+00.68|+00.50|-02.20``) and interaction poses of ``FloorPlan*-openable.json``;
  receptacle types the scene lists without a precomputed pose get synthetic instances;
* the **objects** are the scene's pickable object types (``FloorPlan*-objects.json``), 1-3
  instances each, every instance put in a receptacle that ALFRED allows for its type
  (``constants.VAL_RECEPTACLE_OBJECTS``); cleanable / heatable / coolable / sliceable flags come
  from ``constants.VAL_ACTION_OBJECTS``;
* the **goal** is ALFRED's PDDL goal for the task type (``goal_library.gdict``) and its text one of
  ALFRED's templates ("put a clean mug in coffeemachine."), exactly as ``alfworld-generate``
  writes them into the grammar;
* every game is **checked solvable** with TextWorld's PDDL engine: Fast Downward's plan is
  replayed until the goal check passes; the plan is stored as the ``walkthrough``.

Generation is deterministic: a game is a function of its integer seed and the requested task
types. The generated set is *not* the official ALFWorld benchmark (different object placements,
no human goal annotations); numbers measured on it must say so.

The scenes and the wheel's data files are read in :mod:`.scenes`.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agentgym.environments.alfworld.scenes import (
    LAMPS,
    UNSEEN_SCENES,
    Scene,
    alfred_constants,
    goal_library,
    load_scene,
    logic_files,
    scene_pool,
)

__all__ = [
    "TASK_TYPES",
    "TASK_TYPE_IDS",
    "GameSpec",
    "sample_game",
    "build_game",
    "write_game",
    "generate_game",
    "generate_games",
    "scene_pool",
    "UNSEEN_SCENES",
    "GENERATOR_VERSION",
]

#: Bumped whenever generated files change for a given seed (part of the cache key).
GENERATOR_VERSION = 1

#: ALFWorld's task types and their ids (``alfworld/agents/environment/alfred_tw_env.py``).
TASK_TYPES: dict[int, str] = {
    1: "pick_and_place_simple",
    2: "look_at_obj_in_light",
    3: "pick_clean_then_place_in_recep",
    4: "pick_heat_then_place_in_recep",
    5: "pick_cool_then_place_in_recep",
    6: "pick_two_obj_and_place",
}
TASK_TYPE_IDS: dict[str, int] = {v: k for k, v in TASK_TYPES.items()}

#: Receptacle types needed by the state-changing tasks.
_TASK_APPLIANCE = {
    "pick_clean_then_place_in_recep": "SinkBasin",
    "pick_heat_then_place_in_recep": "Microwave",
    "pick_cool_then_place_in_recep": "Fridge",
}
_TASK_ACTION_FLAG = {
    "pick_clean_then_place_in_recep": "Cleanable",
    "pick_heat_then_place_in_recep": "Heatable",
    "pick_cool_then_place_in_recep": "Coolable",
}
#: Where a lamp stands (THOR lamps are not placeable objects; the goal needs them in a receptacle).
_LAMP_RECEPTACLES = (
    "SideTable",
    "Desk",
    "Dresser",
    "DiningTable",
    "CoffeeTable",
    "Shelf",
    "TVStand",
)
_AGENT = "agent1"


@dataclasses.dataclass(frozen=True)
class GameSpec:
    """What a game asks for (the ``pddl_params`` of ``traj_data.json`` plus the scene)."""

    seed: int
    task_type: str
    scene: int
    object_target: str
    parent_target: str  # "" for look_at_obj_in_light
    toggle_target: str  # "" unless look_at_obj_in_light
    goal_text: str

    @property
    def folder(self) -> str:
        """``<task>-<Obj>-None-<Parent or Lamp>-<scene>`` as in the official data."""
        last = self.toggle_target or self.parent_target
        return f"{self.task_type}-{self.object_target}-None-{last}-{self.scene}"

    @property
    def trial(self) -> str:
        return f"trial_G{self.seed:08d}"


def _can_hold(rtype: str, otype: str) -> bool:
    return otype in alfred_constants().VAL_RECEPTACLE_OBJECTS.get(rtype, ())


def _task_options(scene: Scene, task_type: str) -> list[tuple[str, str, str]]:
    """All (object, parent, toggle) choices the scene supports for ``task_type``."""
    c = alfred_constants()
    if task_type not in c.GOALS_VALID or scene.room not in c.GOALS_VALID[task_type]:
        return []
    rtypes = {r[0] for r in scene.receptacles}
    options = []
    if task_type == "look_at_obj_in_light":
        lamp_spots = rtypes & set(_LAMP_RECEPTACLES)
        if not scene.lamps or not lamp_spots:
            return []
        for obj in scene.object_types:
            if any(_can_hold(r, obj) for r in rtypes):
                options.extend((obj, "", lamp) for lamp in scene.lamps)
        return options
    appliance = _TASK_APPLIANCE.get(task_type)
    if appliance and appliance not in rtypes:
        return []
    for obj in scene.object_types:
        if appliance and obj not in c.VAL_ACTION_OBJECTS[_TASK_ACTION_FLAG[task_type]]:
            continue
        for parent in sorted(rtypes):
            if parent == appliance or not _can_hold(parent, obj):
                continue
            # The objects must start somewhere else than the goal receptacle.
            if not any(_can_hold(r, obj) for r in rtypes - {parent, appliance or ""}):
                continue
            options.append((obj, parent, ""))
    return options


def sample_game(seed: int, task_types: Sequence[str], split: str = "train") -> GameSpec:
    """Pick the task type, scene, target object and receptacle of game ``seed``.

    The task type cycles through ``task_types`` (game ``seed`` gets ``task_types[seed % k]``) so
    that ``k`` consecutive seeds cover every type once.
    """
    if not task_types:
        raise ValueError("task_types is empty; pass some of " + ", ".join(TASK_TYPES.values()))
    task_type = task_types[seed % len(task_types)]
    if task_type not in TASK_TYPE_IDS:
        raise ValueError(f"unknown task type {task_type!r}; use one of {list(TASK_TYPES.values())}")
    rng = random.Random(f"alfworld-game-{seed}")
    scenes = [n for n in scene_pool(split) if _task_options(load_scene(n), task_type)]
    num = rng.choice(scenes)
    obj, parent, toggle = rng.choice(_task_options(load_scene(num), task_type))
    template = rng.choice(goal_library()[task_type]["templates"])
    text = template.format(obj=obj.lower(), recep=parent.lower(), toggle=toggle.lower())
    return GameSpec(seed, task_type, num, obj, parent, toggle, text)


def _mangle(name: str) -> str:
    """ALFRED's id mangling for PDDL (``PlannedGameState.fix_pddl_str_chars``)."""
    for a, b in (
        ("-", "_minus_"),
        ("|", "_bar_"),
        ("+", "_plus_"),
        (".", "_dot_"),
        (",", "_comma_"),
    ):
        name = name.replace(a, b)
    return name


def _loc(pose: tuple[float, float, int, int]) -> str:
    x, z, rot, hor = pose
    return _mangle(f"loc|{round(x / 0.25)}|{round(z / 0.25)}|{rot}|{hor}")


def build_game(spec: GameSpec) -> tuple[dict[str, Any], dict[str, Any]]:
    """The ``(game.tw-pddl, traj_data.json)`` contents of ``spec``, before the solvability check."""
    c = alfred_constants()
    scene = load_scene(spec.scene)
    rng = random.Random(f"alfworld-layout-{spec.seed}")
    appliance = _TASK_APPLIANCE.get(spec.task_type, "")

    # Receptacles, each at its own location (THOR poses can coincide; nudge duplicates).
    used_locs: set[str] = set()
    receptacles: list[tuple[str, str, str]] = []  # (type, mangled id, location)
    for rtype, rid, pose in scene.receptacles:
        x, z, rot, hor = pose
        loc = _loc(pose)
        while loc in used_locs:
            x += 0.25
            loc = _loc((x, z, rot, hor))
        used_locs.add(loc)
        receptacles.append((rtype, _mangle(rid), loc))
    while True:
        start = _loc(
            (rng.randint(-12, 12) / 4, rng.randint(-12, 12) / 4, rng.choice((0, 90, 180, 270)), 30)
        )
        if start not in used_locs:
            break

    # Objects: the scene's placeable types; the target gets the instances the task needs.
    objects: list[tuple[str, str, str]] = []  # (type, mangled id, mangled receptacle id)
    used_ids: set[str] = set()

    def place(otype: str, forbidden: set[str]) -> None:
        spots = [r for r in receptacles if _can_hold(r[0], otype) and r[0] not in forbidden]
        if otype in LAMPS:
            spots = [r for r in receptacles if r[0] in _LAMP_RECEPTACLES]
        if not spots:
            return
        rtype, rmid, _ = rng.choice(spots)
        while True:
            oid = f"{otype}|{rng.uniform(-3, 3):+06.2f}|{rng.uniform(0, 2):+06.2f}|{rng.uniform(-3, 3):+06.2f}"
            if oid not in used_ids:
                break
        used_ids.add(oid)
        objects.append((otype, _mangle(oid), rmid))

    goal_receptacles = {spec.parent_target, appliance} - {""}
    n_target = (
        rng.randint(2, 3) if spec.task_type == "pick_two_obj_and_place" else rng.randint(1, 3)
    )
    for otype in scene.object_types:
        if otype == spec.object_target:
            for _ in range(n_target):
                place(otype, goal_receptacles)
        elif rng.random() < 0.8:
            for _ in range(rng.randint(1, 2)):
                place(otype, set())
    if spec.toggle_target:
        place(spec.toggle_target, set())

    otypes = sorted({o[0] for o in objects} | {"Knife", "ButterKnife"})
    rtypes = sorted({r[0] for r in receptacles} | {"SinkBasin", "Fridge", "Microwave"})
    actions = c.VAL_ACTION_OBJECTS
    lines = ["(define (problem plan_" + spec.trial + ")", "    (:domain alfred)", "    (:objects"]
    lines.append(f"        {_AGENT} - agent")
    lines += [f"        {t}Type - otype" for t in otypes]
    lines += [f"        {t}Type - rtype" for t in rtypes]
    lines += [f"        {r[1]} - receptacle" for r in receptacles]
    lines += [f"        {o[1]} - object" for o in objects]
    lines += [f"        {loc} - location" for loc in sorted(used_locs | {start})]
    lines.append("    )")
    init = [f"(atLocation {_AGENT} {start})"]
    for rtype, rid, loc in receptacles:
        init.append(f"(receptacleAtLocation {rid} {loc})")
        init.append(f"(receptacleType {rid} {rtype}Type)")
        if rtype in c.OPENABLE_CLASS_SET:
            init.append(f"(openable {rid})")
    rloc = {r[1]: r[2] for r in receptacles}
    for otype, oid, rid in objects:
        init.append(f"(inReceptacle {oid} {rid})")
        init.append(f"(objectAtLocation {oid} {rloc[rid]})")
        init.append(f"(objectType {oid} {otype}Type)")
        if otype in LAMPS:
            init.append(f"(toggleable {oid})")
            continue
        init.append(f"(pickupable {oid})")
        for flag, pred in (
            ("Cleanable", "cleanable"),
            ("Heatable", "heatable"),
            ("Coolable", "coolable"),
            ("Sliceable", "sliceable"),
        ):
            if otype in actions[flag]:
                init.append(f"({pred} {oid})")
    for rtype in sorted({r[0] for r in receptacles}):
        for otype in otypes:
            if _can_hold(rtype, otype):
                init.append(f"(canContain {rtype}Type {otype}Type)")
    lines.append("    (:init")
    lines += [f"        {f}" for f in init]
    lines.append("    )")
    goal = goal_library()[spec.task_type]["pddl"].format(
        obj=spec.object_target, recep=spec.parent_target, toggle=spec.toggle_target
    )
    problem = "\n".join(lines) + "\n" + goal.replace("#", "-").strip() + "\n"

    domain, grammar = logic_files()
    game = {
        "pddl_domain": domain,
        "grammar": grammar.replace("UNKNOWN GOAL", spec.goal_text),
        "pddl_problem": problem,
        "solvable": None,
        "walkthrough": None,
    }
    traj = {
        "task_id": spec.trial,
        "task_type": spec.task_type,
        "pddl_params": {
            "object_target": spec.object_target,
            "parent_target": spec.parent_target,
            "toggle_target": spec.toggle_target,
            "mrecep_target": "",
            "object_sliced": False,
        },
        "scene": {
            "floor_plan": f"FloorPlan{spec.scene}",
            "scene_num": spec.scene,
            "random_seed": spec.seed,
        },
        "turk_annotations": {
            "anns": [{"task_desc": spec.goal_text, "high_descs": [], "votes": []}]
        },
        "agentgym": {"generator_version": GENERATOR_VERSION, "seed": spec.seed},
    }
    return game, traj


def solve(
    game: dict[str, Any], traj: dict[str, Any], solver: str = "oracle", max_steps: int = 60
) -> list[str] | None:
    """A winning command sequence for ``game``, certified by TextWorld's PDDL engine.

    ``solver="oracle"`` replays the full-knowledge expert (:mod:`.oracle`); ``"planner"`` asks
    Fast Downward for a plan (slow in large kitchens). Either way every command must be
    admissible when played and the engine's goal check must pass at the end.
    """
    from agentgym.environments.alfworld.engine import PddlGame
    from agentgym.environments.alfworld.oracle import Goal, next_action

    if solver not in ("oracle", "planner"):
        raise ValueError(f"unknown solver {solver!r}: use 'oracle' or 'planner'")
    goal = Goal.from_traj(traj)
    g = _engine(PddlGame)
    g.load(game)
    g.reset()
    plan: list[str] = []
    planned = g.policy_commands() if solver == "planner" else None
    while not g.won and len(plan) < max_steps:
        if planned is not None:
            if not planned:
                return None
            cmd = planned.pop(0)
        else:
            cmd = next_action(goal, g.propositions(), g.names)
        if cmd is None or cmd not in g.admissible_commands:
            return None
        g.step(cmd)
        plan.append(cmd)
    return plan if g.won else None


_ENGINES: dict[str, Any] = {}


def _engine(cls: Any) -> Any:
    """One engine per process (each holds a private copy of Fast Downward's library)."""
    if "engine" not in _ENGINES:
        _ENGINES["engine"] = cls()
    return _ENGINES["engine"]


def write_game(
    root: Path, split: str, spec: GameSpec, game: dict[str, Any], traj: dict[str, Any]
) -> Path:
    """Write ``root/json_2.1.1/<split>/<task folder>/<trial>/{traj_data.json,game.tw-pddl}``."""
    from agentgym.utils import atomic_write_json

    folder = Path(root) / "json_2.1.1" / split / spec.folder / spec.trial
    atomic_write_json(folder / "traj_data.json", traj)
    atomic_write_json(folder / "game.tw-pddl", game, indent=None)
    return folder


def generate_game(
    seed: int,
    task_types: Sequence[str],
    split: str = "train",
    solver: str = "oracle",
    max_tries: int = 20,
) -> tuple[GameSpec, dict[str, Any], dict[str, Any]]:
    """A solvable game for ``seed``: resamples (deterministically) until the planner solves it."""
    for attempt in range(max_tries):
        spec = sample_game(seed, task_types, split)
        if attempt:
            # Same task type, another scene/object: derived seeds keep the result deterministic.
            spec = dataclasses.replace(
                sample_game(seed + 7919 * attempt * len(task_types), task_types, split), seed=seed
            )
        game, traj = build_game(spec)
        plan = solve(game, traj, solver)
        if plan:
            game["solvable"] = True
            game["walkthrough"] = plan
            return spec, game, traj
    raise RuntimeError(f"no solvable game for seed {seed} after {max_tries} tries ({task_types})")


def _generate_and_write(args: tuple[int, tuple[str, ...], str, str, str]) -> str:
    seed, task_types, split, root, solver = args
    spec, game, traj = generate_game(seed, task_types, split, solver)
    return str(write_game(Path(root), split, spec, game, traj))


def generate_games(
    out: str | Path,
    seeds: Sequence[int],
    task_types: Sequence[str] = tuple(TASK_TYPES.values()),
    split: str = "train",
    workers: int = 1,
    progress: bool = False,
    solver: str = "oracle",
) -> list[Path]:
    """Generate one game per seed under ``out`` in the official layout; return the game folders.

    ``workers > 1`` splits the seeds over that many fresh Python processes
    (``python -m agentgym.environments.alfworld.generator``). Fresh interpreters rather than a
    multiprocessing pool: a spawn pool re-imports the caller's ``__main__`` (a script without a
    main guard would build its env, and wait on the cache lock, in every child) and a fork pool
    inherits the caller's threads and locks.
    """
    seeds = [int(s) for s in seeds]
    jobs = [(s, tuple(task_types), split, str(out), solver) for s in seeds]
    if workers <= 1 or len(jobs) <= 1:
        return [Path(r) for r in _progress(map(_generate_and_write, jobs), len(jobs), progress)]
    import subprocess
    import sys

    n = min(workers, len(seeds))
    procs = []
    for k in range(n):
        chunk = seeds[k::n]
        cmd = [
            sys.executable,
            "-m",
            "agentgym.environments.alfworld.generator",
            "--out",
            str(out),
            "--split",
            split,
            "--solver",
            solver,
            "--task-types",
            ",".join(task_types),
            "--seeds",
            ",".join(map(str, chunk)),
        ]
        procs.append(
            subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        )
    folders: dict[int, Path] = {}
    errors = []
    for p in procs:
        stdout, stderr = p.communicate()
        if p.returncode != 0:
            errors.append(
                stderr.strip().splitlines()[-1] if stderr.strip() else f"exit {p.returncode}"
            )
            continue
        for line in stdout.splitlines():
            seed_str, _, folder = line.partition("\t")
            folders[int(seed_str)] = Path(folder)
    if errors:
        raise RuntimeError(f"ALFWorld game generation failed in a worker: {errors[0]}")
    return [folders[s] for s in seeds]


def _progress(it: Any, total: int, enabled: bool) -> Any:
    if not enabled:
        return it
    from tqdm import tqdm

    return tqdm(it, total=total, desc="alfworld games", unit="game")


def _main(argv: Sequence[str] | None = None) -> int:
    """Worker entry point of :func:`generate_games`: prints ``seed<TAB>folder`` per game."""
    import argparse

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--split", default="train")
    p.add_argument("--solver", default="oracle")
    p.add_argument("--task-types", required=True)
    p.add_argument("--seeds", required=True)
    a = p.parse_args(argv)
    types = tuple(a.task_types.split(","))
    for seed in (int(x) for x in a.seeds.split(",")):
        folder = _generate_and_write((seed, types, a.split, a.out, a.solver))
        print(f"{seed}\t{folder}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
