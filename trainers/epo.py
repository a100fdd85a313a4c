"""EPO: entropy control for multi-turn agents (Xu et al. 2025, "EPO: Entropy-regularized Policy
Optimization for LLM Agents Reinforcement Learning").

Three pieces, each a plain function or a small object so it can be checked by hand:

1. **Trajectory-level entropy bonus.** The policy's entropy is averaged over ALL generated tokens
   of a multi-turn trajectory (every turn's reply), then over trajectories:

       H_traj(i) = (1 / n_i) * sum_{turns t of i} sum_{tokens j of t} H(pi(. | h_{t,j}))
       L_ent = - lambda * mean_i H_traj(i)

   :func:`trajectory_token_weights` gives each token the weight ``1 / (N * n_i)`` so the term is
   a plain weighted token sum, exact under gradient accumulation over micro-batches.

2. **Entropy smoothing.** A history ``Hbar_k`` of the policy's mean token entropy at turn index
   ``k`` (running mean or EMA over past iterations, :class:`EntropyHistory`) defines a band
   ``[(1 - k_l) Hbar_k, (1 + k_u) Hbar_k]``. A turn whose mean token entropy ``h`` leaves the
   band is penalised by its squared relative distance to the band:

       P(h) = (relu((1 - k_l) Hbar - h)^2 + relu(h - (1 + k_u) Hbar)^2) / Hbar^2
       L_smooth = beta * mean_turns P(h_turn)

   ``P`` is built from the differentiable entropy, so its gradient pushes entropy back toward the
   band; it is exactly zero inside the band. (The released EPO code multiplies by a boolean
   "outside the band" mask computed from detached values, which carries no gradient.)

3. **Adaptive phase-based weighting** (:func:`phase_coefs`): our reading of the paper's schedule.
   Training is split into three phases by progress ``p = step / total_steps``:

   * *exploration* (``p < phases[0]``): the entropy bonus at full weight ``lambda``, smoothing
     at ``early_smooth_scale * beta`` (the history is still short and noisy);
   * *transition* (``phases[0] <= p < phases[1]``): both weights move linearly to their late
     values;
   * *exploitation* (``p >= phases[1]``): entropy bonus at ``late_entropy_scale * lambda``,
     smoothing at full ``beta``: entropy is held inside its historical band instead of being
     pushed up, which is what the paper blames for late-stage collapse.

Everything here is torch-only and independent of the trainer; :mod:`agentgym.trainers.losses`
adds :func:`epo_loss` to the PPO loss when EPO is on.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

__all__ = [
    "EPOConfig",
    "EntropyHistory",
    "band_penalty",
    "turn_mean_entropy",
    "trajectory_token_weights",
    "epo_loss",
    "phase_coefs",
]


@dataclasses.dataclass(frozen=True)
class EPOConfig:
    """EPO's settings.

    Attributes:
        entropy_coef: ``lambda``, weight of the trajectory-level entropy bonus.
        smooth_coef: ``beta``, weight of the entropy smoothing penalty.
        k_low, k_high: the band around the historical entropy is
            ``[(1 - k_low) Hbar, (1 + k_high) Hbar]``.
        momentum: ``None`` = the history is the running mean over all past iterations; a number
            in (0, 1) = an EMA ``Hbar <- m * Hbar + (1 - m) * H``.
        phases: progress fractions ``(p1, p2)`` ending the exploration and transition phases.
        early_smooth_scale: smoothing weight (fraction of ``beta``) during exploration.
        late_entropy_scale: entropy-bonus weight (fraction of ``lambda``) during exploitation.
    """

    entropy_coef: float = 0.01
    smooth_coef: float = 0.1
    k_low: float = 0.2
    k_high: float = 0.2
    momentum: float | None = None
    phases: tuple[float, float] = (0.3, 0.7)
    early_smooth_scale: float = 0.25
    late_entropy_scale: float = 0.1

    def __post_init__(self) -> None:
        for name in ("entropy_coef", "smooth_coef", "early_smooth_scale", "late_entropy_scale"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0):
                raise ValueError(f"EPOConfig.{name}={v} must be a finite number >= 0")
        if not (0 <= self.k_low < 1 and self.k_high >= 0):
            raise ValueError(
                f"EPOConfig band k_low={self.k_low}, k_high={self.k_high}: need 0 <= k_low < 1 and "
                "k_high >= 0 (e.g. 0.2 and 0.2)"
            )
        if self.momentum is not None and not (0 < self.momentum < 1):
            raise ValueError(f"EPOConfig.momentum={self.momentum}: use a value in (0, 1) or None")
        object.__setattr__(self, "phases", tuple(float(p) for p in self.phases))
        if len(self.phases) != 2 or not (0 <= self.phases[0] <= self.phases[1] <= 1):
            raise ValueError(
                f"EPOConfig.phases={self.phases}: give (p1, p2) with 0 <= p1 <= p2 <= 1"
            )


# ------------------------------------------------------------------------------------------------
# history
# ------------------------------------------------------------------------------------------------
class EntropyHistory:
    """Historical mean token entropy per turn index (``Hbar_k``), updated once per iteration.

    ``momentum=None``: ``Hbar_k`` is the plain mean of the per-iteration values seen so far for
    index k; otherwise an EMA started at the first value. Turn indices never seen have no
    reference (:meth:`get` returns None) and are not penalised.
    """

    def __init__(self, momentum: float | None = None) -> None:
        if momentum is not None and not (0 < momentum < 1):
            raise ValueError(f"momentum={momentum}: use a value in (0, 1) or None (running mean)")
        self.momentum = momentum
        self.mean: dict[int, float] = {}
        self.count: dict[int, int] = {}

    def update(self, per_turn: Mapping[int, float]) -> None:
        """Fold this iteration's mean entropy of each turn index into the history."""
        for k, h in per_turn.items():
            k, h = int(k), float(h)
            if not math.isfinite(h):
                raise ValueError(f"entropy {h} of turn index {k} is not finite")
            n = self.count.get(k, 0)
            if n == 0:
                self.mean[k] = h
            elif self.momentum is None:
                self.mean[k] += (h - self.mean[k]) / (n + 1)
            else:
                self.mean[k] = self.momentum * self.mean[k] + (1 - self.momentum) * h
            self.count[k] = n + 1

    def get(self, k: int) -> float | None:
        return self.mean.get(int(k))

    def refs(self, turn_index: Sequence[int]) -> torch.Tensor:
        """``Hbar`` of each turn index as a float tensor; NaN where there is no history."""
        return torch.tensor(
            [self.mean.get(int(k), math.nan) for k in turn_index], dtype=torch.float32
        )

    def state_dict(self) -> dict[str, Any]:
        return {"momentum": self.momentum, "mean": dict(self.mean), "count": dict(self.count)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.momentum = state["momentum"]
        self.mean = {int(k): float(v) for k, v in state["mean"].items()}
        self.count = {int(k): int(v) for k, v in state["count"].items()}


def per_index_means(turn_entropy: Sequence[float], turn_index: Sequence[int]) -> dict[int, float]:
    """Mean of per-turn entropies grouped by turn index (the iteration's value for the history)."""
    sums: dict[int, float] = {}
    counts: dict[int, int] = {}
    for h, k in zip(turn_entropy, turn_index):
        sums[int(k)] = sums.get(int(k), 0.0) + float(h)
        counts[int(k)] = counts.get(int(k), 0) + 1
    return {k: sums[k] / counts[k] for k in sums}


# ------------------------------------------------------------------------------------------------
# the terms
# ------------------------------------------------------------------------------------------------
def band_penalty(h: torch.Tensor, ref: torch.Tensor, k_low: float, k_high: float) -> torch.Tensor:
    """Squared relative distance of ``h`` to ``[(1 - k_low) ref, (1 + k_high) ref]``; 0 inside.

    Elementwise; entries whose ``ref`` is NaN (no history) get 0 and no gradient.
    """
    has = torch.isfinite(ref)
    r = torch.where(has, ref, torch.ones_like(ref)).to(h.dtype)
    lo, hi = (1 - k_low) * r, (1 + k_high) * r
    d = torch.relu(lo - h) + torch.relu(h - hi)  # at most one of the two is non-zero
    p = (d / r.abs().clamp(min=1e-6)) ** 2
    return torch.where(has, p, torch.zeros_like(p))


def turn_mean_entropy(ent: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``[B]`` mean token entropy of each row (one row = one turn's reply), 0 for empty rows."""
    return (ent * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)


def trajectory_token_weights(traj_ids: Sequence[Any], lengths: Sequence[int]) -> list[float]:
    """Per-row weight so that ``sum_rows w * sum_tokens H`` = mean over trajectories of the
    trajectory's token-mean entropy: ``w = 1 / (N_traj * n_tokens(trajectory of the row))``.

    ``traj_ids[b]`` names the trajectory of row b, ``lengths[b]`` its reply length; computed over
    the whole minibatch so micro-batches add up exactly.
    """
    tokens: dict[Any, int] = {}
    for t, n in zip(traj_ids, lengths):
        tokens[t] = tokens.get(t, 0) + int(n)
    n_traj = len(tokens)
    return [1.0 / (n_traj * max(tokens[t], 1)) for t in traj_ids]


def epo_loss(
    ent: torch.Tensor,
    mask: torch.Tensor,
    *,
    traj_weight: torch.Tensor,
    refs: torch.Tensor,
    num_turns: float,
    entropy_coef: float,
    smooth_coef: float,
    k_low: float,
    k_high: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """EPO's addition to the loss for one (micro-)batch of turns.

    Args:
        ent, mask: ``[B, L]`` token entropies (differentiable) and the reply-token mask.
        traj_weight: ``[B]`` from :func:`trajectory_token_weights` (minibatch-global).
        refs: ``[B]`` the history ``Hbar`` of each row's turn index (NaN: none).
        num_turns: rows in the whole minibatch (normaliser of the smoothing mean).

    Returns ``(loss, terms)`` with ``loss = -entropy_coef * H_traj + smooth_coef * P`` and the
    terms ``traj_entropy`` and ``smooth_penalty`` (this micro-batch's share of each).
    """
    tok_sum = (ent * mask).sum(-1)
    h_traj = (traj_weight.to(ent.dtype) * tok_sum).sum()
    pen = band_penalty(turn_mean_entropy(ent, mask), refs.to(ent.device), k_low, k_high)
    p = pen.sum() / max(float(num_turns), 1.0)
    loss = -entropy_coef * h_traj + smooth_coef * p
    return loss, {"traj_entropy": h_traj, "smooth_penalty": p}


def phase_coefs(step: int, total_steps: int, cfg: EPOConfig) -> tuple[float, float, str]:
    """``(entropy_coef, smooth_coef, phase)`` at RL ``step`` (1-based) of ``total_steps``."""
    p = min(max(step - 1, 0) / max(total_steps, 1), 1.0)
    lam, beta = cfg.entropy_coef, cfg.smooth_coef
    lam_late, beta_early = cfg.late_entropy_scale * lam, cfg.early_smooth_scale * beta
    p1, p2 = cfg.phases
    if p < p1:
        return lam, beta_early, "explore"
    if p < p2:
        f = (p - p1) / (p2 - p1)
        return lam + f * (lam_late - lam), beta_early + f * (beta - beta_early), "transition"
    return lam_late, beta, "exploit"
