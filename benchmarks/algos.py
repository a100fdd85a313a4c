"""``agentgym bench algos``: the credit-assignment methods compared under one budget.

Every method trains the same model on the same env with the same seeds, steps, groups and
evaluation episodes; only the estimator (and EPO's loss terms) differ:

    grpo, rloo, ppo (turn-level GAE + critic), gigpo, gigpo+epo, spa (progress estimator)

and, on request (``--methods``), reward transforms on GRPO: ``grpo+gated`` (G-RA gated
accumulation of the env's reward channels, ``gate_channels`` / ``gate_thresholds``) and
``grpo+direct`` (the same channels summed without gates).

Per seed, the tiny model is built and SFT-warm-started ONCE (``agentgym sft``); every method then
starts RL from that same SFT model, so step 0 is identical across methods and the comparison
isolates the RL algorithm. Held-out success (greedy, test split) is measured every
``eval_every`` steps. Outputs in ``--out``:

* ``results.json``: every run's success curve, wall time and step-group statistics; per method
  and step the mean, sample std, seed count and 95% interval (``table``); the final success per
  method (``final``); the paired comparisons (``paired``);
* ``table.md``: final held-out success per method with its 95% interval, the mean share of
  training turns in non-singleton step groups, one line per paired comparison, whether the
  published ordering GiGPO > GRPO > RLOO/PPO holds, then held-out success at each evaluated step
  (mean +- half-width of the 95% interval);
* ``success.png``: success rate vs RL step, one line per method, shaded by the 95% interval.

Intervals over seeds are Student t intervals of the mean (n-1 degrees of freedom: with 3 seeds
the half-width is 4.30 std / sqrt(3), not 1.96). ``--compare A:B`` (default gigpo:grpo when both
run) pairs the runs by seed, since one seed is one SFT start shared by every method: the
per-seed differences of final success give a mean difference with its t interval, a paired t-test
and an exact sign-flip permutation test (all 2^n sign assignments; with n seeds its p-value cannot
go below 2 / 2^n, so 6 seeds are the fewest that can go below 0.05: 2/64).

Every training step logs ``credit/nonsingleton_frac`` (share of turns whose (group, anchor)
step group has >= 2 members: the turns GiGPO's step advantage can use) whatever the method; the
table reports its mean per method. ``--config FILE`` gives the base TrainConfig of every run.

Envs that report per-episode metrics (``info["metrics"]``, e.g. SWE's completion /
modification / resolution) get the same table and a plot per metric (``<metric>.png``, held-out;
``train_<metric>.png``, sampled training episodes).

Runs are cached by folder: a method/seed whose ``report.json`` exists is not trained again
(``--fresh`` to redo), so an interrupted benchmark resumes where it stopped; a cached run made
with other settings (anything but where it is written and how it is logged) is refused rather
than mixed into the table. The SFT start ``sft_seed<k>/model`` is reused as it is (delete the
folder to rebuild it).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agentgym.benchmarks.algos_report import (
    Summary,
    aggregate,
    bench_markdown,
    final_markdown,
    ordering_markdown,
    results_tables,
    summarize,
    write_plots,
)

# aggregate, final_markdown and ordering_markdown live in .algos_report and are re-exported.
__all__ = [
    "METHODS",
    "DEFAULT_METHODS",
    "run_bench",
    "aggregate",
    "final_markdown",
    "ordering_markdown",
    "parse_compare",
    "add_cli",
]

#: method name -> TrainConfig overrides.
METHODS: dict[str, dict[str, Any]] = {
    "grpo": {"algo": "grpo"},
    "rloo": {"algo": "rloo"},
    "ppo": {"algo": "ppo"},
    "gigpo": {"algo": "gigpo"},
    "gigpo+epo": {"algo": "gigpo", "epo": True},
    "spa": {"algo": "spa"},
    "grpo+gated": {"algo": "grpo", "transform": ["gated"]},
    "grpo+direct": {"algo": "grpo", "transform": ["direct"]},
}
#: What ``agentgym bench algos`` runs without ``--methods``.
DEFAULT_METHODS = ("grpo", "rloo", "ppo", "gigpo", "gigpo+epo", "spa")


def _records(run_dir: Path) -> list[dict[str, Any]]:
    """A run's metrics.jsonl records."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def _curve(records: Sequence[dict[str, Any]], key: str = "eval/success") -> dict[int, float]:
    """``key`` by RL step from a run's records: ``eval/success`` (held-out, greedy; step 0 = the
    SFT model) or ``train/success`` (the step's sampled training episodes)."""
    return {int(r.get("step", 0)): float(r[key]) for r in records if key in r}


def _env_metric_keys(records: Sequence[dict[str, Any]]) -> list[str]:
    """The env's own metrics a run logged (``eval/<name>`` other than the trainer's own:
    :data:`~agentgym.trainers.metrics.OWN_METRICS` and success's interval bounds)."""
    from agentgym.trainers.metrics import OWN_METRICS

    own = {"eval/success_lo", "eval/success_hi", *(f"eval/{k}" for k in OWN_METRICS)}
    return sorted({k[5:] for r in records for k in r if k.startswith("eval/") and k not in own})


def _step_group_means(records: Sequence[dict[str, Any]]) -> dict[str, float] | None:
    """A run's step-group statistics (``credit/nonsingleton_frac`` etc., logged every RL step by
    every method) averaged over its steps; None for a run logged before they existed."""
    out = {}
    for key in STEP_GROUP_KEYS:
        xs = [float(r[key]) for r in records if key in r]
        if not xs:
            return None
        out[key.split("/", 1)[1]] = sum(xs) / len(xs)
    return out


#: The per-step metrics of :func:`agentgym.trainers.credit.step_group_stats` the table reports.
STEP_GROUP_KEYS = ("credit/nonsingleton_frac", "credit/step_groups", "credit/anchored_frac")


def parse_compare(values: Sequence[str]) -> list[tuple[str, str]]:
    """``["gigpo:grpo", ...]`` (``--compare``) as pairs of method names."""
    pairs = []
    for v in values:
        a, sep, b = v.partition(":")
        if not sep or not a or not b or b.count(":"):
            raise ValueError(f"--compare {v!r}: write two methods as A:B, e.g. gigpo:grpo")
        pairs.append((a.strip(), b.strip()))
    return pairs


#: Settings that cannot change a run's numbers (where it is written, how it is logged).
_BOOKKEEPING = frozenset(
    {
        "out",
        "model",
        "resume",
        "progress",
        "tensorboard",
        "keep_checkpoints",
        "save_every",
        "write_trajectories",
    }
)


#: Settings that only one estimator reads: they cannot change another method's numbers, so a
#: cached run of another method stays valid when they change (e.g. ``--set spa_beta=0.1`` added
#: to a benchmark whose GRPO and GiGPO runs are done).
_READ_ONLY_BY = {
    "spa_beta": "spa",
    "progress_lr": "spa",
    "progress_epochs": "spa",
    "progress_replay": "spa",
    "progress_target": "spa",
    "value_lr": "ppo",
    "value_epochs": "ppo",
    "value_clip": "ppo",
}


def _check_cached(run_dir: Path, have: dict[str, Any], want: dict[str, Any]) -> None:
    """Refuse to put a cached run made with other settings (``have``, from its report) into
    this table."""
    want = json.loads(json.dumps(want))  # tuples as the report stores them (lists)
    algo = want.get("algo")
    diff = [
        f"{k}: {have.get(k)!r} (cached) vs {v!r} (now)"
        for k, v in want.items()
        if k not in _BOOKKEEPING
        and _READ_ONLY_BY.get(k, algo) == algo
        and k in have
        and have[k] != v
    ]
    if diff:
        raise ValueError(
            f"{run_dir} was trained with other settings ({'; '.join(diff)}); pass --fresh to "
            "retrain it, or another --out"
        )


def _check_methods(
    methods: Sequence[str], compare: Sequence[tuple[str, str]] | None
) -> Sequence[tuple[str, str]]:
    """The ``--compare`` pairs to test (default gigpo:grpo when both run), after refusing an
    unknown method or a pair not among ``methods``: before any training, not after hours of it."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}: choose from {', '.join(METHODS)}")
    if compare is None:
        compare = [("gigpo", "grpo")] if {"gigpo", "grpo"} <= set(methods) else []
    for a, b in compare:
        missing = [m for m in (a, b) if m not in methods]
        if missing or a == b:
            raise ValueError(
                f"--compare {a}:{b}: "
                + (f"{', '.join(missing)} not among the methods run" if missing else "same method")
                + f"; pick two of {', '.join(methods)}"
            )
    return compare


def _sft_start(
    out: Path, seed: int, sft_seed: int, base: dict[str, Any], fresh: bool, log: Any
) -> Path:
    """The model every method of ``seed`` starts RL from: built and SFT-trained once in
    ``sft_seed<sft_seed>`` (``sft_seed`` = ``seed``, or the first seed with ``shared_sft``)."""
    from agentgym.trainers.train import TrainConfig, train

    sft_dir = out / f"sft_seed{sft_seed}"
    if fresh or not (sft_dir / "report.json").exists():
        t0 = time.perf_counter()
        cfg = TrainConfig(**{**base, "out": str(sft_dir), "seed": seed, "steps": 0})
        rep = train(cfg)
        log(
            f"seed {seed}: model + SFT in {time.perf_counter() - t0:.0f}s, held-out success "
            f"{rep['success_final']:.2f}"
        )
    return sft_dir / "model"


def _method_run(
    out: Path,
    method: str,
    seed: int,
    base: dict[str, Any],
    start_model: Path,
    fresh: bool,
    log: Any,
) -> dict[str, Any]:
    """Train ``method`` with ``seed`` from ``start_model`` (or load its cached run, refused if
    made with other settings) and read back what the outputs report of it."""
    from agentgym.trainers.train import TrainConfig, train

    run_dir = out / f"{method}_seed{seed}"
    cfg = TrainConfig(
        **{
            **base,
            **METHODS[method],
            "out": str(run_dir),
            "seed": seed,
            "model": str(start_model),
            "sft_episodes": 0,
        }
    )
    if not fresh and (run_dir / "report.json").exists():
        rep = json.loads((run_dir / "report.json").read_text())
        _check_cached(run_dir, rep.get("config", {}), cfg.to_dict())
    else:
        rep = train(cfg)
        log(
            f"{method} seed {seed}: success {rep['success_initial']:.2f} -> "
            f"{rep['success_final']:.2f} in {rep['wall_time_s']:.0f}s"
        )
    records = _records(run_dir)
    return {
        "method": method,
        "seed": seed,
        "curve": _curve(records),
        "train_curve": _curve(records, "train/success"),
        "env_metrics": {
            k: {"eval": _curve(records, f"eval/{k}"), "train": _curve(records, f"train/{k}")}
            for k in _env_metric_keys(records)
        },
        "wall_time_s": rep["wall_time_s"],
        "success_final": rep["success_final"],
        "step_groups": _step_group_means(records),
    }


def _write_outputs(
    out: Path,
    runs: list[dict[str, Any]],
    summary: Summary,
    *,
    methods: Sequence[str],
    seeds: Sequence[int],
    base: dict[str, Any],
    t_all: float,
) -> dict[str, Any]:
    """Write ``table.md``, the plots and ``results.json`` (returned)."""
    from agentgym.trainers.train import TrainConfig
    from agentgym.utils import atomic_write, atomic_write_json

    eff = {**TrainConfig().to_dict(), **base}  # the settings the runs actually used
    # An env without splits evaluates on the tasks it trains on: the tables say so.
    held = "test split" if eff["split_kwarg"] else "training tasks: no split"
    with atomic_write(out / "table.md") as f:
        f.write(bench_markdown(summary, held, len(seeds)))
    title = (
        f"{eff['env']}: {len(seeds)} seeds x {eff['steps']} steps x "
        f"{eff['groups_per_step']}x{eff['group_size']} episodes (mean, 95% CI)"
    )
    write_plots(summary, out, title, held)
    result = {
        "methods": list(methods),
        "seeds": list(seeds),
        "base_config": base,
        "runs": runs,
        **results_tables(summary),
        "wall_time_s": round(time.perf_counter() - t_all, 1),
    }
    atomic_write_json(out / "results.json", result)
    return result


def run_bench(
    out: str | Path,
    *,
    methods: Sequence[str],
    seeds: Sequence[int],
    base: dict[str, Any],
    fresh: bool = False,
    shared_sft: bool = False,
    compare: Sequence[tuple[str, str]] | None = None,
    log: Any = print,
) -> dict[str, Any]:
    """Train every (method, seed) with ``base`` TrainConfig settings; write table, plot, JSON.

    ``shared_sft``: every seed starts RL from the first seed's SFT model (the seeds then vary
    only the RL sampling and task order); otherwise each seed builds and SFTs its own model.
    ``compare``: pairs ``(A, B)`` of methods to test against each other seed by seed (default:
    gigpo vs grpo when both run).
    """
    compare = _check_methods(methods, compare)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    runs = []
    t_all = time.perf_counter()
    for seed in seeds:
        # One model + SFT per seed (or one for all seeds), shared by every method.
        start = _sft_start(out, seed, seeds[0] if shared_sft else seed, base, fresh, log)
        runs += [_method_run(out, m, seed, base, start, fresh, log) for m in methods]
    summary = summarize(runs, methods, compare)
    return _write_outputs(out, runs, summary, methods=methods, seeds=seeds, base=base, t_all=t_all)


# ------------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------------
#: The CPU budget of the default benchmark (TrainConfig overrides; the rest is `agentgym
#: train`'s default: same env, model, SFT and RL batch, fewer RL steps).
DEFAULT_BASE: dict[str, Any] = {
    "steps": 4,
    "eval_every": 2,
    "tensorboard": False,
    "progress": False,
    "write_trajectories": False,
    "keep_checkpoints": 1,
    "save_every": 0,
}


def base_from_file(path: str | Path) -> dict[str, Any]:
    """TrainConfig fields from a ``.yaml``/``.json``/``.toml`` file (``--config``): the base of
    every run, under the bench's own flags. ``out``, ``seed`` and the method's settings (``algo``,
    ``epo``, ``transform``) are set per run; the rest applies to all."""
    from agentgym.trainers.train import TrainConfig, load_config_file

    data = load_config_file(path)
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(
            f"config file {path}: unknown key(s) {unknown}: remove them (valid keys: "
            "`agentgym train --help`)"
        )
    return data


def cmd_bench_algos(args: argparse.Namespace) -> int:
    from agentgym.trainers.train import TrainConfig

    base = dict(DEFAULT_BASE)
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    if args.config:
        base.update(base_from_file(args.config))
    for key in (
        "env",
        "steps",
        "groups_per_step",
        "group_size",
        "eval_every",
        "eval_episodes",
        "num_envs",
        "threads",
        "max_turns",
        "sft_episodes",
    ):
        v = getattr(args, key, None)
        if v is not None:
            base[key] = v
    from agentgym.cli import parse_kv

    for k, v in parse_kv(args.set or [], "--set").items():
        k = k.replace("-", "_")
        if k not in names:
            raise ValueError(f"--set {k}: not a TrainConfig field (see `agentgym train --help`)")
        base[k] = v
    methods = args.methods.split(",") if args.methods else list(DEFAULT_METHODS)
    result = run_bench(
        args.out,
        methods=methods,
        seeds=args.seeds,
        base=base,
        fresh=args.fresh,
        shared_sft=args.shared_sft,
        compare=parse_compare(args.compare) if args.compare else None,
    )
    if args.json:
        print(json.dumps(result))
    else:
        print((Path(args.out) / "table.md").read_text(), end="")
        print(f"plot: {Path(args.out) / 'success.png'}  ({result['wall_time_s']:.0f}s in all)")
    return 0


def add_cli(sub: argparse._SubParsersAction, groups: dict[str, Any]) -> None:
    from agentgym.benchmarks.cli import bench_parsers

    bench = bench_parsers(sub, groups)
    p = bench.add_parser(
        "algos",
        help="compare GRPO, RLOO, PPO, GiGPO, GiGPO+EPO and SPA under one training budget",
        description="Train each credit-assignment method with the same env, model, seeds and "
        "budget; print held-out success vs RL step (mean and 95% interval over seeds), paired "
        "by-seed tests, and plot it.",
    )
    p.add_argument("--out", default="runs/bench_algos", help="output folder (runs are cached)")
    p.add_argument(
        "--methods",
        help=f"comma-separated methods from {','.join(METHODS)} "
        f"(default: {','.join(DEFAULT_METHODS)})",
    )
    p.add_argument(
        "--config",
        metavar="FILE",
        help="TrainConfig fields (.yaml/.json/.toml) used as the base of every run; the flags "
        "below override them",
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="training seeds")
    p.add_argument("--env", help="env id (default: the trainer's default, the 4x4 local-view lake)")
    p.add_argument("--steps", type=int, help=f"RL steps (default {DEFAULT_BASE['steps']})")
    p.add_argument("--groups-per-step", type=int, help="task groups per step")
    p.add_argument("--group-size", type=int, help="episodes per group")
    p.add_argument("--eval-every", type=int, help="held-out evaluation every N steps")
    p.add_argument("--eval-episodes", type=int, help="held-out episodes per evaluation")
    p.add_argument("--num-envs", type=int, help="parallel env copies")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--max-turns", type=int, help="turn limit override")
    p.add_argument("--sft-episodes", type=int, help="expert episodes for the shared SFT")
    p.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="any other TrainConfig field"
    )
    p.add_argument("--fresh", action="store_true", help="retrain runs that already exist")
    p.add_argument(
        "--shared-sft",
        action="store_true",
        help="start every seed from the first seed's SFT model (seeds vary RL only)",
    )
    p.add_argument(
        "--compare",
        action="append",
        metavar="A:B",
        help="paired by-seed test of method A against B on final held-out success (repeatable; "
        "default gigpo:grpo when both run)",
    )
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(func=cmd_bench_algos)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m agentgym.benchmarks.algos`` = ``agentgym bench algos``."""
    parser = argparse.ArgumentParser(prog="agentgym")
    sub = parser.add_subparsers(dest="command", required=True)
    add_cli(sub, {})
    args = parser.parse_args(["bench", "algos", *(sys.argv[1:] if argv is None else argv)])
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
