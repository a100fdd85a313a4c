"""Turn-level PPO critic: clipped value loss, fitting returns, GAE from its values, and turn
advantages seeding token advantages."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from agentgym.trainers.credit import CreditBatch, CreditConfig, compute_advantages, turn_returns
from agentgym.trainers.losses import Sample, collate
from agentgym.trainers.value import (
    TurnCritic,
    TurnScorer,
    ValueConfig,
    clipped_value_loss,
    collate_sequences,
    token_advantages,
)
from agentgym.trajectory import Trajectory, Turn

PAD = 0


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_backbone(seed: int = 0) -> torch.nn.Module:
    from transformers import Qwen2Config, Qwen2Model

    torch.manual_seed(seed)
    return Qwen2Model(
        Qwen2Config(
            vocab_size=16,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=2,
            max_position_embeddings=64,
        )
    )


def test_clipped_value_loss_by_hand() -> None:
    v = torch.tensor([1.0, 0.0, 0.5], requires_grad=True)
    old = torch.tensor([0.0, 0.0, 0.5])
    ret = torch.tensor([2.0, 1.0, 0.5])
    loss, frac = clipped_value_loss(v, old, ret, clip=0.2)
    # row 0: unclipped (1-2)^2 = 1, clipped V = 0.2 -> (0.2-2)^2 = 3.24 -> max 3.24
    # row 1: both (0-1)^2 = 1; row 2: 0
    assert float(loss.detach()) == pytest.approx(0.5 * (3.24 + 1.0 + 0.0) / 3)
    assert float(frac) == pytest.approx(1 / 3)
    loss.backward()
    # The clipped branch is active for row 0, so V gets no gradient there.
    assert v.grad[0] == 0 and v.grad[1] != 0
    plain, _ = clipped_value_loss(v.detach(), old, ret, clip=None)
    assert float(plain) == pytest.approx(0.5 * (1 + 1 + 0) / 3)


def test_scorer_reads_the_last_real_token_whatever_the_padding() -> None:
    s = TurnScorer(tiny_backbone())
    torch.nn.init.normal_(s.head.weight)
    seqs = [(1, 2, 3), (4, 5), (6,)]
    ids, att = collate_sequences(seqs, PAD)
    right = s(ids, att)
    alone = torch.stack([s(*collate_sequences([q], PAD)) for q in seqs]).squeeze(-1)
    torch.testing.assert_close(right, alone, atol=1e-5, rtol=1e-5)
    # Left padding gives the same scores (the head reads the last REAL token).
    left_ids = torch.full_like(ids, PAD)
    left_att = torch.zeros_like(att)
    for i, q in enumerate(seqs):
        left_ids[i, ids.shape[1] - len(q) :] = torch.tensor(q)
        left_att[i, ids.shape[1] - len(q) :] = 1
    pos_free = s(left_ids, left_att)
    assert pos_free.shape == (3,)
    assert torch.isfinite(pos_free).all()


def _traj(i: int, states: list[int], rewards: list[float]) -> Trajectory:
    turns = [
        Turn(
            observation=f"s{x}",
            action="a",
            reward=r,
            info={
                "policy": {"prompt_ids": [1, x], "response_ids": [9, 9], "logprobs": [-1.0, -1.0]}
            },
        )
        for x, r in zip(states, rewards)
    ]
    return Trajectory(id=f"t{i}", group="g", env="toy", turns=turns, won=rewards[-1] > 0)


def test_value_head_fits_returns() -> None:
    # State token 3 leads to reward 1 at the end, state 4 to 0; returns differ per turn.
    trajs = [
        _traj(0, [2, 3, 5], [0.0, 0.0, 1.0]),
        _traj(1, [2, 4, 6], [0.0, 0.0, 0.0]),
        _traj(2, [2, 3, 5], [0.0, 0.0, 1.0]),
    ]
    critic = TurnCritic(
        TurnScorer(tiny_backbone()),
        ValueConfig(lr=3e-3, epochs=10, minibatch_size=9, clip=0.5),
        pad_id=PAD,
    )
    cfg = CreditConfig(gamma=1.0, lam=1.0)
    batch = CreditBatch.from_trajectories(trajs)
    targets = [np.cumsum(r[::-1])[::-1] for r in batch.rewards]  # Monte-Carlo returns
    v0 = critic.values(trajs)
    assert all(np.allclose(v, 0.0) for v in v0)  # the head starts at 0
    first = last = None
    for _ in range(8):  # PPO iterations: old values refreshed each time, as in training
        old = critic.values(trajs)
        stats = critic.update(trajs, targets, old)
        first = stats["value_loss"] if first is None else first
        last = stats["value_loss"]
    v = critic.values(trajs)
    assert last < first
    # The first state is shared by two winning episodes and one losing one: V = 2/3 there.
    expected = [[2 / 3, 1.0, 1.0], [2 / 3, 0.0, 0.0], [2 / 3, 1.0, 1.0]]
    np.testing.assert_allclose(np.concatenate(v), np.concatenate(expected), atol=0.1)
    # With the fitted critic, GAE(lam=1) advantages are the returns minus the values.
    b = batch.replace(values=v)
    adv = compute_advantages("ppo", b, cfg)
    for a, vv, r in zip(adv, v, targets):
        np.testing.assert_allclose(a, r - vv, atol=1e-9)
    for ret, a, vv in zip(turn_returns(b, cfg), adv, v):
        np.testing.assert_allclose(ret, a + vv)


def test_turn_advantages_seed_token_advantages() -> None:
    batch = CreditBatch(
        rewards=[[0.0, 0.0, 1.0], [0.0, 0.5]],
        anchors=[["", "", ""], ["", ""]],
        groups=["g", "g"],
        ids=["a", "b"],
        values=[[0.2, 0.4, 0.8], [0.1, 0.3]],
    )
    cfg = CreditConfig(gamma=0.9, lam=0.8)
    adv = compute_advantages("ppo", batch, cfg)
    # By hand, trajectory b: delta_1 = 0.5 - 0.3, delta_0 = 0 + 0.9*0.3 - 0.1; A_0 = d0 + 0.72 d1.
    d1, d0 = 0.2, 0.9 * 0.3 - 0.1
    np.testing.assert_allclose(adv[1], [d0 + 0.9 * 0.8 * d1, d1])
    lengths = [[2, 3, 1], [4, 2]]
    tok = token_advantages(adv, lengths)
    for i in range(2):
        for t, n in enumerate(lengths[i]):
            assert tok[i][t].shape == (n,)
            assert np.all(tok[i][t] == adv[i][t])
    # The trainer's Sample/collate path broadcasts the same way at the logit positions.
    samples = [
        Sample((1, 2), tuple(range(3, 3 + n)), (-1.0,) * n, float(adv[i][t]))
        for i in range(2)
        for t, n in enumerate(lengths[i])
    ]
    b = collate(samples, PAD)
    flat_tok = [x for traj in tok for turn in traj for x in turn]
    got = b["adv"][b["mask"].bool()].double().numpy()
    np.testing.assert_allclose(got, flat_tok, rtol=1e-6)
    with pytest.raises(ValueError, match="turn advantages"):
        token_advantages(adv, [[1, 1], [1, 1]])


def test_config_errors() -> None:
    with pytest.raises(ValueError, match="clip"):
        ValueConfig(clip=0.0)
    with pytest.raises(ValueError, match="lr"):
        ValueConfig(lr=-1.0)
