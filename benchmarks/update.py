"""``agentgym bench update``: tokens/s of the PPO update against the previous update, same run.

Both updates train copies of one model on the same samples with the same optimizer settings and
the same minibatch permutation:

* ``baseline``: the update as it was before length bucketing (kept here, verbatim in behaviour,
  as the yardstick): right-padded ``prompt + response`` rows, logits and a log-softmax over every
  position, the entropy's graph always built, micro-batches of ``micro_batch_size`` rows in the
  minibatch's shuffled order.
* ``new``: :func:`agentgym.trainers.losses.ppo_update` as the trainer calls it: left-padded rows,
  logits of the response positions only (``logits_to_keep``), samples sorted by length and cut by
  at most ``micro_batch_size`` rows and ``micro_batch_tokens`` padded tokens, the last decoder
  layer on the reply positions only (Qwen2/Llama), the entropy's graph only when a term
  differentiates it.

Tokens/s counts every ``prompt + response`` token the update trains on (the work a training step
has to do, independent of padding) over the wall time of the whole ``ppo_update`` (collate,
forward, backward, optimizer steps). Machines are shared and noisy, so the figure that matters is
``speedup``: new over baseline tokens/s, measured back to back (interleaved repeats, median
kept) in one process. ``max_abs_param_diff`` checks the two updates reach the same weights.

Samples are synthetic with the shape of a stepwise agent run (``--samples`` turns, prompt lengths
around ``--prompt-tokens`` +- ``--prompt-spread``, replies of 1 to ``2 * --response-tokens - 1``
tokens, random advantages, behaviour log-probs near the model's own). Models are random-init
Qwen2 decoders (no download): ``tiny`` is the default ``agentgym train`` model shape (hidden
128, 2 layers, the ~480-token vocabulary its BPE learns on TextWorld text), ``tiny64`` the
narrower one of ``agentgym bench rollout`` (hidden 64), ``smollm2`` the SmolLM2-135M shape (hidden 576, 9 heads / 3 KV heads, MLP 1536,
vocabulary 49152) with ``--smollm-layers`` layers.
"""

from __future__ import annotations

import argparse
import copy
import math
import random
import time
from collections.abc import Sequence
from typing import Any

__all__ = [
    "SHAPES",
    "UPDATE_FLAGS",
    "add_update_flags",
    "baseline_update",
    "bench_update",
    "make_samples",
    "update_kwargs",
    "add_cli",
]

#: Model shapes (Qwen2Config keyword arguments) the benchmark can build.
SHAPES: dict[str, dict[str, Any]] = {
    "tiny": dict(  # agentgym train's default model: --tiny-hidden-size 128, 2 layers
        vocab_size=480,
        hidden_size=128,
        intermediate_size=512,
        num_attention_heads=4,
        num_key_value_heads=4,
        num_hidden_layers=2,
    ),
    "tiny64": dict(  # the width agentgym bench rollout builds
        vocab_size=480,
        hidden_size=64,
        intermediate_size=256,
        num_attention_heads=2,
        num_key_value_heads=2,
        num_hidden_layers=2,
    ),
    "smollm2": dict(
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_attention_heads=9,
        num_key_value_heads=3,
        num_hidden_layers=2,
    ),
}


def build_model(shape: str, *, layers: int | None = None, seed: int = 0) -> Any:
    """A random-init Qwen2 causal LM of ``shape`` (tied embeddings, float32)."""
    import torch
    import transformers

    kw = dict(SHAPES[shape])
    if layers:
        kw["num_hidden_layers"] = layers
    cfg = transformers.Qwen2Config(
        **kw, max_position_embeddings=2048, tie_word_embeddings=True, rope_theta=10000.0
    )
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    return transformers.Qwen2ForCausalLM(cfg).float()


def make_samples(
    model: Any,
    n: int,
    *,
    prompt_tokens: int,
    prompt_spread: int,
    response_tokens: int,
    shared_prefix_tokens: int = 0,
    seed: int = 0,
) -> list[Any]:
    """``n`` samples of varied prompt and reply lengths; behaviour log-probs are the model's own
    plus noise (so ratios are near 1 and the clip is sometimes active). Every prompt starts with
    the same ``shared_prefix_tokens`` tokens (a system prompt; 0: none, every token random);
    prompts stay at least two tokens longer than that prefix."""
    from agentgym.trainers.losses import Sample

    rng = random.Random(seed)
    vocab = model.config.vocab_size
    system = tuple(rng.randrange(1, vocab) for _ in range(shared_prefix_tokens))
    out = []
    for i in range(n):
        p = max(2, prompt_tokens + rng.randint(-prompt_spread, prompt_spread))
        p = max(p - len(system), 2)
        r = rng.randint(1, max(1, 2 * response_tokens - 1))
        prompt = system + tuple(rng.randrange(1, vocab) for _ in range(p))
        resp = tuple(rng.randrange(1, vocab) for _ in range(r))
        old = tuple(-math.log(vocab) + rng.uniform(-0.3, 0.3) for _ in range(r))
        out.append(Sample(prompt, resp, old, rng.uniform(-2, 2), traj=f"t{i // 4}", turn=i % 4))
    return out


def run_samples(run: str, step: int | None = None, seed: int = 0) -> tuple[Any, list[Any]]:
    """The trained model of the ``agentgym train`` output folder ``run`` and the samples of its
    RL step ``step`` (default: the last one recorded), as the update saw them: one per generated
    turn, with the rollout's token ids and log-probs (``--write-trajectories`` keeps them).
    Advantages are drawn at random (seeded): what an update costs does not depend on them."""
    import json
    from pathlib import Path

    import transformers

    from agentgym.trainers.checkpoint import _record_step
    from agentgym.trainers.learner import samples_of
    from agentgym.trainers.replay import step_episodes

    out = Path(run)
    trajs = out / "trajectories.jsonl"
    if not trajs.is_file():
        raise SystemExit(
            f"--samples-from {run}: no trajectories.jsonl there; use the output folder of an "
            "`agentgym train --write-trajectories` run"
        )
    if step is None:
        ids = (json.loads(line).get("id", "") for line in trajs.open(encoding="utf-8"))
        steps = [k for i in ids if (k := _record_step(i)) is not None]
        if not steps:
            raise SystemExit(f"--samples-from {run}: the run recorded no RL step")
        step = max(steps)
    episodes = step_episodes(trajs, step)
    rng = random.Random(seed)
    samples = samples_of(episodes, [[rng.uniform(-1, 1) for _ in t.turns] for t in episodes])
    if len(samples) < 2:
        raise SystemExit(f"--samples-from {run}: step {step} has {len(samples)} generated turns")
    folder = out / "model" if (out / "model").is_dir() else out / "sft_model"
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, attn_implementation="sdpa")
    return model.float(), samples


# -- the previous update (the baseline) ----------------------------------------------------------
def _right_padded(samples: Sequence[Any], pad_id: int) -> dict[str, Any]:
    """The previous collate: right-padded rows, per-token tensors over all ``L - 1`` positions."""
    import torch

    width = max(len(s.prompt_ids) + len(s.response_ids) for s in samples)
    n = len(samples)
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    att = torch.zeros((n, width), dtype=torch.long)
    mask = torch.zeros((n, width - 1))
    old = torch.zeros((n, width - 1))
    adv = torch.zeros((n, width - 1))
    for i, s in enumerate(samples):
        p, r = len(s.prompt_ids), len(s.response_ids)
        ids[i, : p + r] = torch.tensor(list(s.prompt_ids) + list(s.response_ids))
        att[i, : p + r] = 1
        mask[i, p - 1 : p - 1 + r] = 1.0
        old[i, p - 1 : p - 1 + r] = torch.tensor(s.old_logprobs, dtype=torch.float32)
        adv[i, p - 1 : p - 1 + r] = s.advantage
    return {
        "input_ids": ids,
        "attention_mask": att,
        "targets": ids[:, 1:].clone(),
        "mask": mask,
        "old_logp": old,
        "adv": adv,
    }


def _full_logprobs(model: Any, b: dict[str, Any], temperature: float) -> tuple[Any, Any]:
    """The previous token_logprobs: logits and log-softmax over every position."""
    import torch

    logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], use_cache=False)
    logits = logits.logits[:, :-1, :].float()
    if temperature > 0 and temperature != 1.0:
        logits = logits / temperature
    logp_all = torch.log_softmax(logits, dim=-1)
    logp = logp_all.gather(-1, b["targets"].unsqueeze(-1)).squeeze(-1)
    return logp, -(logp_all.exp() * logp_all).sum(-1)


def _previous_terms(terms: Sequence[Any]) -> list[Any]:
    """``terms`` with the KL term's reference scored as before (logits at every position)."""
    from agentgym.trainers.terms import KLTerm

    return [_FullKL(t.coef, t.ref_model) if isinstance(t, KLTerm) else t for t in terms]


class _FullKL:
    """The previous KL term: the reference model's forward over every position."""

    needs_entropy = False

    def __init__(self, coef: float, ref_model: Any) -> None:
        self.coef, self.ref_model = coef, ref_model

    def begin(self, samples: Sequence[Any], dist: Any) -> None:
        return None

    def finish(self, dist: Any) -> dict[str, float]:
        return {}

    def __call__(self, mb: Any) -> tuple[Any, dict[str, float]]:
        import torch

        from agentgym.trainers.losses import kl_k3

        with torch.no_grad():
            ref_logp, _ = _full_logprobs(self.ref_model, mb.batch, mb.temperature)
        kl = mb.agg(kl_k3(mb.logp, ref_logp))
        return self.coef * kl, {"kl": float(kl.detach())}


def _baseline_accumulate(
    model: Any, samples: Sequence[Any], cfg: Any, terms: Sequence[Any], pad_id: int
) -> dict[str, float]:
    from agentgym.trainers.losses import add_micro_stats, aggregate, terms_loss
    from agentgym.trainers.terms import MicroBatch

    num_tokens = float(sum(len(s.response_ids) for s in samples))
    num_seqs = float(len(samples))
    for term in terms:
        term.begin(samples, _one())
    stats = dict.fromkeys(("loss", "pg_loss", "kl", "entropy", "clipfrac"), 0.0)
    ratio_max = 0.0
    for start in range(0, len(samples), cfg.micro_batch_size):
        micro = samples[start : start + cfg.micro_batch_size]
        b = _right_padded(micro, pad_id)

        def agg(x: Any, mask: Any = b["mask"]) -> Any:
            return aggregate(x, mask, cfg.agg, num_tokens=num_tokens, num_seqs=num_seqs)

        logp, ent = _full_logprobs(model, b, cfg.temperature)
        mb = MicroBatch(b, logp, ent, micro, start, num_seqs, agg, cfg.temperature, cfg.bf16)
        loss = terms_loss(terms, mb, stats)
        loss.backward()
        ratio_max = max(ratio_max, add_micro_stats(stats, loss, mb))
    stats["ratio_max"] = ratio_max
    return stats


def _one() -> Any:
    from agentgym.trainers.distributed import DistContext

    return DistContext()


def baseline_update(
    model: Any,
    optimizer: Any,
    samples: Sequence[Any],
    cfg: Any,
    *,
    pad_id: int,
    rng: random.Random,
    terms: Sequence[Any],
) -> dict[str, float]:
    """The previous single-process ``ppo_update``: same permutation, minibatches, clipping and
    statistics as :func:`~agentgym.trainers.losses.ppo_update`, with the previous batching."""
    from agentgym.trainers.losses import optimizer_step

    model.train()
    terms = _previous_terms(terms)
    params = [p for p in model.parameters() if p.requires_grad]
    totals: dict[str, float] = {}
    steps = 0
    grad_norm = 0.0
    for _ in range(cfg.ppo_epochs):
        order = list(range(len(samples)))
        rng.shuffle(order)
        for start in range(0, len(order), cfg.minibatch_size):
            mb = [samples[i] for i in order[start : start + cfg.minibatch_size]]
            optimizer.zero_grad(set_to_none=True)
            stats = _baseline_accumulate(model, mb, cfg, terms, pad_id)
            grad_norm = optimizer_step(optimizer, params, cfg.max_grad_norm, _one())
            for k, v in stats.items():
                totals[k] = totals.get(k, 0.0) + v
            steps += 1
    out = {k: v / steps for k, v in totals.items()}
    out["grad_norm"] = grad_norm
    out["optimizer_steps"] = float(steps)
    return out


# -- the benchmark -------------------------------------------------------------------------------
def _run(
    which: str, model: Any, samples: Sequence[Any], cfg: Any, ref: Any, seed: int
) -> tuple[float, dict[str, float], Any]:
    """One timed update of a fresh copy of ``model``: seconds, statistics, the trained copy."""
    from agentgym.trainers.losses import make_optimizer, ppo_update
    from agentgym.trainers.terms import default_terms

    m = copy.deepcopy(model)
    opt = make_optimizer(m, lr=1e-3, fused=which != "baseline")  # the baseline's AdamW loop
    terms = default_terms(cfg, ref_model=ref)
    rng = random.Random(seed)
    t0 = time.perf_counter()
    if which == "baseline":
        stats = baseline_update(m, opt, samples, cfg, pad_id=0, rng=rng, terms=terms)
    else:
        stats = ppo_update(m, opt, samples, cfg, pad_id=0, rng=rng, terms=terms)
    return time.perf_counter() - t0, stats, m


def bench_shape(
    shape: str,
    *,
    samples: int,
    prompt_tokens: int,
    prompt_spread: int,
    response_tokens: int,
    minibatch_size: int,
    micro_batch_size: int,
    micro_batch_tokens: int,
    kl_coef: float,
    entropy_coef: float,
    repeats: int,
    layers: int | None = None,
    shared_prefix_tokens: int = 0,
    seed: int = 0,
    samples_from: str | None = None,
    samples_step: int | None = None,
) -> dict[str, Any]:
    """Baseline and new update on one model shape, or on a run's own model and samples
    (``samples_from``); the report of that case (a dict)."""
    import torch

    from agentgym.trainers.losses import PPOConfig

    if samples_from:
        model, data = run_samples(samples_from, samples_step, seed)
        samples = len(data)
    else:
        model = build_model(shape, layers=layers, seed=seed)
        data = make_samples(
            model,
            samples,
            prompt_tokens=prompt_tokens,
            prompt_spread=prompt_spread,
            response_tokens=response_tokens,
            shared_prefix_tokens=shared_prefix_tokens,
            seed=seed,
        )
    ref = None
    if kl_coef:
        ref = copy.deepcopy(model).eval().requires_grad_(False)
        with torch.no_grad():  # a reference that differs, so the KL term is live
            for p in ref.parameters():
                p.add_(0.01 * torch.randn_like(p))
    common = dict(
        minibatch_size=minibatch_size,
        micro_batch_size=micro_batch_size,
        kl_coef=kl_coef,
        entropy_coef=entropy_coef,
        bf16=False,
        dual_clip=3.0,
    )
    cfgs = {
        "baseline": PPOConfig(**common),
        "new": PPOConfig(**common, micro_batch_tokens=micro_batch_tokens),
    }
    tokens = sum(len(s.prompt_ids) + len(s.response_ids) for s in data)
    small = data[: max(2, micro_batch_size)]
    for name, cfg in cfgs.items():  # first-call costs (allocator, kernels) untimed
        _run(name, model, small, cfg, ref, seed)
    times: dict[str, list[float]] = {n: [] for n in cfgs}
    results: dict[str, tuple[dict[str, float], Any]] = {}
    for _ in range(repeats):  # interleaved, so slow phases of a shared machine hit both
        for name, cfg in cfgs.items():
            sec, stats, trained = _run(name, model, data, cfg, ref, seed)
            times[name].append(sec)
            results[name] = (stats, trained)
    out: dict[str, Any] = {
        "params": sum(p.numel() for p in model.parameters()),
        "hidden_size": model.config.hidden_size,
        "layers": model.config.num_hidden_layers,
        "vocab_size": model.config.vocab_size,
        "samples": samples,
        "tokens": tokens,
        "response_tokens": sum(len(s.response_ids) for s in data),
        "mean_prompt_tokens": round(sum(len(s.prompt_ids) for s in data) / samples, 1),
    }
    for name in cfgs:
        ts = sorted(times[name])
        med = ts[len(ts) // 2]
        out[name] = {
            "seconds": round(med, 4),
            "seconds_all": [round(t, 4) for t in times[name]],
            "tokens_per_s": round(tokens / med, 1),
        }
    out["speedup"] = round(out["new"]["tokens_per_s"] / out["baseline"]["tokens_per_s"], 3)
    (sb, mb_), (sn, mn) = results["baseline"], results["new"]
    with torch.no_grad():
        diff = max(float((a - b).abs().max()) for a, b in zip(mb_.parameters(), mn.parameters()))
    out["max_abs_param_diff"] = diff
    out["max_abs_stat_diff"] = max(
        abs(sb[k] - sn[k]) for k in ("loss", "pg_loss", "kl", "entropy", "clipfrac")
    )
    return out


def bench_update(
    shapes: Sequence[str] = ("tiny",),
    *,
    samples: int = 200,
    prompt_tokens: int = 186,
    prompt_spread: int = 40,
    response_tokens: int = 4,
    minibatch_size: int = 64,
    micro_batch_size: int = 16,
    micro_batch_tokens: int = 8192,
    kl_coef: float = 0.0,
    entropy_coef: float = 0.0,
    repeats: int = 3,
    smollm_layers: int = 2,
    shared_prefix_tokens: int = 0,
    threads: int | None = None,
    seed: int = 0,
    samples_from: str | None = None,
    samples_step: int | None = None,
) -> dict[str, Any]:
    """Baseline against new update tokens/s for each shape in ``shapes``; the report (a dict)."""
    import torch

    unknown = [s for s in shapes if s not in SHAPES]
    if unknown:
        raise ValueError(f"unknown shapes {unknown}: choose from {', '.join(SHAPES)}")
    if samples < 2 or repeats < 1 or shared_prefix_tokens < 0:
        raise ValueError("samples must be >= 2, repeats >= 1 and shared_prefix_tokens >= 0")
    if threads:
        torch.set_num_threads(threads)
    report: dict[str, Any] = {
        "torch_threads": torch.get_num_threads(),
        "minibatch_size": minibatch_size,
        "baseline_micro_batch_size": micro_batch_size,
        "micro_batch_tokens": micro_batch_tokens,
        "kl_coef": kl_coef,
        "entropy_coef": entropy_coef,
        "shared_prefix_tokens": shared_prefix_tokens,
        "repeats": repeats,
        "seed": seed,
        "shapes": {},
    }
    if samples_from:  # the run's own model and samples instead of the synthetic shapes
        report["samples_from"] = samples_from
        shapes = ["run"]
    for shape in shapes:
        report["shapes"][shape] = bench_shape(
            shape,
            samples=samples,
            prompt_tokens=prompt_tokens,
            prompt_spread=prompt_spread,
            response_tokens=response_tokens,
            minibatch_size=minibatch_size,
            micro_batch_size=micro_batch_size,
            micro_batch_tokens=micro_batch_tokens,
            kl_coef=kl_coef,
            entropy_coef=entropy_coef,
            repeats=repeats,
            layers=smollm_layers if shape == "smollm2" else None,
            shared_prefix_tokens=shared_prefix_tokens,
            seed=seed,
            samples_from=samples_from,
            samples_step=samples_step,
        )
    return report


def _print_report(r: dict[str, Any]) -> None:
    for k, v in r.items():
        if k != "shapes":
            print(f"{k:28s} {v}")
    print()
    cols = ("baseline tok/s", "new tok/s", "speedup", "param diff")
    print(f"{'SHAPE':10s} " + " ".join(f"{c:>16s}" for c in cols))
    for name, s in r["shapes"].items():
        row = (
            s["baseline"]["tokens_per_s"],
            s["new"]["tokens_per_s"],
            s["speedup"],
            f"{s['max_abs_param_diff']:.1e}",
        )
        print(f"{name:10s} " + " ".join(f"{v!s:>16s}" for v in row))


#: The flags that shape an update's samples and batching, shared with ``agentgym bench train``
#: (:func:`add_update_flags`, :func:`update_kwargs`).
UPDATE_FLAGS = (
    "samples",
    "prompt_tokens",
    "prompt_spread",
    "response_tokens",
    "minibatch_size",
    "micro_batch_size",
    "micro_batch_tokens",
    "repeats",
    "smollm_layers",
    "threads",
    "seed",
)


def update_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The :data:`UPDATE_FLAGS` values of parsed ``args``, as keyword arguments."""
    return {k: getattr(args, k) for k in UPDATE_FLAGS}


def add_update_flags(p: argparse.ArgumentParser, *, samples: int, minibatch_size: int) -> None:
    """The :data:`UPDATE_FLAGS` on a bench parser (the two benches differ in two defaults)."""
    p.add_argument("--samples", type=int, default=samples, help="turns in the update")
    p.add_argument("--prompt-tokens", type=int, default=186, help="mean prompt length")
    p.add_argument("--prompt-spread", type=int, default=40, help="prompt length +- this")
    p.add_argument("--response-tokens", type=int, default=4, help="mean reply length")
    p.add_argument(
        "--minibatch-size", type=int, default=minibatch_size, help="turns per optimizer step"
    )
    p.add_argument("--micro-batch-size", type=int, default=16, help="rows per micro-batch at most")
    p.add_argument(
        "--micro-batch-tokens",
        type=int,
        default=8192,
        help="padded tokens per micro-batch at most (0: no token bound)",
    )
    p.add_argument("--repeats", type=int, default=3, help="timed runs per case (median kept)")
    p.add_argument(
        "--smollm-layers", type=int, default=2, help="layers of the smollm2 shape (30: real)"
    )
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print the report as one JSON line")


def cmd_bench_update(args: argparse.Namespace) -> int:
    from agentgym.benchmarks.cli import print_report

    report = bench_update(
        [s.strip() for s in args.shapes.split(",") if s.strip()],
        kl_coef=args.kl_coef,
        entropy_coef=args.entropy_coef,
        shared_prefix_tokens=args.shared_prefix_tokens,
        samples_from=args.samples_from,
        samples_step=args.samples_step,
        **update_kwargs(args),
    )
    return print_report(report, args.json, _print_report)


def add_cli(sub: Any, groups: dict[str, Any]) -> None:
    from agentgym.benchmarks.cli import bench_parsers

    bench = bench_parsers(sub, groups)
    p = bench.add_parser(
        "update", help="PPO update tokens/s, new batching vs the previous one, same run"
    )
    p.add_argument(
        "--shapes", default="tiny", help=f"comma-separated, from {','.join(SHAPES)} (default tiny)"
    )
    add_update_flags(p, samples=200, minibatch_size=64)
    p.add_argument("--kl-coef", type=float, default=0.0, help="KL term (0: off, as train)")
    p.add_argument("--entropy-coef", type=float, default=0.0, help="entropy bonus (0: off)")
    p.add_argument(
        "--shared-prefix-tokens",
        type=int,
        default=0,
        help="tokens every prompt starts with (a system prompt; 0: all random)",
    )
    p.add_argument(
        "--samples-from",
        default=None,
        metavar="RUN",
        help="an `agentgym train --write-trajectories` output folder: time the update on its "
        "own model and the real samples of one RL step instead of a synthetic shape",
    )
    p.add_argument(
        "--samples-step", type=int, default=None, help="that run's RL step (default: the last)"
    )
    p.set_defaults(func=cmd_bench_update)
