"""What the grid testbeds (Sokoban, FrozenLake) share about moves: reading a move from the
agent's text, the answer to text that is not a move, offsets in words, and task ids."""

from __future__ import annotations

from typing import Any

__all__ = ["MOVES", "parse_move", "not_a_move", "offset_words", "task_seed"]

#: The four moves as (row, col) steps, in the order admissible actions are listed.
MOVES: dict[str, tuple[int, int]] = {
    "up": (-1, 0),
    "down": (1, 0),
    "left": (0, -1),
    "right": (0, 1),
}
_ALIASES = {
    "u": "up",
    "d": "down",
    "l": "left",
    "r": "right",
    "north": "up",
    "south": "down",
    "west": "left",
    "east": "right",
}


def parse_move(action: Any, prefixes: tuple[str, ...] = ("move", "go")) -> str | None:
    """The move named by ``action`` (case, spacing and trailing punctuation forgiven; ``u/d/l/r``,
    the compass names and a leading verb from ``prefixes`` accepted), or None."""
    if not isinstance(action, str):
        return None
    a = " ".join(action.strip().lower().split()).strip("\"'`.!")
    if a.startswith(tuple(p + " " for p in prefixes)):
        a = a.split(" ", 1)[1]
    a = _ALIASES.get(a, a)
    return a if a in MOVES else None


def not_a_move(action: Any) -> str:
    """The observation's first line when ``action`` is not a move (quoted, at most 120 chars)."""
    shown = " ".join(str(action).split())[:120]
    if not shown:
        return (
            "The action was empty, so nothing happened. Reply with one of: up, down, left, right."
        )
    return (
        f'"{shown}" is not a move, so nothing happened. Reply with one of: up, down, left, right.'
    )


def offset_words(dr: int, dc: int) -> str:
    """``(2, -1)`` -> ``"2 down, 1 left"``; ``(0, 0)`` -> ``"here"``."""
    parts = []
    if dr:
        parts.append(f"{abs(dr)} {'down' if dr > 0 else 'up'}")
    if dc:
        parts.append(f"{abs(dc)} {'right' if dc > 0 else 'left'}")
    return ", ".join(parts) if parts else "here"


def task_seed(task: Any, example: str) -> int:
    """The seed a ``reset(options={"task": ...})`` selector names: a number, or a task id ending
    in ``seedN``; anything else is a ValueError that shows ``example``, a valid id."""
    if isinstance(task, str) and task.rsplit("/", 1)[-1].startswith("seed"):
        task = task.rsplit("/", 1)[-1][4:]
    try:
        return int(task)
    except (TypeError, ValueError):
        raise ValueError(
            f"unknown task {task!r}: use a number or a task id like {example!r}"
        ) from None
