"""``agentgym bench train``: the update phase's tokens/s and its fraction of this machine's
matmul peak, both measured in the same run.

For each model shape and each way of training it (``full``: every weight; ``lora``: the
trainer's LoRA adapters, :func:`agentgym.models.LORA_DEFAULTS` at ``--lora-r``, with the fused
layers of :func:`agentgym.lora.fuse_lora`; ``lora_peft``: the same adapters with peft's own
forward, the same-run baseline of the fused layers; ``full_compiled`` and ``lora_compiled``: those
with the decoder layers compiled, :class:`agentgym.compiled.CompiledLayers`, as ``agentgym train
--compile`` runs its updates, compared with the eager mode of the same run in
``compile_speedup``; the compile is the untimed warm-up, ``warmup_seconds``) the benchmark

1. times :func:`agentgym.trainers.losses.ppo_update` as the trainer calls it on synthetic
   stepwise-agent samples (:func:`agentgym.benchmarks.update.make_samples`: real left-padded
   micro-batches, padding and all, optimizer steps included); tokens/s counts every
   ``prompt + response`` token trained on over the update's wall time;
2. counts the FLOPs that update executes (one extra, untimed run of the same update under
   :class:`torch.utils.flop_counter.FlopCounterMode`): every matrix product of the forward and
   backward passes (``mm``, ``addmm``, ``bmm``), so the pruned last layer, the response-only LM
   head and LoRA's frozen weights (no weight gradient) are counted as what they cost, not as a
   textbook ``6 N`` per token. Attention's own products are counted too (``attention_gflop``):
   torch's counter has formulas for its GPU attention kernels only, so the benchmark gives SDPA's
   CPU kernels the same ones (scores and scores @ V forward; the recomputed scores and the four
   gradient products backward). Element-wise work, softmax and the optimizer are not FLOPs here;
3. measures the peak: fp32 ``torch.matmul`` of the model's own shapes (a micro-batch's tokens x
   hidden @ hidden x intermediate, its transpose for the MLP's down projection, and the LM head
   over up to 1,024 rows), timed right before and after the updates; the fastest is the peak,
   each with ``2 * M * N * K`` FLOPs.

``fraction`` is executed FLOP/s (median update) over the peak; ``fraction_best`` uses the fastest
update instead, the fairer figure on a shared machine, where the peak is a best-of too;
``fraction_without_attention`` leaves attention's products out (reports before they were counted
gave this figure). ``model_fraction`` is the conventional figure,
``6 * N * tokens/s`` (``N``: weights of every linear layer, LM head included) over the peak: it
credits the update with the work of a full forward and backward over every position, which the
pruned update does not do, so it can exceed ``fraction`` and even 1.

Shapes: ``tiny`` (``agentgym train``'s default Qwen2, as in ``bench update``) and ``smollm2``
(SmolLM2-135M's Llama shape: hidden 576, 9 / 3 heads, MLP 1536, vocabulary 49,152, tied
embeddings, random init, no download) with ``--smollm-layers`` layers (30 is the real model).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import random
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["SHAPES", "MODES", "bench_train", "build", "matmul_peak", "add_cli"]

SHAPES = ("tiny", "smollm2")
MODES = ("full", "lora", "lora_peft", "full_compiled", "lora_compiled")
DEFAULT_MODES = ("full", "lora")


def build(shape: str, mode: str, *, layers: int, lora_r: int, seed: int = 0) -> Any:
    """A random-init model of ``shape`` (float32), wrapped in LoRA adapters for the LoRA modes
    exactly as :func:`agentgym.models.load_model` wraps the trainer's model (``lora_peft``: without
    :func:`agentgym.lora.fuse_lora`)."""
    import torch
    import transformers

    from agentgym.benchmarks.update import build_model

    if shape == "tiny":
        model = build_model("tiny", seed=seed)
    else:  # SmolLM2-135M is a Llama
        cfg = transformers.LlamaConfig(
            vocab_size=49152,
            hidden_size=576,
            intermediate_size=1536,
            num_attention_heads=9,
            num_key_value_heads=3,
            num_hidden_layers=layers,
            max_position_embeddings=2048,
            tie_word_embeddings=True,
            rope_theta=100000.0,
            rms_norm_eps=1e-5,
        )
        cfg._attn_implementation = "sdpa"
        torch.manual_seed(seed)
        model = transformers.LlamaForCausalLM(cfg).float()
    if mode in ("lora", "lora_peft", "lora_compiled"):
        from peft import LoraConfig, get_peft_model

        from agentgym.lora import fuse_lora
        from agentgym.models import LORA_DEFAULTS

        lora = {**LORA_DEFAULTS, "r": lora_r, "lora_alpha": 2 * lora_r}  # as agentgym train
        model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", **lora))
        if mode != "lora_peft":
            fuse_lora(model)
    return model


def _linear_weights(model: Any) -> int:
    """``N`` of ``6 N``: the weights of every linear layer (LoRA's included), the LM head once."""
    import torch

    seen: set[int] = set()
    n = 0
    for mod in model.modules():
        if isinstance(mod, torch.nn.Linear) and id(mod.weight) not in seen:
            seen.add(id(mod.weight))
            n += mod.weight.numel()
    return n


def _best_seconds(fn: Callable[[], Any], budget_s: float = 0.3) -> float:
    """The fastest of repeated calls of ``fn`` (at least 3, about ``budget_s`` in all): the
    machine's best, which is what a peak is."""
    fn()
    times: list[float] = []
    t_end = time.perf_counter() + budget_s
    while len(times) < 3 or time.perf_counter() < t_end:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def matmul_peak(hidden: int, intermediate: int, vocab: int, tokens: int) -> dict[str, float]:
    """GFLOP/s of fp32 ``torch.matmul`` on the model's own shapes (``2 M N K`` FLOPs each)."""
    import torch

    head_rows = min(tokens, 1024)
    shapes = {
        f"{tokens}x{hidden}@{hidden}x{intermediate}": (tokens, hidden, intermediate),
        f"{tokens}x{intermediate}@{intermediate}x{hidden}": (tokens, intermediate, hidden),
        f"{head_rows}x{hidden}@{hidden}x{vocab}": (head_rows, hidden, vocab),
    }
    out = {}
    for name, (m, k, n) in shapes.items():
        a, b = torch.randn(m, k), torch.randn(k, n)
        out[name] = round(
            2 * m * n * k / _best_seconds(lambda a=a, b=b: torch.matmul(a, b)) / 1e9, 2
        )
    return out


def _update(
    model: Any, samples: Sequence[Any], cfg: Any, seed: int, *, compiled: bool = False
) -> float:
    """Seconds of one ``ppo_update`` of a fresh copy of ``model`` (copy and optimizer untimed);
    ``compiled``: with the copy's decoder layers compiled, as ``agentgym train --compile``."""
    from agentgym.compiled import CompiledLayers
    from agentgym.trainers.losses import make_optimizer, ppo_update

    m = copy.deepcopy(model)
    opt = make_optimizer(m, lr=1e-4)
    ctx = CompiledLayers(m).active() if compiled else contextlib.nullcontext()
    with ctx:
        t0 = time.perf_counter()
        ppo_update(m, opt, samples, cfg, pad_id=0, rng=random.Random(seed))
        return time.perf_counter() - t0


def _cpu_attention_formulas() -> dict[Any, Callable[..., int]]:
    """FLOP formulas for SDPA's CPU kernels, which torch's counter has none for: the products
    torch counts for its GPU attention kernels (forward: scores and scores @ V; backward: the
    recomputed scores and the four gradient products), from the same shapes."""
    import torch
    from torch.utils import flop_counter as fc

    aten = torch.ops.aten
    fwd = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    bwd = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu_backward", None)
    out: dict[Any, Callable[..., int]] = {}

    def forward(query: Any, key: Any, value: Any, *_: Any, **__: Any) -> int:
        return int(fc.sdpa_flop_count(query, key, value))

    def backward(grad: Any, query: Any, key: Any, value: Any, *_: Any, **__: Any) -> int:
        return int(fc.sdpa_backward_flop_count(grad, query, key, value))

    if fwd is not None and fwd not in fc.flop_registry:
        out[fwd] = forward
    if bwd is not None and bwd not in fc.flop_registry:
        out[bwd] = backward
    return out


def _executed_flops(model: Any, samples: Sequence[Any], cfg: Any, seed: int) -> dict[str, int]:
    """FLOPs of the matrix products of the same update (forward and backward), counted, not
    modelled: ``total``, and ``attention``, the part inside the attention kernels."""
    from torch.utils.flop_counter import FlopCounterMode

    formulas = _cpu_attention_formulas()
    with FlopCounterMode(display=False, custom_mapping=formulas) as counter:
        _update(model, samples, cfg, seed)
    by_op = counter.get_flop_counts().get("Global", {})
    attention = sum(v for k, v in by_op.items() if "attention" in str(k))
    return {"total": int(counter.get_total_flops()), "attention": int(attention)}


def bench_case(
    shape: str,
    mode: str,
    *,
    samples: int,
    prompt_tokens: int,
    prompt_spread: int,
    response_tokens: int,
    minibatch_size: int,
    micro_batch_size: int,
    micro_batch_tokens: int,
    repeats: int,
    layers: int,
    lora_r: int,
    seed: int = 0,
) -> dict[str, Any]:
    """The report of one shape trained one way (a dict)."""
    from agentgym.benchmarks.update import make_samples
    from agentgym.trainers.losses import PPOConfig, micro_batches

    model = build(shape, mode, layers=layers, lora_r=lora_r, seed=seed)
    base = model if mode.startswith("full") else model.get_base_model()
    c = base.config
    data = make_samples(
        base,
        samples,
        prompt_tokens=prompt_tokens,
        prompt_spread=prompt_spread,
        response_tokens=response_tokens,
        seed=seed,
    )
    cfg = PPOConfig(
        minibatch_size=minibatch_size,
        micro_batch_size=micro_batch_size,
        micro_batch_tokens=micro_batch_tokens,
        bf16=False,
    )
    tokens = sum(len(s.prompt_ids) + len(s.response_ids) for s in data)
    ordered = sorted(data, key=lambda s: len(s.prompt_ids) + len(s.response_ids))
    spans = micro_batches(ordered[:minibatch_size], cfg)
    lo, hi = spans[len(spans) // 2]  # a typical micro-batch's padded tokens: the GEMMs' M
    width = max(len(s.prompt_ids) + len(s.response_ids) for s in ordered[lo:hi])
    gemm_rows = width * (hi - lo)
    peak = matmul_peak(c.hidden_size, c.intermediate_size, c.vocab_size, gemm_rows)
    compiled = mode.endswith("_compiled")
    # first-call costs, untimed; compiling takes the whole update (each new shape may compile)
    warm = data if compiled else data[: max(2, micro_batch_size)]
    t0 = time.perf_counter()
    _update(model, warm, cfg, seed, compiled=compiled)
    warm_s = time.perf_counter() - t0
    counted = _executed_flops(model, data, cfg, seed)  # eager: the same products
    flops, attn = counted["total"], counted["attention"]
    secs = [_update(model, data, cfg, seed, compiled=compiled) for _ in range(repeats)]
    after = matmul_peak(c.hidden_size, c.intermediate_size, c.vocab_size, gemm_rows)
    peak = {k: max(v, after[k]) for k, v in peak.items()}
    sec = statistics.median(secs)
    peak_flops = max(peak.values()) * 1e9
    n_linear = _linear_weights(model)
    return {
        "shape": shape,
        "mode": mode,
        "layers": c.num_hidden_layers,
        "params": sum(p.numel() for p in model.parameters()),
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "linear_params": n_linear,
        "samples": samples,
        "tokens": tokens,
        "seconds": round(sec, 4),
        "seconds_all": [round(s, 4) for s in secs],
        "warmup_seconds": round(warm_s, 2),  # with _compiled: the compile
        "tokens_per_s": round(tokens / sec, 1),
        "executed_gflop": round(flops / 1e9, 3),
        "executed_gflop_per_s": round(flops / sec / 1e9, 2),
        "peak_gflop_per_s": round(peak_flops / 1e9, 2),
        "peak_shapes": peak,
        "attention_gflop": round(attn / 1e9, 3),
        "fraction": round(flops / sec / peak_flops, 4),
        "fraction_best": round(flops / min(secs) / peak_flops, 4),
        # the same without attention's products: the figure of reports before they were counted
        "fraction_without_attention": round((flops - attn) / sec / peak_flops, 4),
        "model_gflop_per_s": round(6 * n_linear * tokens / sec / 1e9, 2),
        "model_fraction": round(6 * n_linear * tokens / sec / peak_flops, 4),
    }


def bench_train(
    shapes: Sequence[str] = SHAPES,
    modes: Sequence[str] = DEFAULT_MODES,
    *,
    samples: int = 64,
    prompt_tokens: int = 186,
    prompt_spread: int = 40,
    response_tokens: int = 4,
    minibatch_size: int = 16,
    micro_batch_size: int = 16,
    micro_batch_tokens: int = 8192,
    repeats: int = 3,
    smollm_layers: int = 2,
    lora_r: int = 8,
    threads: int | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Tokens/s and fraction of the measured matmul peak of each shape x mode; the report."""
    import torch

    bad = [s for s in shapes if s not in SHAPES] + [m for m in modes if m not in MODES]
    if bad:
        raise ValueError(f"unknown shapes or modes {bad}: shapes {SHAPES}, modes {MODES}")
    if samples < 2 or repeats < 1 or lora_r < 1:
        raise ValueError("samples must be >= 2, repeats >= 1 and lora_r >= 1")
    if threads:
        torch.set_num_threads(threads)
    report: dict[str, Any] = {
        "torch_threads": torch.get_num_threads(),
        "minibatch_size": minibatch_size,
        "micro_batch_size": micro_batch_size,
        "micro_batch_tokens": micro_batch_tokens,
        "repeats": repeats,
        "lora_r": lora_r,
        "seed": seed,
        "cases": [],
    }
    for shape in shapes:
        for mode in modes:
            report["cases"].append(
                bench_case(
                    shape,
                    mode,
                    samples=samples,
                    prompt_tokens=prompt_tokens,
                    prompt_spread=prompt_spread,
                    response_tokens=response_tokens,
                    minibatch_size=minibatch_size,
                    micro_batch_size=micro_batch_size,
                    micro_batch_tokens=micro_batch_tokens,
                    repeats=repeats,
                    layers=smollm_layers,
                    lora_r=lora_r,
                    seed=seed,
                )
            )
    # the fused LoRA layers against peft's own, per shape, when both ran
    secs = {(c["shape"], c["mode"]): c["seconds"] for c in report["cases"]}
    speedup = {
        shape: round(secs[(shape, "lora_peft")] / secs[(shape, "lora")], 3)
        for shape in shapes
        if (shape, "lora") in secs and (shape, "lora_peft") in secs
    }
    if speedup:
        report["lora_fused_speedup"] = speedup
    # compiled layers against the same mode eager, per shape and mode, when both ran
    compiled = {
        f"{shape}/{mode}": round(secs[(shape, mode)] / secs[(shape, f"{mode}_compiled")], 3)
        for shape in shapes
        for mode in ("full", "lora")
        if (shape, mode) in secs and (shape, f"{mode}_compiled") in secs
    }
    if compiled:
        report["compile_speedup"] = compiled
    return report


def _print_report(r: dict[str, Any]) -> None:
    for k, v in r.items():
        if k != "cases":
            print(f"{k:20s} {v}")
    print()
    cols = ("tok/s", "exec GFLOP/s", "peak GFLOP/s", "fraction", "6N fraction")
    print(f"{'CASE':14s} " + " ".join(f"{c:>13s}" for c in cols))
    for c in r["cases"]:
        row = (
            c["tokens_per_s"],
            c["executed_gflop_per_s"],
            c["peak_gflop_per_s"],
            c["fraction"],
            c["model_fraction"],
        )
        print(f"{c['shape'] + '/' + c['mode']:14s} " + " ".join(f"{v!s:>13s}" for v in row))


def cmd_bench_train(args: argparse.Namespace) -> int:
    from agentgym.benchmarks.cli import print_report
    from agentgym.benchmarks.update import update_kwargs

    report = bench_train(
        [s.strip() for s in args.shapes.split(",") if s.strip()],
        [m.strip() for m in args.modes.split(",") if m.strip()],
        lora_r=args.lora_r,
        **update_kwargs(args),
    )
    return print_report(report, args.json, _print_report)


def add_cli(sub: Any, groups: dict[str, Any]) -> None:
    from agentgym.benchmarks.cli import bench_parsers
    from agentgym.benchmarks.update import add_update_flags

    bench = bench_parsers(sub, groups)
    p = bench.add_parser(
        "train", help="update tokens/s and its fraction of a same-run fp32 matmul peak"
    )
    p.add_argument("--shapes", default=",".join(SHAPES), help=f"comma-separated, from {SHAPES}")
    p.add_argument(
        "--modes",
        default=",".join(DEFAULT_MODES),
        help=f"comma-separated, from {MODES} (lora_peft: peft's unfused layers, a baseline for "
        "lora; *_compiled: the decoder layers compiled, as agentgym train --compile)",
    )
    add_update_flags(p, samples=64, minibatch_size=16)
    p.add_argument("--lora-r", type=int, default=8, help="LoRA rank of the lora mode")
    p.set_defaults(func=cmd_bench_train)
