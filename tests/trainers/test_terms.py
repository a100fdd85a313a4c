"""Each policy-loss term alone, through the update's own path (a single-process DistContext).

The loss of :func:`accumulate_gradients` is the sum of its terms; here each term is the only one,
and its value is checked against the per-token formula computed by hand on the same tokens.
"""

from __future__ import annotations

import copy
import random

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from agentgym.trainers.distributed import DistContext  # noqa: E402
from agentgym.trainers.epo import EntropyHistory  # noqa: E402
from agentgym.trainers.losses import (  # noqa: E402
    PPOConfig,
    Sample,
    accumulate_gradients,
    aggregate,
    collate,
    kl_k3,
    ppo_clip_loss,
    ppo_update,
    token_logprobs,
)
from agentgym.trainers.terms import (  # noqa: E402
    ClipTerm,
    EntropyTerm,
    EPOTerm,
    KLTerm,
    default_terms,
)

ONE = DistContext()  # one process: every collective is the identity


@pytest.fixture(scope="module")
def tiny():
    from test_losses import tiny_qwen2  # the tiny Qwen2 of the loss tests

    return tiny_qwen2()


def _samples(model, n=6, seed=0):
    rng = random.Random(seed)
    out = []
    for i in range(n):
        prompt = tuple(rng.randrange(1, 50) for _ in range(rng.randint(2, 6)))
        resp = tuple(rng.randrange(1, 50) for _ in range(rng.randint(1, 5)))
        b = collate([Sample(prompt, resp, (0.0,) * len(resp), 0.0)], pad_id=0)
        with torch.no_grad():
            lp, _ = token_logprobs(model, b["input_ids"], b["attention_mask"], b["targets"])
        old = tuple(float(v) + rng.uniform(-0.5, 0.5) for v in lp[b["mask"] > 0])
        out.append(Sample(prompt, resp, old, rng.uniform(-2, 2), traj=f"t{i // 2}", turn=i % 2))
    return out


def _perturbed(model):
    """A reference that differs from ``model`` (so a KL term is live)."""
    ref = copy.deepcopy(model)
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return ref


def _by_hand(model, samples, ref=None):
    """Per-token log-probs, entropies, the batch and a token-mean over the whole batch."""
    b = collate(samples, pad_id=0)
    with torch.no_grad():
        logp, ent = token_logprobs(
            model, b["input_ids"], b["attention_mask"], b["targets"], with_entropy=True
        )
        ref_logp = None
        if ref is not None:
            ref_logp, _ = token_logprobs(ref, b["input_ids"], b["attention_mask"], b["targets"])
    n = float(b["mask"].sum())

    def mean(x):
        return float(aggregate(x, b["mask"], "token-mean", num_tokens=n, num_seqs=len(samples)))

    return b, logp, ent, ref_logp, mean


def _run(model, samples, terms, micro=2):
    cfg = PPOConfig(minibatch_size=len(samples), micro_batch_size=micro, bf16=False)
    model.zero_grad(set_to_none=True)
    stats = accumulate_gradients(model, samples, cfg, pad_id=0, dist=ONE, terms=terms)
    model.zero_grad(set_to_none=True)
    return stats


def test_clip_term_alone_is_the_clipped_surrogate(tiny):
    samples = _samples(tiny)
    b, logp, _, _, mean = _by_hand(tiny, samples)
    pg, clipped = ppo_clip_loss(logp, b["old_logp"], b["adv"], clip_eps=0.2, dual_clip=3.0)
    stats = _run(tiny, samples, [ClipTerm(0.2, 3.0)])
    assert stats["loss"] == pytest.approx(mean(pg), abs=1e-6)
    assert stats["pg_loss"] == pytest.approx(mean(pg), abs=1e-6)
    assert stats["clipfrac"] == pytest.approx(mean(clipped), abs=1e-6)
    assert 0 < stats["clipfrac"] < 1 and stats["kl"] == 0.0


def test_clip_higher_widens_only_the_upper_clip_in_the_training_loss(tiny):
    """TrainConfig.clip_eps_high reaches the loss: a token whose ratio is in (1.2, 1.28] with a
    positive advantage is clipped symmetrically and not with clip-higher; off (None) is PPO."""
    from agentgym.trainers.config import ConfigError, TrainConfig

    logp = torch.log(torch.tensor([1.25, 1.25, 0.7]))
    old = torch.zeros(3)
    adv = torch.tensor([1.0, -1.0, 1.0])
    sym, sym_clipped = ppo_clip_loss(logp, old, adv, clip_eps=0.2, dual_clip=None)
    hi, hi_clipped = ppo_clip_loss(logp, old, adv, clip_eps=0.2, clip_eps_high=0.28)
    assert sym[0] == pytest.approx(-1.2) and hi[0] == pytest.approx(-1.25)
    assert sym_clipped[0] == 1 and hi_clipped[0] == 0
    assert torch.equal(sym[1:], hi[1:])  # negative advantage and the lower clip: unchanged
    cfg = TrainConfig(clip_eps_high=0.28)
    assert cfg.loss_config().clip_eps_high == 0.28
    assert TrainConfig().loss_config().clip_eps_high is None
    samples = _samples(tiny)
    on = _run(tiny, samples, default_terms(cfg.loss_config()))
    off = _run(tiny, samples, [ClipTerm(0.2, 3.0)])
    assert on["clipfrac"] <= off["clipfrac"]
    with pytest.raises(ConfigError, match="clip_eps_high=0.1 is below clip_eps=0.2"):
        TrainConfig(clip_eps_high=0.1)


def test_entropy_term_alone_is_minus_coef_times_entropy(tiny):
    samples = _samples(tiny)
    _, _, ent, _, mean = _by_hand(tiny, samples)
    stats = _run(tiny, samples, [EntropyTerm(0.5)], micro=4)
    assert mean(ent) > 0
    assert stats["loss"] == pytest.approx(-0.5 * mean(ent), abs=1e-6)
    assert stats["entropy"] == pytest.approx(mean(ent), abs=1e-6)


def test_kl_term_alone_is_coef_times_k3_and_zero_against_itself(tiny):
    samples = _samples(tiny)
    ref = _perturbed(tiny)
    _, logp, _, ref_logp, mean = _by_hand(tiny, samples, ref)
    stats = _run(tiny, samples, [KLTerm(2.0, ref)], micro=3)
    assert mean(kl_k3(logp, ref_logp)) > 0
    assert stats["kl"] == pytest.approx(mean(kl_k3(logp, ref_logp)), abs=1e-6)
    assert stats["loss"] == pytest.approx(2.0 * stats["kl"], abs=1e-6)
    assert _run(tiny, samples, [KLTerm(2.0, copy.deepcopy(tiny))])["kl"] == pytest.approx(0.0)


def test_epo_term_alone_penalises_leaving_the_band_and_feeds_the_history(tiny):
    samples = _samples(tiny)
    hist = EntropyHistory()
    hist.update({0: 50.0, 1: 50.0})  # far above the policy's entropy: every turn is out of band
    term = EPOTerm(hist, entropy_coef=0.0, smooth_coef=1.0)
    stats = _run(tiny, samples, [term])
    assert stats["epo_smooth_penalty"] > 0.5 and stats["loss"] == pytest.approx(
        stats["epo_smooth_penalty"], rel=1e-5
    )
    assert stats["epo_traj_entropy"] > 0
    term.finish(ONE)  # the measured entropies enter the running mean
    assert hist.get(0) < 50.0 and hist.get(1) < 50.0
    # a history at the policy's own entropy: no penalty, only the trajectory bonus
    _, _, ent, _, _ = _by_hand(tiny, samples)
    bonus = EPOTerm(EntropyHistory(), entropy_coef=1.0, smooth_coef=1.0)
    s2 = _run(tiny, samples, [bonus])
    assert s2["epo_smooth_penalty"] == 0.0
    assert s2["loss"] == pytest.approx(-s2["epo_traj_entropy"], rel=1e-5)


def test_the_loss_is_the_sum_of_its_terms(tiny):
    samples = _samples(tiny)
    ref = _perturbed(tiny)
    parts = [ClipTerm(0.2, None), EntropyTerm(0.1), KLTerm(0.3, ref)]
    each = sum(_run(tiny, samples, [t])["loss"] for t in parts)
    assert _run(tiny, samples, parts)["loss"] == pytest.approx(each, abs=1e-5)
    cfg = PPOConfig(clip_eps=0.2, dual_clip=None, entropy_coef=0.1, kl_coef=0.3)
    names = [type(t).__name__ for t in default_terms(cfg, ref_model=ref)]
    assert names == ["ClipTerm", "EntropyTerm", "KLTerm"]
    # the update without dist= is the one-process DistContext's
    m1, m2 = copy.deepcopy(tiny), copy.deepcopy(tiny)
    kw = dict(pad_id=0, ref_model=ref)
    cfg = PPOConfig(minibatch_size=3, micro_batch_size=2, kl_coef=0.3, bf16=False)
    a = ppo_update(m1, torch.optim.SGD(m1.parameters(), lr=0.1), samples, cfg, **kw)
    b = ppo_update(m2, torch.optim.SGD(m2.parameters(), lr=0.1), samples, cfg, dist=ONE, **kw)
    assert a == b
