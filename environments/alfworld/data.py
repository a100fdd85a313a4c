"""Finding ALFWorld games: the official download, or a cached generated set.

Official data (``alfworld-download``) is laid out as::

    $ALFWORLD_DATA/json_2.1.1/{train,valid_seen,valid_unseen}/<task folder>/<trial>/
        traj_data.json   game.tw-pddl

:func:`collect_games` applies the rules of ALFWorld's own loader
(``alfworld.agents.environment.alfred_tw_env.AlfredTWEnv.collect_game_files``): trials whose path
contains ``movable`` or ``Sliced`` are skipped (movable receptacles and sliced objects are not
supported by the text engine), then trials of other task types, without a ``game.tw-pddl``,
without the ``solvable`` key, or marked unsolvable. Games are returned sorted by path, so a game
index means the same game on every machine.

Without official data, :func:`generated_games` builds (once, under a file lock, in parallel) and
caches a set made by :mod:`.generator` in the same layout.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agentgym.environments.alfworld.generator import GENERATOR_VERSION, TASK_TYPE_IDS, TASK_TYPES
from agentgym.utils import file_lock

__all__ = [
    "SPLITS",
    "GameRecord",
    "find_data_root",
    "collect_games",
    "generated_games",
    "resolve_task_types",
    "SPLIT_SEED_BASE",
]

SPLITS = ("train", "valid_seen", "valid_unseen")
#: Generated games of a split use seeds ``base, base+1, ...``: the ranges never overlap.
SPLIT_SEED_BASE = {"train": 0, "valid_seen": 1_000_000, "valid_unseen": 2_000_000}


@dataclasses.dataclass(frozen=True)
class GameRecord:
    """One playable game: its files and what it asks for."""

    game_file: Path
    traj: dict[str, Any]
    task_id: str  # "<split>/<task folder>/<trial>"

    @property
    def task_type(self) -> str:
        return str(self.traj["task_type"])


def resolve_task_types(task_types: Sequence[int | str] | None) -> tuple[str, ...]:
    """ALFWorld task ids (1-6) or names -> names, in ALFWorld's id order."""
    if task_types is None:
        return tuple(TASK_TYPES.values())
    out = set()
    for t in task_types:
        if isinstance(t, int) or (isinstance(t, str) and t.isdigit()):
            if int(t) not in TASK_TYPES:
                raise ValueError(f"unknown task type id {t!r}: ALFWorld's ids are {TASK_TYPES}")
            out.add(TASK_TYPES[int(t)])
        elif t in TASK_TYPE_IDS:
            out.add(t)
        else:
            raise ValueError(
                f"unknown task type {t!r}: use an id 1-6 or one of {list(TASK_TYPE_IDS)}"
            )
    if not out:
        raise ValueError("task_types is empty; pass ids 1-6 or names, or None for all six")
    return tuple(sorted(out, key=TASK_TYPE_IDS.__getitem__))


def _split_root(root: Path) -> Path | None:
    for cand in (root / "json_2.1.1", root):
        if any((cand / s).is_dir() for s in SPLITS):
            return cand
    return None


def find_data_root(data_dir: str | os.PathLike[str] | None = None) -> Path | None:
    """The folder holding ``train/``, ``valid_seen/``, ``valid_unseen/`` (i.e. ``json_2.1.1``).

    ``data_dir`` may point at the download root (containing ``json_2.1.1``) or at
    ``json_2.1.1`` itself; a ``data_dir`` without the splits is an error. Without ``data_dir``,
    ``$ALFWORLD_DATA`` and then ``~/.cache/alfworld`` (where ``alfworld-download`` puts the data)
    are tried, and ``None`` means neither holds it. (Importing ``alfworld`` sets
    ``$ALFWORLD_DATA`` to ``~/.cache/alfworld`` and creates that folder empty, so an empty
    ``$ALFWORLD_DATA`` folder is not an error.)
    """
    if data_dir is not None:
        root = Path(os.path.expandvars(os.fspath(data_dir))).expanduser()
        found = _split_root(root)
        if found is None:
            raise FileNotFoundError(
                f"ALFWorld data folder {root} has no json_2.1.1/{{train,valid_seen,valid_unseen}}; "
                "pass the folder alfworld-download filled (or its json_2.1.1), or leave data_dir "
                "unset to use the generated games"
            )
        return found
    candidates = [os.environ.get("ALFWORLD_DATA", ""), "~/.cache/alfworld"]
    for raw in candidates:
        if raw:
            found = _split_root(Path(os.path.expandvars(raw)).expanduser())
            if found is not None:
                return found
    return None


def collect_games(split_dir: str | os.PathLike[str], task_types: Sequence[str]) -> list[GameRecord]:
    """Playable games under ``split_dir`` with ALFWorld's skip rules (see module docstring)."""
    split_dir = Path(split_dir)
    if not split_dir.is_dir():
        raise FileNotFoundError(f"no ALFWorld split folder {split_dir}")
    wanted = set(task_types)
    games = []
    for traj_file in sorted(split_dir.rglob("traj_data.json")):
        root = traj_file.parent
        rel = root.relative_to(split_dir.parent).as_posix()
        if "movable" in rel or "Sliced" in rel:
            continue
        traj = json.loads(traj_file.read_text())
        if traj.get("task_type") not in wanted:
            continue
        game_file = root / "game.tw-pddl"
        if not game_file.exists():
            continue
        game = json.loads(game_file.read_text())
        if not game.get("solvable"):  # missing key, None or False: ALFWorld skips all three
            continue
        games.append(GameRecord(game_file, traj, rel))
    return games


def generated_games(
    split: str,
    num_games: int,
    task_types: Sequence[str],
    *,
    workers: int | None = None,
    progress: bool = False,
) -> Path:
    """The ``json_2.1.1`` folder of a cached generated set (built on first use).

    The set is ``num_games`` games with seeds ``SPLIT_SEED_BASE[split] + i``; the cache key holds
    the generator version, split, size and task types, so changing any of them builds a new set.
    Concurrent callers (env pool workers) wait on a file lock instead of generating twice.
    """
    from agentgym.utils import atomic_write_json, cache_dir

    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: use one of {SPLITS}")
    if num_games < 1:
        raise ValueError(f"num_games must be >= 1, got {num_games}")
    types_key = "-".join(str(TASK_TYPE_IDS[t]) for t in task_types)
    key = f"v{GENERATOR_VERSION}-{split}-n{num_games}-t{types_key}"
    root = cache_dir("alfworld", "generated", key)
    manifest = root / "manifest.json"
    if manifest.exists():
        return root / "json_2.1.1"
    with file_lock(root.parent / f".{key}.lock"):
        if not manifest.exists():
            from agentgym.environments.alfworld.generator import generate_games

            base = SPLIT_SEED_BASE[split]
            n_workers = workers if workers is not None else min(os.cpu_count() or 1, 4)
            folders = generate_games(
                root,
                range(base, base + num_games),
                task_types,
                split=split,
                workers=n_workers,
                progress=progress,
            )
            digest = hashlib.sha256()
            for f in sorted(folders):
                digest.update((f / "game.tw-pddl").read_bytes())
            atomic_write_json(
                manifest,
                {
                    "generator_version": GENERATOR_VERSION,
                    "split": split,
                    "num_games": num_games,
                    "task_types": list(task_types),
                    "sha256": digest.hexdigest(),
                },
            )
    return root / "json_2.1.1"
