"""PNG images of text grids (one tile per cell), written with ``zlib`` + ``struct``: no imaging
library. Shared by the grid testbeds (Sokoban, FrozenLake), each of which draws its own tiles."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable

__all__ = ["grid_png"]

#: ``tile(symbol, k)`` -> the ``k`` pixel rows (RGB bytes, ``3k`` each) of one cell.
Tile = Callable[[str, int], list[bytes]]

_CACHE: dict[tuple[Tile, str, int], list[bytes]] = {}


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def grid_png(grid: list[list[str]], cell_px: int, tile: Tile) -> bytes:
    """An RGB PNG of ``grid`` (rows of cell symbols), ``cell_px`` pixels per cell, each cell
    drawn by ``tile`` (cached per symbol and size)."""
    h, w, k = len(grid), len(grid[0]), cell_px
    scanlines = []
    for row in grid:
        tiles = []
        for sym in row:
            key = (tile, sym, k)
            if key not in _CACHE:
                _CACHE[key] = tile(sym, k)
            tiles.append(_CACHE[key])
        for y in range(k):
            scanlines.append(b"\x00" + b"".join(t[y] for t in tiles))  # filter 0 per scanline
    ihdr = struct.pack(">IIBBBBB", w * k, h * k, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", zlib.compress(b"".join(scanlines), 6))
        + _chunk(b"IEND", b"")
    )
