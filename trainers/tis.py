"""Train/inference mismatch: the trainer's own log-probs of the rollout, and truncated
importance sampling (TIS) against the engine's.

The behaviour log-probs a turn records are those of the engine that sampled it. With the
Hugging Face engine (:class:`~agentgym.trainers.hf_policy.HFPolicy`) that engine is the trainer's
own model, so they agree with the trainer's recomputation up to float noise. With an inference
engine (vLLM: other kernels, other numerics, sometimes bf16 where the trainer is fp32) they do not,
and the PPO ratio ``pi_theta / mu`` then mixes the policy change with the engine's error.

The correction (Yao et al. 2025, "Your efficient RL framework secretly brings you off-policy RL
training") scores the rollout once with the trainer at the rollout weights (:func:`score_rollout`,
before any optimizer step of the RL step), uses those log-probs as PPO's old log-probs, and weighs
each token's loss by ``w = min(exp(logp_trainer - logp_behaviour), cap)``; tokens whose ratio is
outside ``[1/mask, mask]`` can be dropped (weight 0, the normalising token count unchanged).
:func:`tis_weights` is that per-token rule; :class:`~agentgym.trainers.terms.ClipTerm` applies it.

The mismatch itself is measured on every step, correction on or off (:func:`mismatch_stats`):
``mismatch_abs`` (mean ``|logp_trainer - logp_behaviour|`` per token), ``tis_capped`` and
``tis_masked`` (fractions of tokens the cap and the mask hit; 0 while that part is off).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["tis_weights", "score_rollout", "mismatch_stats"]


def tis_weights(
    trainer_logp: torch.Tensor,
    behaviour_logp: torch.Tensor,
    *,
    cap: float | None,
    mask: float | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token importance weight ``min(r, cap) * 1[1/mask <= r <= mask]`` with
    ``r = exp(trainer_logp - behaviour_logp)``, and the 0/1 tensors "capped" (``r > cap``) and
    "masked" (``r`` outside the band). ``cap=None``: no truncation; ``mask=None``: nothing masked.

    The weight carries no gradient: it corrects which distribution sampled the token, it is not
    a quantity to optimise."""
    ratio = torch.exp((trainer_logp - behaviour_logp).detach())
    weight = ratio
    capped = torch.zeros_like(ratio)
    masked = torch.zeros_like(ratio)
    if cap is not None:
        capped = (ratio > cap).float()
        weight = torch.clamp(ratio, max=cap)
    if mask is not None:
        masked = ((ratio < 1.0 / mask) | (ratio > mask)).float()
        weight = weight * (1.0 - masked)
    return weight, capped, masked


def score_rollout(
    model: Any, samples: Sequence[Any], cfg: Any, *, pad_id: int, dist: Any
) -> list[Any]:
    """``samples`` with ``rollout_logprobs`` set: the trainer's log-probs of each response token
    under the current weights (call before the step's first optimizer step), no gradients, the
    model in eval mode (no dropout noise in the reference point).

    Under torchrun every rank runs the same number of forwards (a rank with fewer micro-batches
    runs padding ones), as FSDP2 gathers weights collectively in each."""
    from agentgym.trainers.losses import (
        Sample,
        _autocast,
        _lora_base,
        _prunable,
        arrange_order,
        collate,
        token_logprobs,
    )

    device = next(model.parameters()).device
    # the update's micro-batches (ordered and cut for the least work, within micro_batch_size
    # rows and micro_batch_tokens padded tokens each); results go back in the caller's order
    order, spans = arrange_order(samples, cfg, shares_prefix=_prunable(_lora_base(model)))
    ranked = [samples[i] for i in order]
    num_micro = int(dist.all_reduce([len(spans)], op="max")[0])
    was_training = model.training
    model.eval()
    out: list[Any] = list(samples)
    try:
        with torch.no_grad():
            for k in range(num_micro):
                lo, hi = spans[k] if k < len(spans) else (0, 0)
                micro = ranked[lo:hi]
                rows = micro or [Sample((pad_id,), (pad_id,), (0.0,), 0.0)]
                b = collate(rows, pad_id, device)
                with _autocast(device, cfg.bf16):
                    logp, _ = token_logprobs(
                        model,
                        b["input_ids"],
                        b["attention_mask"],
                        b["targets"],
                        temperature=cfg.temperature,
                    )
                logp = logp.float().cpu()
                keep = logp.shape[1]  # collate right-aligns responses: the last columns
                for j, s in enumerate(micro):
                    got = logp[j, keep - len(s.response_ids) :].tolist()
                    out[order[lo + j]] = dataclasses.replace(s, rollout_logprobs=tuple(got))
    finally:
        model.train(was_training)
    return out


def mismatch_stats(samples: Sequence[Any], cfg: Any, *, dist: Any) -> dict[str, float]:
    """``mismatch_abs``, ``tis_capped``, ``tis_masked`` over every rank's response tokens of
    ``samples`` scored by :func:`score_rollout` (``cfg``: a PPOConfig with ``tis_cap``,
    ``tis_mask``)."""
    abs_sum = capped_n = masked_n = tokens = 0.0
    for s in samples:
        trainer = torch.tensor(s.rollout_logprobs, dtype=torch.float64)
        behaviour = torch.tensor(s.old_logprobs, dtype=torch.float64)
        _, capped, masked = tis_weights(trainer, behaviour, cap=cfg.tis_cap, mask=cfg.tis_mask)
        abs_sum += float((trainer - behaviour).abs().sum())
        capped_n += float(capped.sum())
        masked_n += float(masked.sum())
        tokens += len(s.response_ids)
    abs_sum, capped_n, masked_n, tokens = dist.all_reduce([abs_sum, capped_n, masked_n, tokens])
    n = max(tokens, 1.0)
    return {"mismatch_abs": abs_sum / n, "tis_capped": capped_n / n, "tis_masked": masked_n / n}
