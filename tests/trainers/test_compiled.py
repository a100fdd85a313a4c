"""``--compile``: the decoder layers compiled for the update's passes only."""

from __future__ import annotations

import contextlib
import copy
import json
import random
import shutil

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from agentgym.compiled import CompiledLayers, decoder_layers  # noqa: E402

pytestmark = [
    pytest.mark.usefixtures("one_torch_thread"),
    pytest.mark.skipif(shutil.which("g++") is None, reason="torch.compile on a CPU needs g++"),
]


def _update(model, samples, compiled):
    import torch

    from agentgym.trainers.losses import PPOConfig, ppo_update

    m = copy.deepcopy(model)
    # plain SGD: the weights move by the gradients themselves (Adam's first steps move each
    # weight by about lr * sign(gradient), which turns rounding noise into whole steps)
    opt = torch.optim.SGD(m.parameters(), lr=0.5)
    cfg = PPOConfig(minibatch_size=4, micro_batch_size=2, bf16=False)
    ctx = CompiledLayers(m).active() if compiled is not None else contextlib.nullcontext()
    with ctx:
        stats = ppo_update(m, opt, samples, cfg, pad_id=0, rng=random.Random(0))
    return m, stats


def test_compiled_update_matches_eager_and_leaves_the_model_plain():
    """The same update compiled and eager: the same loss and, after two optimizer steps on
    micro-batches of different widths, the same weights; outside the context the layers are the
    plain modules again."""
    import torch

    from agentgym.benchmarks.update import build_model, make_samples

    model = build_model("tiny", layers=2)
    samples = make_samples(model, 8, prompt_tokens=20, prompt_spread=8, response_tokens=4, seed=0)
    eager, s_eager = _update(model, samples, None)
    compiled, s_comp = _update(model, samples, True)
    assert s_comp["loss"] == pytest.approx(s_eager["loss"], rel=1e-4, abs=1e-6)
    assert s_comp["optimizer_steps"] == s_eager["optimizer_steps"] == 2
    moved = 0
    for (name, a), b, w0 in zip(
        eager.named_parameters(), compiled.parameters(), model.parameters()
    ):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=name)
        moved += int(not torch.equal(a, w0))
    assert moved > 0  # the update changed the weights: the comparison is not of untouched ones
    layers = decoder_layers(compiled)
    assert len(layers) == 2 and all("forward" not in layer.__dict__ for layer in layers)
    copy.deepcopy(compiled)  # a plain module again: it copies


def test_compile_errors_name_the_fix():
    import torch

    with pytest.raises(ValueError, match="run without --compile"):
        CompiledLayers(torch.nn.Sequential(torch.nn.Linear(2, 2)))


def test_train_with_compile_runs_the_update_compiled(tmp_path, monkeypatch):
    """``agentgym train --compile`` on the tiny model: the update runs inside the compiled
    context (counted), decoding does not, and the run finishes with its report."""
    import agentgym.compiled as compiled_mod
    from agentgym.cli import main

    entered = []
    real = compiled_mod.CompiledLayers.active

    def counting(self):
        entered.append(len(self.layers))
        return real(self)

    monkeypatch.setattr(compiled_mod.CompiledLayers, "active", counting)
    out = tmp_path / "run"
    rc = main(
        ["train", "--out", str(out), "--steps", "2", "--sft-episodes", "2", "--compile"]
        + ["--groups-per-step", "2", "--group-size", "2", "--eval-episodes", "2"]
        + ["--eval-every", "0", "--save-every", "0", "--no-progress", "--threads", "1"]
    )
    assert rc == 0
    assert len(entered) == 2 and entered[0] > 0  # one compiled update per RL step
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss/loss"] for r in recs if "loss/loss" in r]
    assert len(losses) == 2 and all(x == x for x in losses)  # finite, not NaN
    assert json.loads((out / "config.json").read_text())["compile"] is True
