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

Learning per sample, over seeds (``--seeds 0 1 2``): the benchmark runs once per seed (each seed
its own start model, shared by its two modes) and compares what the two loops learned from the
same number of samples. Both play the same tasks, ``groups_per_step x group_size`` episodes a
step, so a step is a fixed number of samples. Per mode and step: the mean over seeds of the
training success, return and well-formed-reply rate (``train/success``, ``train/return``,
``train/format_ok``) with its 95% t interval; the paired comparison (async minus sync, by seed)
of each metric averaged over the second half of the steps (where learning shows), and of the
final held-out success, with the paired t-test and the exact sign-flip p-value
(:mod:`agentgym.benchmarks.stats`). A difference whose interval holds 0 means the asynchronous
loop did not learn measurably worse (or better) per sample with these seeds.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

__all__ = ["bench_async", "bench_async_seeds", "LEARNING_KEYS", "add_cli"]

#: The per-step training metrics whose curves the over-seeds comparison reports.
LEARNING_KEYS = ("train/success", "train/return", "train/format_ok")


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


def _curves(run_dir: Path) -> dict[str, list[float]]:
    """Per-step values of :data:`LEARNING_KEYS` in a run's ``metrics.jsonl``, in step order."""
    recs = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = sorted((r for r in recs if "train/success" in r), key=lambda r: r["step"])
    return {k: [float(r[k]) for r in steps] for k in LEARNING_KEYS}


def _final_heldout(run_dir: Path) -> float:
    return float(json.loads((run_dir / "report.json").read_text())["success_final"])


def bench_async_seeds(*, seeds: list[int], out: str | None = None, **kwargs: Any) -> dict[str, Any]:
    """:func:`bench_async` once per seed (in ``out/seed<N>``; finished start models are reused)
    and the learning comparison described in the module docstring: ``{"per_seed": [reports],
    "curves": {mode: {metric: [per-step mean_ci]}}, "paired": {metric: paired(async, sync)},
    "speedup": mean_ci over seeds}``."""
    from agentgym.benchmarks.stats import mean_ci, paired

    if len(set(seeds)) != len(seeds) or len(seeds) < 2:
        raise ValueError(f"--seeds {seeds}: give at least two distinct seeds, e.g. --seeds 0 1 2")
    root = Path(out or tempfile.mkdtemp(prefix="agentgym-bench-async-"))
    reports = [bench_async(seed=s, out=str(root / f"seed{s}"), **kwargs) for s in seeds]
    modes = list(reports[0]["modes"])
    curves: dict[str, dict[str, list[dict[str, Any]]]] = {}
    tail: dict[str, dict[str, dict[int, float]]] = {m: {} for m in modes}
    for mode in modes:
        per_seed = {s: _curves(root / f"seed{s}" / mode) for s in seeds}
        n_steps = min(len(c["train/success"]) for c in per_seed.values())
        half = n_steps // 2
        curves[mode] = {
            k: [mean_ci([per_seed[s][k][i] for s in seeds]) for i in range(n_steps)]
            for k in LEARNING_KEYS
        }
        for k in LEARNING_KEYS:
            tail[mode][k] = {s: sum(per_seed[s][k][half:]) / (n_steps - half) for s in seeds}
        tail[mode]["heldout_final"] = {s: _final_heldout(root / f"seed{s}" / mode) for s in seeds}
    sync, asyn = modes
    return {
        "seeds": seeds,
        "modes": modes,
        "per_seed": reports,
        "curves": curves,
        "second_half_means": tail,
        "paired": {k: paired(tail[asyn][k], tail[sync][k]) for k in tail[sync]},
        "speedup": mean_ci([r["speedup"] for r in reports]),
        "out": str(root),
    }


def _print_seeds_report(r: dict[str, Any]) -> None:
    sync, asyn = r["modes"]
    print(f"{len(r['seeds'])} seeds {r['seeds']}; {asyn} against {sync}, same samples per step")
    print(
        f"{'metric':<24} {'sync':>7} {'async':>7} {'diff [95%]':>22} {'p (t)':>7} {'p (flip)':>8}"
    )
    for k, res in r["paired"].items():
        a = sum(r["second_half_means"][asyn][k].values()) / len(r["seeds"])
        b = sum(r["second_half_means"][sync][k].values()) / len(r["seeds"])
        ci = f"{res['mean_diff']:+.3f} [{res['lo']:+.3f}, {res['hi']:+.3f}]"
        name = k if k == "heldout_final" else f"{k} (2nd half)"
        print(
            f"{name:<24} {b:>7.3f} {a:>7.3f} {ci:>22} {res['p_ttest']:>7.3f} "
            f"{res['p_signflip']:>8.3f}"
        )
    sp = r["speedup"]
    print(
        f"speedup (sync s/step over async), mean over seeds: {sp['mean']:.2f}x "
        f"[{sp['lo']:.2f}, {sp['hi']:.2f}]"
    )


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

    common = dict(
        env=args.env,
        staleness=args.staleness,
        steps=args.steps,
        groups_per_step=args.groups_per_step,
        group_size=args.group_size,
        num_envs=args.num_envs,
        sft_episodes=args.sft_episodes,
        out=args.out,
        extra=parse_kv(args.set, "--set"),
    )
    if args.seeds:
        return print_report(
            bench_async_seeds(seeds=args.seeds, **common), args.json, _print_seeds_report
        )
    return print_report(bench_async(seed=args.seed, **common), args.json, _print_report)


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
        "--seeds",
        type=int,
        nargs="+",
        default=None,
        help="run once per seed and compare what the two loops learned per sample (training "
        "curves with 95%% intervals, paired async - sync differences); overrides --seed",
    )
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
