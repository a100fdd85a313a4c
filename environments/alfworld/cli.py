"""``agentgym alfworld ...``: generate ALFWorld games in the official layout, list a data folder.

Heavy imports (textworld, alfworld) happen inside the handlers.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any


def _types(value: str) -> list[str]:
    from agentgym.environments.alfworld.data import resolve_task_types

    items = [v.strip() for v in value.split(",") if v.strip()]
    return list(resolve_task_types(items))


def cmd_generate(args: argparse.Namespace) -> int:
    from agentgym.environments.alfworld.generator import generate_games

    t0 = time.perf_counter()
    folders = generate_games(
        args.out,
        range(args.seed, args.seed + args.n),
        args.task_types,
        split=args.split,
        workers=args.workers,
        progress=not args.quiet,
        solver=args.solver,
    )
    summary = {
        "out": args.out,
        "split": args.split,
        "games": len(folders),
        "task_types": args.task_types,
        "seeds": [args.seed, args.seed + args.n - 1],
        "seconds": round(time.perf_counter() - t0, 1),
    }
    print(json.dumps(summary))
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from collections import Counter

    from agentgym.environments.alfworld.data import SPLITS, collect_games, find_data_root

    root = find_data_root(args.data_dir)
    if root is None:
        raise FileNotFoundError("no data folder: pass --data-dir or set $ALFWORLD_DATA")
    out: dict[str, Any] = {"root": str(root)}
    for split in SPLITS:
        if (root / split).is_dir():
            games = collect_games(root / split, args.task_types)
            out[split] = {"games": len(games), **Counter(g.task_type for g in games)}
    print(json.dumps(out, indent=2))
    return 0


def add_cli(sub: argparse._SubParsersAction, groups: dict[str, argparse._SubParsersAction]) -> None:
    from agentgym.cli import subgroup
    from agentgym.environments.alfworld.generator import TASK_TYPES

    g = subgroup(sub, groups, "alfworld", "ALFWorld games: generate, list")
    all_types = ",".join(TASK_TYPES.values())

    p = g.add_parser(
        "generate",
        help="generate solvable ALFWorld games (game.tw-pddl + traj_data.json) from THOR layouts",
    )
    p.add_argument("--n", type=int, default=24, help="number of games")
    p.add_argument("--seed", type=int, default=0, help="first seed; game i uses seed+i")
    p.add_argument(
        "--task-types",
        type=_types,
        default=list(TASK_TYPES.values()),
        help=f"comma-separated ids 1-6 or names (default all: {all_types})",
    )
    p.add_argument(
        "--split",
        default="train",
        choices=["train", "valid_seen", "valid_unseen"],
        help="folder under json_2.1.1/; valid_unseen draws from ALFRED's unseen scenes",
    )
    p.add_argument("--out", required=True, help="output root (json_2.1.1/<split>/... inside)")
    p.add_argument("--workers", type=int, default=2, help="processes")
    p.add_argument(
        "--solver",
        default="oracle",
        choices=["oracle", "planner"],
        help="how solvability is certified (planner: Fast Downward, slow in kitchens)",
    )
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_generate)

    ls = g.add_parser("list", help="count the playable games of a data folder (ALFWorld's rules)")
    ls.add_argument("--data-dir", help="download root or json_2.1.1 (default $ALFWORLD_DATA)")
    ls.add_argument("--task-types", type=_types, default=list(TASK_TYPES.values()))
    ls.set_defaults(func=cmd_list)
