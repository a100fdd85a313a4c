"""Offline generation and on-disk caching of TextWorld games.

A *preset* names a family of games and its difficulty. Presets are:

* ``w{rooms}-o{objects}-q{length}`` (e.g. ``w2-o3-q4``): TextWorld's "custom" generator with
  ``rooms`` rooms, at least ``objects`` objects and one quest of ``length`` actions;
* ``simple-dense`` / ``simple-balanced`` / ``simple-sparse``: the ``tw-simple`` challenge (a fixed
  six-room house, the task is to put an object somewhere); the suffix is the challenge's reward
  structure (dense = a point for every step of the walkthrough);
* ``cooking-r{recipe}-t{take}-g{rooms}[-open][-cut][-cook]`` (e.g. ``cooking-r1-t1-g1``): the
  ``tw-cooking`` challenge (First TextWorld Problems), with the recipe size, the number of
  ingredients to fetch, the number of rooms (1, 6, 9 or 12) and the skills needed.

Each game is generated from ``(preset, seed)`` alone, compiled by the Inform 7 compiler that ships
with the ``textworld`` wheel (no network) and cached as ``<key>.z8`` + ``<key>.json`` under
``cache_dir("textworld", "games", <preset>-<params hash>)``. Generation is deterministic by seed;
the compiler's date-based serial number in the story-file header is replaced by a fixed one so
that the ``.z8`` bytes are reproducible across days and machines too.

Games of some presets ship with agentgym (``data/<key>.tar.xz``, the same bytes the generator
makes): they are unpacked into the cache instead of compiled, which takes a second instead of
about two seconds per game. ``agentgym textworld bundle`` writes such an archive.

Concurrent generation is safe: a per-game ``flock`` keeps two processes from compiling one game
twice, and files are moved into place with ``os.replace`` (the ``.json`` first, then the ``.z8``,
whose presence marks a complete game), so a reader never sees half a game.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agentgym.utils import atomic_write, cache_dir, file_lock

__all__ = [
    "Preset",
    "parse_preset",
    "PRESET_EXAMPLES",
    "game_seeds",
    "game_path",
    "generate_game",
    "generate_games",
    "generate_many",
    "job_spec",
    "bundle_path",
    "unpack_bundle",
    "write_bundle",
    "TEST_SEED_OFFSET",
    "GENERATOR_VERSION",
]

#: Bumped when generation changes in a way that alters games (invalidates the cache).
GENERATOR_VERSION = 1
#: Test-split games use seeds ``base_seed + TEST_SEED_OFFSET + i``; train uses ``base_seed + i``.
TEST_SEED_OFFSET = 1_000_000
#: Retries of a failed quest generation use ``seed + attempt * RETRY_SEED_STRIDE``.
RETRY_SEED_STRIDE = 1 << 24
MAX_ATTEMPTS = 8
#: The fixed story-file serial number written into every generated ``.z8`` header.
FIXED_SERIAL = b"000000"

PRESET_EXAMPLES = (
    "w1-o2-q2",
    "w2-o3-q4",
    "w4-o6-q8",
    "simple-dense",
    "simple-balanced",
    "simple-sparse",
    "cooking-r1-t1-g1",
    "cooking-r2-t1-g6-open-cut",
)

_CUSTOM_RE = re.compile(r"^w(\d+)-o(\d+)-q(\d+)$")
_SIMPLE_RE = re.compile(r"^simple-(dense|balanced|sparse)$")
_COOKING_RE = re.compile(r"^cooking-r(\d+)-t(\d+)-g(\d+)((?:-(?:open|cut|cook|drop))*)$")


@dataclasses.dataclass(frozen=True)
class Preset:
    """A parsed preset: the generator to call and its parameters.

    Attributes:
        name: the canonical preset string (``w2-o3-q4``, ``simple-dense`` ...).
        kind: ``"custom"``, ``"tw-simple"`` or ``"tw-cooking"``.
        params: the generator parameters, as sorted ``(key, value)`` pairs.
    """

    name: str
    kind: str
    params: tuple[tuple[str, Any], ...]

    @property
    def key(self) -> str:
        """Folder name of this preset's cache: the name plus a hash of everything that shapes
        the games (parameters, generator and textworld versions)."""
        import importlib.metadata

        try:
            tw_version = importlib.metadata.version("textworld")
        except importlib.metadata.PackageNotFoundError:  # pragma: no cover
            tw_version = "unknown"
        blob = json.dumps(
            [self.kind, list(self.params), GENERATOR_VERSION, tw_version], sort_keys=True
        )
        return f"{self.name}-{hashlib.sha256(blob.encode()).hexdigest()[:10]}"


def parse_preset(name: str, *, split: str = "train") -> Preset:
    """Parse a preset string (see the module docstring); ``split`` matters for cooking only,
    whose generator draws train and test games from disjoint food items."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    m = _CUSTOM_RE.match(name)
    if m:
        rooms, objects, length = map(int, m.groups())
        if rooms < 1 or length < 1:
            raise ValueError(f"preset {name!r}: rooms and quest length must be >= 1")
        params = (("nb_objects", objects), ("nb_rooms", rooms), ("quest_length", length))
        return Preset(name=name, kind="custom", params=params)
    m = _SIMPLE_RE.match(name)
    if m:
        return Preset(
            name=name, kind="tw-simple", params=(("goal", "detailed"), ("rewards", m.group(1)))
        )
    m = _COOKING_RE.match(name)
    if m:
        recipe, take, go = map(int, m.groups()[:3])
        flags = set(filter(None, m.group(4).split("-")))
        if go not in (1, 6, 9, 12):
            raise ValueError(f"preset {name!r}: cooking games have 1, 6, 9 or 12 rooms (g{go})")
        if take > recipe:
            raise ValueError(
                f"preset {name!r}: cannot take more ingredients ({take}) than the "
                f"recipe has ({recipe})"
            )
        params = (
            ("cook", "cook" in flags),
            ("cut", "cut" in flags),
            ("drop", "drop" in flags),
            ("go", go),
            ("open", "open" in flags),
            ("recipe", recipe),
            ("split", split),
            ("take", take),
        )
        return Preset(name=name, kind="tw-cooking", params=params)
    raise ValueError(
        f"unknown TextWorld preset {name!r}: use w<rooms>-o<objects>-q<quest length> "
        "(e.g. w2-o3-q4), simple-dense|balanced|sparse, or "
        "cooking-r<recipe>-t<take>-g<1|6|9|12>[-open][-cut][-cook][-drop] (e.g. cooking-r1-t1-g1)"
    )


def game_seeds(split: str, num_games: int, base_seed: int = 0) -> list[int]:
    """The generation seeds of a split: train and test never share a seed."""
    if num_games < 1 or num_games > TEST_SEED_OFFSET:
        raise ValueError(f"num_games must be in [1, {TEST_SEED_OFFSET}], got {num_games}")
    if split == "train":
        start = base_seed
    elif split == "test":
        start = base_seed + TEST_SEED_OFFSET
    else:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    return [start + i for i in range(num_games)]


def game_path(preset: Preset, seed: int, root: Path | None = None) -> Path:
    """Where the ``.z8`` of ``(preset, seed)`` lives (its ``.json`` is next to it)."""
    folder = (root or cache_dir("textworld", "games")) / preset.key
    return folder / f"seed{seed}.z8"


def _options(preset: Preset, seed: int, out: Path) -> Any:
    import textworld

    opts = textworld.GameOptions()
    opts.seeds = seed
    opts.path = str(out)
    opts.file_ext = ".z8"
    opts.force_recompile = True
    p = dict(preset.params)
    if preset.kind == "custom":
        opts.nb_rooms = p["nb_rooms"]
        opts.nb_objects = p["nb_objects"]
        n = p["quest_length"]
        opts.chaining.min_length = opts.chaining.max_length = opts.chaining.max_depth = n
        opts.chaining.min_breadth = opts.chaining.max_breadth = 1
    return opts


def _build(preset: Preset, seed: int, out: Path) -> None:
    """Generate and compile one game to ``out`` (``.z8``; ``.json`` next to it)."""
    import textworld
    import textworld.challenges
    from textworld.generator import compile_game

    opts = _options(preset, seed, out)
    if preset.kind == "custom":
        textworld.make(opts)
        return
    _, make_game, _ = textworld.challenges.CHALLENGES[preset.kind]
    settings = dict(preset.params)
    if preset.kind == "tw-cooking":
        settings["recipe_seed"] = seed
    else:
        settings["test"] = False
    game = make_game(settings=settings, options=opts)
    compile_game(game, opts)


def _fix_serial(z8: Path) -> None:
    # Inform writes the compile date (YYMMDD) at header bytes 0x12-0x17. The story-file checksum
    # covers bytes from 0x40 on, so rewriting the serial leaves the file valid.
    with open(z8, "r+b") as f:
        f.seek(0x12)
        f.write(FIXED_SERIAL)


def generate_game(preset: Preset | str, seed: int, *, root: Path | None = None) -> Path:
    """Return the cached ``.z8`` of ``(preset, seed)``, generating it first if needed.

    Quest generation occasionally fails for a seed (tiny worlds leave no quest of the asked
    length); it is retried deterministically with ``seed + k * 2**24``.
    """
    if isinstance(preset, str):
        preset = parse_preset(preset)
    dest = game_path(preset, seed, root)
    if dest.exists() and dest.with_suffix(".json").exists():
        return dest
    with file_lock(dest.with_suffix(".lock")):
        if dest.exists() and dest.with_suffix(".json").exists():
            return dest  # another process made it while we waited
        from textworld.generator import GenerationWarning, QuestGenerationError

        tmp = Path(tempfile.mkdtemp(prefix=".gen-", dir=dest.parent))
        try:
            last_error: Exception | None = None
            for attempt in range(MAX_ATTEMPTS):
                out = tmp / "game.z8"
                try:
                    _build(preset, seed + attempt * RETRY_SEED_STRIDE, out)
                except (QuestGenerationError, GenerationWarning) as e:
                    last_error = e
                    continue
                _fix_serial(out)
                os.replace(out.with_suffix(".json"), dest.with_suffix(".json"))
                os.replace(out, dest)
                return dest
            raise RuntimeError(
                f"could not generate a {preset.name} game for seed {seed} after {MAX_ATTEMPTS} "
                f"attempts ({last_error}); make the preset easier (fewer quest steps, more rooms "
                "or objects)"
            )
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def generate_games(
    preset: Preset | str,
    seeds: Sequence[int],
    *,
    workers: int | None = None,
    root: Path | None = None,
    split: str = "train",
) -> list[Path]:
    """The ``.z8`` paths of ``seeds`` (in order), generating missing games in parallel.

    ``workers`` defaults to ``min(missing games, os.cpu_count())``; see :func:`generate_many`.
    """
    if isinstance(preset, str):
        preset = parse_preset(preset, split=split)
    return generate_many([(preset, s) for s in seeds], workers=workers, root=root)


def generate_many(
    jobs: Sequence[tuple[Preset, int]], *, workers: int | None = None, root: Path | None = None
) -> list[Path]:
    """The ``.z8`` paths of ``(preset, seed)`` jobs (in order), generating the missing ones.

    With one worker the games are generated in this process. Parallel workers are fresh Python
    subprocesses (``python -m`` this module), which is safe whatever the caller runs (threads,
    torch, a script without a ``__main__`` guard).
    """
    paths = [game_path(p, s, root) for p, s in jobs]
    missing = [job for job, path in zip(jobs, paths) if not _complete(path)]
    if not missing:
        return paths
    by_key: dict[str, tuple[Preset, list[int]]] = {}
    for p, s in missing:
        by_key.setdefault(p.key, (p, []))[1].append(s)
    if sum(unpack_bundle(p, ss, root) for p, ss in by_key.values()):
        missing = [job for job, path in zip(jobs, paths) if not _complete(path)]
        if not missing:
            return paths
    # Processes that fill one set at once (the workers of an EnvPool) start at different games,
    # so the per-game locks spread them over the set instead of queueing them.
    k = os.getpid() % len(missing)
    missing = missing[k:] + missing[:k]
    n = min(len(missing), workers or os.cpu_count() or 1)
    if n <= 1:
        for p, s in missing:
            generate_game(p, s, root=root)
        return paths
    procs = []
    for w in range(n):
        cmd = [sys.executable, "-m", __name__]
        if root is not None:
            cmd += ["--root", str(root)]
        cmd += [job_spec(p, s) for p, s in missing[w::n]]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
    errors = []
    for proc in procs:
        _, err = proc.communicate()
        if proc.returncode != 0:
            lines = err.decode(errors="replace").strip().splitlines()
            errors.append(lines[-1] if lines else f"exit code {proc.returncode}")
    if errors or not all(_complete(p) for p in paths):
        raise RuntimeError(f"generating TextWorld games failed: {errors}")
    return paths


BUNDLE_DIR = Path(__file__).resolve().parent / "data"
_MEMBER_RE = re.compile(r"^seed(\d+)\.(z8|json)$")


def bundle_path(preset: Preset) -> Path:
    """Where a shipped archive of ``preset``'s games would be (it may not exist)."""
    return BUNDLE_DIR / f"{preset.key}.tar.xz"


def unpack_bundle(preset: Preset, seeds: Sequence[int], root: Path | None = None) -> int:
    """Copy the games of ``seeds`` that the shipped archive of ``preset`` holds into the cache.

    Returns how many games were added. Safe with concurrent callers (a lock per preset folder;
    each file is moved into place, ``.json`` before ``.z8``). The archive's key is the same hash
    as the cache folder's (preset parameters, generator and TextWorld versions), so a bundle made
    by another version is simply not found.
    """
    import tarfile

    src = bundle_path(preset)
    if not src.is_file():
        return 0
    wanted = {s for s in seeds if not _complete(game_path(preset, s, root))}
    if not wanted:
        return 0
    folder = game_path(preset, 0, root).parent
    added = 0
    with file_lock(folder / ".bundle.lock"), tarfile.open(src, "r:xz") as tar:
        members: dict[int, dict[str, tarfile.TarInfo]] = {}
        for m in tar.getmembers():
            match = _MEMBER_RE.match(m.name)
            if m.isfile() and match and int(match.group(1)) in wanted:
                members.setdefault(int(match.group(1)), {})[match.group(2)] = m
        for seed, pair in sorted(members.items()):
            dest = game_path(preset, seed, root)
            if len(pair) != 2 or _complete(dest):
                continue
            for ext in ("json", "z8"):  # the .z8 last: its presence marks a complete game
                with atomic_write(dest.with_suffix(f".{ext}"), "wb") as f:
                    f.write(tar.extractfile(pair[ext]).read())  # type: ignore[union-attr]
            added += 1
    return added


def write_bundle(
    preset: Preset, seeds: Sequence[int], out: Path, *, workers: int | None = None
) -> Path:
    """Generate (or reuse from the cache) the games of ``seeds`` and pack them as the archive
    :func:`unpack_bundle` reads, ``out/<preset key>.tar.xz``."""
    import io
    import lzma
    import tarfile

    paths = generate_many([(preset, s) for s in seeds], workers=workers)
    out.mkdir(parents=True, exist_ok=True)
    dest = out / f"{preset.key}.tar.xz"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for path in paths:
            for f in (path.with_suffix(".json"), path):
                info = tarfile.TarInfo(f.name)
                data = f.read_bytes()
                info.size, info.mode, info.mtime = len(data), 0o644, 0
                tar.addfile(info, io.BytesIO(data))
    with atomic_write(dest, "wb") as f:
        f.write(lzma.compress(buf.getvalue(), preset=9 | lzma.PRESET_EXTREME))
    return dest


def job_spec(preset: Preset, seed: int) -> str:
    """``name:split:seed``, the command-line form of one generation job."""
    return f"{preset.name}:{dict(preset.params).get('split', 'train')}:{seed}"


def _complete(path: Path) -> bool:
    return path.exists() and path.with_suffix(".json").exists()


def generation_stats(preset: Preset | str, seeds: Sequence[int], **kw: Any) -> dict[str, Any]:
    """Generate ``seeds`` and time it: ``{"games", "seconds", "seconds_per_game"}``."""
    t0 = time.perf_counter()
    paths = generate_games(preset, seeds, **kw)
    dt = time.perf_counter() - t0
    return {
        "games": len(paths),
        "seconds": round(dt, 2),
        "seconds_per_game": round(dt / max(1, len(paths)), 2),
    }


def _main(argv: Sequence[str] | None = None) -> None:
    import argparse

    ap = argparse.ArgumentParser(description="generate TextWorld games into the agentgym cache")
    ap.add_argument("--root", help="cache root (default: $AGENTGYM_CACHE/textworld/games)")
    ap.add_argument("jobs", nargs="+", help="name:split:seed, e.g. w2-o3-q4:train:0")
    args = ap.parse_args(argv)
    for job in args.jobs:
        name, split, seed = job.rsplit(":", 2)
        preset = parse_preset(name, split=split)
        generate_game(preset, int(seed), root=Path(args.root) if args.root else None)


if __name__ == "__main__":
    _main()
