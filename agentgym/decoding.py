"""The one Hugging Face decoding loop, shared by the trainer's policy and ``agentgym serve``.

:func:`decode` samples replies for a batch of token-id prompts of different lengths together, with
a KV cache, and reports the log-probability of every sampled token. Each row has its own
:class:`SamplingParams` (budget, temperature, top-p, seed, how many alternatives to report), so
one batch can mix requests. The two callers differ in what they need, and both are options here
rather than copies of the loop:

* **Randomness.** The trainer passes one ``torch.Generator`` for the whole batch: one draw per
  step, and its state is what a checkpoint saves. The server passes none: each row then samples
  from its own CPU generator seeded with ``params[i].seed``, so a seeded request gives the same
  reply whether it was batched with others or not (up to float rounding of padded batches).
* **Which log-probs.** The trainer needs them under the sampling distribution (``logits /
  temperature``), as its loss recomputes them; an OpenAI-style API reports them under the model's
  own distribution (``scale_logprobs=False``).
* **Streaming.** ``on_token`` sees every token as it is sampled and may end its row (a stop
  string, a client that left); the server streams from it.

It is our own small loop rather than ``model.generate``: the log-probs stay exact (no logits
processors in between) and the random draws come from generators we own, so a run is reproducible
from its seed. Prompts are left-padded and positions count only real tokens, so each row is
computed as it would be alone.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Decoded", "SamplingParams", "TokenCallback", "decode"]

#: ``on_token(row, token, logprob, top)``: ``top`` holds the row's ``top_logprobs`` most likely
#: ``(token, logprob)`` pairs; returning True ends the row (finish reason ``"stop"``).
TokenCallback = Callable[[int, int, float, list[tuple[int, float]]], bool]


@dataclass(frozen=True)
class SamplingParams:
    """How one sequence is sampled (the decoder's whole view of a request)."""

    max_tokens: int
    temperature: float = 1.0  # 0: greedy
    top_p: float = 1.0
    seed: int | None = None  # per-row generators only (see decode's ``generator``)
    top_logprobs: int = 0  # how many alternatives to report per token (0: none)


@dataclass
class Decoded:
    """What :func:`decode` sampled, row by row.

    ``tokens`` ends with the end-of-sequence id when a row stopped at one (a trainer learns to
    emit it); ``finish`` is ``"stop"`` (eos or ``on_token``) or ``"length"`` (the budget).
    """

    tokens: list[list[int]]
    logprobs: list[list[float]]
    finish: list[str]


def _cache_arg(model: Any) -> str:
    """The forward's name for the KV cache: ``cache`` in current transformers, where
    ``past_key_values`` is deprecated; ``past_key_values`` in older 5.x releases."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _row_generators(torch: Any, params: Sequence[SamplingParams]) -> list[Any]:
    """One CPU generator per row, seeded from its params (from the OS when unseeded): CPU, so
    a seed gives the same stream on any device."""
    gens = []
    for p in params:
        g = torch.Generator(device="cpu")
        g.manual_seed(p.seed if p.seed is not None else int.from_bytes(os.urandom(8), "little"))
        gens.append(g)
    return gens


def _top_p_filter(torch: Any, probs: Any, top_p: Any) -> Any:
    """Keep, per row, the most likely tokens whose mass reaches ``top_p`` (the first always),
    renormalised; rows with ``top_p >= 1`` are returned as they are."""
    sorted_p, order = torch.sort(probs, dim=-1, descending=True)
    keep = (torch.cumsum(sorted_p, -1) - sorted_p) < top_p[:, None]
    keep[:, 0] = True
    filtered = torch.zeros_like(probs).scatter(-1, order, sorted_p * keep)
    filtered = filtered / filtered.sum(-1, keepdim=True)
    return torch.where((top_p < 1.0)[:, None], filtered, probs)


def _draw(
    torch: Any,
    logits: Any,
    probs: Any,
    params: Sequence[SamplingParams],
    alive: list[bool],
    generator: Any,
    row_gens: list[Any],
) -> Any:
    """Next token of every row: argmax for greedy rows and for degenerate distributions (NaN or
    all zero: greedy rather than a crash), a draw from ``probs`` otherwise."""
    greedy = [p.temperature <= 0 for p in params]
    picked = logits.argmax(-1)
    if all(greedy):
        return picked
    bad = ~torch.isfinite(probs).all(-1) | (probs.sum(-1) <= 0)
    if generator is not None:
        # One draw for the whole batch; a degenerate row draws from a uniform stand-in (its
        # draw is replaced below), so it cannot stop the others.
        safe = torch.where(bad[:, None], torch.ones_like(probs), probs)
        drawn = torch.multinomial(safe, 1, generator=generator).squeeze(-1)
    else:
        cpu_probs, bad_l = probs.cpu(), bad.tolist()
        drawn_l = picked.tolist()
        for i, g in enumerate(row_gens):
            if alive[i] and not greedy[i] and not bad_l[i]:
                drawn_l[i] = int(torch.multinomial(cpu_probs[i], 1, generator=g))
        drawn = torch.tensor(drawn_l, dtype=torch.long, device=logits.device)
    use_draw = torch.tensor([not x for x in greedy], device=logits.device) & ~bad
    return torch.where(use_draw, drawn, picked)


def _temperature_scale(torch: Any, params: Sequence[SamplingParams], device: Any) -> Any:
    """What the logits are divided by: each row's temperature (1 for greedy rows). A plain
    number when all rows share it, which is what the trainer always has: dividing by a number
    and by a tensor of that number can round differently on a GPU, and a seeded run must keep
    its samples."""
    temps = [p.temperature if p.temperature > 0 else 1.0 for p in params]
    if len(set(temps)) == 1:
        return temps[0]
    return torch.tensor(temps, device=device)[:, None]


def _padded_batch(torch: Any, prompts: Sequence[Sequence[int]], pad_id: int, device: Any) -> Any:
    """Left-padded ids, their attention mask, and positions that count only real tokens."""
    n, width = len(prompts), max(len(p) for p in prompts)
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.long)
    for i, p in enumerate(prompts):
        if p:
            ids[i, width - len(p) :] = torch.tensor(list(p), dtype=torch.long)
            mask[i, width - len(p) :] = 1
    ids, mask = ids.to(device), mask.to(device)
    return ids, mask, (mask.cumsum(-1) - 1).clamp(min=0)


def decode(
    model: Any,
    prompts: Sequence[Sequence[int]],
    params: Sequence[SamplingParams],
    *,
    eos_ids: set[int],
    pad_id: int,
    generator: Any = None,
    on_token: TokenCallback | None = None,
    scale_logprobs: bool = True,
) -> Decoded:
    """Sample a reply for every prompt together (row ``i`` with ``params[i]``).

    A row ends at an id of ``eos_ids`` (kept in its tokens, not shown to ``on_token``), when
    ``on_token`` returns True, or after ``max_tokens`` tokens. ``generator``: one
    ``torch.Generator`` on the model's device for the whole batch, or None for per-row CPU
    generators seeded from ``params`` (see the module docstring). ``scale_logprobs``: report
    log-probs under ``logits / temperature`` (True; greedy rows under the logits) or under the
    logits (False). Top-p filtering changes what is drawn, never the reported log-probs.
    """
    import torch

    if len(params) != len(prompts):
        raise ValueError(f"decode got {len(prompts)} prompts but {len(params)} sampling params")
    n = len(prompts)
    out_ids: list[list[int]] = [[] for _ in range(n)]
    out_lp: list[list[float]] = [[] for _ in range(n)]
    finish: list[str | None] = [None if p.max_tokens > 0 else "length" for p in params]
    if all(f is not None for f in finish):
        return Decoded(out_ids, out_lp, [str(f) for f in finish])
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    ids, mask, pos = _padded_batch(torch, prompts, pad_id, device)
    scale = _temperature_scale(torch, params, device)
    top_p = torch.tensor([p.top_p for p in params], device=device)
    k_top = max(p.top_logprobs for p in params)
    row_gens = _row_generators(torch, params) if generator is None else []
    cache_arg = _cache_arg(model)
    past = None
    try:
        with torch.no_grad():
            for _ in range(max(p.max_tokens for p in params)):
                res = model(
                    input_ids=ids,
                    attention_mask=mask,
                    position_ids=pos,
                    use_cache=True,
                    logits_to_keep=1,  # only the last position's logits (the prefill's too)
                    **{cache_arg: past},
                )
                past = getattr(res, cache_arg)
                logits = res.logits[:, -1, :].float()
                logp = torch.log_softmax(logits / scale, dim=-1)
                probs = logp.exp()
                if bool((top_p < 1.0).any()):
                    probs = _top_p_filter(torch, probs, top_p)
                alive = [f is None for f in finish]
                nxt = _draw(torch, logits, probs, params, alive, generator, row_gens)
                shown = logp if scale_logprobs else torch.log_softmax(logits, dim=-1)
                lp = shown.gather(-1, nxt[:, None]).squeeze(-1)
                tops: list[list[tuple[int, float]]] = [[] for _ in range(n)]
                if k_top:
                    vals, idx = torch.topk(shown, min(k_top, shown.shape[-1]), dim=-1)
                    tops = [list(zip(r_i, r_v)) for r_i, r_v in zip(idx.tolist(), vals.tolist())]
                # One device-to-host copy per decoding step, not one per row.
                nxt_l, lp_l = nxt.tolist(), lp.tolist()
                for i, p in enumerate(params):
                    if not alive[i]:
                        continue
                    out_ids[i].append(nxt_l[i])
                    out_lp[i].append(lp_l[i])
                    # eos ends the row unseen by on_token (it is no text to show)
                    stopped = nxt_l[i] in eos_ids or (
                        on_token is not None
                        and on_token(i, nxt_l[i], lp_l[i], tops[i][: p.top_logprobs])
                    )
                    if stopped:
                        finish[i] = "stop"
                    elif len(out_ids[i]) >= p.max_tokens:
                        finish[i] = "length"
                if all(f is not None for f in finish):
                    break
                still = torch.tensor([f is None for f in finish], device=device)
                ids = torch.where(still, nxt, torch.full_like(nxt, pad_id))[:, None]
                pos = pos[:, -1:] + 1
                mask = torch.cat([mask, still.long()[:, None]], dim=1)
    finally:
        if was_training:
            model.train()
    return Decoded(out_ids, out_lp, [f or "length" for f in finish])
