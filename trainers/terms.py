"""The policy loss as a sum of small terms: PPO clip, KL to a reference, entropy bonus, EPO.

Each term is an object with the :class:`LossTerm` shape: ``begin(samples, dist)`` once per
minibatch (for terms that need minibatch-wide counts), then ``__call__(mb)`` per micro-batch,
returning its weighted contribution to the loss and its statistics; ``finish(dist)`` after the
update (EPO feeds its entropy history there). :func:`~agentgym.trainers.losses.accumulate_gradients`
adds the terms in the order given and knows none of them by name, so a new term is one class.

Every quantity is aggregated with the micro-batch's ``agg`` (normalised by the WHOLE minibatch's
token or sequence counts, over all ranks), so terms are correct under gradient accumulation and
under torchrun alike; a :class:`~agentgym.trainers.distributed.DistContext` is always passed,
with a single-process mode whose collectives are no-ops.

Statistics are sums over micro-batches of aggregated values, i.e. minibatch means.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch

__all__ = [
    "MicroBatch",
    "LossTerm",
    "ClipTerm",
    "EntropyTerm",
    "KLTerm",
    "EPOTerm",
    "default_terms",
]


@dataclasses.dataclass
class MicroBatch:
    """What a term sees of one micro-batch.

    ``batch`` is :func:`~agentgym.trainers.losses.collate`'s dict (``[B, K]`` ``mask``,
    ``old_logp``, ``adv``, ... over the last ``K`` logit positions of left-padded rows),
    ``logp`` / ``entropy`` the policy's per-token log-probs and entropies (``[B, K]``; the
    entropy has a graph only if some term sets ``needs_entropy``, default True), ``samples`` the micro-batch's samples, ``offset`` the
    index of its first sample in this rank's minibatch, ``num_seqs`` the minibatch's sequence
    count over all ranks, and ``agg`` the minibatch-normalised aggregation."""

    batch: dict[str, torch.Tensor]
    logp: torch.Tensor
    entropy: torch.Tensor
    samples: Sequence[Any]
    offset: int
    num_seqs: float
    agg: Callable[[torch.Tensor], torch.Tensor]
    temperature: float
    bf16: bool


class LossTerm(Protocol):
    """One additive part of the policy loss."""

    def begin(self, samples: Sequence[Any], dist: Any) -> None:
        """Called once per minibatch on every rank (collectives allowed) before its micro-batches."""

    def __call__(self, mb: MicroBatch) -> tuple[torch.Tensor, dict[str, float]]:
        """The term's weighted loss on ``mb`` and its statistics (summed over micro-batches)."""
        ...

    def finish(self, dist: Any) -> dict[str, float]:
        """Called once after the whole update on every rank; extra statistics."""
        ...


class _Stateless:
    def begin(self, samples: Sequence[Any], dist: Any) -> None:
        return None

    def finish(self, dist: Any) -> dict[str, float]:
        return {}


@dataclasses.dataclass
class ClipTerm(_Stateless):
    """PPO's clipped surrogate (with the optional dual clip): ``pg_loss``, ``clipfrac``.

    With the mismatch correction on (``tis_cap`` or ``tis_mask`` set, see
    :mod:`agentgym.trainers.tis`) the ratio's old log-probs are the trainer's own scoring of the
    rollout (``rollout_logp``) and each token's loss is weighed by its truncated importance weight
    against the behaviour log-probs; off, this is plain PPO against the behaviour log-probs."""

    clip_eps: float = 0.2
    dual_clip: float | None = None
    clip_eps_high: float | None = None  # clip-higher; None: symmetric
    tis_cap: float | None = None
    tis_mask: float | None = None
    #: the update builds the entropy's graph only if some term sets this (default: True)
    needs_entropy = False

    @property
    def corrects(self) -> bool:
        """Whether the train/inference mismatch correction is on."""
        return self.tis_cap is not None or self.tis_mask is not None

    def __call__(self, mb: MicroBatch) -> tuple[torch.Tensor, dict[str, float]]:
        from agentgym.trainers.losses import ppo_clip_loss
        from agentgym.trainers.tis import tis_weights

        b = mb.batch
        pg, clipped = ppo_clip_loss(
            mb.logp,
            b["rollout_logp"] if self.corrects else b["old_logp"],
            b["adv"],
            clip_eps=self.clip_eps,
            dual_clip=self.dual_clip,
            clip_eps_high=self.clip_eps_high,
        )
        if self.corrects:
            weight, _, _ = tis_weights(
                b["rollout_logp"], b["old_logp"], cap=self.tis_cap, mask=self.tis_mask
            )
            pg = pg * weight
        loss = mb.agg(pg)
        return loss, {"pg_loss": float(loss.detach()), "clipfrac": float(mb.agg(clipped))}


@dataclasses.dataclass
class EntropyTerm(_Stateless):
    """Token entropy bonus: ``-coef * H`` (the ``entropy`` statistic is always logged)."""

    coef: float

    def __call__(self, mb: MicroBatch) -> tuple[torch.Tensor, dict[str, float]]:
        return -self.coef * mb.agg(mb.entropy), {}


@dataclasses.dataclass
class KLTerm(_Stateless):
    """``coef * k3 KL(policy || reference)``; the reference scores the same tokens without
    gradients. Statistic: ``kl``."""

    coef: float
    ref_model: Any
    needs_entropy = False

    def __call__(self, mb: MicroBatch) -> tuple[torch.Tensor, dict[str, float]]:
        from agentgym.trainers.losses import _autocast, kl_k3, token_logprobs

        b = mb.batch
        with torch.no_grad(), _autocast(b["input_ids"].device, mb.bf16):
            ref_logp, _ = token_logprobs(
                self.ref_model,
                b["input_ids"],
                b["attention_mask"],
                b["targets"],
                temperature=mb.temperature,
            )
        kl = mb.agg(kl_k3(mb.logp, ref_logp))
        return self.coef * kl, {"kl": float(kl.detach())}


@dataclasses.dataclass
class EPOTerm:
    """EPO (:mod:`agentgym.trainers.epo`): trajectory-level entropy bonus plus the smoothing
    penalty against ``history``'s per-turn-index entropy band. Statistics:
    ``epo_traj_entropy``, ``epo_smooth_penalty``.

    During the first epoch it logs each sample's mean token entropy; :meth:`finish` gathers the
    log of every rank and updates ``history`` (this update's penalty used the old history)."""

    history: Any
    entropy_coef: float
    smooth_coef: float
    k_low: float = 0.2
    k_high: float = 0.2
    _weights: list[float] = dataclasses.field(default_factory=list, repr=False)
    _log: list[tuple[int, float]] = dataclasses.field(default_factory=list, repr=False)
    logging: bool = dataclasses.field(default=True, repr=False)

    def begin(self, samples: Sequence[Any], dist: Any) -> None:
        from agentgym.trainers.epo import trajectory_token_weights

        w = trajectory_token_weights(
            [s.traj for s in samples], [len(s.response_ids) for s in samples]
        )
        # A trajectory stays on one rank: rescale its 1/N_traj weight to the global N.
        local = float(len({s.traj for s in samples}))
        total = dist.all_reduce([local])[0]
        self._weights = [x * local / max(total, 1.0) for x in w] if dist.enabled else w

    def __call__(self, mb: MicroBatch) -> tuple[torch.Tensor, dict[str, float]]:
        from agentgym.trainers.epo import epo_loss, turn_mean_entropy

        mask = mb.batch["mask"]
        w = self._weights[mb.offset : mb.offset + len(mb.samples)]
        loss, parts = epo_loss(
            mb.entropy,
            mask,
            traj_weight=torch.tensor(w, device=mask.device),
            refs=self.history.refs([s.turn for s in mb.samples]),
            num_turns=mb.num_seqs,
            entropy_coef=self.entropy_coef,
            smooth_coef=self.smooth_coef,
            k_low=self.k_low,
            k_high=self.k_high,
        )
        if self.logging:
            h = turn_mean_entropy(mb.entropy.detach(), mask).tolist()
            self._log.extend(zip((s.turn for s in mb.samples), h))
        stats = {
            "epo_traj_entropy": float(parts["traj_entropy"].detach()),
            "epo_smooth_penalty": float(parts["smooth_penalty"].detach()),
        }
        return loss, stats

    def finish(self, dist: Any) -> dict[str, float]:
        from agentgym.trainers.epo import per_index_means

        log = [x for part in dist.all_gather_object(self._log) for x in part]
        if log:
            self.history.update(per_index_means([h for _, h in log], [k for k, _ in log]))
        self._log = []
        return {}


def default_terms(cfg: Any, *, ref_model: Any = None, entropy_history: Any = None) -> list[Any]:
    """The terms a :class:`~agentgym.trainers.losses.PPOConfig` asks for, in loss order:
    clip (with the mismatch correction of ``tis_cap`` / ``tis_mask``), entropy (``entropy_coef > 0``), KL (``kl_coef > 0`` and a reference model), EPO
    (an entropy history given)."""
    terms: list[Any] = [
        ClipTerm(cfg.clip_eps, cfg.dual_clip, cfg.clip_eps_high, cfg.tis_cap, cfg.tis_mask)
    ]
    if cfg.entropy_coef:
        terms.append(EntropyTerm(cfg.entropy_coef))
    if cfg.kl_coef and ref_model is not None:
        terms.append(KLTerm(cfg.kl_coef, ref_model))
    if entropy_history is not None:
        terms.append(
            EPOTerm(
                entropy_history,
                cfg.epo_entropy_coef,
                cfg.epo_smooth_coef,
                cfg.epo_k_low,
                cfg.epo_k_high,
            )
        )
    return terms
