"""``FrozenLakeEnv``: generated frozen lakes behind the agentgym step API.

A lake is a ``height`` x ``width`` grid of ice with holes, a start and a goal. The agent walks
``up`` / ``down`` / ``left`` / ``right``; stepping into a hole ends the episode (lost), reaching the
goal ends it (won). With ``slip > 0`` the ice is slippery: a move goes the intended way with
probability ``1 - slip`` and otherwise to one of the two perpendicular sides (Gymnasium's
``is_slippery`` lake is ``slip=2/3``).

Tasks: ``reset(seed=s)`` generates the lake of ``(split, s)`` and nothing else, so every seed is a
task and G copies reset with one seed play the same lake (a GRPO/GiGPO group). The splits are
disjoint *as lakes*: a lake belongs to ``train`` when the first bit of the SHA-1 of its layout
(size, holes, start, goal) is 0 and to ``test`` when it is 1; the generator redraws until the bit
matches, so no held-out lake is ever a training lake.

Generation draws holes (each cell with probability ``hole_frac``), a start and a goal, and keeps
the lake when the goal is reachable and the shortest safe path has between ``min_path`` and
``max_path`` moves. Pure Python; a step costs microseconds.

Observations:

* ``text``: the last event, then the grid, one row per line, cells separated by spaces (one BPE
  token per cell): ``_`` ice, ``H`` hole, ``G`` goal, ``P`` the agent; with
  ``render="grid+coords"`` (the default) the agent's row and column, the goal as an offset in
  words ("Goal: 2 down, 3 right.") and what lies one step each way ("Around you: up ice, down
  hole, left edge, right goal.").
* ``admissible_actions``: the moves that stay on the lake (a move into a hole is admissible: it
  is legal, and fatal).
* ``anchor``: ``"frozenlake:" + sha1(layout, agent)[:20]``: the state and nothing else, so states
  recur across a group's episodes and GiGPO's step groups fill.
* ``image``: a PNG of the grid (``cell_px`` pixels per cell).

Invalid actions never raise: text that is not a move, and a move off the edge of the lake, are
answered with an observation that says so, ``info["valid"] = False``, reward 0, no change.

Rewards: ``reward="sparse"`` (default) gives 1.0 on reaching the goal; ``reward="progress"`` is
potential-based shaping with the shortest safe path ``d`` to the goal as the potential: a move
earns ``(d_before - d_after) / L`` (``L``: the start's shortest path), so the shortest walk sums
to 1.0; a turn that changes nothing costs ``-1/L``, and falling into a hole sets the return to
``-1/L`` (or one move less than it was, if lower). ``won`` is the same in both modes.

Expert: :meth:`FrozenLakeEnv.expert_action` is the first move of a shortest safe path (BFS) from
the current cell. On slippery ice it is not optimal (it does not hedge against slipping), but it
always heads for the goal.
"""

from __future__ import annotations

import hashlib
import random
from collections import deque
from dataclasses import dataclass
from typing import Any

from agentgym.core import Env, Observation, ResetNeeded
from agentgym.environments.gridmoves import MOVES, not_a_move, offset_words, parse_move, task_seed
from agentgym.environments.gridpng import grid_png

__all__ = ["FrozenLakeEnv", "Lake", "generate", "shortest_path"]

Cell = tuple[int, int]
_PERPENDICULAR = {
    "up": ("left", "right"),
    "down": ("left", "right"),
    "left": ("up", "down"),
    "right": ("up", "down"),
}
#: Observation renderings (``render=``).
RENDERS = ("grid", "grid+coords", "local")
TASK_TEXT = (
    "Walk across the frozen lake to the goal (G) without stepping into a hole (H). "
    "Moves: up, down, left, right."
)


@dataclass(frozen=True)
class Lake:
    """One generated lake: its size, holes, start and goal (cells are ``(row, col)``)."""

    height: int
    width: int
    holes: frozenset[Cell]
    start: Cell
    goal: Cell

    def inside(self, cell: Cell) -> bool:
        return 0 <= cell[0] < self.height and 0 <= cell[1] < self.width

    def key(self) -> str:
        holes = ";".join(f"{r},{c}" for r, c in sorted(self.holes))
        return f"{self.height}x{self.width}|{holes}|{self.start}|{self.goal}"


def shortest_path(lake: Lake, frm: Cell) -> list[str] | None:
    """The moves of a shortest path from ``frm`` to the goal that never enters a hole (BFS, moves
    tried in the order up, down, left, right); ``[]`` at the goal, ``None`` when unreachable."""
    if frm == lake.goal:
        return []
    prev: dict[Cell, tuple[Cell, str]] = {}
    seen = {frm}
    queue = deque([frm])
    while queue:
        cell = queue.popleft()
        for move, (dr, dc) in MOVES.items():
            nxt = (cell[0] + dr, cell[1] + dc)
            if nxt in seen or not lake.inside(nxt) or nxt in lake.holes:
                continue
            seen.add(nxt)
            prev[nxt] = (cell, move)
            if nxt == lake.goal:
                path = []
                while nxt != frm:
                    nxt, m = prev[nxt]
                    path.append(m)
                return path[::-1]
            queue.append(nxt)
    return None


def _split_bit(lake: Lake) -> int:
    return hashlib.sha1(lake.key().encode()).digest()[0] >> 7


def generate(
    seed: int,
    split: str,
    *,
    height: int = 6,
    width: int = 6,
    hole_frac: float = 0.2,
    min_path: int = 1,
    max_path: int = 10,
    max_tries: int = 20_000,
) -> Lake:
    """The lake of ``(split, seed)``: drawn until its shortest safe path has ``min_path`` to
    ``max_path`` moves and it falls on the ``split``'s side of the layout hash."""
    want = {"train": 0, "test": 1}[split]
    rng = random.Random(f"frozenlake/{height}x{width}/{hole_frac}/{seed}")
    cells = [(r, c) for r in range(height) for c in range(width)]
    for _ in range(max_tries):
        start, goal = rng.sample(cells, 2)
        holes = frozenset(
            cell for cell in cells if cell not in (start, goal) and rng.random() < hole_frac
        )
        lake = Lake(height, width, holes, start, goal)
        if _split_bit(lake) != want:
            continue
        path = shortest_path(lake, start)
        if path is not None and min_path <= len(path) <= max_path:
            return lake
    raise RuntimeError(
        f"no {height}x{width} lake with a safe path of {min_path}-{max_path} moves after "
        f"{max_tries} draws (seed {seed}); widen the path range or lower hole_frac"
    )


_COLORS = {
    "_": (205, 230, 245),  # ice
    "H": (30, 50, 90),  # hole
    "G": (60, 170, 80),  # goal
    "P": (205, 230, 245),  # agent (ice + disc)
}


def _tile(sym: str, k: int) -> list[bytes]:
    rows = []
    for y in range(k):
        row = bytearray()
        for x in range(k):
            dy, dx = y - (k - 1) / 2, x - (k - 1) / 2
            px = _COLORS[sym]
            if sym == "P" and dx * dx + dy * dy <= (k * 0.3) ** 2:
                px = (200, 60, 40)
            if x in (0, k - 1) or y in (0, k - 1):
                px = tuple(max(0, v - 40) for v in px)  # cell outline
            row += bytes(px)
        rows.append(bytes(row))
    return rows


class FrozenLakeEnv(Env):
    """Generated frozen lakes (see the module docstring for tasks, observations and rewards).

    Args:
        height, width: lake size (at least 2x2).
        hole_frac: chance that a cell other than start and goal is a hole.
        min_path, max_path: the shortest safe path of a generated lake has between these many
            moves (the main difficulty knob, with ``hole_frac``).
        slip: chance that a move slides to one of the two perpendicular sides instead (0: no
            slipping; Gymnasium's slippery lake is 2/3). The slides are drawn from a generator
            seeded by the reset seed, so an episode replays exactly from its seed and actions.
        split: ``"train"`` or ``"test"``: disjoint lake sets.
        reward: ``"sparse"`` or ``"progress"``.
        render: ``"grid"`` (the grid only), ``"grid+coords"`` (the grid, the agent's cell, the
            goal as an offset and the four neighbours) or ``"local"`` (the offset and the
            neighbours without the grid: a short prompt that holds what a reactive policy needs).
        image: attach a PNG of the grid to every observation.
        cell_px: pixels per cell of the PNG.
    """

    metadata = {"family": "frozenlake"}

    def __init__(
        self,
        height: int = 6,
        width: int = 6,
        hole_frac: float = 0.2,
        min_path: int = 1,
        max_path: int = 10,
        slip: float = 0.0,
        split: str = "train",
        reward: str = "sparse",
        render: str = "grid+coords",
        image: bool = True,
        cell_px: int = 16,
    ) -> None:
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        if reward not in ("sparse", "progress"):
            raise ValueError(f"reward must be 'sparse' or 'progress', got {reward!r}")
        if render not in RENDERS:
            raise ValueError(f"render must be one of {', '.join(RENDERS)}; got {render!r}")
        if height < 2 or width < 2:
            raise ValueError(f"the lake must be at least 2x2, got {height}x{width}")
        if not 0.0 <= hole_frac < 1.0:
            raise ValueError(f"hole_frac must be in [0, 1), got {hole_frac}")
        if not 0.0 <= slip < 1.0:
            raise ValueError(f"slip must be in [0, 1), got {slip}")
        if not 0 <= min_path <= max_path:
            raise ValueError(f"need 0 <= min_path <= max_path, got {min_path}, {max_path}")
        self.height, self.width, self.hole_frac = height, width, hole_frac
        self.min_path, self.max_path, self.slip = min_path, max_path, slip
        self.split, self.reward_mode, self.render_mode = split, reward, render
        self.image, self.cell_px = image, cell_px
        self.lake: Lake | None = None
        self.agent: Cell = (0, 0)
        self._rng = random.Random(0)
        self._task_id = ""
        self._path_len = 0
        self._next_unseeded = 0
        self._done = True
        self._lost = False
        self._return = 0.0
        self._obs: Observation | None = None
        self._paths: dict[Cell, list[str] | None] = {}

    # -- step API ---------------------------------------------------------------------------------
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Observation, dict[str, Any]]:
        task = (options or {}).get("task")
        if task is not None:
            seed = task_seed(task, f"frozenlake-{self.height}x{self.width}/{self.split}/seed3")
        if seed is None:
            seed = self._next_unseeded
            self._next_unseeded += 1
        self.lake = generate(
            seed,
            self.split,
            height=self.height,
            width=self.width,
            hole_frac=self.hole_frac,
            min_path=self.min_path,
            max_path=self.max_path,
        )
        self.agent = self.lake.start
        self._rng = random.Random(f"frozenlake-slip/{self.split}/{seed}")
        self._task_id = f"frozenlake-{self.height}x{self.width}/{self.split}/seed{seed}"
        self._paths = {}
        self._path_len = len(self._path(self.agent) or [])
        self._done, self._lost, self._return = False, False, 0.0
        self._obs = self._observe("A new lake.")
        return self._obs, self._info(valid=True)

    def step(self, action: str) -> tuple[Observation, float, bool, bool, dict[str, Any]]:
        if self._done or self.lake is None or self._obs is None:
            raise ResetNeeded("step() before reset() or after the episode ended; call reset()")
        move = parse_move(action, ("move", "go", "walk"))
        if move is None:
            return self._nothing_happened(not_a_move(action))
        went = move
        if self.slip and self._rng.random() < self.slip:
            went = self._rng.choice(_PERPENDICULAR[move])
        dr, dc = MOVES[went]
        nxt = (self.agent[0] + dr, self.agent[1] + dc)
        slid = "" if went == move else f"The ice is slippery: you slid {went} instead of {move}. "
        if not self.lake.inside(nxt):
            return self._nothing_happened(
                f"{slid}You cannot move {went}: that is the edge of the lake. Nothing happened."
            )
        before = len(self._path(self.agent) or []) if self.reward_mode == "progress" else 0
        self.agent = nxt
        won = nxt == self.lake.goal
        self._lost = nxt in self.lake.holes
        self._done = won or self._lost
        if won:
            msg = f"{slid}You moved {went} and reached the goal!"
        elif self._lost:
            msg = f"{slid}You moved {went} and fell into a hole: episode lost."
        else:
            msg = f"{slid}You moved {went}."
        self._obs = self._observe(msg)
        if self.reward_mode == "sparse":
            reward = 1.0 if won else 0.0
        else:
            length = max(1, self._path_len)
            if self._lost:  # the progress made is taken back, and one move more
                reward = min(-1.0 / length, self._return - 1.0 / length) - self._return
            else:
                reward = (before - len(self._path(self.agent) or [])) / length
        self._return += reward
        return self._obs, reward, self._done, False, self._info(valid=True)

    def _nothing_happened(self, text: str) -> tuple[Observation, float, bool, bool, dict[str, Any]]:
        reward = -1.0 / max(1, self._path_len) if self.reward_mode == "progress" else 0.0
        self._return += reward
        assert self._obs is not None
        body = self._obs.text.split("\n", 1)[1]  # the state part, without the last event
        obs = Observation(
            text=text + "\n" + body,
            task=self._obs.task,
            admissible_actions=self._obs.admissible_actions,
            anchor=self._obs.anchor,
            image=self._obs.image,
        )
        return obs, reward, False, False, self._info(valid=False)

    def expert_action(self) -> str | None:
        """The first move of a shortest safe path from the agent's cell (``None`` when the
        episode is over)."""
        if self._done or self.lake is None:
            return None
        path = self._path(self.agent)
        return path[0] if path else None

    def render(self) -> str:
        """The grid as text (the first part of the observation after the event)."""
        return "\n".join(" ".join(row) for row in self._cells())

    def render_image(self) -> bytes:
        """The current state as a PNG."""
        return grid_png(self._cells(), self.cell_px, _tile)

    def anchor(self) -> str:
        """The canonical key of the current state (layout and agent)."""
        assert self.lake is not None
        key = f"{self.lake.key()}|{self.agent}"
        return "frozenlake:" + hashlib.sha1(key.encode()).hexdigest()[:20]

    # -- helpers ------------------------------------------------------------------------------------
    def _path(self, cell: Cell) -> list[str] | None:
        assert self.lake is not None
        if cell not in self._paths:
            self._paths[cell] = None if cell in self.lake.holes else shortest_path(self.lake, cell)
        return self._paths[cell]

    def _cells(self) -> list[list[str]]:
        assert self.lake is not None
        g = [["_"] * self.lake.width for _ in range(self.lake.height)]
        for r, c in self.lake.holes:
            g[r][c] = "H"
        g[self.lake.goal[0]][self.lake.goal[1]] = "G"
        g[self.agent[0]][self.agent[1]] = "P"
        return g

    def _around(self) -> str:
        assert self.lake is not None
        parts = []
        for move, (dr, dc) in MOVES.items():
            cell = (self.agent[0] + dr, self.agent[1] + dc)
            if not self.lake.inside(cell):
                what = "edge"
            elif cell in self.lake.holes:
                what = "hole"
            elif cell == self.lake.goal:
                what = "goal"
            else:
                what = "ice"
            parts.append(f"{move} {what}")
        return "Around you: " + ", ".join(parts) + "."

    def _observe(self, message: str) -> Observation:
        assert self.lake is not None
        parts = [message]
        if self.render_mode != "local":
            parts.append(self.render())
        r, c = self.agent
        g = self.lake.goal
        if self.render_mode == "grid+coords":
            parts.append(f"You: row {r + 1}, col {c + 1}.")
        if self.render_mode != "grid":
            parts.append(f"Goal: {offset_words(g[0] - r, g[1] - c)}.")
            parts.append(self._around())
        actions: tuple[str, ...] = ()
        if not self._done:
            actions = tuple(
                m
                for m, (dr, dc) in MOVES.items()
                if self.lake.inside((self.agent[0] + dr, self.agent[1] + dc))
            )
        return Observation(
            text="\n".join(parts),
            task=TASK_TEXT,
            admissible_actions=actions,
            anchor=self.anchor(),
            image=self.render_image() if self.image else None,
        )

    def _info(self, *, valid: bool) -> dict[str, Any]:
        assert self.lake is not None
        return {
            "task_id": self._task_id,
            "won": self.agent == self.lake.goal,
            "lost": self._lost,
            "score": 1.0 if self.agent == self.lake.goal else 0.0,
            "valid": valid,
            "solution_len": self._path_len,
        }
