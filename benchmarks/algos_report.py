"""The results of ``agentgym bench algos``: statistics over seeds, ``table.md``, plots, JSON.

:mod:`.algos` trains (or loads) one run per method and seed and hands the list of runs here;
this module only summarises and formats them, so the table text and plots can be tested (and
re-rendered from a ``results.json``) without training anything. Every output is described in
:mod:`.algos`'s docstring.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agentgym.benchmarks.stats import mean_ci, paired, verdict
from agentgym.trainers.metrics import save_plot

__all__ = [
    "Cell",
    "ORDERING_PAIRS",
    "Summary",
    "aggregate",
    "bench_markdown",
    "final_markdown",
    "ordering_markdown",
    "plot",
    "results_tables",
    "summarize",
    "table_markdown",
    "write_plots",
]

Cell = dict[str, Any]  # stats.mean_ci(): mean, std, n, lo, hi, half


def aggregate(runs: Sequence[dict[str, Any]], key: str = "curve") -> dict[str, dict[int, Cell]]:
    """``{method: {step: mean_ci}}`` over runs ``{"method", "seed", key}``: mean, sample std,
    number of seeds and the 95% Student t interval of the mean (see :mod:`.stats`)."""
    by: dict[str, dict[int, list[float]]] = {}
    for r in runs:
        for step, v in r[key].items():
            by.setdefault(r["method"], {}).setdefault(int(step), []).append(v)
    return {m: {s: mean_ci(v) for s, v in sorted(steps.items())} for m, steps in by.items()}


def _cell(c: Cell) -> str:
    """``mean ± half-width of the 95% interval``, or the mean alone from one seed."""
    return f"{c['mean']:.2f}" if c["half"] is None else f"{c['mean']:.2f} ± {c['half']:.2f}"


def table_markdown(agg: dict[str, dict[int, Cell]], wall: dict[str, float]) -> str:
    steps = sorted({s for curve in agg.values() for s in curve})
    head = "| method | " + " | ".join(f"step {s}" for s in steps) + " | wall s/run |"
    sep = "|---" * (len(steps) + 2) + "|"
    rows = [head, sep]
    for m, curve in agg.items():
        cells = [_cell(curve[s]) if s in curve else "" for s in steps]
        rows.append(f"| {m} | " + " | ".join(cells) + f" | {wall.get(m, float('nan')):.0f} |")
    return "\n".join(rows) + "\n"


def _fmt(x: float | None, spec: str = ".2f") -> str:
    return "n/a" if x is None else format(x, spec)


def final_markdown(
    final: dict[str, Cell], groups: dict[str, dict[str, float] | None], wall: dict[str, float]
) -> str:
    """One row per method: final held-out success with its 95% interval and std, and the mean
    step-group statistics of its training batches."""
    rows = [
        "| method | final success | 95% CI | std | seeds | non-singleton turns | step groups "
        "| wall s/run |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for m, c in final.items():
        ci = "n/a (1 seed)" if c["lo"] is None else f"[{c['lo']:.2f}, {c['hi']:.2f}]"
        g = groups.get(m)
        frac = _fmt(g["nonsingleton_frac"] if g else None)
        ngroups = _fmt(g["step_groups"] if g else None, ".1f")
        rows.append(
            f"| {m} | {c['mean']:.2f} | {ci} | {c['std']:.2f} | {c['n']} | {frac} | {ngroups} "
            f"| {wall.get(m, float('nan')):.0f} |"
        )
    return "\n".join(rows) + "\n"


#: The published ordering's steps (Feng et al. 2025): each pair (better, worse).
ORDERING_PAIRS = (("gigpo", "grpo"), ("grpo", "rloo"), ("grpo", "ppo"))


def ordering_markdown(final: dict[str, Cell], paired_res: dict[str, dict[str, Any]]) -> str:
    """Whether this run reproduces the published ordering GiGPO > GRPO > RLOO/PPO (Feng et al.
    2025, long-horizon sparse-reward tasks): in the means, and which steps are significant
    (``paired_res``: the paired tests of :data:`ORDERING_PAIRS`, keyed ``"A:B"``)."""
    if not {"gigpo", "grpo"} <= set(final) or not {"rloo", "ppo"} & set(final):
        return ""
    lows = [m for m in ("rloo", "ppo") if m in final]
    mean = {m: final[m]["mean"] for m in final}
    holds = mean["gigpo"] > mean["grpo"] and all(mean["grpo"] > mean[m] for m in lows)
    means = ", ".join(f"{m} {mean[m]:.3f}" for m in ("gigpo", "grpo", *lows))
    text = (
        f"Published ordering GiGPO > GRPO > {'/'.join(x.upper() for x in lows)} (final "
        f"held-out success means: {means}): "
        + ("reproduced in the means" if holds else "NOT reproduced in the means")
    )
    tested = [
        f"{k} p = {v['p_ttest']:.3g}"
        for k, v in paired_res.items()
        if k in ("gigpo:grpo", *(f"grpo:{m}" for m in lows)) and v["p_ttest"] is not None
    ]
    sig = [
        k
        for k, v in paired_res.items()
        if k in ("gigpo:grpo", *(f"grpo:{m}" for m in lows))
        and v["p_ttest"] is not None
        and v["p_ttest"] < 0.05
        and v["mean_diff"] > 0
    ]
    if tested:
        text += f"; paired t-tests {', '.join(tested)}; significant in the published direction: "
        text += ", ".join(sig) if sig else "none"
    return text + ".\n"


def plot(
    agg: dict[str, dict[int, Cell]],
    path: Path,
    title: str,
    ylabel: str = "held-out success (greedy)",
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for m, curve in agg.items():
        xs = sorted(curve)
        mean = [curve[s]["mean"] for s in xs]
        (line,) = ax.plot(xs, mean, "o-", label=m)
        # The 95% t interval of the mean over seeds (none from one seed: the line alone).
        band = [(s, curve[s]["lo"], curve[s]["hi"]) for s in xs if curve[s]["lo"] is not None]
        if band:
            ax.fill_between(
                [b[0] for b in band],
                [b[1] for b in band],
                [b[2] for b in band],
                color=line.get_color(),
                alpha=0.12,
            )
    ax.set_xlabel("RL step")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_ylabel(ylabel)
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title, fontsize=9)
    save_plot(fig, ax, path)


def _json_table(agg: dict[str, dict[int, Cell]]) -> dict[str, dict[str, Cell]]:
    """``{method: {"step": cell}}``: JSON object keys are strings."""
    return {m: {str(s): v for s, v in c.items()} for m, c in agg.items()}


def _mean_groups(runs: Sequence[dict[str, Any]]) -> dict[str, float] | None:
    """Step-group statistics of one method averaged over its seeds (None if a run lacks them)."""
    got = [r["step_groups"] for r in runs]
    if not got or any(g is None for g in got):
        return None
    return {k: sum(g[k] for g in got) / len(got) for k in got[0]}


@dataclasses.dataclass
class Summary:
    """Everything the outputs report about one benchmark's runs, computed once so that
    ``table.md``, the plots and ``results.json`` cannot disagree."""

    #: ``{method: {step: Cell}}`` of held-out success, and of training (sampled) success.
    agg: dict[str, dict[int, Cell]]
    agg_train: dict[str, dict[int, Cell]]
    #: ``{(env metric, "eval" | "train"): {method: {step: Cell}}}``.
    agg_metrics: dict[tuple[str, str], dict[str, dict[int, Cell]]]
    #: Mean wall seconds per run, per method.
    wall: dict[str, float]
    #: Final held-out success per method over seeds, and its mean step-group statistics.
    final: dict[str, Cell]
    groups: dict[str, dict[str, float] | None]
    #: The ``--compare`` pairs' by-seed tests, keyed ``"A:B"`` (with their ``verdict`` line).
    paired: dict[str, dict[str, Any]]
    #: The ordering line's text (empty when gigpo, grpo and rloo or ppo did not all run).
    ordering: str


def summarize(
    runs: Sequence[dict[str, Any]], methods: Sequence[str], compare: Sequence[tuple[str, str]]
) -> Summary:
    """The statistics over seeds of ``runs`` (one dict per method and seed, see
    :func:`.algos.run_bench`)."""
    metric_names = sorted({k for r in runs for k in r["env_metrics"]})
    agg_metrics = {
        (k, part): aggregate(
            [{**r, "c": r["env_metrics"][k][part]} for r in runs if k in r["env_metrics"]], "c"
        )
        for k in metric_names
        for part in ("eval", "train")
    }
    wall = {
        m: sum(r["wall_time_s"] for r in runs if r["method"] == m)
        / max(1, sum(r["method"] == m for r in runs))
        for m in methods
    }
    final = {m: mean_ci([r["success_final"] for r in runs if r["method"] == m]) for m in methods}
    groups = {m: _mean_groups([r for r in runs if r["method"] == m]) for m in methods}
    finals = {m: {r["seed"]: r["success_final"] for r in runs if r["method"] == m} for m in methods}
    paired_res: dict[str, dict[str, Any]] = {}
    for a, b in compare:
        res = paired(finals[a], finals[b])
        if res is not None:
            paired_res[f"{a}:{b}"] = {**res, "verdict": verdict(a, b, res)}
    # The ordering line tests each of its steps by seed, asked for with --compare or not.
    order_tests = {
        f"{a}:{b}": paired_res.get(f"{a}:{b}") or paired(finals[a], finals[b])
        for a, b in ORDERING_PAIRS
        if a in finals and b in finals
    }
    order = ordering_markdown(final, {k: v for k, v in order_tests.items() if v is not None})
    return Summary(
        agg=aggregate(runs),
        agg_train=aggregate(runs, "train_curve"),
        agg_metrics=agg_metrics,
        wall=wall,
        final=final,
        groups=groups,
        paired=paired_res,
        ordering=order,
    )


def bench_markdown(s: Summary, held: str, n_seeds: int) -> str:
    """``table.md``: the final table, the paired comparisons, the ordering line, then success
    (and each env metric) per evaluated step. ``held``: what the evaluation ran on."""
    n_s = f"{n_seeds} seed{'s' if n_seeds != 1 else ''}"
    spread = f"mean ± 95% CI half-width (Student t) over {n_s}"
    table = (
        f"Final evaluation success (greedy, {held}) over {n_s}: mean, 95% Student t interval of "
        "the mean, std; non-singleton turns = share of training turns whose (group, anchor) step "
        "group has >= 2 members, step groups = distinct step groups per batch (both averaged "
        "over the RL steps):\n\n" + final_markdown(s.final, s.groups, s.wall)
    )
    if s.paired:
        table += (
            "\nPaired comparison by seed (same seed = same SFT start; difference of final "
            "success, 95% t interval, paired t-test and exact sign-flip test, two-sided):\n\n"
            + "".join(f"* {v['verdict']}\n" for v in s.paired.values())
        )
    if s.ordering:
        table += "\n" + s.ordering
    table += (
        f"\nEvaluation success (greedy, {held}), {spread}:\n\n"
        + table_markdown(s.agg, s.wall)
        + f"\nTraining success (sampled episodes of each RL step), {spread}:\n\n"
        + table_markdown(s.agg_train, s.wall)
    )
    for (k, part), a in s.agg_metrics.items():
        where = f"evaluation, greedy, {held}" if part == "eval" else "sampled training episodes"
        table += f"\nEnv metric `{k}` ({where}), rate per episode, {spread}:\n\n" + table_markdown(
            a, s.wall
        )
    return table


def write_plots(s: Summary, out: Path, title: str, held: str) -> None:
    """``success.png``, ``train_success.png`` and ``[train_]<metric>.png`` per env metric."""
    plot(s.agg, out / "success.png", title, f"success (greedy, {held})")
    plot(s.agg_train, out / "train_success.png", title, "training success (sampled episodes)")
    for (k, part), a in s.agg_metrics.items():
        name = k if part == "eval" else f"train_{k}"
        label = f"{k} ({f'greedy, {held}' if part == 'eval' else 'sampled episodes'})"
        plot(a, out / f"{name}.png", title, label)


def results_tables(s: Summary) -> dict[str, Any]:
    """The summary's part of ``results.json``, in its key order (from ``final`` to
    ``env_metric_tables``)."""
    return {
        "final": s.final,
        "step_groups": s.groups,
        "paired": s.paired,
        "ordering": s.ordering.strip() or None,
        "table": _json_table(s.agg),
        "train_table": _json_table(s.agg_train),
        "env_metric_tables": {
            f"{part}/{k}": _json_table(a) for (k, part), a in s.agg_metrics.items()
        },
    }
