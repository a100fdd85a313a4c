"""ALFWorld household tasks in TextWorld's PDDL engine, behind agentgym's step API.

Each episode is one ALFWorld game (``game.tw-pddl``): the ALFRED PDDL domain, a scene's
receptacles and objects, a goal such as "put a clean mug in coffeemachine". The engine is the
real one: ``textworld.envs.PddlEnv`` with ALFWorld's ``AlfredDemangler`` and ``AlfredInfos``
wrappers (see :mod:`.engine`).

* ``reset`` text is ALFWorld's opening ("You are in the middle of a room. Looking quickly around
  you, you see ...\\n\\nYour task is to: ...") without TextWorld's welcome banner; ``task`` is the
  goal text; ``admissible_actions`` are the engine's admissible commands.
* ``step`` plays an admissible command. Anything else is answered as ALFWorld answers it,
  "Nothing happens.", with ``info["valid"] = False`` and the state unchanged.
* ``won`` is the engine's PDDL goal check; reward 1.0 on the winning step, else 0.
* ``anchor`` is a digest of the true PDDL state (every ground fact, including what the agent
  holds and which receptacles are open - facts the text does not show), without the
  bookkeeping predicate ``checked`` that no precondition or goal reads and without TextWorld's
  ``not_*`` literals of deleted facts (the closed-world state); prefixed by the task id.
* ``expert_action()``: the full-knowledge expert of :mod:`.oracle` (default) or Fast Downward's
  ``policy_commands`` (``expert="planner"``, slow in large kitchens).

Games come from the official download when ``data_dir`` / ``$ALFWORLD_DATA`` holds it, else from
a cached generated set (``source="generated"``), see :mod:`.data` and ``docs/alfworld.md``.
"""

from __future__ import annotations

import hashlib
import logging
import random
import re
from collections.abc import Sequence
from typing import Any

from agentgym.core import Env, Observation
from agentgym.environments.alfworld.data import (
    SPLITS,
    GameRecord,
    collect_games,
    find_data_root,
    generated_games,
    resolve_task_types,
)
from agentgym.environments.alfworld.engine import NOTHING_HAPPENS, PddlGame
from agentgym.environments.alfworld.oracle import Goal, next_action

__all__ = ["AlfWorldEnv", "DEFAULT_GENERATED_GAMES"]

log = logging.getLogger(__name__)

#: Size of the generated set per split when no official data is present.
DEFAULT_GENERATED_GAMES = {"train": 24, "valid_seen": 12, "valid_unseen": 12}
_BANNER_RE = re.compile(r"^\s*-= Welcome to TextWorld, ALFRED! =-\s*")
_TASK_RE = re.compile(r"Your task is to: (.*)$", re.MULTILINE)
#: Predicates left out of the anchor: pure bookkeeping, never read by a precondition or goal.
#: (TextWorld also keeps ``not_<pred>`` literals for facts that were deleted; the anchor is the
#: closed-world PDDL state, i.e. the positive facts only.)
_ANCHOR_IGNORED = frozenset({"checked"})

#: ``agentgym train`` evaluates on ``split="test"``: for ALFWorld that is the unseen split.
SPLIT_ALIASES = {"test": "valid_unseen"}


class AlfWorldEnv(Env):
    """ALFWorld (text) over official or generated games.

    Args:
        split: ``train``, ``valid_seen`` (in-distribution eval) or ``valid_unseen`` (the
            out-of-distribution eval: 134 games in the official data). ``test`` (the split the
            trainer evaluates on) means ``valid_unseen``, the split papers report.
        data_dir: the official data (download root or its ``json_2.1.1``); default
            ``$ALFWORLD_DATA``.
        source: ``auto`` (official data if found, else generated), ``official`` (error without
            it) or ``generated``.
        task_types: ALFWorld task ids 1-6 or names; ``None``: all six.
        num_games: a fixed random subset of ``num_games`` games (official; the same subset
            every time for the same data) / generate that many
            (generated; default :data:`DEFAULT_GENERATED_GAMES`).
        expert: ``oracle`` (full-knowledge expert) or ``planner`` (Fast Downward).
    """

    metadata = {"family": "alfworld"}

    def __init__(
        self,
        split: str = "train",
        data_dir: str | None = None,
        source: str = "auto",
        task_types: Sequence[int | str] | None = None,
        num_games: int | None = None,
        expert: str = "oracle",
        workers: int | None = None,
    ) -> None:
        split = SPLIT_ALIASES.get(split, split)
        if split not in SPLITS:
            raise ValueError(
                f"unknown split {split!r}: use one of {SPLITS} (or test = valid_unseen)"
            )
        if source not in ("auto", "official", "generated"):
            raise ValueError(f"unknown source {source!r}: use auto, official or generated")
        if expert not in ("oracle", "planner"):
            raise ValueError(f"unknown expert {expert!r}: use 'oracle' or 'planner'")
        if num_games is not None and num_games < 1:
            raise ValueError(f"num_games must be >= 1, got {num_games}")
        self.split = split
        self.task_types = resolve_task_types(task_types)
        self.expert = expert
        root = find_data_root(data_dir) if source != "generated" else None
        if root is None and source == "official":
            raise FileNotFoundError(
                "source='official' needs the ALFWorld data (looked in data_dir, $ALFWORLD_DATA and "
                "~/.cache/alfworld): set $ALFWORLD_DATA or data_dir= to "
                "the folder alfworld-download filled (it holds json_2.1.1/), or use "
                "source='generated'"
            )
        if root is not None:
            self.source = "official"
            games = collect_games(root / split, self.task_types)
            if num_games is not None and num_games < len(games):
                # A fixed random subset, not the first N: the sorted list runs type by type,
                # so its head would be one or two task types.
                picked = random.Random(len(games)).sample(range(len(games)), num_games)
                games = [games[i] for i in sorted(picked)]
        else:
            self.source = "generated"
            n = num_games or DEFAULT_GENERATED_GAMES[split]
            gen_root = generated_games(split, n, self.task_types, workers=workers)
            games = collect_games(gen_root / split, self.task_types)
            if source == "auto":
                log.info(
                    "no ALFWorld data found ($ALFWORLD_DATA unset): playing %d generated %s games "
                    "(not the official benchmark)",
                    len(games),
                    split,
                )
        if not games:
            raise ValueError(
                f"no playable ALFWorld games for split={split!r}, task_types={self.task_types} "
                f"in the {self.source} data; check the folder or widen task_types"
            )
        self.games: list[GameRecord] = games
        self._by_id = {g.task_id: i for i, g in enumerate(games)}
        # Seed s plays game _seed_order[s % n]: a fixed shuffle (the same in every process), so
        # a window of consecutive seeds (an eval of 16 episodes, a training step's groups) mixes
        # task types and scenes instead of taking a run of one type from the sorted list, while
        # seeds 0..n-1 still play every game exactly once.
        self._seed_order = list(range(len(games)))
        random.Random(len(games)).shuffle(self._seed_order)
        self._engine: PddlGame | None = None
        self._loaded: int | None = None
        self._game: GameRecord | None = None
        self._goal: Goal | None = None
        self._task = ""
        self._rng = random.Random()
        self._expert_cache: str | None = None
        self._expert_valid = False
        self._done = False
        self._closed = False

    # -- task selection ---------------------------------------------------------------------
    @property
    def tasks(self) -> list[str]:
        """The task ids (``<split>/<task folder>/<trial>``) in index order."""
        return [g.task_id for g in self.games]

    def _pick(self, seed: int | None, options: dict[str, Any] | None) -> int:
        task = (options or {}).get("task")
        if task is not None:
            if isinstance(task, int):
                if not 0 <= task < len(self.games):
                    raise ValueError(f"task index {task} out of range 0..{len(self.games) - 1}")
                return task
            if task in self._by_id:
                return self._by_id[task]
            raise ValueError(f"unknown task {task!r}: pass an index or one of env.tasks")
        if seed is not None:
            return self._seed_order[seed % len(self.games)]
        return self._rng.randrange(len(self.games))

    # -- step API ---------------------------------------------------------------------------
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Observation, dict[str, Any]]:
        if self._closed:
            raise RuntimeError("reset() on a closed AlfWorldEnv; make a new env")
        idx = self._pick(seed, options)
        game = self.games[idx]
        if self._engine is None:
            self._engine = PddlGame()
        if self._loaded != idx:
            self._engine.load(game.game_file)
            self._loaded = idx
        intro = self._engine.reset()
        text = _BANNER_RE.sub("", intro).strip()
        m = _TASK_RE.search(text)
        self._task = m.group(1).strip() if m else ""
        self._game = game
        self._goal = Goal.from_traj(game.traj)
        self._done = False
        self._expert_valid = False
        info = {
            "task_id": game.task_id,
            "task_type": game.task_type,
            "game_file": str(game.game_file),
            "source": self.source,
            "split": self.split,
        }
        return self._observation(text), info

    def step(self, action: str) -> tuple[Observation, float, bool, bool, dict[str, Any]]:
        engine, game = self._engine, self._game
        if engine is None or game is None or self._done:
            raise RuntimeError("step() before reset() or after the episode ended")
        cmd = " ".join(str(action).split()).lower().rstrip(".")
        info: dict[str, Any] = {"task_id": game.task_id, "won": False, "score": 0.0}
        if cmd not in engine.admissible_commands:
            # ALFWorld's engine answers "Nothing happens." and leaves the state as it was.
            info["valid"] = False
            info["won"] = engine.won
            return self._observation(NOTHING_HAPPENS), 0.0, False, False, info
        feedback = engine.step(cmd)
        self._expert_valid = False
        won = engine.won
        self._done = won
        info.update(valid=True, won=won, score=1.0 if won else 0.0)
        return self._observation(feedback), 1.0 if won else 0.0, won, False, info

    def _observation(self, text: str) -> Observation:
        engine, game = self._engine, self._game
        assert engine is not None
        return Observation(
            text=text,
            task=self._task,
            admissible_actions=tuple(engine.admissible_commands),
            anchor=self._anchor(engine, game.task_id if game else ""),
        )

    @staticmethod
    def _anchor(engine: PddlGame, task_id: str) -> str:
        facts = sorted(
            f"{p}({','.join(args)})"
            for p, args in engine.propositions()
            if p not in _ANCHOR_IGNORED and not p.startswith("not_")
        )
        digest = hashlib.sha256("\n".join(facts).encode()).hexdigest()[:32]
        return f"{task_id}#{digest}"

    def state_facts(self) -> list[str]:
        """The true PDDL state as sorted ``pred(arg,...)`` strings (positive facts only)."""
        if self._engine is None:
            return []
        return sorted(
            f"{p}({','.join(a)})"
            for p, a in self._engine.propositions()
            if not p.startswith("not_")
        )

    def expert_action(self) -> str | None:
        engine = self._engine
        if engine is None or self._goal is None or self._done:
            return None
        if not self._expert_valid:
            if self.expert == "planner":
                plan = engine.policy_commands()
                action = plan[0] if plan else None
            else:
                action = next_action(self._goal, engine.propositions(), engine.names)
            if action is not None and action not in engine.admissible_commands:
                action = None
            self._expert_cache, self._expert_valid = action, True
        return self._expert_cache

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._engine is not None:
            self._engine.close()
            self._engine = None
