"""``TextWorldEnv``: a set of TextWorld games behind the agentgym step API.

One env owns a *set* of games (generated from a preset, or your own ``.z8`` files).
``reset(seed=s)`` plays game ``s % num_games`` of the chosen split; ``reset(options={"task": t})``
picks a game by index or by task id (``"w2-o3-q4/seed5"`` or a file stem).

Observations:

* ``text``: the game's feedback, with TextWorld's ASCII banner, the objective (it is in ``task``),
  the command prompt and the status line removed, and the "Would you like to RESTART ..." trailer
  cut from the final message; the room description is kept.
* ``task``: the game's objective.
* ``admissible_actions``: the commands the game accepts now, sorted.
* ``anchor``: ``"tw:" + sha1(task id, sorted world facts, score, won, lost)[:20]``. The facts are
  TextWorld's logical state (where every object and the player are, what is open, locked, cut,
  cooked ...), which together with the score (quest completions) is the whole game state the
  quests depend on. The turn counter and the expert's bookkeeping are left out, so one state
  reached by different action orders gets one anchor.

Invalid actions: an action that is not one of the admissible commands (after lower-casing and
collapsing whitespace) is answered with an observation saying so, ``info["valid"] = False``,
reward 0, and the episode goes on. The engine is *not* stepped: the game state, the turn counter
of the game and the anchor stay exactly as they were, and no text of Inform's parser ("That's not
a verb I recognise") that the agent could mistake for progress is shown.

Rewards: ``reward="sparse"`` gives 1.0 on the step that wins, else 0; ``reward="dense"`` gives the
score gained by the step divided by the game's ``max_score`` (so a full walkthrough sums to 1.0).
``info`` carries ``won``, ``lost``, ``score`` (raw game points), ``max_score``, ``valid``,
``task_id``.

Engines: starting a game costs ~0.5 s and resetting an open one ~20 ms, so the env keeps up to
``max_open_games`` engines open (least recently used are closed first).
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import json
import re
import warnings
from pathlib import Path
from typing import Any

from agentgym.core import Env, Observation, ResetNeeded

__all__ = ["TextWorldEnv", "clean_feedback", "REQUEST_INFOS"]

#: The TextWorld infos the env requests from the engine.
REQUEST_INFOS = (
    "admissible_commands",
    "won",
    "lost",
    "score",
    "max_score",
    "policy_commands",
    "facts",
    "objective",
)

_BANNER_CHARS = set(" \\|/_$<>()'`-=")
_PROMPT_RE = re.compile(r"\n>[^\n]*\Z")
_TRAILER_RE = re.compile(r"\n\s*Would you like to (?:RESTART|QUIT|UNDO).*\Z", re.DOTALL)
_BLANKS_RE = re.compile(r"\n\s*\n(?:\s*\n)+")


def clean_feedback(text: str, objective: str = "") -> str:
    """Strip TextWorld's presentation noise from a feedback string (see the module docstring)."""
    if objective and objective in text:
        text = text.split(objective, 1)[1]
    else:
        # No objective to split on (hand-made games): drop the banner art line by line.
        text = "\n".join(
            ln for ln in text.split("\n") if not (ln.strip() and set(ln) <= _BANNER_CHARS)
        )
    text = _PROMPT_RE.sub("", text.rstrip())
    text = _TRAILER_RE.sub("", text)
    text = _BLANKS_RE.sub("\n\n", text)
    # Inform centres some lines ("*** The End ***") with runs of spaces: drop all indentation.
    return "\n".join(ln.strip() for ln in text.strip().split("\n"))


def _norm(action: str) -> str:
    a = " ".join(action.strip().lower().split())
    return a.strip("\"'`").rstrip(".!").strip()


class TextWorldEnv(Env):
    """A set of TextWorld games (see the module docstring for observations, rewards, anchors).

    Args:
        preset: the game family and difficulty (``w2-o3-q4``, ``simple-dense``,
            ``cooking-r1-t1-g1`` ...; see :mod:`agentgym.environments.textworld.games`).
        num_games: games in the split; generated on first use and cached.
        num_test_games: games in the ``test`` split when it should differ from ``num_games``
            (a large training set, a smaller held-out one).
        split: ``"train"`` or ``"test"``; the two splits are generated from disjoint seeds, so a
            trainer can evaluate on held-out games.
        reward: ``"sparse"`` (1 on a win) or ``"dense"`` (score gained / max score).
        games_seed: base generation seed (train uses ``games_seed + i``, test
            ``games_seed + 1_000_000 + i``).
        games_dir: play your own TextWorld ``.z8`` games (each with its ``.json``) from this
            folder instead of generating; a ``train/`` or ``test/`` subfolder is used for the
            split when present.
        game_files: an explicit list of ``.z8`` files (overrides ``games_dir`` and ``preset``).
        max_open_games: engines kept open across resets.
        workers: processes used to generate missing games (default: the CPU count).
    """

    metadata = {"family": "textworld"}

    def __init__(
        self,
        preset: str = "w2-o3-q4",
        num_games: int = 8,
        split: str = "train",
        reward: str = "sparse",
        games_seed: int = 0,
        games_dir: str | None = None,
        game_files: list[str] | None = None,
        max_open_games: int = 16,
        workers: int | None = None,
        num_test_games: int | None = None,
    ) -> None:
        if split == "test" and num_test_games is not None:
            num_games = num_test_games
        if reward not in ("sparse", "dense"):
            raise ValueError(f"reward must be 'sparse' or 'dense', got {reward!r}")
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        if max_open_games < 1:
            raise ValueError(f"max_open_games must be >= 1, got {max_open_games}")
        self.preset = preset
        self.split = split
        self.reward_mode = reward
        self.max_open_games = max_open_games
        self.games, self.task_ids = self._resolve_games(
            preset, num_games, split, games_seed, games_dir, game_files, workers
        )
        self._engines: collections.OrderedDict[str, Any] = collections.OrderedDict()
        self._engine: Any = None
        self._state: Any = None
        self._index = -1
        self._next_unseeded = 0
        self._done = True
        self._closed = False
        self._obs: Observation | None = None

    # -- game set -------------------------------------------------------------------------------
    @staticmethod
    def _resolve_games(
        preset: str,
        num_games: int,
        split: str,
        games_seed: int,
        games_dir: str | None,
        game_files: list[str] | None,
        workers: int | None,
    ) -> tuple[list[Path], list[str]]:
        if game_files is not None or games_dir is not None:
            if game_files is not None:
                files = [Path(f) for f in game_files]
            else:
                root = Path(games_dir)  # type: ignore[arg-type]
                if not root.is_dir():
                    raise FileNotFoundError(f"games_dir {root} is not a folder")
                if (root / split).is_dir():
                    root = root / split
                files = sorted(p for p in root.iterdir() if p.suffix in (".z8", ".ulx"))
                if not files:
                    raise FileNotFoundError(
                        f"no .z8 games in {root}; make some with "
                        f"`agentgym textworld generate --preset w2-o3-q4 --n 8 --out {root}`"
                    )
            for f in files:
                if f.suffix == ".ulx":
                    raise ValueError(
                        f"{f}: textworld 1.7 cannot play Glulx (.ulx) games; regenerate the game "
                        "as .z8 (e.g. with `agentgym textworld generate`)"
                    )
                if f.suffix != ".z8" or not f.is_file():
                    raise FileNotFoundError(f"{f} is not a .z8 game file")
                if not f.with_suffix(".json").is_file():
                    raise FileNotFoundError(
                        f"{f} has no {f.with_suffix('.json').name} next to it; TextWorld needs "
                        "the game's .json (written by tw-make / agentgym textworld generate) for "
                        "admissible commands, scores and the walkthrough"
                    )
            return files, [f.stem for f in files]

        from agentgym.environments.textworld.games import game_seeds, generate_games, parse_preset

        p = parse_preset(preset, split=split)
        seeds = game_seeds(split, num_games, games_seed)
        files = generate_games(p, seeds, workers=workers)
        return files, [f"{p.name}/{split}/seed{s}" for s in seeds]

    @property
    def num_games(self) -> int:
        return len(self.games)

    def _pick(self, seed: int | None, options: dict[str, Any] | None) -> int:
        task = (options or {}).get("task")
        if task is not None:
            if isinstance(task, int) and not isinstance(task, bool):
                if not 0 <= task < self.num_games:
                    raise ValueError(f"task index {task} out of range [0, {self.num_games})")
                return task
            if isinstance(task, str):
                for i, (tid, f) in enumerate(zip(self.task_ids, self.games)):
                    if task in (tid, f.stem, str(f)):
                        return i
            raise ValueError(
                f"unknown task {task!r}: use an index in [0, {self.num_games}) or one of "
                f"{self.task_ids[:3]}..."
            )
        if seed is None:
            i = self._next_unseeded % self.num_games
            self._next_unseeded += 1
            return i
        return seed % self.num_games

    def _engine_for(self, path: Path) -> Any:
        key = str(path)
        if key in self._engines:
            self._engines.move_to_end(key)
            return self._engines[key]
        import textworld

        infos = textworld.EnvInfos(**{k: True for k in REQUEST_INFOS})
        with warnings.catch_warnings():
            # Jericho warns that it does not know generated games ("score, move, change
            # detection will be disabled"); TextWorld tracks those itself from the game's .json.
            warnings.filterwarnings("ignore", message=".*is not fully supported.*")
            engine = textworld.start(key, request_infos=infos)
        self._engines[key] = engine
        while len(self._engines) > self.max_open_games:
            _, old = self._engines.popitem(last=False)
            old.close()
        return engine

    # -- step API -------------------------------------------------------------------------------
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Observation, dict[str, Any]]:
        if self._closed:
            raise RuntimeError("reset() on a closed TextWorldEnv; make a new one")
        self._index = self._pick(seed, options)
        self._engine = self._engine_for(self.games[self._index])
        self._state = self._engine.reset()
        self._done = False
        self._obs = self._observe(clean_feedback(self._state.feedback, self._objective()))
        return self._obs, self._info(valid=True)

    def step(self, action: str) -> tuple[Observation, float, bool, bool, dict[str, Any]]:
        if self._done or self._state is None or self._obs is None:
            raise ResetNeeded("step() before reset() or after the episode ended; call reset()")
        command = self._lookup(action)
        if command is None:
            shown = " ".join(str(action).split())[:120]
            text = (
                f'"{shown}" is not a valid action here, so nothing happened. Reply with one of '
                "the admissible actions, written exactly as listed."
                if shown
                else "The action was empty, so nothing happened. Reply with one of the "
                "admissible actions, written exactly as listed."
            )
            obs = Observation(
                text=text,
                task=self._obs.task,
                admissible_actions=self._obs.admissible_actions,
                anchor=self._obs.anchor,
            )
            return obs, 0.0, False, False, self._info(valid=False)
        before = float(self._state.score or 0)
        self._state, _, done = self._engine.step(command)
        won, lost = bool(self._state.won), bool(self._state.lost)
        terminated = bool(done or won or lost)
        self._done = terminated
        self._obs = self._observe(clean_feedback(self._state.feedback))
        if self.reward_mode == "sparse":
            reward = 1.0 if won else 0.0
        else:
            gained = float(self._state.score or 0) - before
            reward = gained / max(1.0, float(self._state.max_score or 1))
        return self._obs, reward, terminated, False, self._info(valid=True)

    def expert_action(self) -> str | None:
        """The next command of TextWorld's walkthrough from the current state (``None`` once
        the game is over or when no winning policy is known, e.g. after an irreversible
        mistake)."""
        if self._state is None or self._done:
            return None
        policy = self._state.policy_commands
        return policy[0] if policy else None

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        engines, self._engines = list(self._engines.values()), collections.OrderedDict()
        for engine in engines:
            # An engine that died on its own is closed already.
            with contextlib.suppress(Exception):
                engine.close()
        self._engine = self._state = None

    # -- helpers --------------------------------------------------------------------------------
    def _objective(self) -> str:
        return str(self._state.objective or "") if self._state is not None else ""

    def _lookup(self, action: str) -> str | None:
        if not isinstance(action, str):
            return None
        wanted = _norm(action)
        if not wanted:
            return None
        for cmd in self._state.admissible_commands or ():
            if _norm(cmd) == wanted:
                return cmd
        return None

    def anchor(self) -> str:
        """The canonical key of the current game state (see the module docstring)."""
        st = self._state
        facts = sorted(str(f) for f in (st.facts or ()))
        blob = json.dumps(
            [self.task_ids[self._index], facts, st.score, bool(st.won), bool(st.lost)],
            separators=(",", ":"),
        )
        return "tw:" + hashlib.sha1(blob.encode()).hexdigest()[:20]

    def _observe(self, text: str) -> Observation:
        st = self._state
        actions = tuple(sorted(set(st.admissible_commands or ()))) if not self._done else ()
        return Observation(
            text=text or "(no response)",
            task=self._objective(),
            admissible_actions=actions,
            anchor=self.anchor(),
        )

    def _info(self, *, valid: bool) -> dict[str, Any]:
        st = self._state
        return {
            "task_id": self.task_ids[self._index],
            "won": bool(st.won),
            "lost": bool(st.lost),
            "score": float(st.score or 0),
            "max_score": float(st.max_score or 0),
            "valid": valid,
        }
