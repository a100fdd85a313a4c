"""``agentgym bench memory``: memory per env of the Ray and process backends of ``EnvPool``.

One rollout per backend with the same envs, seeds and policy; the env workers' memory is read
from ``/proc`` (RSS and USS via psutil, summed and per env), plus Ray's own system processes.
The TextWorld figures of docs/scaling.md come from this command.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Mapping
from typing import Any

from agentgym.registration import EnvSpec

__all__ = ["measure_pool_memory", "add_cli"]


def _mem(pid: int) -> tuple[int, int]:
    """(RSS, USS) bytes of a local process; USS counts only pages no other process shares."""
    import psutil

    p = psutil.Process(pid)
    try:
        full = p.memory_full_info()
        return full.rss, full.uss
    except psutil.AccessDenied:  # pragma: no cover - other users' processes
        rss = p.memory_info().rss
        return rss, rss


def _ray_system_processes(exclude: set[int]) -> list[int]:
    """Processes of a Ray instance started by this driver (raylet, GCS, idle workers ...)."""
    import psutil

    me = psutil.Process()
    out = []
    for child in me.children(recursive=True):
        if child.pid in exclude:
            continue
        with contextlib.suppress(psutil.Error):
            cmd = " ".join(child.cmdline())
            if "ray" in cmd:
                out.append(child.pid)
    return out


def measure_pool_memory(
    env: str | EnvSpec,
    num_envs: int,
    *,
    backend: str,
    num_workers: int,
    episodes: int,
    policy: str = "random",
    seed: int = 0,
    env_kwargs: Mapping[str, Any] | None = None,
    ray_options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Start a pool, play ``episodes`` episodes, and measure the memory of its workers.

    Returns a dict with the start and rollout seconds, the summed RSS and USS of the worker
    processes (per env too), and for a local Ray instance started in this process the memory of
    Ray's own processes. ``trajectory_digest`` hashes the trajectories, so two backends can be
    checked to have played the same episodes.
    """
    import hashlib
    import json
    import time

    from agentgym.policies import make_policy
    from agentgym.pool import EnvPool
    from agentgym.rollout import rollout, summarize

    t0 = time.perf_counter()
    pool = EnvPool(
        env,
        num_envs,
        num_workers=num_workers,
        backend=backend,
        env_kwargs=env_kwargs,
        ray_options=ray_options,
    )
    try:
        start_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        trajs = rollout(
            pool, make_policy(policy, seed=seed), num_groups=episodes, seed=seed, run_id="mem"
        )
        rollout_s = time.perf_counter() - t1
        pids = [p for p in pool.worker_pids if p > 0]
        if backend == "ray":
            import socket

            here = socket.gethostname()
            pids = [w.pid for w in pool._workers if getattr(w, "node", here) == here]
        mems = [_mem(p) for p in pids]
        system = []
        from agentgym import ray_pool

        if backend == "ray" and ray_pool._started_here:
            system = [_mem(p) for p in _ray_system_processes(set(pids))]
    finally:
        pool.close()
    mib = 1024**2
    rss, uss = sum(m[0] for m in mems), sum(m[1] for m in mems)
    measured_envs = num_envs * len(mems) / max(1, num_workers)
    records = []
    for t in sorted(trajs, key=lambda t: t.id):
        d = t.to_dict()
        for turn in d["turns"]:
            turn["info"].pop("policy_s", None)
        records.append(d)
    digest = hashlib.sha256(json.dumps(records, sort_keys=True).encode()).hexdigest()[:16]
    s = summarize(trajs)
    return {
        "env": env if isinstance(env, str) else env.id,
        "backend": backend,
        "num_envs": num_envs,
        "workers": len(mems),
        "episodes": s.episodes,
        "crashed": s.crashed,
        "mean_turns": round(s.mean_turns, 2),
        "start_s": round(start_s, 2),
        "rollout_s": round(rollout_s, 2),
        "rss_mib": round(rss / mib, 1),
        "uss_mib": round(uss / mib, 1),
        "rss_per_env_mib": round(rss / mib / max(1.0, measured_envs), 2),
        "uss_per_env_mib": round(uss / mib / max(1.0, measured_envs), 2),
        "ray_system_processes": len(system),
        "ray_system_rss_mib": round(sum(m[0] for m in system) / mib, 1),
        "ray_system_uss_mib": round(sum(m[1] for m in system) / mib, 1),
        "trajectory_digest": digest,
    }


def cmd_bench_memory(args: argparse.Namespace) -> int:
    import json

    import agentgym
    from agentgym.ray_pool import shutdown

    sys.path[:0] = [os.path.abspath(x) for x in args.path]
    agentgym.load_plugins()
    if args.register and args.env not in agentgym.registry:
        agentgym.register(args.env, args.register)
    rows = []
    for backend in [b.strip() for b in args.backends.split(",") if b.strip()]:
        rows.append(
            measure_pool_memory(
                args.env,
                args.num_envs,
                backend=backend,
                num_workers=args.num_workers,
                episodes=args.episodes,
                policy=args.policy,
                seed=args.seed,
            )
        )
        if args.json:
            print(json.dumps(rows[-1]), flush=True)
    if not args.json:
        cols = [
            "backend",
            "workers",
            "episodes",
            "crashed",
            "start_s",
            "rollout_s",
            "rss_mib",
            "uss_mib",
            "rss_per_env_mib",
            "uss_per_env_mib",
            "ray_system_rss_mib",
            "trajectory_digest",
        ]
        print(f"{args.env}, {args.num_envs} envs")
        print("| " + " | ".join(cols) + " |")
        print("|" + "---|" * len(cols))
        for r in rows:
            print("| " + " | ".join(str(r[c]) for c in cols) + " |")
    shutdown()
    return 0


def add_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--env", default="textworld/Simple-v0")
    p.add_argument("--num-envs", type=int, default=64)
    p.add_argument("--num-workers", type=int, default=8, help="processes / actors")
    p.add_argument("--episodes", type=int, default=128)
    p.add_argument("--policy", default="random")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backends", default="process,ray")
    p.add_argument(
        "--register",
        metavar="MODULE:CLASS",
        help="register --env with this entry point first (an env outside agentgym)",
    )
    p.add_argument("--path", action="append", default=[], help="extra sys.path entry")
    p.add_argument("--json", action="store_true", help="one JSON object per backend")


def add_cli(sub: Any, groups: dict[str, Any]) -> None:
    from agentgym.benchmarks.cli import bench_parsers

    bench = bench_parsers(sub, groups)
    p = bench.add_parser(
        "memory",
        help="memory per env of the process and Ray backends (one rollout each)",
        description="Run one rollout per backend with the same envs and seeds; report the "
        "memory of the env workers (RSS and USS, summed and per env).",
    )
    add_flags(p)
    p.set_defaults(func=cmd_bench_memory)
