"""GPU figures for a Qwen2-0.5B-shaped model: training tokens/s, MFU, rollout tokens/s.

    python -m agentgym.benchmarks.gpu --json            # the full model, on the GPU
    python -m agentgym.benchmarks.gpu --small --json    # a tiny config, runs on a CPU

The model is a :class:`transformers.Qwen2ForCausalLM` built from a ``Qwen2Config`` with the
Qwen2-0.5B shape (hidden 896, 24 layers, 14 query heads, 2 KV heads, MLP 4864, vocabulary
151936, tied embeddings) and random weights: no checkpoint is downloaded, and throughput does
not depend on the weights' values. It runs in bf16 (weights, gradients and AdamW state, as
``agentgym train --dtype bfloat16``).

* **Training**: full fine-tuning steps (forward, causal-LM loss, backward, AdamW) on random
  token batches of ``batch_size x seq_len``; tokens/s = tokens per step / mean step time.
* **MFU** (model FLOPs utilisation) = ``6 * N * tokens/s / peak``, where ``N`` counts the
  parameters that take part in matrix products (all of them but the input embedding; a tied
  embedding counts once, as the output projection) and ``peak`` is the device's dense bf16
  tensor throughput, looked up from its name (H100/H200 SXM: 989 TFLOP/s) or given with
  ``--peak-tflops``. ``mfu_with_attention`` adds the attention score FLOPs ``12 * L * d * T``
  per token (PaLM's convention, ``T`` = sequence length).
* **Rollout**: batched sampling of ``gen_tokens`` new tokens after random prompts of
  ``prompt_len`` tokens, with :meth:`HFPolicy.generate` (KV-cached decoding loop) and, when
  vLLM imports and CUDA is present, with ``vllm.LLM.generate`` on the same weights (saved to a
  temporary directory). Generated tokens/s counts new tokens over the whole call (prefill
  included). Generation never stops early (no eos), so each row yields exactly ``gen_tokens``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

__all__ = [
    "QWEN2_05B",
    "SMALL",
    "peak_bf16_flops",
    "build_model",
    "bench_gpu",
    "main",
    "add_cli",
]

#: The Qwen2-0.5B shape.
QWEN2_05B: dict[str, Any] = {
    "hidden_size": 896,
    "num_hidden_layers": 24,
    "num_attention_heads": 14,
    "num_key_value_heads": 2,
    "intermediate_size": 4864,
    "vocab_size": 151936,
    "max_position_embeddings": 32768,
    "rope_theta": 1_000_000.0,
    "tie_word_embeddings": True,
}
#: A tiny config of the same family for CPU smoke tests (``--small``).
SMALL: dict[str, Any] = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 256,
    "vocab_size": 1024,
    "max_position_embeddings": 512,
    "rope_theta": 10000.0,
    "tie_word_embeddings": True,
}

#: Dense (no sparsity) bf16 tensor-core peak, FLOP/s, by device name. The first match wins,
#: so more specific names come first.
_PEAKS: tuple[tuple[tuple[str, ...], float], ...] = (
    (("b200",), 2250e12),
    (("h100", "pcie"), 756e12),
    (("h200",), 989e12),
    (("h100",), 989e12),
    (("h800",), 989e12),
    (("a100",), 312e12),
    (("a800",), 312e12),
    (("l40s",), 362e12),
    (("l40",), 181e12),
    (("l4",), 121e12),
    (("a10",), 125e12),
)


def peak_bf16_flops(device_name: str) -> float | None:
    """Dense bf16 peak FLOP/s of a GPU from its name (``torch.cuda.get_device_name``)."""
    name = device_name.lower()
    for keys, peak in _PEAKS:
        if all(k in name for k in keys):
            return peak
    return None


def build_model(shape: dict[str, Any], *, device: str, seed: int = 0) -> Any:
    """A randomly initialised bf16 Qwen2 causal LM of the given shape on ``device``."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    cfg = Qwen2Config(**shape, bos_token_id=0, eos_token_id=1, pad_token_id=0, use_cache=True)
    with torch.device(device):  # initialise on the device: much faster than on the CPU
        model = Qwen2ForCausalLM(cfg)
    return model.to(dtype=torch.bfloat16)


def matmul_params(model: Any) -> int:
    """Parameters used in matrix products: all but the input embedding (tied: counted once)."""
    emb = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    total = sum(p.numel() for p in model.parameters())  # a tied matrix appears once
    return total if head is emb else total - emb.numel()


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def bench_training(
    model: Any, *, batch_size: int, seq_len: int, steps: int, warmup: int, device: str, seed: int
) -> dict[str, Any]:
    """Full fine-tuning steps in bf16 on random tokens; returns tokens/s and step times."""
    import torch

    g = torch.Generator(device="cpu").manual_seed(seed)
    vocab = model.config.vocab_size
    batches = [
        torch.randint(0, vocab, (batch_size, seq_len), generator=g).to(device)
        for _ in range(min(steps + warmup, 4))
    ]
    fused = device.startswith("cuda")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=fused)
    model.train()
    times: list[float] = []
    losses: list[float] = []
    for k in range(warmup + steps):
        x = batches[k % len(batches)]
        _sync(device)
        t0 = time.perf_counter()
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        _sync(device)
        if k >= warmup:
            times.append(time.perf_counter() - t0)
            losses.append(float(loss.detach()))
    model.eval()
    del opt
    step_s = sum(times) / len(times)
    tokens = batch_size * seq_len
    return {
        "batch_size": batch_size,
        "seq_len": seq_len,
        "tokens_per_step": tokens,
        "steps": steps,
        "step_s": round(step_s, 4),
        "tokens_per_s": round(tokens / step_s, 1),
        "loss_first_last": [round(losses[0], 3), round(losses[-1], 3)],
    }


def _random_prompts(n: int, length: int, vocab: int, seed: int) -> list[list[int]]:
    import torch

    g = torch.Generator(device="cpu").manual_seed(seed)
    # ids >= 2: no prompt contains the pad (0) or eos (1) ids
    return torch.randint(2, vocab, (n, length), generator=g).tolist()


def bench_hf_generate(
    model: Any, *, batch: int, prompt_len: int, gen_tokens: int, seed: int, warmup: bool = True
) -> dict[str, Any]:
    """Tokens/s of :meth:`HFPolicy.generate` (one batched KV-cached decode)."""
    from agentgym.trainers.hf_policy import HFPolicy

    # A stand-in tokenizer: pad 0 and an eos id that is never sampled, so rows never stop early.
    tok = SimpleNamespace(eos_token_id=-1, pad_token_id=0)
    policy = HFPolicy(model, tok, seed=seed, max_new_tokens=gen_tokens, temperature=1.0)
    prompts = _random_prompts(batch, prompt_len, model.config.vocab_size, seed)
    device = str(policy.device)
    if warmup:
        policy.generate(prompts[: min(2, batch)])
    _sync(device)
    t0 = time.perf_counter()
    out, _ = policy.generate(prompts)
    _sync(device)
    dt = time.perf_counter() - t0
    n = sum(len(r) for r in out)
    return {
        "batch": batch,
        "prompt_len": prompt_len,
        "gen_tokens": gen_tokens,
        "seconds": round(dt, 4),
        "generated_tokens": n,
        "tokens_per_s": round(n / dt, 1),
    }


def bench_vllm_generate(
    model_dir: str,
    *,
    batches: Sequence[int],
    prompt_len: int,
    gen_tokens: int,
    seed: int,
    vocab: int,
    gpu_memory_utilization: float,
) -> list[dict[str, Any]]:
    """Tokens/s of ``vllm.LLM.generate`` on token prompts, one call per batch size."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    from vllm import LLM, SamplingParams

    llm = LLM(
        model=model_dir,
        skip_tokenizer_init=True,
        dtype="bfloat16",
        seed=seed,
        gpu_memory_utilization=gpu_memory_utilization,
        max_model_len=prompt_len + gen_tokens + 16,
        enable_prefix_caching=False,  # random prompts share nothing; keep the figure plain
    )
    params = SamplingParams(
        temperature=1.0, max_tokens=gen_tokens, ignore_eos=True, detokenize=False
    )
    warm = _random_prompts(2, prompt_len, vocab, seed + 1)
    llm.generate([{"prompt_token_ids": p} for p in warm], params, use_tqdm=False)
    rows = []
    for b in batches:
        prompts = _random_prompts(b, prompt_len, vocab, seed)
        t0 = time.perf_counter()
        outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
        dt = time.perf_counter() - t0
        n = sum(len(o.outputs[0].token_ids) for o in outs)
        rows.append(
            {
                "batch": b,
                "prompt_len": prompt_len,
                "gen_tokens": gen_tokens,
                "seconds": round(dt, 4),
                "generated_tokens": n,
                "tokens_per_s": round(n / dt, 1),
            }
        )
    del llm
    return rows


def bench_gpu(
    *,
    small: bool = False,
    device: str | None = None,
    batch_size: int | None = None,
    seq_len: int | None = None,
    steps: int | None = None,
    warmup: int | None = None,
    gen_batches: Sequence[int] | None = None,
    prompt_len: int | None = None,
    gen_tokens: int | None = None,
    vllm: bool = True,
    peak_tflops: float | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Run the training and rollout measurements; return the report (see the module doc)."""
    import torch
    import transformers

    from agentgym.trainers.vllm_policy import vllm_unavailable_reason

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    d = (
        {
            "batch_size": 2,
            "seq_len": 32,
            "steps": 2,
            "warmup": 1,
            "gen": [2],
            "plen": 16,
            "gen_t": 4,
        }
        if small
        else {
            "batch_size": 8,
            "seq_len": 2048,
            "steps": 10,
            "warmup": 3,
            "gen": [64, 256],
            "plen": 512,
            "gen_t": 128,
        }
    )
    shape = SMALL if small else QWEN2_05B
    if device.startswith("cuda"):
        name = torch.cuda.get_device_name(torch.device(device))
    else:
        import platform

        name = f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
    peak = peak_tflops * 1e12 if peak_tflops else None
    if peak is None and device.startswith("cuda"):
        peak = peak_bf16_flops(name)
    model = build_model(shape, device=device, seed=seed)
    n_total = sum(p.numel() for p in model.parameters())
    n_mm = matmul_params(model)
    cfg = model.config
    report: dict[str, Any] = {
        "device": name,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cuda": torch.version.cuda,
        "model": {
            "shape": "small" if small else "Qwen2-0.5B",
            **{k: shape[k] for k in ("hidden_size", "num_hidden_layers", "vocab_size")},
            "params": n_total,
            "matmul_params": n_mm,
            "dtype": "bfloat16",
        },
        "peak_bf16_tflops": peak / 1e12 if peak else None,
    }
    train = bench_training(
        model,
        batch_size=batch_size or d["batch_size"],
        seq_len=seq_len or d["seq_len"],
        steps=steps or d["steps"],
        warmup=d["warmup"] if warmup is None else warmup,
        device=device,
        seed=seed,
    )
    flops_tok = 6 * n_mm
    attn_tok = 12 * cfg.num_hidden_layers * cfg.hidden_size * train["seq_len"]
    train["model_tflops_per_s"] = round(flops_tok * train["tokens_per_s"] / 1e12, 2)
    if peak:
        # Significant figures, not decimals: a slow device's MFU is far below 1e-4.
        train["mfu"] = float(f"{flops_tok * train['tokens_per_s'] / peak:.4g}")
        train["mfu_with_attention"] = float(
            f"{(flops_tok + attn_tok) * train['tokens_per_s'] / peak:.4g}"
        )
    else:
        train["mfu"] = None
        train["mfu_note"] = "no bf16 peak known for this device (use --peak-tflops)"
    if device.startswith("cuda"):
        train["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    report["training"] = train
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    plen, gen_t = prompt_len or d["plen"], gen_tokens or d["gen_t"]
    batches = list(gen_batches or d["gen"])
    report["rollout_hf"] = []
    for b in batches:
        try:
            row = bench_hf_generate(model, batch=b, prompt_len=plen, gen_tokens=gen_t, seed=seed)
        except torch.OutOfMemoryError:
            row = {"batch": b, "prompt_len": plen, "gen_tokens": gen_t, "error": "out of memory"}
            torch.cuda.empty_cache()
        report["rollout_hf"].append(row)
    reason = vllm_unavailable_reason() if vllm else "skipped (--no-vllm)"
    if reason:
        report["rollout_vllm"] = {"available": False, "reason": reason}
        return report
    with tempfile.TemporaryDirectory(prefix="agentgym-bench-gpu-") as tmp:
        model.save_pretrained(tmp)
        vocab = cfg.vocab_size
        del model
        gc.collect()
        torch.cuda.empty_cache()
        try:
            report["rollout_vllm"] = bench_vllm_generate(
                tmp,
                batches=batches,
                prompt_len=plen,
                gen_tokens=gen_t,
                seed=seed,
                vocab=vocab,
                gpu_memory_utilization=0.6,
            )
        except Exception as e:  # report, do not lose the figures already measured
            report["rollout_vllm"] = {"available": False, "reason": f"{type(e).__name__}: {e}"}
    return report


def add_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--small", action="store_true", help="tiny config and sizes (CPU smoke test)")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--batch-size", type=int, default=None, help="training batch (default 8)")
    p.add_argument("--seq-len", type=int, default=None, help="training sequence (default 2048)")
    p.add_argument("--steps", type=int, default=None, help="timed training steps (default 10)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 3)")
    p.add_argument(
        "--gen-batch", default=None, help="comma-separated rollout batch sizes (default 64,256)"
    )
    p.add_argument("--prompt-len", type=int, default=None, help="rollout prompt tokens (512)")
    p.add_argument("--gen-tokens", type=int, default=None, help="new tokens per row (128)")
    p.add_argument("--no-vllm", action="store_true", help="skip the vLLM measurement")
    p.add_argument("--peak-tflops", type=float, default=None, help="override the bf16 peak")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print the report as one JSON line")


def cmd_bench_gpu(args: argparse.Namespace) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    report = bench_gpu(
        small=args.small,
        device=args.device,
        batch_size=args.batch_size,
        seq_len=args.seq_len,
        steps=args.steps,
        warmup=args.warmup,
        gen_batches=[int(x) for x in args.gen_batch.split(",")] if args.gen_batch else None,
        prompt_len=args.prompt_len,
        gen_tokens=args.gen_tokens,
        vllm=not args.no_vllm,
        peak_tflops=args.peak_tflops,
        seed=args.seed,
    )
    print(json.dumps(report) if args.json else json.dumps(report, indent=2))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m agentgym.benchmarks.gpu`` = ``agentgym bench gpu``."""
    p = argparse.ArgumentParser(
        prog="python -m agentgym.benchmarks.gpu",
        description="Training tokens/s, MFU and rollout tokens/s of a Qwen2-0.5B-shaped model.",
    )
    add_flags(p)
    return cmd_bench_gpu(p.parse_args(argv))


def add_cli(sub: Any, groups: dict[str, Any]) -> None:
    from agentgym.benchmarks.cli import bench_parsers

    bench = bench_parsers(sub, groups)
    p = bench.add_parser(
        "gpu",
        help="training tokens/s, MFU and rollout tokens/s of a Qwen2-0.5B-shaped model",
    )
    add_flags(p)
    p.set_defaults(func=cmd_bench_gpu)


if __name__ == "__main__":
    sys.exit(main())
