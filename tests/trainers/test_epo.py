"""EPO: trajectory-level entropy, the entropy-smoothing penalty (with a real gradient), the
per-turn-index history and the phase schedule."""

from __future__ import annotations

import math

import pytest
import torch

from agentgym.trainers.epo import (
    EntropyHistory,
    EPOConfig,
    band_penalty,
    epo_loss,
    per_index_means,
    phase_coefs,
    trajectory_token_weights,
    turn_mean_entropy,
)


def entropy(logits: torch.Tensor) -> torch.Tensor:
    logp = torch.log_softmax(logits, -1)
    return -(logp.exp() * logp).sum(-1)


def smooth_only(logits: torch.Tensor, mask: torch.Tensor, ref: float) -> torch.Tensor:
    refs = torch.full((logits.shape[0],), ref)
    w = torch.zeros(logits.shape[0])
    loss, _ = epo_loss(
        entropy(logits),
        mask,
        traj_weight=w,
        refs=refs,
        num_turns=logits.shape[0],
        entropy_coef=0.0,
        smooth_coef=1.0,
        k_low=0.2,
        k_high=0.2,
    )
    return loss


def test_band_penalty_values() -> None:
    ref = torch.tensor([1.0, 1.0, 1.0, 1.0, math.nan])
    h = torch.tensor([1.0, 0.85, 1.5, 0.5, 3.0])
    p = band_penalty(h, ref, 0.2, 0.2)
    # inside [0.8, 1.2] -> 0; 1.5 -> (0.3)^2; 0.5 -> (0.3)^2; no history -> 0
    torch.testing.assert_close(p, torch.tensor([0.0, 0.0, 0.09, 0.09, 0.0]))


@pytest.mark.parametrize("ref,inside", [(0.5, False), (3.0, False), (None, True)])
def test_smoothing_gradient_outside_band_only(ref, inside) -> None:
    torch.manual_seed(0)
    logits = torch.randn(4, 6, 10, requires_grad=True)
    mask = torch.ones(4, 6)
    h = float(turn_mean_entropy(entropy(logits), mask).detach().mean())
    if ref is None:
        ref = h  # every turn's entropy is close to its own mean: inside the +-20% band
        assert all(
            0.8 * ref <= float(x.detach()) <= 1.2 * ref
            for x in turn_mean_entropy(entropy(logits), mask)
        )
    loss = smooth_only(logits, mask, ref)
    loss.backward()
    gnorm = float(logits.grad.norm())
    if inside:
        assert float(loss.detach()) == 0.0 and gnorm == 0.0
    else:
        assert float(loss.detach()) > 0 and gnorm > 1e-4


@pytest.mark.parametrize("start_scale", [0.2, 4.0])  # entropy below / above the band
def test_sgd_on_smoothing_pulls_entropy_into_band(start_scale) -> None:
    torch.manual_seed(1)
    vocab = 12
    ref = 0.6 * math.log(vocab)
    # Scaled logits set the starting entropy: peaked (low) with scale 4, flat (high) with 0.2.
    logits = (torch.randn(3, 5, vocab) * start_scale).requires_grad_(True)
    mask = torch.ones(3, 5)
    h0 = turn_mean_entropy(entropy(logits), mask).detach()
    if start_scale < 1:
        assert (h0 > 1.2 * ref).all()
    else:
        assert (h0 < 0.8 * ref).all()
    opt = torch.optim.SGD([logits], lr=20.0)
    for _ in range(300):
        opt.zero_grad()
        loss = smooth_only(logits, mask, ref)
        if float(loss.detach()) == 0.0:
            break
        loss.backward()
        opt.step()
    h = turn_mean_entropy(entropy(logits), mask).detach()
    assert ((h >= 0.8 * ref - 1e-3) & (h <= 1.2 * ref + 1e-3)).all(), (h0, h, ref)


def test_trajectory_entropy_is_mean_over_trajectories_of_token_means() -> None:
    # Three turns: trajectory a has turns of 2 and 1 tokens, trajectory b one turn of 3 tokens.
    ent = torch.tensor([[1.0, 3.0, 0.0], [5.0, 0.0, 0.0], [2.0, 2.0, 2.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    w = torch.tensor(trajectory_token_weights(["a", "a", "b"], [2, 1, 3]))
    _, terms = epo_loss(
        ent,
        mask,
        traj_weight=w,
        refs=torch.full((3,), math.nan),
        num_turns=3,
        entropy_coef=1.0,
        smooth_coef=1.0,
        k_low=0.2,
        k_high=0.2,
    )
    # a: (1 + 3 + 5) / 3 = 3; b: 2 -> mean 2.5
    assert float(terms["traj_entropy"]) == pytest.approx(2.5)
    # Split into micro-batches, the shares add up to the same value.
    parts = [
        epo_loss(
            ent[s],
            mask[s],
            traj_weight=w[s],
            refs=torch.full((len(range(3)[s]),), 1.0),
            num_turns=3,
            entropy_coef=1.0,
            smooth_coef=0.0,
            k_low=0.2,
            k_high=0.2,
        )[1]
        for s in (slice(0, 1), slice(1, 3))
    ]
    assert sum(float(p["traj_entropy"]) for p in parts) == pytest.approx(2.5)


def test_entropy_bonus_gradient_raises_entropy() -> None:
    torch.manual_seed(2)
    logits = (torch.randn(2, 4, 8) * 3).requires_grad_(True)
    mask = torch.ones(2, 4)
    w = torch.tensor(trajectory_token_weights([0, 1], [4, 4]))
    h0 = float(entropy(logits).detach().mean())
    opt = torch.optim.SGD([logits], lr=1.0)
    for _ in range(20):
        opt.zero_grad()
        loss, _ = epo_loss(
            entropy(logits),
            mask,
            traj_weight=w,
            refs=torch.full((2,), math.nan),
            num_turns=2,
            entropy_coef=1.0,
            smooth_coef=0.0,
            k_low=0.2,
            k_high=0.2,
        )
        loss.backward()
        opt.step()
    assert float(entropy(logits).detach().mean()) > h0 + 0.1


def test_history_running_mean_and_ema() -> None:
    h = EntropyHistory()
    assert h.get(0) is None
    h.update({0: 2.0, 1: 4.0})
    h.update({0: 4.0})
    h.update({0: 6.0, 2: 1.0})
    assert h.get(0) == pytest.approx(4.0)  # mean of 2, 4, 6
    assert h.get(1) == pytest.approx(4.0)
    assert h.get(2) == pytest.approx(1.0)
    assert h.count == {0: 3, 1: 1, 2: 1}
    refs = h.refs([0, 3])
    assert float(refs[0]) == pytest.approx(4.0) and math.isnan(float(refs[1]))
    e = EntropyHistory(momentum=0.9)
    e.update({0: 1.0})
    e.update({0: 2.0})
    assert e.get(0) == pytest.approx(0.9 * 1.0 + 0.1 * 2.0)
    clone = EntropyHistory()
    clone.load_state_dict(h.state_dict())
    assert clone.mean == h.mean and clone.count == h.count
    assert per_index_means([1.0, 3.0, 5.0], [0, 0, 1]) == {0: 2.0, 1: 5.0}
    with pytest.raises(ValueError, match="not finite"):
        h.update({0: math.nan})


def test_phase_schedule() -> None:
    cfg = EPOConfig(
        entropy_coef=0.1,
        smooth_coef=1.0,
        phases=(0.3, 0.7),
        early_smooth_scale=0.25,
        late_entropy_scale=0.0,
    )
    lam, beta, phase = phase_coefs(1, 10, cfg)
    assert (lam, beta, phase) == (0.1, 0.25, "explore")
    lam, beta, phase = phase_coefs(6, 10, cfg)  # progress 0.5: halfway through the transition
    assert phase == "transition"
    assert lam == pytest.approx(0.05) and beta == pytest.approx(0.625)
    lam, beta, phase = phase_coefs(10, 10, cfg)
    assert (lam, beta, phase) == (0.0, 1.0, "exploit")


def test_config_errors() -> None:
    with pytest.raises(ValueError, match="k_low"):
        EPOConfig(k_low=1.0)
    with pytest.raises(ValueError, match="momentum"):
        EPOConfig(momentum=1.5)
    with pytest.raises(ValueError, match="phases"):
        EPOConfig(phases=(0.8, 0.2))
