"""Sokoban rendering: the text grid of a state and its PNG (:mod:`agentgym.environments.gridpng`)."""

from __future__ import annotations

from collections.abc import Iterable

from agentgym.environments.gridpng import grid_png
from agentgym.environments.sokoban.puzzle import Cell

__all__ = ["grid_rows", "render_png"]

_COLORS = {
    "#": (90, 62, 44),  # wall
    "_": (225, 218, 200),  # floor
    "O": (225, 218, 200),  # target (floor + ring)
    "X": (214, 150, 40),  # box
    "*": (60, 170, 80),  # box on target
    "P": (225, 218, 200),  # player (floor + disc)
    "+": (225, 218, 200),  # player on target
}


def grid_rows(
    height: int,
    width: int,
    walls: Iterable[Cell],
    targets: frozenset[Cell],
    boxes: frozenset[Cell],
    player: Cell,
) -> list[list[str]]:
    g = [["_"] * width for _ in range(height)]
    for r, c in walls:
        g[r][c] = "#"
    for r, c in targets:
        g[r][c] = "O"
    for r, c in boxes:
        g[r][c] = "*" if (r, c) in targets else "X"
    r, c = player
    g[r][c] = "+" if player in targets else "P"
    return g


def _tile(sym: str, k: int) -> list[bytes]:
    """The ``k`` pixel rows (RGB bytes) of one cell showing ``sym``."""
    base = _COLORS[sym]
    rows = []
    for y in range(k):
        row = bytearray()
        for x in range(k):
            px = base
            dy, dx = y - (k - 1) / 2, x - (k - 1) / 2
            d2 = dx * dx + dy * dy
            if sym in ("O", "+") and (k * 0.3) ** 2 <= d2 <= (k * 0.42) ** 2:
                px = (200, 40, 40)  # target ring
            if sym in ("P", "+") and d2 <= (k * 0.28) ** 2:
                px = (40, 80, 200)  # player disc
            if sym in ("X", "*") and (x in (0, k - 1) or y in (0, k - 1)):
                px = (60, 40, 20)  # box outline
            row += bytes(px)
        rows.append(bytes(row))
    return rows


def render_png(grid: list[list[str]], cell_px: int = 16) -> bytes:
    """An RGB PNG of ``grid`` (the text cells above), ``cell_px`` pixels per cell."""
    return grid_png(grid, cell_px, _tile)
