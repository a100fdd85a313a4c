"""The update's batching (left-padded rows, response-position logits, length-bucketed token-budget
micro-batches, the last layer on response positions only) gives the previous update's numbers;
``agentgym bench update`` measures it against that update in the same run."""

from __future__ import annotations

import copy
import json
import math
import random

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from agentgym.benchmarks.update import baseline_update, build_model, make_samples  # noqa: E402
from agentgym.cli import main  # noqa: E402
from agentgym.trainers import losses  # noqa: E402
from agentgym.trainers.config import TrainConfig  # noqa: E402
from agentgym.trainers.losses import (  # noqa: E402
    PPOConfig,
    _prunable,
    collate,
    make_optimizer,
    micro_batches,
    ppo_update,
    token_logprobs,
)
from agentgym.trainers.terms import default_terms  # noqa: E402

STATS = ("loss", "pg_loss", "kl", "entropy", "clipfrac", "ratio_max")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model():
    return build_model("tiny", layers=2)


def _data(model, n=24):
    """Mixed prompt (4..36) and reply (1..5) lengths."""
    return make_samples(model, n, prompt_tokens=20, prompt_spread=16, response_tokens=3, seed=1)


def _ref(model):
    ref = copy.deepcopy(model).eval().requires_grad_(False)
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return ref


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean"])
def test_update_equals_the_previous_update(model, agg):
    """Same statistics and the same weights after one ppo_update as the previous batching (right
    padding, logits everywhere, 4-row micro-batches in shuffled order), KL and entropy on."""
    data, ref = _data(model), _ref(model)
    kw = dict(agg=agg, kl_coef=0.1, entropy_coef=0.01, minibatch_size=12, micro_batch_size=4)
    kw.update(bf16=False, ppo_epochs=2)
    old_cfg, new_cfg = PPOConfig(**kw), PPOConfig(**kw, micro_batch_tokens=150)
    out = {}
    for name, cfg in (("old", old_cfg), ("new", new_cfg)):
        m = copy.deepcopy(model)
        opt = make_optimizer(m, lr=1e-4)
        terms = default_terms(cfg, ref_model=ref)
        update = baseline_update if name == "old" else ppo_update
        stats = update(m, opt, data, cfg, pad_id=0, rng=random.Random(3), terms=terms)
        out[name] = (stats, m)
    (so, mo), (sn, mn) = out["old"], out["new"]
    assert sn["optimizer_steps"] == so["optimizer_steps"] == 4
    assert so["kl"] > 0 and so["entropy"] > 0
    for k in STATS:
        assert sn[k] == pytest.approx(so[k], abs=1e-5, rel=1e-5), k
    for (name, a), b in zip(mo.named_parameters(), mn.parameters()):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5, msg=name)
    moved = max(
        float((a - b).detach().abs().max()) for a, b in zip(model.parameters(), mn.parameters())
    )
    assert moved > 1e-5  # the update did change the weights


def test_logprobs_of_left_padded_rows_equal_each_row_alone(model):
    """A row in a padded batch scores its reply exactly as it does alone, through both paths
    (the pruned last layer, and the model's own forward with logits_to_keep)."""
    data = _data(model, 6)
    b = collate(data, pad_id=0)
    assert b["targets"].shape == b["mask"].shape == (6, max(len(s.response_ids) for s in data))
    assert b["input_ids"].shape[1] == max(len(s.prompt_ids) + len(s.response_ids) for s in data)
    eager = copy.deepcopy(model)
    eager.config._attn_implementation = "eager"
    assert _prunable(model) and not _prunable(eager)
    with torch.no_grad():
        for m in (model, eager):
            lp, ent = token_logprobs(
                m, b["input_ids"], b["attention_mask"], b["targets"], with_entropy=True
            )
            for i, s in enumerate(data):
                one = collate([s], pad_id=0)
                lp1, ent1 = token_logprobs(
                    m, one["input_ids"], one["attention_mask"], one["targets"], with_entropy=True
                )
                r = len(s.response_ids)
                torch.testing.assert_close(lp[i, -r:], lp1[0, -r:], atol=1e-5, rtol=1e-5)
                torch.testing.assert_close(ent[i, -r:], ent1[0, -r:], atol=1e-5, rtol=1e-5)


def test_last_layer_runs_on_reply_positions_only(model):
    """The pruned path feeds the last layer's MLP K+1 positions per row, not the whole row."""
    data = _data(model, 4)
    b = collate(data, pad_id=0)
    seen = []
    last = model.model.layers[-1].mlp
    handle = last.register_forward_hook(lambda mod, inp, out: seen.append(tuple(inp[0].shape)))
    try:
        with torch.no_grad():
            token_logprobs(model, b["input_ids"], b["attention_mask"], b["targets"])
    finally:
        handle.remove()
    assert seen == [(4, b["targets"].shape[1] + 1, model.config.hidden_size)]


def _prefixed(model, n=6):
    """Prompts that all start with the same 20 tokens (a system prompt), then differ."""
    return make_samples(
        model, n, prompt_tokens=30, prompt_spread=6, response_tokens=3, shared_prefix_tokens=20
    )


def test_shared_prefix_is_computed_once_and_scores_as_each_row_alone(model):
    """A prefix every row starts with runs through the first layer once (its MLP sees 20 prefix
    positions plus each row's own), and every row still scores its reply, and back-propagates,
    as it does alone."""
    data = _prefixed(model)
    b = collate(data, pad_id=0)
    width = b["input_ids"].shape[1]
    seen = []
    first = model.model.layers[0].mlp
    handle = first.register_forward_hook(lambda mod, inp, out: seen.append(tuple(inp[0].shape)))
    try:
        with torch.no_grad():
            lp, ent = token_logprobs(
                model, b["input_ids"], b["attention_mask"], b["targets"], with_entropy=True
            )
    finally:
        handle.remove()
    hidden = model.config.hidden_size
    assert seen == [(1, 20, hidden), (6, width - 20, hidden)]
    for i, s in enumerate(data):
        one = collate([s], pad_id=0)
        with torch.no_grad():
            lp1, ent1 = token_logprobs(
                model, one["input_ids"], one["attention_mask"], one["targets"], with_entropy=True
            )
        r = len(s.response_ids)
        torch.testing.assert_close(lp[i, -r:], lp1[0, -r:], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ent[i, -r:], ent1[0, -r:], atol=1e-5, rtol=1e-5)

    def grads(min_shared):
        m = copy.deepcopy(model)
        old, losses._MIN_SHARED_PREFIX = losses._MIN_SHARED_PREFIX, min_shared
        try:
            lp, _ = token_logprobs(m, b["input_ids"], b["attention_mask"], b["targets"])
            (lp * b["mask"]).sum().backward()
        finally:
            losses._MIN_SHARED_PREFIX = old
        return [p.grad for p in m.parameters()]

    for shared, alone in zip(grads(16), grads(10**9)):  # the prefix once vs in every row
        torch.testing.assert_close(shared, alone, atol=1e-5, rtol=1e-4)


def test_update_with_a_shared_prefix_equals_the_previous_update(model):
    data, ref = _prefixed(model, 16), _ref(model)
    kw = dict(kl_coef=0.1, entropy_coef=0.01, minibatch_size=8, micro_batch_size=4, bf16=False)
    out = {}
    for name, update in (("old", baseline_update), ("new", ppo_update)):
        m = copy.deepcopy(model)
        cfg = PPOConfig(**kw)
        stats = update(
            m,
            make_optimizer(m, lr=1e-4),
            data,
            cfg,
            pad_id=0,
            rng=random.Random(3),
            terms=default_terms(cfg, ref_model=ref),
        )
        out[name] = (stats, m)
    (so, mo), (sn, mn) = out["old"], out["new"]
    for k in STATS:
        assert sn[k] == pytest.approx(so[k], abs=1e-5, rel=1e-5), k
    for (name, a), b in zip(mo.named_parameters(), mn.parameters()):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5, msg=name)


def test_lora_model_takes_the_pruned_path_with_its_adapters(model):
    """A PEFT LoRA model (as the trainer wraps it) scores replies through the pruned path, and
    its log-probs and adapter gradients are those of its own forward."""
    peft = pytest.importorskip("peft")
    from agentgym.models import LORA_DEFAULTS

    lora = peft.get_peft_model(
        copy.deepcopy(model), peft.LoraConfig(task_type="CAUSAL_LM", **LORA_DEFAULTS)
    )
    with torch.no_grad():  # non-zero adapters, so they change the output
        for name, p in lora.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    data = _data(model, 5)
    b = collate(data, pad_id=0)
    seen = []
    last = lora.get_base_model().model.layers[-1].mlp
    handle = last.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].shape[1]))
    try:
        lp, _ = token_logprobs(lora, b["input_ids"], b["attention_mask"], b["targets"])
        (lp * b["mask"]).sum().backward()
    finally:
        handle.remove()
    assert seen == [b["targets"].shape[1] + 1]  # the last layer on the kept positions only
    pruned = {n: p.grad.clone() for n, p in lora.named_parameters() if p.requires_grad}
    lora.zero_grad()
    out = lora(
        input_ids=b["input_ids"],
        attention_mask=b["attention_mask"],
        position_ids=b["position_ids"],
        use_cache=False,
    ).logits[:, -b["targets"].shape[1] - 1 : -1]
    own = torch.log_softmax(out, -1).gather(-1, b["targets"][..., None])[..., 0]
    (own * b["mask"]).sum().backward()
    torch.testing.assert_close(lp * b["mask"], own * b["mask"], atol=1e-5, rtol=1e-5)
    assert pruned and all("lora_" in n for n in pruned)
    for n, p in lora.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(pruned[n], p.grad, atol=1e-5, rtol=1e-4, msg=n)


def test_micro_batches_follow_the_row_and_token_bounds(model):
    data = sorted(_data(model, 40), key=lambda s: len(s.prompt_ids) + len(s.response_ids))

    def check(rows, tokens):
        spans = micro_batches(data, PPOConfig(micro_batch_size=rows, micro_batch_tokens=tokens))
        assert spans[0][0] == 0 and spans[-1][1] == 40
        assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
        for lo, hi in spans:
            width = max(len(s.prompt_ids) + len(s.response_ids) for s in data[lo:hi])
            assert hi - lo <= rows
            assert not tokens or hi - lo == 1 or width * (hi - lo) <= tokens
        return len(spans)

    assert check(4, 0) == 10
    assert 3 < check(40, 120) < 40  # the token budget alone cuts: short rows share a span
    assert check(4, 120) >= max(10, check(40, 120))  # both bounds hold


def test_micro_batch_tokens_errors():
    with pytest.raises(ValueError, match="micro_batch_tokens=-1"):
        PPOConfig(micro_batch_tokens=-1)
    with pytest.raises(ValueError, match="--micro-batch-tokens 8192"):
        TrainConfig(micro_batch_tokens=-5)
    cfg = TrainConfig(micro_batch_size=4).loss_config()
    assert (cfg.micro_batch_size, cfg.micro_batch_tokens) == (4, 8192)


def test_bench_update_json(capsys):
    rc = main(
        ["bench", "update", "--json", "--samples", "12", "--prompt-tokens", "24"]
        + ["--prompt-spread", "8", "--repeats", "1", "--kl-coef", "0.05", "--threads", "1"]
    )
    assert rc == 0
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    s = r["shapes"]["tiny"]
    for key in ("tokens", "speedup", "max_abs_param_diff", "max_abs_stat_diff"):
        assert key in s
    for side in ("baseline", "new"):
        assert s[side]["tokens_per_s"] > 0 and s[side]["seconds"] > 0
    assert s["speedup"] == pytest.approx(
        s["new"]["tokens_per_s"] / s["baseline"]["tokens_per_s"], rel=1e-2
    )
    assert s["max_abs_param_diff"] < 1e-4 and s["max_abs_stat_diff"] < 1e-4
    assert r["torch_threads"] == 1


def test_tied_embeddings_take_a_sparse_gradient_and_adamw_is_fused(model):
    """The pruned path's embedding lookup gives the tied weight a gradient over the looked-up
    rows only (autograd adds it into the LM head's dense one); untied or frozen embeddings keep
    the dense lookup. The trainer's AdamW is the fused kernel (the bench baseline's is not)."""
    ids = torch.tensor([[3, 5, 5, 9]])
    m = copy.deepcopy(model)
    losses._embed(m, ids).sum().backward()
    grad = m.model.embed_tokens.weight.grad
    assert grad.is_sparse and set(grad.coalesce().indices()[0].tolist()) == {3, 5, 9}
    m.zero_grad()
    b = collate(_data(model, 3), pad_id=0)
    lp, _ = token_logprobs(m, b["input_ids"], b["attention_mask"], b["targets"])
    lp.sum().backward()
    assert not m.lm_head.weight.grad.is_sparse  # tied: the sum of both uses, dense
    m.model.embed_tokens.weight.requires_grad_(False)
    assert losses._embed(m, ids).grad_fn is None
    assert make_optimizer(model, lr=1e-3).defaults["fused"] is True
    assert make_optimizer(model, lr=1e-3, fused=False).defaults["fused"] is None


def _grouped(model, tasks=4, turns=6, members=3, seed=5):
    """Samples shaped like a stepwise agent run: one system prompt, a task text per task, then
    a turn-specific tail; the first turn of every member of a task has the very same prompt."""
    rng = random.Random(seed)
    vocab = model.config.vocab_size
    tok = lambda n: tuple(rng.randrange(1, vocab) for _ in range(n))  # noqa: E731
    system = tok(20)
    out = []
    for t in range(tasks):
        task = tok(24)
        first = tok(10)
        for m in range(members):
            for k in range(turns):
                prompt = system + task + (first if k == 0 else tok(8 + 3 * k))
                reply = tok(rng.randint(1, 3))
                old = tuple(-math.log(vocab) + rng.uniform(-0.2, 0.2) for _ in reply)
                adv = rng.uniform(-1, 1)
                out.append(losses.Sample(prompt, reply, old, adv, traj=f"t{t}m{m}", turn=k))
    rng.shuffle(out)
    return out


def test_arrange_puts_shared_prompts_together_and_keeps_the_bounds(model):
    data = _grouped(model)
    cfg = PPOConfig(micro_batch_size=8, micro_batch_tokens=400)
    ordered, spans = losses.arrange(data, cfg)
    assert sorted(map(id, ordered)) == sorted(map(id, data))
    assert spans[0][0] == 0 and spans[-1][1] == len(data)
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    by_length = sorted(data, key=losses._length)
    plain_cost, _ = losses._cut(by_length, cfg, True)
    cost, _ = losses._cut(ordered, cfg, True)
    assert cost < 0.95 * plain_cost  # the task's prompt is computed once per micro-batch
    shared = []
    for lo, hi in spans:
        rows = ordered[lo:hi]
        width = max(losses._length(s) for s in rows)
        assert hi - lo <= 8 and (hi - lo == 1 or width * (hi - lo) <= 400)
        if hi - lo > 1:
            shared.append(min(losses._common(rows[0], r) for r in rows[1:]))
    assert sum(p >= 44 for p in shared) >= len(shared) // 2  # system + task at least
    # a model that cannot share a prefix gets the length order
    ordered, _ = losses.arrange(data, cfg, shares_prefix=False)
    assert [losses._length(s) for s in ordered] == sorted(losses._length(s) for s in data)


def test_update_over_shared_prompts_equals_the_previous_update(model):
    data = _grouped(model, tasks=3, turns=4, members=3)
    kw = dict(minibatch_size=18, micro_batch_size=6, bf16=False, kl_coef=0.0, entropy_coef=0.01)
    out = {}
    for name in ("old", "new"):
        cfg = PPOConfig(**kw, micro_batch_tokens=0 if name == "old" else 300)
        m = copy.deepcopy(model)
        opt = make_optimizer(m, lr=1e-4)
        update = baseline_update if name == "old" else ppo_update
        terms = default_terms(cfg)
        out[name] = (update(m, opt, data, cfg, pad_id=0, rng=random.Random(4), terms=terms), m)
    (so, mo), (sn, mn) = out["old"], out["new"]
    for k in STATS:
        assert sn[k] == pytest.approx(so[k], abs=1e-5, rel=1e-5), k
    for (name, a), b in zip(mo.named_parameters(), mn.parameters()):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5, msg=name)


def test_bench_update_on_a_runs_own_samples(tmp_path, capsys):
    """`--samples-from RUN` times the update on a run's model and one RL step's real samples."""
    out = tmp_path / "run"
    rc = main(
        ["train", "--out", str(out), "--steps", "1", "--sft-episodes", "4", "--sft-epochs", "1"]
        + ["--groups-per-step", "2", "--group-size", "2", "--num-envs", "4", "--eval-episodes"]
        + ["2", "--write-trajectories", "--no-progress", "--threads", "1", "--save-every", "0"]
    )
    assert rc == 0
    capsys.readouterr()
    rc = main(["bench", "update", "--json", "--samples-from", str(out), "--repeats", "1"])
    assert rc == 0
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    s = r["shapes"]["run"]
    assert r["samples_from"] == str(out) and s["samples"] >= 2
    assert s["max_abs_stat_diff"] < 1e-4 and s["speedup"] > 0
