"""``agentgym bench envs``: env-pool throughput against a sequential loop measured in the same run.

Machines are noisy, so the figure that matters is the ratio ``pool / sequential`` measured back
to back on the same env, actions and seeds. Both loops play random admissible actions (seeded) and
reset an env as soon as its episode ends.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import threading
import time
from typing import Any


def _choose(rng: random.Random, obs: Any) -> str:
    acts = obs.admissible_actions
    return rng.choice(acts) if acts else "look"


def bench_sequential(
    env_id: Any,
    num_envs: int,
    steps: int,
    seed: int,
    env_kwargs: dict[str, Any],
    *,
    first: int = 0,
    start: Any = None,
) -> dict[str, float]:
    """One process, ``num_envs`` envs (seeds ``seed + first`` on) stepped one after another.

    ``env_id`` is an id or an :class:`~agentgym.registration.EnvSpec`; ``start``, a barrier the
    loop waits on after its resets, right before its clock starts."""
    import agentgym

    envs = [agentgym.make(env_id, **env_kwargs) for _ in range(num_envs)]
    rng = random.Random(seed + first)
    seeds = [seed + first + i for i in range(num_envs)]
    try:
        t0 = time.perf_counter()
        obs = [e.reset(seed=seeds[i])[0] for i, e in enumerate(envs)]
        reset_s = time.perf_counter() - t0
        if start is not None:
            start.wait(timeout=600)
        n = 0
        t0 = time.perf_counter()
        for _ in range(steps):
            for i, e in enumerate(envs):
                o, _, te, tr, _ = e.step(_choose(rng, obs[i]))
                n += 1
                obs[i] = e.reset(seed=seeds[i])[0] if te or tr else o
        dt = time.perf_counter() - t0
    finally:
        for e in envs:
            e.close()
    return {"steps": n, "seconds": dt, "steps_per_s": n / dt, "reset_s": reset_s}


def _ceiling_worker(
    env_spec: Any,
    num_envs: int,
    first: int,
    steps: int,
    seed: int,
    env_kwargs: dict[str, Any],
    start: Any,
    results: Any,
) -> None:
    try:
        results.put(
            bench_sequential(env_spec, num_envs, steps, seed, env_kwargs, first=first, start=start)
        )
    except BaseException as e:  # the parent reports it instead of waiting
        start.abort()
        results.put({"error": f"{type(e).__name__}: {e}"})


def bench_ceiling(
    env_id: str, num_envs: int, steps: int, seed: int, env_kwargs: dict[str, Any], workers: int
) -> dict[str, float]:
    """The most ``workers`` processes can do on this machine: each runs the sequential loop over
    its share of the envs, all started together, with no pool, no messages and no caller. What
    it loses against ``workers`` x sequential is the machine's (shared caches and memory
    bandwidth, the clock of a busier chip), so no pool design can beat it."""
    import multiprocessing as mp

    from agentgym.registration import spec

    ctx = mp.get_context("spawn")
    start, results = ctx.Barrier(workers + 1), ctx.Queue()
    shares = [num_envs // workers + (k < num_envs % workers) for k in range(workers)]
    firsts = [sum(shares[:k]) for k in range(workers)]
    procs = [
        ctx.Process(
            target=_ceiling_worker,
            args=(spec(env_id), n, f, steps, seed, env_kwargs, start, results),
            daemon=True,
        )
        for n, f in zip(shares, firsts)
        if n
    ]
    for p in procs:
        p.start()
    try:
        # a broken barrier: a worker failed before its clock started; its error is on the queue
        with contextlib.suppress(threading.BrokenBarrierError):
            start.wait(timeout=600)
        runs = [results.get(timeout=3600) for _ in procs]
    finally:
        for p in procs:
            p.join(timeout=60)
            if p.is_alive():
                p.kill()
    errors = [r["error"] for r in runs if "error" in r]
    if errors:
        raise RuntimeError(f"a ceiling worker failed: {errors[0]}")
    n = sum(r["steps"] for r in runs)
    # each process timed its own loop; the slowest one is when all the work was done
    dt = max(r["seconds"] for r in runs)
    return {"steps": n, "seconds": dt, "steps_per_s": n / dt, "workers": len(procs)}


def bench_pool(
    env_id: str,
    num_envs: int,
    steps: int,
    seed: int,
    env_kwargs: dict[str, Any],
    backend: str = "auto",
    num_workers: int | None = None,
) -> dict[str, float]:
    """An :class:`EnvPool` stepping all envs per batch (lock-step), then resetting the envs
    whose episode ended: what the trainer's batched rollout does."""
    from agentgym.pool import EnvPool

    rng = random.Random(seed)
    t0 = time.perf_counter()
    with EnvPool(
        env_id, num_envs, backend=backend, num_workers=num_workers, env_kwargs=env_kwargs
    ) as pool:
        start_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        obs = [o for o, _ in pool.reset([seed + i for i in range(num_envs)])]
        reset_s = time.perf_counter() - t0
        n = 0
        busy0 = [w["busy_s"] for w in pool.worker_stats()]
        t0 = time.perf_counter()
        for _ in range(steps):
            res = pool.step([_choose(rng, o) for o in obs])
            n += num_envs
            ended = {i: seed + i for i, r in enumerate(res) if r.done}
            obs = [r.observation for r in res]
            if ended:
                for i, (o, _) in pool.reset_many(ended).items():
                    obs[i] = o
        dt = time.perf_counter() - t0
        busy = _busy_since(pool, busy0)
        workers = len(pool.worker_pids)
    return {
        "steps": n,
        "seconds": dt,
        "steps_per_s": n / dt,
        "reset_s": reset_s,
        "start_s": start_s,
        "workers": workers,
        "busy_s": busy,
    }


def _busy_since(pool: Any, before: list[float]) -> list[float]:
    """Seconds each worker spent running batches since ``before`` (its earlier ``busy_s``)."""
    return [w["busy_s"] - b for w, b in zip(pool.worker_stats(), before)]


def bench_pool_async(
    env_id: str,
    num_envs: int,
    steps: int,
    seed: int,
    env_kwargs: dict[str, Any],
    num_workers: int | None = None,
    queue_depth: int = 1,
) -> dict[str, float]:
    """The same work through :meth:`EnvPool.send` / :meth:`EnvPool.recv`: each worker's envs are
    sent their next actions (or resets) as soon as that worker answers, so no worker waits for
    another. Stops after ``num_envs * steps`` env steps, as the other loops do.

    With ``queue_depth`` d > 1 the envs start as d interleaved groups sent one after another,
    so each worker holds d batches: while it runs one, the caller answers another."""
    from agentgym.pool import EnvPool

    rng = random.Random(seed)
    target = num_envs * steps
    with EnvPool(
        env_id,
        num_envs,
        backend="process",
        num_workers=num_workers,
        env_kwargs=env_kwargs,
        queue_depth=queue_depth,
    ) as pool:
        t0 = time.perf_counter()
        obs = [o for o, _ in pool.reset([seed + i for i in range(num_envs)])]
        reset_s = time.perf_counter() - t0
        n = sent = 0
        busy0 = [w["busy_s"] for w in pool.worker_stats()]
        t0 = time.perf_counter()

        def send_by_group(commands: dict[int, tuple[str, Any]]) -> None:
            # one batch per group, so groups answered together stay apart (a merged batch would
            # leave its worker with nothing queued from then on)
            for g in range(queue_depth):
                if part := {i: c for i, c in commands.items() if i % queue_depth == g}:
                    pool.send(part)

        send_by_group({i: ("step", _choose(rng, obs[i])) for i in range(num_envs)})
        sent = num_envs
        while pool.pending:
            nxt: dict[int, tuple[str, Any]] = {}
            for i, r in pool.recv().items():
                if isinstance(r, tuple):  # a reset came back
                    obs[i] = r[0]
                else:
                    n += 1
                    if r.done:
                        nxt[i] = ("reset", seed + i)
                        continue
                    obs[i] = r.observation
                if sent < target:
                    nxt[i] = ("step", _choose(rng, obs[i]))
                    sent += 1
            nxt = {i: c for i, c in nxt.items() if c[0] == "step" or sent < target}
            send_by_group(nxt)
        dt = time.perf_counter() - t0
        busy = _busy_since(pool, busy0)
        workers = len(pool.worker_pids)
    return {
        "steps": n,
        "seconds": dt,
        "steps_per_s": n / dt,
        "reset_s": reset_s,
        "workers": workers,
        "busy_s": busy,
    }


def _bracketed(runs: list[dict[str, float]]) -> dict[str, float]:
    """The sequential baseline of a pool run measured right before and right after it: the
    mean of their seconds for the same steps, so a machine that speeds up or slows down during
    the round moves the baseline with the pool run it is compared with."""
    seconds = sum(r["seconds"] for r in runs) / len(runs)
    return {**runs[0], "seconds": seconds, "steps_per_s": runs[0]["steps"] / seconds}


def _one_round(args: argparse.Namespace, kwargs: dict[str, Any]) -> dict[str, Any]:
    # seq, lock-step pool, seq, [unqueued async pool, seq,] [async pool, seq, ceiling, seq]:
    # each pool run is compared with the mean of the sequential runs on either side of it.
    def sequential() -> dict[str, float]:
        return bench_sequential(args.env, args.num_envs, args.steps, args.seed, kwargs)

    def baseline_after() -> dict[str, float]:
        """A sequential run after the run just made; with the one before it, its baseline."""
        seq_runs.append(sequential())
        return _bracketed(seq_runs[-2:])

    def asynchronous(depth: int) -> dict[str, float]:
        return bench_pool_async(
            args.env,
            args.num_envs,
            args.steps,
            args.seed,
            kwargs,
            num_workers=args.num_workers,
            queue_depth=depth,
        )

    seq_runs = [sequential()]
    pool = bench_pool(
        args.env,
        args.num_envs,
        args.steps,
        args.seed,
        kwargs,
        backend=args.backend,
        num_workers=args.num_workers,
    )
    seq = baseline_after()
    seq_step_ms = 1e3 / seq["steps_per_s"]
    # Per batched step, the ideal pool time is the envs' compute spread over the workers; what
    # remains is the pool's own cost (pickling, pipes, scheduling, waiting for the slowest
    # worker), reported per env step.
    per_worker = args.num_envs / pool["workers"]
    ideal_batch_s = seq_step_ms / 1e3 * per_worker
    batch_s = pool["seconds"] / args.steps
    out: dict[str, Any] = {
        "sequential_steps_per_s": round(seq["steps_per_s"], 1),
        "pool_steps_per_s": round(pool["steps_per_s"], 1),
        "speedup_vs_sequential": round(pool["steps_per_s"] / seq["steps_per_s"], 3),
        "env_step_ms": round(seq_step_ms, 3),
        "pool_overhead_ms_per_step": round(max(0.0, batch_s - ideal_batch_s) * 1e3 / per_worker, 3),
        "workers": pool["workers"],
        "pool_start_s": round(pool["start_s"], 3),
        "reset_ms_sequential": round(seq["reset_s"] * 1e3 / args.num_envs, 3),
        **_split(pool, seq_step_ms, ""),
    }
    if pool["workers"] > 1 and args.backend in ("auto", "process") and not _is_fast(args.env):
        if args.queue_depth > 1:
            # the same asynchronous loop with one batch per worker: the queue's same-run baseline
            a1 = asynchronous(1)
            seq = baseline_after()
            out["async_unqueued_speedup_vs_sequential"] = round(
                a1["steps_per_s"] / seq["steps_per_s"], 3
            )
            out["async_unqueued_own_overhead_ms_per_step"] = _split(
                a1, 1e3 / seq["steps_per_s"], ""
            )["own_overhead_ms_per_step"]
        a = asynchronous(args.queue_depth)
        seq = baseline_after()
        seq_step_ms = 1e3 / seq["steps_per_s"]
        out["async_queue_depth"] = args.queue_depth
        # With W workers the ideal is W x sequential; the rest is overhead per env step.
        ideal_s = a["steps"] * seq_step_ms / 1e3 / a["workers"]
        out["async_steps_per_s"] = round(a["steps_per_s"], 1)
        out["async_speedup_vs_sequential"] = round(a["steps_per_s"] / seq["steps_per_s"], 3)
        out["async_overhead_ms_per_step"] = round(
            max(0.0, a["seconds"] - ideal_s) * 1e3 / (a["steps"] / a["workers"]), 3
        )
        out.update(_split(a, seq_step_ms, "async_"))
        # The machine's ceiling for as many processes, bracketed the same way: the pool's
        # speedup over it is the share of the reachable speedup the pool delivers.
        c = bench_ceiling(
            args.env, args.num_envs, args.steps, args.seed, kwargs, workers=a["workers"]
        )
        seq = baseline_after()
        out["parallel_ceiling"] = round(c["steps_per_s"] / seq["steps_per_s"], 3)
        out["async_of_ceiling"] = round(
            out["async_speedup_vs_sequential"] / out["parallel_ceiling"], 3
        )
    # How much the same sequential loop moved within the round (slowest / fastest): the
    # machine's own drift, which a ratio against one earlier baseline would count as the pool's.
    secs = [r["seconds"] for r in seq_runs]
    out["sequential_drift"] = round(max(secs) / min(secs), 3)
    return out


def _split(run: dict[str, Any], seq_step_ms: float, prefix: str) -> dict[str, float]:
    """Where a pool run's time went, from its workers' busy seconds:

    * ``worker_utilisation``: the workers' mean busy share of the wall time;
    * ``in_worker_step_ms``: an env step's cost inside a worker (resets included, as in the
      sequential ``env_step_ms``); over ``env_step_ms`` it is ``parallel_slowdown``, what running
      W processes at once costs each of them (shared caches and memory bandwidth, clock): the
      machine's part, which no pool design removes;
    * ``own_overhead_ms_per_step``: the wall time the workers did not compute (round trips,
      pickling, waiting for the caller or for a slower worker), per env step of one worker.
    """
    busy, wall, w = run["busy_s"], run["seconds"], run["workers"]
    step_ms = sum(busy) * 1e3 / run["steps"]
    return {
        f"{prefix}worker_utilisation": round(sum(busy) / w / wall, 3),
        f"{prefix}in_worker_step_ms": round(step_ms, 3),
        f"{prefix}parallel_slowdown": round(step_ms / seq_step_ms, 3),
        f"{prefix}own_overhead_ms_per_step": round(
            max(0.0, wall - sum(busy) / w) * 1e3 / (run["steps"] / w), 3
        ),
    }


def _is_fast(env_id: str) -> bool:
    from agentgym.registration import spec

    return spec(env_id).fast


def cmd_bench_envs(args: argparse.Namespace) -> int:
    import statistics

    import agentgym
    from agentgym.cli import parse_kv

    agentgym.load_plugins()
    kwargs = parse_kv(args.env_kwarg)
    if args.repeats < 1:
        raise SystemExit(f"--repeats {args.repeats}: use 1 or more")
    if args.queue_depth < 1:
        raise SystemExit(f"--queue-depth {args.queue_depth}: use 1 or more")
    # Warm up caches (generated games, indexes) outside the timed region.
    with agentgym.make(args.env, **kwargs) as e:
        e.reset(seed=args.seed)
    rounds = [_one_round(args, kwargs) for _ in range(args.repeats)]
    out: dict[str, Any] = {
        "env": args.env,
        "num_envs": args.num_envs,
        "backend": "sync" if args.backend == "auto" and _is_fast(args.env) else args.backend,
        "steps_per_env": args.steps,
        "repeats": args.repeats,
        **rounds[-1],
    }
    if args.repeats > 1:  # each ratio comes from one round: report all and their spread
        out["sequential_drifts"] = [r["sequential_drift"] for r in rounds]
        for key in (
            "speedup_vs_sequential",
            "async_speedup_vs_sequential",
            "async_unqueued_speedup_vs_sequential",
            "parallel_ceiling",
            "async_of_ceiling",
        ):
            vals = [r[key] for r in rounds if key in r]
            if vals:
                out[key] = round(statistics.median(vals), 3)
                out[key.replace("speedup", "speedups").replace("ceiling", "ceilings")] = vals
                out[key.replace("speedup", "speedup_min").replace("ceiling", "ceiling_min")] = min(
                    vals
                )
        for key in (
            "pool_overhead_ms_per_step",
            "async_overhead_ms_per_step",
            "own_overhead_ms_per_step",
            "async_own_overhead_ms_per_step",
            "async_unqueued_own_overhead_ms_per_step",
            "parallel_slowdown",
            "async_parallel_slowdown",
            "worker_utilisation",
            "async_worker_utilisation",
        ):
            vals = [r[key] for r in rounds if key in r]
            if vals:
                out[key] = round(statistics.median(vals), 3)
    if args.json:
        print(json.dumps(out))
    else:
        for k, v in out.items():
            print(f"{k:32s} {v}")
    return 0


def add_cli(sub: Any, groups: dict[str, Any]) -> None:
    from agentgym.benchmarks.cli import bench_parsers

    bench = bench_parsers(sub, groups)
    p = bench.add_parser("envs", help="env-pool steps/s vs a sequential loop, same run")
    p.add_argument("--env", required=True, help="env id")
    p.add_argument("--num-envs", type=int, default=16)
    p.add_argument("--num-workers", type=int, default=None, help="default: CPU count")
    p.add_argument("--steps", type=int, default=50, help="batched steps per env")
    p.add_argument(
        "--backend",
        default="auto",
        choices=("auto", "process", "sync", "ray"),
        help="backend of the lock-step pool (auto: sync for fast envs, else process)",
    )
    p.add_argument(
        "--queue-depth",
        type=int,
        default=2,
        help="batches each worker holds in the asynchronous run (EnvPool queue_depth); above 1, "
        "each round also runs the unqueued pool as its baseline",
    )
    p.add_argument("--repeats", type=int, default=1, help="rounds; ratios are reported per round")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--env-kwarg", action="append", default=[], metavar="K=V")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bench_envs)
