"""One learning step of the recipe: episodes in, an updated policy (and credit pieces) out.

:class:`Learner` holds what the update needs across steps (the wrapped model, the optimizer, the
KL reference, the credit pieces, the minibatch shuffler) and :meth:`Learner.learn` runs, in order:

    batch (every rank's episodes) -> invalid-format penalty -> reward transforms
    -> pieces annotate -> advantages -> samples (this rank's turns) -> the trainer's scoring of
    the rollout (train/inference mismatch, :mod:`~agentgym.trainers.tis`) -> loss terms
    -> PPO-style update -> pieces update

Under torchrun each rank passes the episodes it played (whole groups); they are gathered in rank
order, so the credit batch, the pieces' inputs and the global sample list are those of one process
holding every episode, and each rank trains on its own block of samples
(:func:`~agentgym.trainers.losses.ppo_update` makes that equal to one process's update).
``tests/trainers/test_distributed.py`` checks two ranks against one process for ``ppo`` and
``spa``, whose pieces hold models of their own.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence
from contextlib import nullcontext
from typing import Any

__all__ = ["Learner", "Learned", "apply_penalty", "learnable_turns", "samples_of"]


@dataclasses.dataclass(frozen=True)
class Learned:
    """What one :meth:`Learner.learn` did: this rank's (shaped) episodes and samples, the update's
    loss statistics and the pieces' metrics."""

    shaped: list[Any]
    samples: list[Any]
    stats: dict[str, float]
    extra: dict[str, float]


@dataclasses.dataclass
class Learner:
    """The update side of a run. ``cfg`` is a :class:`~agentgym.trainers.config.TrainConfig`,
    ``ctx`` a :class:`~agentgym.trainers.distributed.DistContext`, ``model`` the wrapped policy."""

    cfg: Any
    ctx: Any
    model: Any
    optimizer: Any
    pieces: list[Any]
    pad_id: int
    ref_model: Any = None
    shuffle_rng: random.Random = dataclasses.field(default_factory=lambda: random.Random(0))
    #: :class:`agentgym.compiled.CompiledLayers` of ``model`` (``--compile``), active for the
    #: update's passes only
    compiled: Any = None

    def learn(self, step: int, mine: Sequence[Any]) -> Learned:
        """Credit and update on this rank's episodes ``mine`` (sorted by id) of RL ``step``."""
        from agentgym.trainers.credit import (
            CreditBatch,
            apply_transforms,
            compute_advantages,
            step_group_stats,
        )
        from agentgym.trainers.losses import ppo_update
        from agentgym.trainers.terms import default_terms
        from agentgym.trainers.tis import mismatch_stats, score_rollout

        cfg, ctx = self.cfg, self.ctx
        credit_cfg, loss_cfg = cfg.credit_config(), cfg.loss_config()
        parts = ctx.all_gather_object(list(mine))
        lo = sum(len(p) for p in parts[: ctx.rank])
        hi = lo + len(mine)
        shaped = apply_penalty([t for p in parts for t in p], cfg.invalid_penalty)
        batch = apply_transforms(cfg.transform, CreditBatch.from_trajectories(shaped), credit_cfg)
        if cfg.invalid_penalty:
            # The penalty is in the batch's rewards already; an estimator that builds its own
            # rewards (SPA) reads it here, so --invalid-penalty holds for every estimator.
            batch = batch.replace(
                extras={**batch.extras, "penalty": penalties(shaped, cfg.invalid_penalty)}
            )
        extra: dict[str, float] = step_group_stats(batch)  # every method: it describes the data
        for piece in self.pieces:
            batch, metrics = piece.annotate(batch, shaped)
            extra.update(metrics)
        advantages = compute_advantages(cfg.algo, batch, credit_cfg)
        samples = samples_of(
            shaped[lo:hi],
            advantages[lo:hi],
            turn_weight=cfg.turn_weight,
            mean_turns=learnable_turns(shaped),
        )
        # The mean advantage per learnable turn (this rank's): below zero, the update lowers
        # the likelihood of sampled replies on balance (see --turn-weight).
        extra["credit/adv_turn_mean"] = sum(x.advantage for x in samples) / max(len(samples), 1)
        # The trainer's own log-probs at the rollout weights, before any optimizer step: the
        # correction (if on) uses them every step; without it the mismatch with the engine's is
        # measured every `mismatch_every` steps (one extra forward pass each time).
        mismatch: dict[str, float] = {}
        compiled = self.compiled.active() if self.compiled is not None else nullcontext()
        with compiled:
            if cfg.tis_on or (cfg.mismatch_every and (step - 1) % cfg.mismatch_every == 0):
                samples = score_rollout(self.model, samples, loss_cfg, pad_id=self.pad_id, dist=ctx)
                mismatch = mismatch_stats(samples, loss_cfg, dist=ctx)
            terms = default_terms(loss_cfg, ref_model=self.ref_model)
            for piece in self.pieces:
                more, metrics = piece.loss_terms(step, cfg.steps)
                terms += more
                extra.update(metrics)
            stats = ppo_update(
                self.model,
                self.optimizer,
                samples,
                loss_cfg,
                pad_id=self.pad_id,
                rng=self.shuffle_rng,
                dist=ctx,  # losses normalised over all ranks' tokens
                terms=terms,
            )
        stats.update(mismatch)
        for piece in self.pieces:
            extra.update(piece.update(batch, shaped))
        return Learned(shaped[lo:hi], samples, stats, extra)


def apply_penalty(trajs: Sequence[Any], penalty: float) -> list[Any]:
    """Copies of ``trajs`` where a turn whose reply had no parsable action loses ``penalty``."""
    out = []
    for t in trajs:
        turns = [
            dataclasses.replace(u, reward=u.reward - penalty) if penalty and not u.format_ok else u
            for u in t.turns
        ]
        out.append(dataclasses.replace(t, turns=turns))
    return out


def penalties(trajs: Sequence[Any], penalty: float) -> list[Any]:
    """Per turn of each trajectory, as float arrays: the invalid-format penalty
    :func:`apply_penalty` charged it (0, or ``penalty`` where the reply had no parsable action)."""
    import numpy as np

    return [np.array([0.0 if u.format_ok else float(penalty) for u in t.turns]) for t in trajs]


def _learnable(turn: Any) -> bool:
    """A turn the policy loss can learn from: it carries generated tokens."""
    return bool(turn.tokens and turn.tokens.response_ids)


def learnable_turns(trajs: Sequence[Any]) -> float:
    """Mean number of turns with generated tokens per episode (episodes without any left out)."""
    counts = [sum(1 for u in t.turns if _learnable(u)) for t in trajs]
    counts = [n for n in counts if n]
    return sum(counts) / max(len(counts), 1)


def samples_of(
    trajs: Sequence[Any],
    advantages: Sequence[Any],
    *,
    turn_weight: str = "turn",
    mean_turns: float | None = None,
) -> list[Any]:
    """One :class:`~agentgym.trainers.losses.Sample` per turn that carries generated tokens.

    ``turn_weight="episode"`` scales each turn's advantage by ``mean_turns / n`` (``n``: the
    learnable turns of its episode, ``mean_turns``: their mean over the step's episodes, all
    ranks' when given, else ``trajs``'), so every episode weighs the same in the policy loss
    whatever its length. With every turn weighted once
    (``"turn"``), an episode-level advantage that sums to zero over a group's episodes does not
    sum to zero over its turns: failed episodes that run to the turn limit outnumber the short
    successful ones, the mean advantage per turn is negative, and the update lowers the
    likelihood of what was sampled across the board (entropy creeps up)."""
    from agentgym.trainers.losses import Sample

    learnable = [
        [(k, u, a) for k, (u, a) in enumerate(zip(t.turns, adv)) if _learnable(u)]
        for t, adv in zip(trajs, advantages)
    ]
    if mean_turns is None:
        mean_turns = learnable_turns(trajs)
    samples = []
    for t, rows in zip(trajs, learnable):
        scale = mean_turns / len(rows) if turn_weight == "episode" and rows else 1.0
        for k, u, a in rows:
            tok = u.tokens
            samples.append(
                Sample(
                    tok.prompt_ids,
                    tok.response_ids,
                    tok.logprobs,
                    float(a) * scale,
                    traj=t.id,
                    turn=k,
                )
            )
    return samples
