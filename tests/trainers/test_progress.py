"""SPA progress estimator: per-turn contributions that add up to the final reward.

Toy episodes of one to three turns; each turn is ``[bos, turn-marker, action]`` with the action
either "useful" or "useless". The final reward is 0.5 if turn 0 was useful plus 0.5 if turn 2 was
useful; turn 1 never matters. Episodes of every length make the split identifiable (with one
length only, a constant could move between turns without changing any sum). A real (tiny,
randomly initialised) Qwen2 backbone is trained.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from agentgym.trainers.credit import CreditBatch, CreditConfig, compute_advantages
from agentgym.trainers.progress import ProgressConfig, ProgressEstimator, final_rewards
from agentgym.trainers.value import TurnScorer
from agentgym.trajectory import Trajectory, Turn

PAD, BOS, USEFUL, USELESS = 0, 1, 10, 11


def tiny_backbone(seed: int = 0) -> torch.nn.Module:
    from transformers import Qwen2Config, Qwen2Model

    torch.manual_seed(seed)
    cfg = Qwen2Config(
        vocab_size=16,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    return Qwen2Model(cfg)


def episode(useful: tuple[bool, ...]) -> list[tuple[int, ...]]:
    return [(BOS, 2 + t, USEFUL if u else USELESS) for t, u in enumerate(useful)]


def reward(useful: tuple[bool, ...]) -> float:
    return 0.5 * useful[0] + (0.5 * useful[2] if len(useful) > 2 else 0.0)


COMBOS = [c for n in (1, 2, 3) for c in itertools.product([False, True], repeat=n)]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def trained() -> tuple[ProgressEstimator, list[float]]:
    est = ProgressEstimator(
        TurnScorer(tiny_backbone()),
        ProgressConfig(lr=3e-3, epochs=80, episodes_per_step=14, replay=0),
        pad_id=PAD,
        seed=0,
    )
    eps = [episode(u) for u in COMBOS]
    targets = [reward(u) for u in COMBOS]
    mse0 = est.mse(eps, targets)
    stats = est.fit_on(eps, targets)
    mse1 = est.mse(eps, targets)
    return est, [mse0, stats["progress_loss_first"], stats["progress_loss"], mse1]


def test_mse_decreases(trained) -> None:
    _, (mse0, first, last, mse1) = trained
    assert mse0 > 0.1  # the zero-initialised head predicts 0 for everything
    assert last < first
    assert mse1 < 0.01 < mse0


def test_contributions_attribute_the_useful_turns(trained) -> None:
    est, _ = trained
    c = est.contributions_of([episode((True, True, True))])[0]
    assert c.shape == (3,)
    # Turns 0 and 2 carry the reward, turn 1 does not: contributions differ within the episode.
    assert c[0] > 0.35 and c[2] > 0.35
    assert abs(c[1]) < 0.1
    assert c[0] - c[1] > 0.25 and c[2] - c[1] > 0.25
    # A useful action is worth ~0.5 at turns 0 and 2 and nothing at turn 1.
    c_bad = est.contributions_of([episode((False, False, False))])[0]
    np.testing.assert_allclose(c - c_bad, [0.5, 0.0, 0.5], atol=0.12)


def test_sum_matches_final_reward(trained) -> None:
    est, _ = trained
    eps = [episode(u) for u in COMBOS]
    sums = np.array([c.sum() for c in est.contributions_of(eps)])
    np.testing.assert_allclose(sums, [reward(u) for u in COMBOS], atol=0.15)


def _traj(i: int, useful: tuple[bool, ...], group: str) -> Trajectory:
    turns = []
    for t, ids in enumerate(episode(useful)):
        turns.append(
            Turn(
                observation=f"turn {t}",
                action="useful" if useful[t] else "useless",
                reward=0.0,
                anchor="",
                valid=True,
                info={"policy": {"prompt_ids": list(ids[:2]), "response_ids": [ids[2]]}},
            )
        )
    won = reward(useful) >= 0.5
    return Trajectory(id=f"t{i}", group=group, env="toy", turns=turns, won=won)


def test_trajectories_to_spa_advantages() -> None:
    """fit(trajs) on records -> annotate a CreditBatch -> spa ranks useful turns above useless."""
    trajs = [_traj(i, u, "g0") for i, u in enumerate(COMBOS)]
    est = ProgressEstimator(
        TurnScorer(tiny_backbone(1)),
        ProgressConfig(lr=3e-3, epochs=80, episodes_per_step=14, target="return", replay=0),
        pad_id=PAD,
        seed=1,
    )
    for t, u in zip(trajs, COMBOS):  # the env pays the final reward on the last turn
        t.turns[-1].reward = reward(u)
    np.testing.assert_array_equal(final_rewards(trajs, "return"), [reward(u) for u in COMBOS])
    np.testing.assert_array_equal(final_rewards(trajs, "won"), [reward(u) >= 0.5 for u in COMBOS])
    est.fit(trajs)
    batch = est.annotate(CreditBatch.from_trajectories(trajs), trajs)
    assert len(batch.extras["progress"]) == len(trajs)
    adv = compute_advantages("spa", batch, CreditConfig(gamma=1.0, spa_beta=0.0))
    good = COMBOS.index((True, True, True))
    bad = COMBOS.index((False, True, False))
    assert adv[good][0] > adv[bad][0]
    # Within the best episode the useful turns get more credit than the irrelevant one.
    c = batch.extras["progress"][good]
    assert c[0] > c[1] + 0.2 and c[2] > c[1] + 0.2


def test_missing_token_ids_say_how_to_fix() -> None:
    t = Trajectory(id="x", group="g", env="toy", turns=[Turn(observation="o", action="a")])
    est = ProgressEstimator(TurnScorer(tiny_backbone()), ProgressConfig(), pad_id=PAD)
    with pytest.raises(ValueError, match="HFPolicy"):
        est.contributions([t])


def test_config_errors() -> None:
    with pytest.raises(ValueError, match="target"):
        ProgressConfig(target="score")
    with pytest.raises(ValueError, match="lr"):
        ProgressConfig(lr=0)
