"""Sokoban puzzles: the room and start state, moves and pushes, the BFS solver, and the
generator that draws a solvable puzzle of a split from a seed (see :mod:`.env` for the rules)."""

from __future__ import annotations

import collections
import hashlib
import random
from typing import Any

from agentgym.environments.gridmoves import MOVES

__all__ = ["MAX_NODES", "MOVES", "Cell", "Puzzle", "apply_move", "generate", "solve", "state_key"]

Cell = tuple[int, int]

#: Moves in a fixed order (admissible actions are listed in this order).
#: BFS node budget of the solver; beyond it a state counts as "unknown", never as a dead end.
MAX_NODES = 200_000


class Puzzle:
    """A Sokoban puzzle: the room (walls, targets) and the start state (player, boxes)."""

    __slots__ = ("height", "width", "walls", "targets", "boxes", "player")

    def __init__(
        self,
        height: int,
        width: int,
        walls: frozenset[Cell],
        targets: frozenset[Cell],
        boxes: frozenset[Cell],
        player: Cell,
    ) -> None:
        self.height, self.width = height, width
        self.walls, self.targets, self.boxes, self.player = walls, targets, boxes, player

    def key(self) -> str:
        """A canonical string of the whole puzzle (its identity for the split rule)."""
        return state_key(self.height, self.width, self.walls, self.targets, self.boxes, self.player)


def state_key(
    height: int,
    width: int,
    walls: frozenset[Cell],
    targets: frozenset[Cell],
    boxes: frozenset[Cell],
    player: Cell,
) -> str:
    return "|".join(
        [
            f"{height}x{width}",
            ",".join(f"{r}.{c}" for r, c in sorted(walls)),
            ",".join(f"{r}.{c}" for r, c in sorted(targets)),
            ",".join(f"{r}.{c}" for r, c in sorted(boxes)),
            f"{player[0]}.{player[1]}",
        ]
    )


def apply_move(
    walls: frozenset[Cell], boxes: frozenset[Cell], player: Cell, move: str
) -> tuple[Cell, frozenset[Cell], str] | None:
    """The state after ``move``, and what happened (``"move"``/``"push"``); ``None`` if blocked."""
    dr, dc = MOVES[move]
    nxt = (player[0] + dr, player[1] + dc)
    if nxt in walls:
        return None
    if nxt in boxes:
        beyond = (nxt[0] + dr, nxt[1] + dc)
        if beyond in walls or beyond in boxes:
            return None
        return nxt, (boxes - {nxt}) | {beyond}, "push"
    return nxt, boxes, "move"


def solve(
    walls: frozenset[Cell],
    targets: frozenset[Cell],
    boxes: frozenset[Cell],
    player: Cell,
    *,
    max_depth: int | None = None,
    max_nodes: int = MAX_NODES,
) -> list[str] | None:
    """A shortest solution (list of moves) by BFS over (player, boxes) states.

    Returns ``[]`` when the state is solved already, ``None`` when no solution exists within
    ``max_depth`` moves. Raises :class:`OverflowError` when the search exceeds ``max_nodes``
    states (the answer is then unknown, which callers must not mistake for "unsolvable").
    """
    if boxes <= targets:
        return []
    start = (player, boxes)
    parent: dict[tuple[Cell, frozenset[Cell]], tuple[Any, str] | None] = {start: None}
    frontier = collections.deque([(start, 0)])
    while frontier:
        state, depth = frontier.popleft()
        if max_depth is not None and depth >= max_depth:
            continue
        p, bx = state
        for move in MOVES:
            out = apply_move(walls, bx, p, move)
            if out is None:
                continue
            nstate = (out[0], out[1])
            if nstate in parent:
                continue
            parent[nstate] = (state, move)
            if out[1] <= targets:
                path = []
                cur: Any = nstate
                while parent[cur] is not None:
                    prev, mv = parent[cur]  # type: ignore[misc]
                    path.append(mv)
                    cur = prev
                return path[::-1]
            if len(parent) > max_nodes:
                raise OverflowError(f"solver gave up after {max_nodes} states")
            frontier.append((nstate, depth + 1))
    return None


def _connected(floor: set[Cell]) -> bool:
    if not floor:
        return False
    start = next(iter(floor))
    seen = {start}
    stack = [start]
    while stack:
        r, c = stack.pop()
        for dr, dc in MOVES.values():
            n = (r + dr, c + dc)
            if n in floor and n not in seen:
                seen.add(n)
                stack.append(n)
    return len(seen) == len(floor)


def _split_bit(puzzle: Puzzle) -> int:
    return hashlib.sha1(puzzle.key().encode()).digest()[0] & 1


def generate(
    seed: int,
    split: str,
    *,
    height: int = 6,
    width: int = 6,
    boxes: int = 1,
    min_solution: int = 1,
    max_solution: int = 12,
    max_walls: int = 3,
    max_tries: int = 20_000,
) -> Puzzle:
    """The puzzle of ``(split, seed)``: drawn until solvable in ``[min_solution, max_solution]``
    moves and on the ``split``'s side of the layout hash (see the module docstring)."""
    want = {"train": 0, "test": 1}[split]
    rng = random.Random(f"sokoban/{height}x{width}/{boxes}/{seed}")
    interior = [(r, c) for r in range(1, height - 1) for c in range(1, width - 1)]
    border = frozenset(
        (r, c) for r in range(height) for c in range(width) if (r, c) not in set(interior)
    )
    for _ in range(max_tries):
        inner_walls = set(rng.sample(interior, rng.randint(0, max_walls)))
        floor = [cell for cell in interior if cell not in inner_walls]
        if len(floor) < 2 * boxes + 1 or not _connected(set(floor)):
            continue
        cells = rng.sample(floor, 2 * boxes + 1)
        targets = frozenset(cells[:boxes])
        box_cells = frozenset(cells[boxes : 2 * boxes])
        player = cells[-1]
        puzzle = Puzzle(height, width, border | frozenset(inner_walls), targets, box_cells, player)
        if _split_bit(puzzle) != want:
            continue
        try:
            sol = solve(puzzle.walls, targets, box_cells, player, max_depth=max_solution)
        except OverflowError:
            continue
        if sol is not None and min_solution <= len(sol) <= max_solution:
            return puzzle
    raise RuntimeError(
        f"no {height}x{width} puzzle with {boxes} box(es) and a solution of {min_solution}-"
        f"{max_solution} moves after {max_tries} draws (seed {seed}); widen the solution range "
        "or enlarge the room"
    )
