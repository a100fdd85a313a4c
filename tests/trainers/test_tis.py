"""Train/inference mismatch: the per-token TIS rule by hand, the clip term with and without it,
and the learner's first-pass scoring on real rollouts (the HF engine, and the same rollouts with
their behaviour log-probs shifted as an inference engine's would be)."""

from __future__ import annotations

import copy
import dataclasses
import math
import random

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from test_terms import _by_hand, _run, _samples, tiny  # noqa: E402,F401  (tiny Qwen2 fixture)
from test_train import _small, tiny_model  # noqa: E402,F401  (tiny model + Signs env)

from agentgym.trainers.config import ConfigError, TrainConfig  # noqa: E402
from agentgym.trainers.losses import PPOConfig, ppo_clip_loss  # noqa: E402
from agentgym.trainers.terms import ClipTerm, default_terms  # noqa: E402
from agentgym.trainers.tis import tis_weights  # noqa: E402


def test_tis_weight_cap_and_mask_by_hand():
    ratios = [1.0, 2.0, 3.0, 0.5, 0.1, 10.0]
    trainer = torch.tensor([math.log(r) for r in ratios], dtype=torch.float64)
    behaviour = torch.zeros(6, dtype=torch.float64)
    w, capped, masked = tis_weights(trainer, behaviour, cap=2.5, mask=5.0)
    # min(r, 2.5), and 0 where r is outside [0.2, 5]
    assert w.tolist() == pytest.approx([1.0, 2.0, 2.5, 0.5, 0.0, 0.0], abs=1e-12)
    assert capped.tolist() == [0.0, 0.0, 1.0, 0.0, 0.0, 1.0]
    assert masked.tolist() == [0.0, 0.0, 0.0, 0.0, 1.0, 1.0]
    w, capped, masked = tis_weights(trainer, behaviour, cap=None, mask=None)  # plain IS
    assert w.tolist() == pytest.approx(ratios, abs=1e-12)
    assert capped.sum() == masked.sum() == 0
    w, _, _ = tis_weights(trainer, behaviour, cap=2.5, mask=None)
    assert w.tolist() == pytest.approx([1.0, 2.0, 2.5, 0.5, 0.1, 2.5], abs=1e-12)


def _scored(model, seed=0):
    """Samples whose trainer log-probs differ from their behaviour log-probs (by up to +-1.5)."""
    rng = random.Random(seed + 1)
    out = []
    for s in _samples(model, n=6, seed=seed):
        shift = tuple(x + rng.uniform(-1.5, 1.5) for x in s.old_logprobs)
        out.append(dataclasses.replace(s, rollout_logprobs=shift))
    return out


def test_clip_term_with_tis_is_the_weighted_surrogate_against_the_trainer_logprobs(tiny):  # noqa: F811
    samples = _scored(tiny)
    cap, band = 1.5, 3.0
    stats = _run(tiny, samples, [ClipTerm(0.2, None, None, cap, band)])
    b, logp, _, _, mean = _by_hand(tiny, samples)
    pg, _ = ppo_clip_loss(logp, b["rollout_logp"], b["adv"], clip_eps=0.2)
    w, _, masked = tis_weights(b["rollout_logp"], b["old_logp"], cap=cap, mask=band)
    assert float((masked * b["mask"]).sum()) > 0  # the band is live on these tokens
    assert stats["pg_loss"] == pytest.approx(float(mean(pg * w)), rel=1e-5, abs=1e-7)


def test_switched_off_the_clip_term_is_plain_ppo_against_the_behaviour_logprobs(tiny):  # noqa: F811
    samples = _scored(tiny)
    assert default_terms(PPOConfig())[0] == ClipTerm(0.2, 3.0, None, None, None)
    stats = _run(tiny, samples, [ClipTerm(0.2, 3.0)])
    b, logp, _, _, mean = _by_hand(tiny, samples)
    pg, _ = ppo_clip_loss(logp, b["old_logp"], b["adv"], clip_eps=0.2, dual_clip=3.0)
    assert stats["pg_loss"] == pytest.approx(float(mean(pg)), rel=1e-5, abs=1e-7)
    on = _run(tiny, samples, [ClipTerm(0.2, 3.0, None, 2.0)])
    assert on["pg_loss"] != pytest.approx(stats["pg_loss"], rel=1e-3)  # the correction acts


def test_config_rejects_a_cap_below_one_in_one_line():
    for kw, said in (({"tis_cap": 0.5}, "--tis-cap 2.0"), ({"tis_mask": 1.0}, "--tis-mask 5.0")):
        with pytest.raises(ConfigError, match=said) as err:
            TrainConfig(**kw)
        assert "\n" not in str(err.value)
    assert TrainConfig(tis_cap=2.0, tis_mask=5.0).loss_config().tis_cap == 2.0


# ------------------------------------------------------------------------------------------------
# the learner's first pass on real rollouts
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def rollouts(tiny_model):  # noqa: F811
    """Episodes the HF engine played with the tiny model (behaviour log-probs: its own), in
    groups of two."""
    from agentgym.pool import EnvPool
    from agentgym.rollout import rollout
    from agentgym.trainers.hf_policy import HFPolicy, load_model

    model, tok = load_model(tiny_model, device="cpu")
    cfg = _small("unused", tiny_model)
    policy = HFPolicy(
        model, tok, seed=0, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature
    )
    with EnvPool(cfg.env, 4, backend="sync", env_kwargs=cfg.env_kwargs) as pool:
        trajs = rollout(pool, policy, num_groups=4, group_size=2, seed=0, history_len=1)
    # The untrained model rarely wins: give each group one winner so advantages are live.
    out = []
    for i, t in enumerate(sorted(trajs, key=lambda t: t.id)):
        last = dataclasses.replace(t.turns[-1], reward=float(i % 2))
        out.append(dataclasses.replace(t, turns=[*t.turns[:-1], last]))
    return out


def _learn(tiny_model, episodes, **kw):  # noqa: F811
    """One :meth:`Learner.learn` from the tiny model's weights; its loss statistics."""
    from agentgym.trainers.distributed import DistContext
    from agentgym.trainers.hf_policy import load_model
    from agentgym.trainers.learner import Learner
    from agentgym.trainers.losses import make_optimizer

    cfg = _small("unused", tiny_model, algo="grpo", kl_coef=0.0, entropy_coef=0.0, **kw)
    model, tok = load_model(tiny_model, device="cpu")
    opt = make_optimizer(model, lr=cfg.lr)
    learner = Learner(cfg, DistContext(), model, opt, [], tok.pad_token_id, None, random.Random(0))
    return learner.learn(1, copy.deepcopy(episodes)).stats


def test_with_the_hf_engine_tis_is_a_no_op(tiny_model, rollouts):  # noqa: F811
    off = _learn(tiny_model, rollouts)
    on = _learn(tiny_model, rollouts, tis_cap=2.0, tis_mask=5.0)
    assert off["mismatch_abs"] < 1e-5  # the trainer recomputes the engine's own numbers
    assert on["tis_capped"] == on["tis_masked"] == 0.0
    assert off["pg_loss"] != 0.0  # a live loss
    for k in ("loss", "pg_loss", "clipfrac", "grad_norm"):
        assert on[k] == pytest.approx(off[k], rel=1e-4, abs=1e-7), k


def _shift(episodes, by):
    """``episodes`` with each turn's behaviour log-probs moved by ``by(episode index)``, as an
    engine with other numerics would report them; the shift's per-token counts."""
    out, tokens = [], []
    for i, t in enumerate(episodes):
        turns = []
        for u in t.turns:
            if u.tokens is not None and u.tokens.response_ids:
                lp = tuple(x + by(i) for x in u.tokens.logprobs)
                u = dataclasses.replace(u, tokens=dataclasses.replace(u.tokens, logprobs=lp))
                tokens.append((by(i), len(lp)))
            turns.append(u)
        out.append(dataclasses.replace(t, turns=turns))
    return out, tokens


def test_a_shifted_engine_is_measured_capped_and_masked(tiny_model, rollouts):  # noqa: F811
    # episode 0 mod 3: engine 3x less likely (ratio 3 > cap 2: capped); 1 mod 3: 10x more likely
    # (ratio 0.1 < 1/5: masked); 2 mod 3: exact.
    shifts = (-math.log(3.0), math.log(10.0), 0.0)
    shifted, tokens = _shift(rollouts, lambda i: shifts[i % 3])
    n = sum(c for _, c in tokens)
    want_abs = sum(abs(d) * c for d, c in tokens) / n
    want_capped = sum(c for d, c in tokens if d == shifts[0]) / n
    want_masked = sum(c for d, c in tokens if d == shifts[1]) / n
    assert want_capped > 0 and want_masked > 0

    off = _learn(tiny_model, shifted)  # measured even with the correction off
    assert off["mismatch_abs"] == pytest.approx(want_abs, abs=1e-5)
    assert off["tis_capped"] == off["tis_masked"] == 0.0
    on = _learn(tiny_model, shifted, tis_cap=2.0, tis_mask=5.0)
    assert on["mismatch_abs"] == pytest.approx(want_abs, abs=1e-5)
    assert on["tis_capped"] == pytest.approx(want_capped, abs=1e-12)
    assert on["tis_masked"] == pytest.approx(want_masked, abs=1e-12)
    # corrected, the update is the one of the engine's true numbers, weights aside: it differs
    # from the uncorrected update of the shifted records
    assert on["pg_loss"] != pytest.approx(off["pg_loss"], rel=1e-3)


def test_mismatch_is_measured_every_n_steps_without_the_correction(tmp_path, tiny_model):  # noqa: F811
    """Without TIS the extra scoring pass runs every `mismatch_every` steps only (it costs a
    forward pass); with TIS it runs every step, since the correction needs it."""
    import json

    from agentgym.trainers.train import train

    def logged(out):
        recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        return [r["step"] for r in recs if "loss/mismatch_abs" in r]

    train(_small(tmp_path / "a", tiny_model, steps=3, mismatch_every=2))
    assert logged(tmp_path / "a") == [1, 3]
    train(_small(tmp_path / "b", tiny_model, steps=2, mismatch_every=0, tis_cap=2.0))
    assert logged(tmp_path / "b") == [1, 2]
