"""``agentgym textworld ...`` commands: generate game sets offline and list the presets.

``agentgym textworld generate --preset w2-o3-q4 --n 8 --seed 0 --out games/`` fills the cache
(in parallel) and, with ``--out``, copies the ``.z8`` + ``.json`` pairs to a folder that
``TextWorldEnv(games_dir=...)`` can play. Heavy imports happen inside the handlers.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any

__all__ = ["add_cli"]


def cmd_generate(args: argparse.Namespace) -> int:
    from agentgym.environments.textworld.games import (
        game_seeds,
        generate_games,
        parse_preset,
    )

    preset = parse_preset(args.preset, split=args.split)
    seeds = game_seeds(args.split, args.n, args.seed)
    t0 = time.perf_counter()
    paths = generate_games(preset, seeds, workers=args.workers)
    seconds = time.perf_counter() - t0
    out_paths = paths
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        out_paths = []
        for seed, src in zip(seeds, paths):
            dst = out / f"{preset.name}-{args.split}-seed{seed}.z8"
            shutil.copyfile(src.with_suffix(".json"), dst.with_suffix(".json"))
            shutil.copyfile(src, dst)
            out_paths.append(dst)
    summary: dict[str, Any] = {
        "preset": preset.name,
        "split": args.split,
        "games": len(paths),
        "seeds": [seeds[0], seeds[-1]],
        "seconds": round(seconds, 2),
        "seconds_per_game": round(seconds / len(paths), 2),
        "cache": str(paths[0].parent),
    }
    if args.out:
        summary["out"] = str(Path(args.out))
    if args.json:
        print(json.dumps({**summary, "files": [str(p) for p in out_paths]}))
    else:
        for p in out_paths:
            print(p)
        print(
            f"{summary['games']} {preset.name} {args.split} games in {summary['seconds']} s "
            f"({summary['seconds_per_game']} s/game; games already cached cost nothing)"
        )
    return 0


def cmd_bundle(args: argparse.Namespace) -> int:
    from agentgym.environments.textworld.games import (
        BUNDLE_DIR,
        game_seeds,
        parse_preset,
        write_bundle,
    )

    preset = parse_preset(args.preset)
    seeds = game_seeds("train", args.train) + game_seeds("test", args.test)
    t0 = time.perf_counter()
    dest = write_bundle(preset, seeds, Path(args.out or BUNDLE_DIR), workers=args.workers)
    print(
        f"{dest}: {len(seeds)} games ({args.train} train, {args.test} test), "
        f"{dest.stat().st_size / 2**20:.2f} MiB, {time.perf_counter() - t0:.1f} s"
    )
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    from agentgym.environments.textworld.games import PRESET_EXAMPLES

    print("Preset grammar:")
    print("  w<rooms>-o<objects>-q<quest length>            custom worlds, e.g. w2-o3-q4")
    print("  simple-dense | simple-balanced | simple-sparse  the tw-simple house")
    print("  cooking-r<recipe>-t<take>-g<1|6|9|12>[-open][-cut][-cook][-drop]  tw-cooking")
    print("Examples: " + ", ".join(PRESET_EXAMPLES))
    return 0


def add_cli(sub: argparse._SubParsersAction, groups: dict[str, argparse._SubParsersAction]) -> None:
    from agentgym.cli import subgroup

    tw = subgroup(sub, groups, "textworld", "TextWorld games: generate sets, list presets")

    g = tw.add_parser("generate", help="generate (and cache) a set of TextWorld games")
    g.add_argument(
        "--preset",
        default="w2-o3-q4",
        help="e.g. w2-o3-q4, simple-dense, cooking-r1-t1-g1 (see `agentgym textworld presets`)",
    )
    g.add_argument("--n", type=int, default=8, help="number of games")
    g.add_argument("--seed", type=int, default=0, help="base seed (game i uses seed+i)")
    g.add_argument(
        "--split",
        default="train",
        choices=["train", "test"],
        help="test games use seeds disjoint from train",
    )
    g.add_argument("--out", help="also copy the games (.z8 + .json) to this folder")
    g.add_argument("--workers", type=int, default=None, help="parallel processes (default: CPUs)")
    g.add_argument("--json", action="store_true", help="print a JSON summary")
    g.set_defaults(func=cmd_generate)

    b = tw.add_parser(
        "bundle",
        help="pack a preset's games into the archive the env unpacks instead of compiling",
        description="Generate (or take from the cache) the first N train and test games of a "
        "preset and write <out>/<preset key>.tar.xz. Archives in the package's data folder are "
        "unpacked into the cache on first use, byte-identical to generated games.",
    )
    b.add_argument("--preset", required=True, help="e.g. w1-o3-q2")
    b.add_argument("--train", type=int, default=64, help="train games (seeds 0..N-1)")
    b.add_argument("--test", type=int, default=32, help="test games")
    b.add_argument("--out", help="folder (default: the package's textworld/data)")
    b.add_argument("--workers", type=int, default=None, help="parallel processes (default: CPUs)")
    b.set_defaults(func=cmd_bundle)

    p = tw.add_parser("presets", help="list the game presets")
    p.set_defaults(func=cmd_presets)
