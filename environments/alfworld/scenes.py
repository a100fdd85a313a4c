"""THOR scenes for the ALFWorld generator, read from the ``alfworld`` wheel: ALFRED's constants
and goal library, the PDDL domain and grammar, and each floor plan's receptacles (with their ids
and interaction poses) and object types."""

from __future__ import annotations

import dataclasses
import functools
import json
import random
from pathlib import Path
from typing import Any

__all__ = [
    "LAMPS",
    "UNSEEN_SCENES",
    "Scene",
    "alfred_constants",
    "goal_library",
    "load_scene",
    "logic_files",
    "scene_pool",
]

#: ALFRED's valid_unseen scenes (one per room type); the generated ``valid_unseen`` split uses
#: only these and the other splits never do, mirroring the official out-of-distribution split.
UNSEEN_SCENES = (10, 219, 308, 424)

LAMPS = ("DeskLamp", "FloorLamp")
#: Receptacle types with several instances in THOR that the pose files do not list.
_DEFAULT_INSTANCES = {"StoveBurner": 4}


@functools.cache
def alfred_constants() -> Any:
    import alfworld.gen.constants as constants

    return constants


@functools.cache
def goal_library() -> dict[str, Any]:
    import alfworld.gen.goal_library as glib

    return glib.gdict


@functools.cache
def logic_files() -> tuple[str, str]:
    """The PDDL domain and the grammar shipped in the ``alfworld`` wheel."""
    import alfworld

    root = Path(alfworld.__file__).parent / "data"
    return (root / "alfred.pddl").read_text(), (root / "alfred.twl2").read_text()


def _layouts_dir() -> Path:
    import alfworld

    return Path(alfworld.__file__).parent / "gen" / "layouts"


def _room_type(scene_num: int) -> str:
    for name, nums in alfred_constants().SCENE_TYPE.items():
        if scene_num in nums:
            return name
    raise ValueError(
        f"scene {scene_num} is not a THOR floor plan (1-30, 201-230, 301-330, 401-430)"
    )


def _static_receptacle_types() -> set[str]:
    c = alfred_constants()
    return set(c.VAL_RECEPTACLE_OBJECTS) - set(c.MOVABLE_RECEPTACLES)


@dataclasses.dataclass(frozen=True)
class Scene:
    """One THOR floor plan as read from the wheel's layout files."""

    num: int
    room: str
    receptacles: tuple[tuple[str, str, tuple[float, float, int, int]], ...]  # (type, id, pose)
    object_types: tuple[str, ...]  # placeable object types present in the scene
    lamps: tuple[str, ...]


@functools.cache
def load_scene(num: int) -> Scene:
    """Read ``FloorPlan{num}-objects.json`` and ``-openable.json`` into a :class:`Scene`."""
    c = alfred_constants()
    d = _layouts_dir()
    objects_file = d / f"FloorPlan{num}-objects.json"
    if not objects_file.exists():
        raise FileNotFoundError(f"no THOR layout {objects_file}; is alfworld==0.4.2 installed?")
    present = set(json.loads(objects_file.read_text()))
    poses = json.loads((d / f"FloorPlan{num}-openable.json").read_text())
    static = _static_receptacle_types()
    receptacles: list[tuple[str, str, tuple[float, float, int, int]]] = []
    for rid, pose in sorted(poses.items()):
        parts = rid.split("|")
        rtype = parts[-1] if len(parts) == 5 else parts[0]  # "Sink|x|y|z|SinkBasin"
        if rtype in static:
            receptacles.append(
                (rtype, rid, (float(pose[0]), float(pose[1]), int(pose[2]), int(pose[3])))
            )
    listed = {r[0] for r in receptacles}
    # Scene receptacles without a precomputed pose (coffee machines, toasters, burners, ...):
    # synthetic instances with deterministic coordinates derived from the scene number.
    rng = random.Random(f"scene-{num}")
    for rtype in sorted((present & static) - listed):
        for _ in range(_DEFAULT_INSTANCES.get(rtype, 1)):
            x, y, z = (rng.randint(-300, 300) / 100 for _ in range(3))
            rid = f"{rtype}|{x:+06.2f}|{abs(y):+06.2f}|{z:+06.2f}"
            pose = (round(x * 4) / 4, round(z * 4) / 4, rng.choice((0, 90, 180, 270)), 30)
            receptacles.append((rtype, rid, pose))
    placeable = set().union(*(c.VAL_RECEPTACLE_OBJECTS[r] for r in static))
    object_types = sorted(t for t in present if t in placeable and t not in static)
    lamps = tuple(t for t in LAMPS if t in present)
    return Scene(num, _room_type(num), tuple(receptacles), tuple(object_types), lamps)


def scene_pool(split: str) -> tuple[int, ...]:
    """Scene numbers a generated split draws from (``valid_unseen``: ALFRED's unseen scenes)."""
    c = alfred_constants()
    if split == "valid_unseen":
        return UNSEEN_SCENES
    if split in ("train", "valid_seen"):
        return tuple(n for n in c.TRAIN_SCENE_NUMBERS if n not in UNSEEN_SCENES)
    raise ValueError(f"unknown split {split!r}: use train, valid_seen or valid_unseen")
