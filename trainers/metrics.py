"""What a training run measures and writes: per-step metrics, evaluations, the curve.

* :func:`train_metrics`: the ``train/*`` entries of one RL step (success, shaped return, turns,
  invalid, well-formed and cut-off reply rates, samples, reply tokens, the env's own per-episode metrics),
  over every rank's episodes under torchrun. Episode counts come from
  :class:`agentgym.rollout.EpisodeStats`, the one episode-statistics type that rollouts, the
  trainer's evaluation and ``agentgym rollout`` share.
* :func:`evaluate`: greedy held-out success with the env's metrics; :func:`eval_record` turns it
  into ``eval/*`` entries.
* :class:`MetricsLogger`: ``metrics.jsonl`` + TensorBoard; a resumed run drops the lines written
  after its checkpoint. :func:`plot_curve`: ``curve.png``.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "train_metrics",
    "evaluate",
    "eval_record",
    "cut_warning",
    "OWN_METRICS",
    "success_summary",
    "write_report",
    "MetricsLogger",
    "plot_curve",
    "save_plot",
]


def train_metrics(
    ctx: Any, trajs: Sequence[Any], shaped: Sequence[Any], samples: Sequence[Any]
) -> dict[str, float]:
    """The ``train/*`` metrics of one RL step; under torchrun over all ranks' episodes (each
    rank holds some groups), in one process over its own."""
    from agentgym.rollout import EpisodeStats, episode_metric_sums

    s = EpisodeStats.of(trajs)
    env_metrics = ctx.sum_union(episode_metric_sums(trajs))  # the env's own, over all ranks
    t = ctx.sum_dict(
        {
            **s.counts(),
            "return": EpisodeStats.of(shaped).return_sum,  # with the invalid-format penalty
            "samples": len(samples),
            "reply_tokens": sum(len(x.response_ids) for x in samples),
        }
    )
    eps, turns = max(t["episodes"], 1.0), max(t["turns"], 1.0)
    return {
        "train/success": t["won"] / eps,
        "train/return": t["return"] / eps,
        "train/turns": t["turns"] / eps,
        "train/invalid": t["invalid"] / turns,
        "train/format_ok": t["format_ok"] / turns,
        "train/reply_cut": t["cut"] / turns,
        "train/samples": int(t["samples"]),
        "train/reply_tokens": t["reply_tokens"] / max(t["samples"], 1.0),
        "train/episodes": int(t["episodes"]),
        **{f"train/{_metric_name(k)}": v / eps for k, v in env_metrics.items()},
    }


#: Names the trainer's own metrics use; an env metric with one of them gets an ``env_`` prefix.
OWN_METRICS = frozenset(
    {
        "success",
        "return",
        "turns",
        "invalid",
        "format_ok",
        "reply_cut",
        "samples",
        "reply_tokens",
        "episodes",
    }
)


#: The share of replies cut by the token budget above which a run warns (once).
CUT_WARN_RATE = 0.05


def cut_warning(record: dict[str, Any], max_new_tokens: int) -> str | None:
    """The warning for a metrics record whose replies were often cut by ``max_new_tokens``
    (``train/reply_cut`` or ``eval/reply_cut`` at or above :data:`CUT_WARN_RATE`), else None.
    A cut reply usually loses its action's closing tag: an invalid turn the policy cannot avoid
    however well it plays, so a run with many of them learns little on those states."""
    for key in ("train/reply_cut", "eval/reply_cut"):
        rate = record.get(key)
        if rate is not None and rate >= CUT_WARN_RATE:
            return (
                f"{100 * rate:.0f}% of replies ({key}, step {record.get('step')}) used all "
                f"max_new_tokens={max_new_tokens} tokens without ending: they are cut off, "
                f"usually mid-action; raise --max-new-tokens"
            )
    return None


def eval_record(ev: dict[str, Any]) -> dict[str, float]:
    """The ``eval/*`` entries of a metrics record from ``evaluate``'s result: the success rate
    with its 95% Wilson interval (``eval/success_lo``, ``eval/success_hi``), the invalid-action
    rate per executed turn (``eval/invalid``), the share of replies cut by the token budget
    (``eval/reply_cut``) and mean turns per episode (``eval/turns``), as ``train/*`` has them
    for the sampled episodes, and the env's metrics."""
    from agentgym.evaluation.stats import rate

    n = int(ev.get("episodes") or 0)
    est = rate(round(ev["success_rate"] * n), n)
    band = {"eval/success_lo": est.low, "eval/success_hi": est.high} if n else {}
    own = {
        f"eval/{name}": ev[key]
        for name, key in (
            ("invalid", "invalid_action_rate"),
            ("reply_cut", "reply_cut_rate"),
            ("turns", "mean_turns"),
        )
        if key in ev
    }
    return {
        "eval/success": ev["success_rate"],
        **band,
        **own,
        **{f"eval/{_metric_name(k)}": v for k, v in (ev.get("metrics") or {}).items()},
    }


def _metric_name(key: str) -> str:
    return f"env_{key}" if key in OWN_METRICS else key


def evaluate(
    pool: Any,
    policy: Any,
    *,
    episodes: int,
    seed: int,
    history_len: int,
    temperature: float = 0.0,
) -> dict[str, float]:
    """Success rate on ``episodes`` held-out episodes (seeds ``seed .. seed+episodes-1``), with
    the env's per-episode metrics (rates over the episodes) under ``"metrics"``.

    ``temperature`` 0 is greedy. Above 0 the replies are sampled from a generator of their own,
    seeded from ``seed``: every evaluation of a run draws the same random numbers (so two of
    them pair up as closely as sampling allows), and the training sampler's state is untouched
    (a resumed run samples as the uninterrupted one would)."""
    from agentgym.rollout import EpisodeStats, episode_metric_sums, rollout

    temp = policy.temperature
    policy.temperature = temperature
    own = getattr(policy, "generator", None)
    if temperature > 0 and own is not None:
        import torch

        policy.generator = torch.Generator(device=own.device)
        policy.generator.manual_seed(seed)
    t0 = time.perf_counter()
    try:
        trajs = rollout(
            pool,
            policy,
            num_groups=episodes,
            group_size=1,
            seed=seed,
            history_len=history_len,
            run_id="eval",
        )
    finally:
        policy.temperature = temp
        if own is not None:
            policy.generator = own
    stats = EpisodeStats.of(trajs)
    stats.seconds = time.perf_counter() - t0
    s = stats.to_dict()
    s["return"] = stats.mean_return
    n = max(len(trajs), 1)
    s["metrics"] = {k: v / n for k, v in episode_metric_sums(trajs).items()}
    # 1/0 per episode in seed order: two evaluations of the same seeds pair up episode by episode
    s["outcomes"] = [int(bool(t.won)) for t in sorted(trajs, key=lambda t: t.seed)]
    return s


def success_summary(state: dict[str, Any], final: dict[str, Any]) -> dict[str, Any]:
    """The success figures of ``report.json``: each evaluation's rate with its 95% Wilson
    interval, and the RL gain (final minus the SFT start, or minus the initial model without
    SFT) with a 95% t interval over the paired episodes (both evaluations play the same seeds
    greedily, so episode i of one is episode i of the other)."""
    from agentgym.evaluation.stats import rate, t_interval

    def ci(outcomes: Sequence[int] | None) -> list[float | None] | None:
        if not outcomes:
            return None
        est = rate(sum(outcomes), len(outcomes))
        return [est.low, est.high]

    final_out = final.get("outcomes") or []
    start_key = "sft" if state.get("success_sft") is not None else "initial"
    start_out = state.get(f"outcomes_{start_key}") or []
    out: dict[str, Any] = {
        "success_initial_ci95": ci(state.get("outcomes_initial")),
        "success_sft_ci95": ci(state.get("outcomes_sft")),
        "success_final_ci95": ci(final_out),
        "rl_gain": None,
        "rl_gain_ci95": None,
        "rl_gain_over": start_key,
    }
    start = state.get(f"success_{start_key}")
    if start is not None:
        out["rl_gain"] = final["success_rate"] - start
    if start_out and len(start_out) == len(final_out) >= 2:
        diffs = [b - a for a, b in zip(start_out, final_out)]
        lo, hi = (diffs[0], diffs[0]) if len(set(diffs)) == 1 else t_interval(diffs)
        out["rl_gain_ci95"] = [lo, hi]
    return out


class MetricsLogger:
    """metrics.jsonl + TensorBoard; with ``max_new_tokens``, a warning on stderr (once per run)
    when a record shows many replies cut by that budget (:func:`cut_warning`)."""

    def __init__(
        self,
        out: Path,
        tensorboard: bool,
        keep_upto: int | None,
        *,
        max_new_tokens: int | None = None,
    ) -> None:
        self.path = out / "metrics.jsonl"
        self.max_new_tokens = max_new_tokens
        self.warned_cut = False
        if keep_upto is not None and self.path.exists():
            # A resumed run drops lines written after its checkpoint: they will be redone.
            lines = [ln for ln in self.path.read_text().splitlines() if ln.strip()]
            # So does the final evaluation of the interrupted run: it was not the end after all.
            recs = [json.loads(ln) for ln in lines]
            kept = [
                ln
                for ln, r in zip(lines, recs)
                if r.get("step", 0) <= keep_upto and not r.get("final")
            ]
            self.path.write_text("".join(ln + "\n" for ln in kept))
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(out / "tb"))
            except ImportError:  # tensorboard not installed: jsonl only
                self.tb = None

    def log(self, record: dict[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if self.max_new_tokens is not None and not self.warned_cut:
            msg = cut_warning(record, self.max_new_tokens)
            if msg is not None:
                self.warned_cut = True
                print(f"warning: {msg}", file=sys.stderr, flush=True)
        if self.tb is not None:
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, record.get("step", 0))
            self.tb.flush()

    def history(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [json.loads(ln) for ln in self.path.read_text().splitlines() if ln.strip()]

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def plot_curve(history: Sequence[dict[str, Any]], path: Path, title: str) -> None:
    """``curve.png``: held-out success with its 95% band and the SFT start as a reference line,
    and train success/return, against the RL step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [r for r in history if "train/success" in r]
    # step 0 is the start of RL: the evaluation after SFT (or of the initial model, without SFT)
    ev = [r for r in history if "eval/success" in r]
    sft = next((r["eval/success"] for r in history if "sft/loss" in r), None)
    fig, ax = plt.subplots(figsize=(7, 4))
    if ev:
        steps = [r["step"] for r in ev]
        ax.plot(steps, [r["eval/success"] for r in ev], "o-", label="held-out success (greedy)")
        if all("eval/success_lo" in r for r in ev):
            ax.fill_between(
                steps,
                [r["eval/success_lo"] for r in ev],
                [r["eval/success_hi"] for r in ev],
                alpha=0.2,
                label="95% interval (Wilson)",
            )
    if sft is not None:
        ax.axhline(sft, color="gray", linestyle=":", label=f"after SFT ({sft:.2f})")
    if train:
        ax.plot(
            [r["step"] for r in train],
            [r["train/success"] for r in train],
            "-",
            alpha=0.7,
            label="train success (sampled)",
        )
        ax.plot(
            [r["step"] for r in train],
            [r["train/return"] for r in train],
            "--",
            alpha=0.7,
            label="train return (shaped)",
        )
    ax.set_xlabel("RL step")
    ax.set_title(title)
    save_plot(fig, ax, path)


def save_plot(fig: Any, ax: Any, path: Path) -> None:
    """Grid, legend and layout of a one-axes curve plot, then ``path`` as a PNG, written
    atomically (a reader never sees half a file) and the figure closed (pyplot keeps every open
    figure alive). Shared by ``curve.png`` and the ``agentgym bench algos`` plots, so they look
    alike."""
    import matplotlib.pyplot as plt

    from agentgym.utils import atomic_write

    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)


def write_report(
    run: Any, state: dict[str, Any], final: dict[str, Any], guard: Any = None
) -> dict[str, Any]:
    """``report.json`` of a training run (rank 0 writes it and ``curve.png``); returned on every
    rank. ``run`` is the trainer's open run (config, clock, logger, output folder), ``state`` its
    bookkeeping (the initial and SFT evaluations), ``final`` the last evaluation, ``guard`` the
    collapse guard if on."""
    from agentgym.trainers.checkpoint import checkpoint_step
    from agentgym.utils import atomic_write_json

    cfg = run.cfg
    parts = run.clock.parts()
    report = {
        "env": cfg.env,
        "algo": cfg.algo,
        "model": cfg.model or "tiny",
        "success_initial": state.get("success_initial"),
        "success_sft": state.get("success_sft"),
        "success_final": final["success_rate"],
        # 95% intervals of the three, and the RL gain over the SFT start with its paired interval
        **success_summary(state, final),
        "expert_success_train": state.get("expert_success"),
        "eval": {
            "split": "test" if cfg.split_kwarg else "(no split)",
            "episodes": cfg.eval_episodes,
            "seeds": [run.eval_seed, run.eval_seed + cfg.eval_episodes - 1],
            "greedy": cfg.eval_temperature == 0,
            "temperature": cfg.eval_temperature,
            **{k: v for k, v in final.items() if k not in ("success_rate", "outcomes")},
        },
        "estimator": {
            "algo": cfg.algo,
            "gamma": cfg.gamma,
            "omega": cfg.omega,
            "norm": cfg.adv_norm,
            "group_size": cfg.group_size,
            "groups_per_step": cfg.groups_per_step,
            "transform": list(cfg.transform),
            "lam": cfg.lam,
            "epo": cfg.epo,
        },
        "seed": cfg.seed,
        "steps": cfg.steps,
        "resumed_from": checkpoint_step(run.checkpoint) if run.checkpoint else None,
        # restores over the whole run (resumed parts included); None: --guard was off
        "guard/restores": guard.guard.restores if guard is not None else None,
        # every part of a resumed run counts (its first run and each --resume)
        "wall_time_s": round(sum(parts), 1),
        "wall_time_parts_s": parts,
        "config": cfg.to_dict(),
    }
    if run.ctx.is_main:
        run.clock.tick()
        atomic_write_json(run.out / "report.json", report)
        plot_curve(run.logger.history(), run.out / "curve.png", f"{cfg.env} - {cfg.algo}")
    return report
