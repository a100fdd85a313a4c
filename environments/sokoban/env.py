"""``SokobanEnv``: procedurally generated Sokoban puzzles behind the agentgym step API.

A puzzle is a walled room with interior walls, ``boxes`` boxes, as many targets and the player.
The agent moves with ``up`` / ``down`` / ``left`` / ``right``; walking into a box pushes it one
cell if the cell behind it is free. The puzzle is solved when every box is on a target.

Tasks: ``reset(seed=s)`` generates the puzzle from ``(split, s)`` and nothing else, so every
seed is a task, the set is effectively unlimited, and G copies reset with one seed play the same
puzzle (a GRPO/GiGPO group). The splits are disjoint *as puzzles*, not just as seeds: a puzzle
belongs to the ``train`` split when the first bit of the SHA-1 of its layout is 0 and to
``test`` when it is 1 (the generator redraws until the bit matches), so no held-out puzzle is
ever a training puzzle, even by coincidence of two seeds.

Generation draws interior walls (keeping the floor connected), targets, boxes and the player,
then solves the puzzle with BFS and keeps it only when the shortest solution has between
``min_solution`` and ``max_solution`` moves. Everything is pure Python; a step costs
microseconds (the deadlock check below runs a BFS over at most a few thousand states on the
registered sizes).

Observations:

* ``text``: the grid, one row per line, cells separated by spaces (so a byte-level BPE keeps one
  token per cell): ``#`` wall, ``_`` floor, ``O`` target, ``X`` box, ``*`` box on target,
  ``P`` player, ``+`` player on target; with ``render="grid+coords"`` (the default) followed by
  the player's row and column and each box and target as an offset from the player
  ("Box 1: 1 down, 1 left."): the same state, spelled out.
* ``task``: the goal in one sentence.
* ``admissible_actions``: the moves that change the state now (a move into a wall, or a push
  against a wall or another box, is left out).
* ``anchor``: ``"sokoban:" + sha1(walls, targets, boxes, player)[:20]``: the full state and
  nothing else (no turn counter), so the same state reached along different paths, in different
  episodes of a group, has one anchor.
* ``image``: a PNG of the grid (``cell_px`` pixels per cell), written with ``zlib`` + ``struct``.

Invalid actions: text that is not one of the four moves (after lower-casing; ``u/d/l/r`` and
``north/south/west/east`` are accepted as aliases) is answered with an observation that says so,
``info["valid"] = False``, reward 0; the state does not change. A legal-looking move that is
blocked (a wall, or a box that cannot move) is also answered with ``valid=False`` and no state
change, and the observation says what blocked it. The episode goes on in both cases.

Dead ends: after each move the env checks with the solver whether the puzzle can still be solved
(a box pushed into a corner cannot). With ``end_on_deadlock=True`` (default) an unsolvable state
ends the episode (``terminated``, ``info["lost"] = True``, reward 0): nothing the agent does
afterwards matters, and ending saves the turns.

Rewards: ``reward="sparse"`` gives 1.0 on the move that solves the puzzle, else 0;
``reward="dense"`` gives ``(boxes on targets gained) / boxes`` per move, so a solution sums to
1.0 (pushing a box off a target costs what pushing it on gave); ``reward="progress"`` is
potential-based shaping with the solver's moves-to-go ``d`` as the potential: each move earns
``(d_before - d_after) / L`` (``L``: the start's shortest solution), so a move towards the
solution earns ``+1/L``, a move away ``-1/L``, and an optimal solution sums to 1.0. A turn that
changes nothing (a blocked move, or text that is not a move) costs ``-1/L`` like a move away: it
spends one of the turns the solution needs, and a free no-op would be the safest answer a policy
could learn. A dead end loses all progress made and one move more (the episode's return becomes
``-1/L``, or one move less than it was if that is lower), so ending an episode in a dead end is
never cheaper than going on. Success (``won``) is the same in every mode. ``info`` carries ``won``,
``lost``, ``score`` (boxes on targets), ``valid``, ``task_id`` and ``solution_len`` (the
shortest solution's length from the start).

Expert: :meth:`SokobanEnv.expert_action` is the first move of a shortest solution (BFS) from the
current state, or ``None`` in a dead end.

The puzzles themselves (moves, solver, generator) are in :mod:`.puzzle`, the text grid and the
PNG in :mod:`.render`; this module holds the env.
"""

from __future__ import annotations

import hashlib
from typing import Any

from agentgym.core import Env, Observation, ResetNeeded
from agentgym.environments.gridmoves import not_a_move, offset_words, parse_move, task_seed
from agentgym.environments.sokoban.puzzle import (
    MOVES,
    Cell,
    Puzzle,
    apply_move,
    generate,
    solve,
    state_key,
)
from agentgym.environments.sokoban.render import grid_rows, render_png

__all__ = [
    "SokobanEnv",
    "Puzzle",
    "generate",
    "solve",
    "render_png",
    "MOVES",
]

TASK_TEXT = (
    "Push every box (X) onto a target (O). Moves: up, down, left, right; walking into a box "
    "pushes it."
)


class SokobanEnv(Env):
    """Generated Sokoban puzzles (see the module docstring for tasks, observations, rewards).

    Args:
        height, width: room size including the outer wall (at least 4x4).
        boxes: boxes (and targets) per puzzle.
        min_solution, max_solution: the shortest solution of a generated puzzle has between
            these many moves (the difficulty knob that matters most).
        max_walls: interior walls drawn per room (0 to this many).
        split: ``"train"`` or ``"test"``: disjoint puzzle sets (see the module docstring).
        reward: ``"sparse"`` (1 on solving), ``"dense"`` (boxes placed / boxes per move) or
            ``"progress"`` (solver moves-to-go shaping, see the module docstring).
        render: ``"grid"`` or ``"grid+coords"`` (the grid plus positions and offsets in words).
        image: attach a PNG of the grid to every observation.
        cell_px: pixels per cell of the PNG.
        end_on_deadlock: end the episode (lost) as soon as the puzzle cannot be solved anymore.
    """

    metadata = {"family": "sokoban"}

    def __init__(
        self,
        height: int = 6,
        width: int = 6,
        boxes: int = 1,
        min_solution: int = 1,
        max_solution: int = 12,
        max_walls: int = 3,
        split: str = "train",
        reward: str = "sparse",
        render: str = "grid+coords",
        image: bool = True,
        cell_px: int = 16,
        end_on_deadlock: bool = True,
    ) -> None:
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        if reward not in ("sparse", "dense", "progress"):
            raise ValueError(f"reward must be 'sparse', 'dense' or 'progress', got {reward!r}")
        if render not in ("grid", "grid+coords"):
            raise ValueError(f"render must be 'grid' or 'grid+coords', got {render!r}")
        if height < 4 or width < 4:
            raise ValueError(f"the room must be at least 4x4 with its walls, got {height}x{width}")
        if boxes < 1 or 2 * boxes + 1 > (height - 2) * (width - 2):
            raise ValueError(
                f"boxes={boxes} does not fit a {height}x{width} room: use 1 to "
                f"{((height - 2) * (width - 2) - 1) // 2}"
            )
        if not 0 <= min_solution <= max_solution:
            raise ValueError(
                f"need 0 <= min_solution <= max_solution, got {min_solution}, {max_solution}"
            )
        self.height, self.width, self.num_boxes = height, width, boxes
        self.min_solution, self.max_solution, self.max_walls = min_solution, max_solution, max_walls
        self.split, self.reward_mode, self.render_mode = split, reward, render
        self.image, self.cell_px, self.end_on_deadlock = image, cell_px, end_on_deadlock
        self.puzzle: Puzzle | None = None
        self.boxes: frozenset[Cell] = frozenset()
        self.player: Cell = (0, 0)
        self._task_id = ""
        self._solution_len = 0
        self._next_unseeded = 0
        self._done = True
        self._lost = False
        self._obs: Observation | None = None
        self._plans: dict[tuple[Cell, frozenset[Cell]], list[str] | None] = {}

    # -- step API ---------------------------------------------------------------------------------
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Observation, dict[str, Any]]:
        task = (options or {}).get("task")
        if task is not None:
            seed = task_seed(
                task, f"sokoban-{self.height}x{self.width}-b{self.num_boxes}/{self.split}/seed3"
            )
        if seed is None:
            seed = self._next_unseeded
            self._next_unseeded += 1
        self.puzzle = generate(
            seed,
            self.split,
            height=self.height,
            width=self.width,
            boxes=self.num_boxes,
            min_solution=self.min_solution,
            max_solution=self.max_solution,
            max_walls=self.max_walls,
        )
        self.boxes, self.player = self.puzzle.boxes, self.puzzle.player
        self._task_id = (
            f"sokoban-{self.height}x{self.width}-b{self.num_boxes}/{self.split}/seed{seed}"
        )
        self._plans = {}
        self._solution_len = len(self._plan() or [])
        self._done, self._lost = False, False
        self._obs = self._observe("A new puzzle.")
        return self._obs, self._info(valid=True)

    def step(self, action: str) -> tuple[Observation, float, bool, bool, dict[str, Any]]:
        if self._done or self.puzzle is None or self._obs is None:
            raise ResetNeeded("step() before reset() or after the episode ended; call reset()")
        move = parse_move(action, ("move", "go", "push"))
        if move is None:
            return self._nothing_happened(not_a_move(action))
        out = apply_move(self.puzzle.walls, self.boxes, self.player, move)
        if out is None:
            dr, dc = MOVES[move]
            ahead = (self.player[0] + dr, self.player[1] + dc)
            what = "a wall" if ahead in self.puzzle.walls else "a box that cannot move"
            text = f"You cannot move {move}: {what} is in the way. Nothing happened."
            return self._nothing_happened(text)
        before = len(self.boxes & self.puzzle.targets)
        togo_before = len(self._plan() or []) if self.reward_mode == "progress" else 0
        self.player, self.boxes, kind = out
        after = len(self.boxes & self.puzzle.targets)
        won = self.boxes <= self.puzzle.targets
        # Walking never changes whether the puzzle can be solved (every walk can be walked
        # back); only a push can, so only pushes pay for the check.
        if kind == "push" and not won and self.end_on_deadlock and self._plan() is None:
            self._lost = True
        self._done = won or self._lost
        if won:
            msg = f"You pushed the box {move}. Every box is on a target: solved!"
        elif self._lost:
            msg = f"You pushed the box {move}. It can no longer reach a target: puzzle lost."
        else:
            msg = f"You pushed the box {move}." if kind == "push" else f"You moved {move}."
        self._obs = self._observe(msg)
        if self.reward_mode == "sparse":
            reward = 1.0 if won else 0.0
        elif self.reward_mode == "dense":
            reward = (after - before) / self.num_boxes
        else:
            # Potential-based shaping (Ng et al. 1999) with the solver's moves-to-go as the
            # potential: +1/L for a move that brings the solution one move closer, -1/L for one
            # that takes it one further, where L is the start's shortest solution. An optimal
            # solution sums to 1.0. A dead end's potential is that of L + 1 moves to go (or one
            # more than before, if that is further): the progress made so far is taken back, so
            # a dead end never pays better than playing on.
            length = max(1, self._solution_len)
            if self._lost:
                togo_after = max(togo_before + 1, length + 1)
            else:
                togo_after = len(self._plan() or [])
            reward = (togo_before - togo_after) / length
        return self._obs, reward, self._done, False, self._info(valid=True)

    def _nothing_happened(self, text: str) -> tuple[Observation, float, bool, bool, dict[str, Any]]:
        """The step result of a turn that changes nothing (not a move, or a blocked one): the
        same state with ``text`` as the event, ``valid=False``, and under ``progress`` a reward
        of ``-1/L`` (a turn spent like a move away), else 0."""
        reward = -1.0 / max(1, self._solution_len) if self.reward_mode == "progress" else 0.0
        return self._same_state(text), reward, False, False, self._info(valid=False)

    def expert_action(self) -> str | None:
        """The first move of a shortest solution from the current state (``None`` when the
        episode is over or the puzzle cannot be solved from here)."""
        if self._done or self.puzzle is None:
            return None
        plan = self._plan()
        return plan[0] if plan else None

    def render(self) -> str:
        """The grid as text (the first part of the observation)."""
        return "\n".join(" ".join(row) for row in self._cells())

    def render_image(self) -> bytes:
        """The current state as a PNG."""
        return render_png(self._cells(), self.cell_px)

    # -- helpers ------------------------------------------------------------------------------------
    def _plan(self) -> list[str] | None:
        """A shortest solution from the current state (cached per state)."""
        assert self.puzzle is not None
        key = (self.player, self.boxes)
        if key not in self._plans:
            try:
                self._plans[key] = solve(
                    self.puzzle.walls, self.puzzle.targets, self.boxes, self.player
                )
            except OverflowError:  # unknown: keep playing, no expert move
                self._plans[key] = []
        return self._plans[key]

    def _cells(self) -> list[list[str]]:
        assert self.puzzle is not None
        p = self.puzzle
        return grid_rows(p.height, p.width, p.walls, p.targets, self.boxes, self.player)

    def anchor(self) -> str:
        """The canonical key of the current state (see the module docstring)."""
        assert self.puzzle is not None
        p = self.puzzle
        key = state_key(p.height, p.width, p.walls, p.targets, self.boxes, self.player)
        return "sokoban:" + hashlib.sha1(key.encode()).hexdigest()[:20]

    def _describe(self) -> str:
        assert self.puzzle is not None
        pr, pc = self.player
        lines = [f"You: row {pr + 1}, col {pc + 1}."]
        for kind, cells in (("box", self.boxes), ("target", self.puzzle.targets)):
            for i, (r, c) in enumerate(sorted(cells), 1):
                label = kind if len(cells) == 1 else f"{kind} {i}"
                lines.append(f"{label.capitalize()}: {offset_words(r - pr, c - pc)}.")
        return "\n".join(lines)

    def _observe(self, message: str) -> Observation:
        parts = [message, self.render()]
        if self.render_mode == "grid+coords":
            parts.append(self._describe())
        actions: tuple[str, ...] = ()
        if not self._done:
            assert self.puzzle is not None
            actions = tuple(
                m for m in MOVES if apply_move(self.puzzle.walls, self.boxes, self.player, m)
            )
        return Observation(
            text="\n".join(parts),
            task=TASK_TEXT,
            admissible_actions=actions,
            anchor=self.anchor(),
            image=self.render_image() if self.image else None,
        )

    def _same_state(self, message: str) -> Observation:
        assert self._obs is not None
        body = self._obs.text.split("\n", 1)[1]  # the state part, without the last message
        return Observation(
            text=message + "\n" + body,
            task=self._obs.task,
            admissible_actions=self._obs.admissible_actions,
            anchor=self._obs.anchor,
            image=self._obs.image,
        )

    def _info(self, *, valid: bool) -> dict[str, Any]:
        assert self.puzzle is not None
        return {
            "task_id": self._task_id,
            "won": bool(self.boxes <= self.puzzle.targets),
            "lost": self._lost,
            "score": float(len(self.boxes & self.puzzle.targets)),
            "valid": valid,
            "solution_len": self._solution_len,
        }
