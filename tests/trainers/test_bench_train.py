"""``agentgym bench train``: update tokens/s and the fraction of a same-run matmul peak."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from agentgym.benchmarks.train import bench_train  # noqa: E402
from agentgym.cli import main  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_bench_train_json_reports_sane_fractions(capsys):
    rc = main(
        ["bench", "train", "--json", "--shapes", "tiny", "--samples", "8", "--repeats", "1"]
        + ["--prompt-tokens", "24", "--prompt-spread", "8", "--minibatch-size", "4"]
        + ["--micro-batch-size", "4", "--threads", "1", "--modes", "full,lora,lora_peft"]
    )
    assert rc == 0
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert r["torch_threads"] == 1
    cases = {c["mode"]: c for c in r["cases"]}
    assert set(cases) == {"full", "lora", "lora_peft"}
    assert all(c["shape"] == "tiny" for c in r["cases"])
    for c in cases.values():
        assert c["tokens_per_s"] > 0 and c["seconds"] > 0 and c["executed_gflop"] > 0
        assert len(c["peak_shapes"]) == 3
        assert c["peak_gflop_per_s"] == max(c["peak_shapes"].values())
        assert 0 < c["fraction"] <= c["fraction_best"] < 1.5 and 0 < c["model_fraction"] < 1.5
        assert c["fraction"] == pytest.approx(
            c["executed_gflop_per_s"] / c["peak_gflop_per_s"], rel=2e-2
        )
        # attention's products are part of the count, and reported on their own
        assert 0 < c["attention_gflop"] < c["executed_gflop"]
        assert 0 < c["fraction_without_attention"] < c["fraction"]
    full, lora = cases["full"], cases["lora"]
    assert full["trainable_params"] == full["params"]
    assert 0 < lora["trainable_params"] < lora["params"] / 2
    # LoRA's frozen weights take no weight gradient, and its model runs the unpruned forward:
    # the counted FLOPs differ from full fine-tuning's, so they are counted, not assumed.
    assert lora["executed_gflop"] != full["executed_gflop"]
    # the fused LoRA layers against peft's own, the same adapters, in the same run
    peft_lora = cases["lora_peft"]
    assert peft_lora["trainable_params"] == lora["trainable_params"]
    assert r["lora_fused_speedup"] == {
        "tiny": pytest.approx(peft_lora["seconds"] / lora["seconds"], rel=1e-2)
    }


def test_bench_train_errors():
    with pytest.raises(ValueError, match="unknown shapes or modes"):
        bench_train(["huge"])
    with pytest.raises(ValueError, match="unknown shapes or modes"):
        bench_train(["tiny"], ["qlora"])


def test_cpu_attention_products_are_counted_as_torch_counts_gpu_kernels():
    """SDPA on a CPU runs a kernel torch's FLOP counter has no formula for; the benchmark's
    formulas count it: forward 4 b h s^2 d (scores, scores @ V), backward 10 b h s^2 d (the
    recomputed scores and four gradient products), with a padding mask as the trainer passes."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from agentgym.benchmarks.train import _cpu_attention_formulas

    b, h, s, d = 2, 4, 16, 8
    q, k, v = (torch.randn(b, h, s, d, requires_grad=True) for _ in range(3))
    mask = torch.ones(s, s, dtype=torch.bool).tril()
    with FlopCounterMode(display=False, custom_mapping=_cpu_attention_formulas()) as counter:
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        out.sum().backward()
    assert counter.get_total_flops() == 14 * b * h * s * s * d
