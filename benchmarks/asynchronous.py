"""``agentgym bench async``: wall time per RL step and the trainer's wait for rollouts,
synchronous (``--async-staleness 0``) against asynchronous (``--async-staleness K``), same run.

One starting model is built (the tiny model, SFT on expert turns: ``agentgym train --steps 0``)
and both loops train copies of it with the same settings, seeds and tasks. Each RL step logs
``time/step_s`` (the loop's wall time from one step's log to the next: collection, update,
checkpoint and weight sync included) and ``time/wait_s`` (the part the trainer spent waiting for
the step's rollouts). Reported per mode: the mean seconds per step and the wait fraction
(``sum(wait_s) / sum(step_s)``), over the steps after the first (the first step of either loop
waits for a whole collection: the pipeline is still empty). ``speedup`` is sync over async
seconds per step, measured back to back in one process.

With K = 1 the update of step ``s`` runs while the worker plays step ``s + 1``, so the step costs
``max(collect, update)`` instead of ``collect + update``: the gain is largest when the two are
alike. On a CPU both share the cores, so the overlap gains only what the cores left idle (the
env steps, Python between torch ops, a single-threaded torch on a second core).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

__all__ = ["bench_async", "add_cli"]


def _step_times(run_dir: Path, skip: int) -> dict[str, float]:
    recs = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in recs if "time/step_s" in r][skip:]
    wall = sum(r["time/step_s"] for r in steps)
    wait = sum(r["time/wait_s"] for r in steps)
    n = max(len(steps), 1)
    return {
        "steps_timed": len(steps),
        "step_s": wall / n,
        "wait_s": wait / n,
        "wait_fraction": wait / wall if wall else 0.0,
        "rollout_s": sum(r["time/rollout_s"] for r in steps) / n,
        "update_s": sum(r["time/update_s"] for r in steps) / n,
        "staleness": sum(r["async/staleness"] for r in steps) / n,
    }


def _same_start(folder: Path, want: dict[str, Any]) -> bool:
    """Whether ``folder`` holds a finished start model made with the settings ``want``."""
    report = folder / "report.json"
    if not report.exists() or not (folder / "model").is_dir():
        return False
    have = json.loads(report.read_text()).get("config", {})
    return {k: v for k, v in have.items() if k != "resume"} == {
        k: v for k, v in want.items() if k != "resume"
    }


def bench_async(
    *,
    env: str = "sokoban/Sokoban5x5-v0",
    staleness: int = 1,
    steps: int = 6,
    groups_per_step: int = 8,
    group_size: int = 4,
    num_envs: int = 8,
    sft_episodes: int = 64,
    seed: int = 0,
    out: str | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train the same start ``steps`` RL steps synchronously and with ``staleness``; the report
    (settings, machine load, one entry per mode, ``speedup``)."""
    from agentgym.trainers.train import TrainConfig, train

    root = Path(out or tempfile.mkdtemp(prefix="agentgym-bench-async-"))
    base: dict[str, Any] = {
        **dict(
            env=env,
            seed=seed,
            steps=steps,
            groups_per_step=groups_per_step,
            group_size=group_size,
            num_envs=num_envs,
            eval_every=0,
            eval_episodes=max(num_envs, 8),
            save_every=0,
            write_trajectories=False,
            tensorboard=False,
            progress=False,
        ),
        **(extra or {}),
    }
    t0 = time.perf_counter()
    start = TrainConfig(
        **{**base, "out": str(root / "start"), "steps": 0, "sft_episodes": sft_episodes}
    )
    if _same_start(root / "start", start.to_dict()):  # an earlier run's, same settings
        start_s = 0.0
    else:
        train(start)
        start_s = time.perf_counter() - t0
    modes: dict[str, Any] = {}
    for name, k in (("sync", 0), (f"async_k{staleness}", staleness)):
        cfg = TrainConfig(
            **{
                **base,
                "out": str(root / name),
                "model": str(root / "start" / "model"),
                "sft_episodes": 0,
                "async_staleness": k,
            }
        )
        train(cfg)
        modes[name] = {"async_staleness": k, **_step_times(root / name, skip=1)}
    sync, asyn = modes["sync"], modes[f"async_k{staleness}"]
    return {
        "env": env,
        "steps": steps,
        "groups_per_step": groups_per_step,
        "group_size": group_size,
        "num_envs": num_envs,
        "threads": base.get("threads", TrainConfig().threads),
        "cpus": os.cpu_count(),
        "load_avg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "start_model_s": round(start_s, 1),
        "modes": modes,
        "speedup": sync["step_s"] / asyn["step_s"] if asyn["step_s"] else None,
        "out": str(root),
    }


def _print_report(r: dict[str, Any]) -> None:
    print(
        f"{r['env']}: {r['steps']} RL steps of {r['groups_per_step']}x{r['group_size']} "
        f"episodes ({r['cpus']} CPUs, load {r['load_avg_1m']})"
    )
    print(f"{'mode':<10} {'s/step':>8} {'wait':>7} {'collect s':>10} {'update s':>9} {'lag':>5}")
    for name, m in r["modes"].items():
        print(
            f"{name:<10} {m['step_s']:>8.2f} {m['wait_fraction']:>7.0%} {m['rollout_s']:>10.2f} "
            f"{m['update_s']:>9.2f} {m['staleness']:>5.2f}"
        )
    print(f"speedup (sync s/step over async): {r['speedup']:.2f}x")


def cmd_bench_async(args: argparse.Namespace) -> int:
    from agentgym.benchmarks.cli import print_report
    from agentgym.cli import parse_kv

    report = bench_async(
        env=args.env,
        staleness=args.staleness,
        steps=args.steps,
        groups_per_step=args.groups_per_step,
        group_size=args.group_size,
        num_envs=args.num_envs,
        sft_episodes=args.sft_episodes,
        seed=args.seed,
        out=args.out,
        extra=parse_kv(args.set, "--set"),
    )
    return print_report(report, args.json, _print_report)


def add_cli(sub: Any, groups: dict[str, Any]) -> None:
    from agentgym.benchmarks.cli import bench_parsers

    bench = bench_parsers(sub, groups)
    p = bench.add_parser(
        "async", help="seconds per RL step and rollout wait, sync vs --async-staleness K"
    )
    p.add_argument("--env", default="sokoban/Sokoban5x5-v0", help="env id (a built-in one)")
    p.add_argument("--staleness", type=int, default=1, help="K of the asynchronous run")
    p.add_argument("--steps", type=int, default=6, help="RL steps per mode (the first untimed)")
    p.add_argument("--groups-per-step", type=int, default=8)
    p.add_argument("--group-size", type=int, default=4)
    p.add_argument("--num-envs", type=int, default=8)
    p.add_argument("--sft-episodes", type=int, default=64, help="SFT of the shared start")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--out",
        default=None,
        help="run folders (default: a temporary one); a start model already there, made with "
        "the same settings, is reused",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="more TrainConfig settings for both modes (repeatable), e.g. --set max_new_tokens=8",
    )
    p.add_argument("--json", action="store_true", help="print the report as one JSON line")
    p.set_defaults(func=cmd_bench_async)
