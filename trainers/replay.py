"""``agentgym replay RUN --step N``: recompute one RL step's update from the run's records and
check it against what the run logged.

A step's update is a function of: the weights, optimizer state and RNG states it started from
(the checkpoint saved after step ``N-1``: ``--save-every 1``), the stateful credit pieces (critic,
progress estimator, EPO history; in that checkpoint too), and the episodes the update used
(``trajectories.jsonl``: ids ``sN-...``, dynamic-sampling refills ``sN-d{k}-...`` included, the
groups it dropped, ``meta["dynamic"] == "dropped"``, left out). Advantages are recomputed from
those episodes by the same credit code (deterministic), the minibatch order comes from the
restored shuffle RNG, and :meth:`~agentgym.trainers.learner.Learner.learn` runs exactly as in
training. The recomputed ``loss/*`` statistics (losses, clip fraction, entropy, KL, the gradient
norm, the train/inference mismatch) are compared with step ``N``'s line of ``metrics.jsonl``.

A mismatch means the records do not determine the update: a file edited after the run, a code
change since, or non-deterministic kernels (GPU runs: pass a looser ``--rtol``).
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

__all__ = ["ReplayRow", "Replay", "replay", "step_episodes", "logged_losses", "format_table"]


@dataclasses.dataclass(frozen=True)
class ReplayRow:
    """One statistic: the logged value, the recomputed one, and whether they agree."""

    name: str
    logged: float | None
    replayed: float | None
    ok: bool


@dataclasses.dataclass(frozen=True)
class Replay:
    """The outcome of :func:`replay`: one row per ``loss/*`` statistic."""

    step: int
    episodes: int
    rows: list[ReplayRow]

    @property
    def ok(self) -> bool:
        return bool(self.rows) and all(r.ok for r in self.rows)


def _step_of(traj_id: str) -> int | None:
    from agentgym.trainers.checkpoint import _record_step

    return _record_step(traj_id)


def step_episodes(path: Path, step: int) -> list[Any]:
    """The episodes step ``step``'s update used, sorted by id as the training loop sorts them:
    every ``s{step}-...`` episode except those dynamic sampling dropped."""
    from agentgym.trajectory import read_trajectories

    trajs = [
        t
        for t in read_trajectories(path)
        if _step_of(t.id) == step and t.meta.get("dynamic") != "dropped"
    ]
    return sorted(trajs, key=lambda t: t.id)


def logged_losses(path: Path, step: int) -> dict[str, float]:
    """The ``loss/*`` values (prefix dropped) of step ``step``'s training line in
    ``metrics.jsonl`` (the last one, should a resumed run have written it twice)."""
    found: dict[str, float] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        rec = json.loads(line)
        if rec.get("step") == step and any(k.startswith("loss/") for k in rec):
            found = {k[len("loss/") :]: float(v) for k, v in rec.items() if k.startswith("loss/")}
    return found


def _close(a: float, b: float, rtol: float, atol: float) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return abs(a - b) <= atol + rtol * abs(a)


def _checkpoint(out: Path, step: int) -> Path:
    """The intact checkpoint saved after step ``step - 1``, or one line naming the fix."""
    from agentgym.trainers.checkpoint import verify_checkpoint

    if step < 2:
        raise ValueError(
            f"--step {step}: step 1 starts from the SFT model, not from a checkpoint with optimizer "
            "and RNG state; replay a step >= 2"
        )
    ck = out / "checkpoints" / f"step_{step - 1}"
    if not ck.is_dir():
        raise FileNotFoundError(
            f"replay of step {step} needs {ck} (the checkpoint saved after step {step - 1}), "
            "which this run does not have: train with --save-every 1 and --keep-checkpoints 0 "
            "(keep all) to replay any step"
        )
    why = verify_checkpoint(ck)
    if why is not None:
        raise ValueError(f"checkpoint {ck} is damaged ({why}): it cannot be replayed from")
    return ck


def replay(
    out: str | Path,
    step: int,
    *,
    rtol: float = 1e-5,
    atol: float = 1e-7,
    device: str | None = None,
) -> Replay:
    """Recompute step ``step`` of the run in ``out`` and compare its ``loss/*`` statistics with
    the logged ones (``|logged - replayed| <= atol + rtol * |logged|``)."""
    import torch

    from agentgym.trainers import train as train_mod
    from agentgym.trainers.config import TrainConfig
    from agentgym.trainers.distributed import NullLogger, init_distributed

    out = Path(out)
    for name in ("config.json", "metrics.jsonl", "trajectories.jsonl"):
        if not (out / name).is_file():
            raise FileNotFoundError(
                f"{out / name} is missing: RUN must be an `agentgym train` output folder "
                "(trajectories.jsonl needs --write-trajectories)"
            )
    logged = logged_losses(out / "metrics.jsonl", step)
    if not logged:
        raise ValueError(
            f"metrics.jsonl has no loss values for step {step} (not trained yet, or an update "
            "that dynamic sampling skipped): pick another --step"
        )
    ck = _checkpoint(out, step)
    cfg = TrainConfig.from_dict(json.loads((out / "config.json").read_text(encoding="utf-8")))
    cfg.out, cfg.resume = str(out), True
    if device is not None:
        cfg.device = device
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    episodes = step_episodes(out / "trajectories.jsonl", step)
    if not episodes:
        raise ValueError(f"trajectories.jsonl has no episodes of step {step} (ids s{step}-...)")
    ctx = init_distributed(cfg.dist, device=cfg.device)
    run = train_mod._Run(
        cfg=cfg,
        ctx=ctx,
        out=out,
        checkpoint=ck,
        logger=NullLogger(),
        writer=None,
        clock=None,
        train_pool=None,
        eval_pool=None,
        eval_seed=10_000 + cfg.seed,
        lora={"r": cfg.lora_r, "lora_alpha": 2 * cfg.lora_r} if cfg.lora_r else None,  # as train
    )
    try:
        # The same restore as --resume: weights, optimizer, RNG states, credit pieces.
        model, tok, state, _ = train_mod._model(run)
        policy = train_mod._make_policy(cfg, model, tok)
        learner = train_mod._learner(run, ctx.wrap(model), policy, state)
        policy.version = step - 1
        learned = learner.learn(step, episodes)
    finally:
        ctx.close()
    replayed = learned.stats
    rows = []
    for name in sorted(logged):  # what the run logged (an older run may have logged less)
        a, b = logged.get(name), replayed.get(name)
        ok = a is not None and b is not None and _close(a, float(b), rtol, atol)
        rows.append(ReplayRow(name, a, None if b is None else float(b), ok))
    return Replay(step, len(episodes), rows)


def format_table(result: Replay) -> str:
    """The comparison as an aligned text table, with a closing verdict line."""

    def num(x: float | None) -> str:
        return "-" if x is None else f"{x:.9g}"

    lines = [f"{'statistic':<22} {'logged':>16} {'replayed':>16} {'rel diff':>10}  ok"]
    for r in result.rows:
        rel = "-"
        if r.logged is not None and r.replayed is not None:
            rel = f"{abs(r.logged - r.replayed) / max(abs(r.logged), 1e-30):.1e}"
        mark = "yes" if r.ok else "NO"
        lines.append(
            f"{'loss/' + r.name:<22} {num(r.logged):>16} {num(r.replayed):>16} {rel:>10}  {mark}"
        )
    bad = sum(not r.ok for r in result.rows)
    verdict = f"step {result.step}: replayed from {result.episodes} episodes, " + (
        "every statistic matches" if result.ok else f"{bad} statistic(s) differ"
    )
    return "\n".join([*lines, verdict])
