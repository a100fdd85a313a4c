"""Hand-computed tests for the credit-assignment estimators, reward transforms and CLI.

In the style of Stable-Baselines3's tests/test_gae.py: tiny episodes whose reward arrives only on
the last turn, so every expected advantage below is worked out by hand in the comments.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from agentgym.trainers.credit import (
    ESTIMATORS,
    TRANSFORMS,
    CreditBatch,
    CreditConfig,
    apply_transforms,
    compute_advantages,
    discounted_returns,
    get_estimator,
    gigpo_components,
    register_estimator,
    spa_rewards,
    step_group_stats,
    turn_returns,
)
from agentgym.trajectory import Trajectory, Turn, write_trajectories

EPS = 1e-12  # tiny eps so the hand-computed z-scores hold to ~1e-9
SQRT3 = math.sqrt(3.0)


def batch(rewards, anchors=None, groups=None, **kw) -> CreditBatch:
    n = len(rewards)
    return CreditBatch(
        rewards=[np.asarray(r, dtype=float) for r in rewards],
        anchors=anchors if anchors is not None else [[""] * len(r) for r in rewards],
        groups=groups if groups is not None else ["g"] * n,
        ids=[f"t{i}" for i in range(n)],
        **kw,
    )


def close(got, want, tol=1e-9):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.dtype == np.float64
        np.testing.assert_allclose(g, np.asarray(w, dtype=float), rtol=0, atol=tol)


# ---------------------------------------------------------------------------------------------
# GRPO
# ---------------------------------------------------------------------------------------------


def test_grpo_last_turn_reward_sample_std():
    # Returns [1, 0, 1]: mean 2/3; sample std = sqrt(((1/3)^2 + (2/3)^2 + (1/3)^2) / 2)
    # = sqrt(1/3). A = (1/3)/sqrt(1/3) = 1/sqrt(3), (-2/3)/sqrt(1/3) = -2/sqrt(3).
    b = batch([[0, 0, 1], [0, 0, 0, 0], [0, 1]])
    adv = compute_advantages("grpo", b, CreditConfig(eps=EPS))
    close(adv, [[1 / SQRT3] * 3, [-2 / SQRT3] * 4, [1 / SQRT3] * 2])
    # Population std (ddof=0) would give sqrt(2/9) and different numbers: make sure we differ.
    pop = (1 / 3) / math.sqrt(2 / 9)
    assert abs(adv[0][0] - pop) > 0.1


def test_grpo_mean_norm_singletons_and_ties():
    b = batch(
        [[0, 1], [0, 0], [0, 0, 1], [3.0], [2.0], [2.0]],
        groups=["a", "a", "a", "solo", "tie", "tie"],
    )
    adv = compute_advantages("grpo", b, CreditConfig(norm="mean"))
    # group a returns [1, 0, 1] -> minus mean 2/3; a group of one -> 0; identical returns -> 0.
    close(adv, [[1 / 3] * 2, [-2 / 3] * 2, [1 / 3] * 3, [0.0], [0.0], [0.0]])
    adv_std = compute_advantages("grpo", b, CreditConfig())
    close(adv_std[3:], [[0.0], [0.0], [0.0]])


# ---------------------------------------------------------------------------------------------
# RLOO
# ---------------------------------------------------------------------------------------------


def test_rloo_leave_one_out():
    # Returns [1, 0, 1, 2]: A_i = R_i - mean(others):
    # 1 - (0+1+2)/3 = 0; 0 - 4/3; 1 - 3/3 = 0; 2 - 2/3 = 4/3. Group of one -> 0.
    b = batch([[0, 1], [0, 0, 0], [1], [1, 0, 1], [7.0]], groups=["g"] * 4 + ["solo"])
    adv = compute_advantages("rloo", b, CreditConfig())
    close(adv, [[0.0] * 2, [-4 / 3] * 3, [0.0], [4 / 3] * 3, [0.0]])


# ---------------------------------------------------------------------------------------------
# GiGPO
# ---------------------------------------------------------------------------------------------


def gigpo_batch() -> CreditBatch:
    # gamma = 0.5 so the discounted returns are exact binary fractions.
    return batch(
        rewards=[[0, 0, 1], [0, 0, 0], [0, 1], [5.0]],
        anchors=[["s0", "s1", "s2"], ["s0", "s1", "s1"], ["s0", ""], ["s0"]],
        groups=["g", "g", "g", "h"],  # same anchor "s0" in group h must NOT join group g's
    )


def test_gigpo_step_groups_by_hand():
    cfg = CreditConfig(gamma=0.5, omega=1.0, eps=EPS)
    ep, step = gigpo_components(gigpo_batch(), cfg)
    # Episode part: group g returns [1, 0, 1] -> [1/sqrt3, -2/sqrt3, 1/sqrt3]; h alone -> 0.
    np.testing.assert_allclose(ep, [1 / SQRT3, -2 / SQRT3, 1 / SQRT3, 0.0], atol=1e-9)
    # Discounted returns: t0 [0.25, 0.5, 1], t1 [0, 0, 0], t2 [0.5, 1].
    # Step group (g, s0) = {0.25, 0, 0.5}: mean 0.25, sample std 0.25 -> [0, -1, 1].
    # Step group (g, s1) = {0.5 (t0), 0 (t1 turn 1), 0 (t1 turn 2: repeated in one trajectory)}:
    #   mean 1/6, deviations [1/3, -1/6, -1/6], sample var (1/9+1/36+1/36)/2 = 1/12
    #   -> [2/sqrt3, -1/sqrt3, -1/sqrt3].
    # (g, s2) is a singleton -> 0; "" is never grouped -> 0; (h, s0) is a singleton -> 0.
    close(step, [[0, 2 / SQRT3, 0], [-1, -1 / SQRT3, -1 / SQRT3], [1, 0], [0]])
    adv = compute_advantages("gigpo", gigpo_batch(), cfg)
    e = 1 / SQRT3
    close(adv, [[e, e + 2 * e, e], [-2 * e - 1, -3 * e, -3 * e], [e + 1, e], [0.0]])


def test_gigpo_mean_norm_and_omega():
    cfg = CreditConfig(gamma=0.5, omega=0.5, norm="mean")
    adv = compute_advantages("gigpo", gigpo_batch(), cfg)
    # episode: [1/3, -2/3, 1/3, 0]; step (mean only): s0 [0, -0.25, 0.25], s1 [1/3, -1/6, -1/6]
    close(
        adv,
        [
            [1 / 3, 1 / 3 + 0.5 / 3, 1 / 3],
            [-2 / 3 - 0.125, -2 / 3 - 0.5 / 6, -2 / 3 - 0.5 / 6],
            [1 / 3 + 0.125, 1 / 3],
            [0.0],
        ],
    )


def test_gigpo_with_omega_zero_is_grpo():
    cfg = CreditConfig(gamma=0.5, omega=0.0)
    close(
        compute_advantages("gigpo", gigpo_batch(), cfg),
        compute_advantages("grpo", gigpo_batch(), cfg),
    )


def test_gigpo_all_anchors_distinct_or_empty_gives_only_episode_part():
    # Both first turns have anchor "" and different returns (0.95 vs 0): they must not be grouped.
    b = batch([[0, 1], [0, 0]], anchors=[["", "b"], ["", "c"]])
    _, step = gigpo_components(b, CreditConfig())
    close(step, [[0, 0], [0, 0]])


def test_step_group_stats_by_hand():
    # gigpo_batch: 9 turns; (g, s0) and (g, s1) have 3 members each (s1 twice in t1), (g, s2)
    # and (h, s0) one each, and t2's second turn has no anchor: 6 of 9 turns are in a
    # non-singleton step group, 4 step groups, 8 of 9 turns anchored.
    got = step_group_stats(gigpo_batch())
    assert got == pytest.approx(
        {
            "credit/nonsingleton_frac": 6 / 9,
            "credit/step_groups": 4.0,
            "credit/anchored_frac": 8 / 9,
        }
    )
    # The turns with a non-zero GiGPO step advantage lie in those groups (5 of the 6: t0's first
    # turn has its group's mean return, so its step advantage is 0).
    _, step = gigpo_components(gigpo_batch(), CreditConfig(gamma=0.5, eps=EPS))
    assert sum(int(np.count_nonzero(s)) for s in step) == 5
    # No anchors: nothing to group; no turns at all: zeros, not a division by zero.
    none = step_group_stats(batch([[0, 1], [1]]))
    assert none == {
        "credit/nonsingleton_frac": 0.0,
        "credit/step_groups": 0.0,
        "credit/anchored_frac": 0.0,
    }
    empty = CreditBatch(rewards=[], anchors=[], groups=[], ids=[])
    assert step_group_stats(empty)["credit/nonsingleton_frac"] == 0.0


# ---------------------------------------------------------------------------------------------
# PPO (turn-level GAE)
# ---------------------------------------------------------------------------------------------


def test_gae_three_steps_terminated_by_hand():
    # r = [0, 0, 1], V = [0.5, 0.6, 0.7], gamma 0.9, lam 0.8 (gamma*lam = 0.72), V_3 = 0:
    # delta_2 = 1 - 0.7 = 0.3; delta_1 = 0.9*0.7 - 0.6 = 0.03; delta_0 = 0.9*0.6 - 0.5 = 0.04
    # A_2 = 0.3; A_1 = 0.03 + 0.72*0.3 = 0.246; A_0 = 0.04 + 0.72*0.246 = 0.21712
    cfg = CreditConfig(gamma=0.9, lam=0.8)
    b = batch([[0, 0, 1]], values=[[0.5, 0.6, 0.7]], truncated=[False])
    close(compute_advantages("ppo", b, cfg), [[0.21712, 0.246, 0.3]])
    close(turn_returns(b, cfg), [[0.71712, 0.846, 1.0]])
    # A [T+1] value array is ignored past the end of a terminated episode.
    b1 = batch([[0, 0, 1]], values=[[0.5, 0.6, 0.7, 9.0]], truncated=[False])
    close(compute_advantages("ppo", b1, cfg), [[0.21712, 0.246, 0.3]])


def test_gae_truncated_bootstraps():
    cfg = CreditConfig(gamma=0.9, lam=0.8)
    # [T] values: bootstrap with V_{T-1} = 0.7: delta_2 = 1 + 0.63 - 0.7 = 0.93;
    # A_1 = 0.03 + 0.72*0.93 = 0.6996; A_0 = 0.04 + 0.72*0.6996 = 0.543712
    b = batch([[0, 0, 1]], values=[[0.5, 0.6, 0.7]], truncated=[True])
    close(compute_advantages("ppo", b, cfg), [[0.543712, 0.6996, 0.93]])
    # [T+1] values: bootstrap with V(s_T) = 2: delta_2 = 1 + 1.8 - 0.7 = 2.1;
    # A_1 = 0.03 + 0.72*2.1 = 1.542; A_0 = 0.04 + 0.72*1.542 = 1.15024
    b2 = batch([[0, 0, 1]], values=[[0.5, 0.6, 0.7, 2.0]], truncated=[True])
    close(compute_advantages("ppo", b2, cfg), [[1.15024, 1.542, 2.1]])


def test_gae_lambda_limits():
    r, v = [0.0, 0.0, 1.0], [0.5, 0.6, 0.7]
    b = batch([r], values=[v])
    # lam = 1: Monte-Carlo return minus value: G = [0.81, 0.9, 1] - V
    close(compute_advantages("ppo", b, CreditConfig(gamma=0.9, lam=1.0)), [[0.31, 0.3, 0.3]])
    # lam = 0: one-step TD errors
    close(compute_advantages("ppo", b, CreditConfig(gamma=0.9, lam=0.0)), [[0.04, 0.03, 0.3]])


def test_ppo_without_values_says_what_to_do():
    with pytest.raises(ValueError, match="needs per-turn value estimates"):
        compute_advantages("ppo", batch([[1.0]]), CreditConfig())


# ---------------------------------------------------------------------------------------------
# SPA
# ---------------------------------------------------------------------------------------------


def test_spa_uses_progress_and_grounding():
    c1, c2 = [0.1, 0.3, 0.6], [0.0, 0.2]
    b = batch(
        [[0, 0, 1], [0, 0]],  # env rewards: must NOT be used by SPA
        extras={"progress": [c1, c2], "valid": [[1, 0, 1], [1, 1]]},
    )
    cfg = CreditConfig(gamma=1.0, spa_beta=0.5, eps=EPS)
    r = spa_rewards(b, cfg)
    close(r, [[0.6, 0.3, 1.1], [0.5, 0.7]])
    # The per-turn rewards differ between turns of one trajectory, and c_t sums to the estimate.
    assert len(set(r[0].tolist())) == 3
    assert math.isclose(sum(c1), 1.0)
    # Return-to-go with gamma 1: [2.0, 1.4, 1.1] and [1.2, 0.7]; normalised over all 5 turns of
    # the group: mean 1.28, sample std over the pooled turns.
    pooled = np.array([2.0, 1.4, 1.1, 1.2, 0.7])
    z = (pooled - pooled.mean()) / pooled.std(ddof=1)
    adv = compute_advantages("spa", b, cfg)
    close(adv, [z[:3], z[3:]])
    assert len(set(np.round(adv[0], 9).tolist())) == 3  # turn-level, not one value per episode
    # Changing the env rewards changes nothing; changing c_t does.
    b2 = batch([[5, 5, 5], [5, 5]], extras=dict(b.extras))
    close(compute_advantages("spa", b2, cfg), adv)
    # "grounding" takes precedence over "valid".
    b3 = batch([[0, 0, 0], [0, 0]], extras={**b.extras, "grounding": [[0, 0, 0], [0, 0]]})
    close(spa_rewards(b3, cfg), [c1, c2])
    # The trainer's invalid-format penalty (extras["penalty"]) is charged to SPA's rewards too.
    b4 = batch([[0, 0, 1], [0, 0]], extras={**b.extras, "penalty": [[0, 1, 0], [0, 0]]})
    close(spa_rewards(b4, cfg), [[0.6, -0.7, 1.1], [0.5, 0.7]])


def test_spa_mean_norm_and_missing_progress():
    b = batch([[0, 1]], extras={"progress": [[0.25, 0.75]], "valid": [[1, 1]]})
    cfg = CreditConfig(gamma=1.0, spa_beta=0.0, norm="mean")
    # r = [0.25, 0.75]; R = [1.0, 0.75]; mean 0.875
    close(compute_advantages("spa", b, cfg), [[0.125, -0.125]])
    with pytest.raises(ValueError, match=r"extras\['progress'\]"):
        compute_advantages("spa", batch([[1.0]]), cfg)


# ---------------------------------------------------------------------------------------------
# Reward transforms
# ---------------------------------------------------------------------------------------------


def channel_batch() -> CreditBatch:
    return batch(
        [[0.1, 0.2, 0.0], [0.1, 0.2, 0.3], [0.5, 0.5, 0.5]],
        extras={
            "outcome": [[0, 0, 1], [0, 0, 0], [0, 0, 1]],
            "tests_run": [[1, 0, 0], [1, 1, 0], [0, 0, 0]],
            "modified": [[0, 2, 0], [0, 2, 0], [0, 2, 0]],
        },
    )


def test_gated_two_channels_is_g_ra():
    cfg = CreditConfig(gate_channels=("outcome", "reward"), gate_thresholds=(1.0,))
    b = channel_batch()
    g = apply_transforms(["gated"], b, cfg)
    # t0 and t2 reach the outcome threshold: immediate rewards count; t1 does not: only outcome.
    close(g.rewards, [[0.1, 0.2, 1.0], [0, 0, 0], [0.5, 0.5, 1.5]])
    d = apply_transforms(["direct"], b, cfg)
    close(d.rewards, [[0.1, 0.2, 1.0], [0.1, 0.2, 0.3], [0.5, 0.5, 1.5]])
    # The input is untouched and the raw rewards are kept.
    close(b.rewards, [[0.1, 0.2, 0.0], [0.1, 0.2, 0.3], [0.5, 0.5, 0.5]])
    close(g.extras["reward_raw"], b.rewards)
    # Threshold above any outcome: gate closed everywhere.
    off = apply_transforms(
        ["gated"], b, CreditConfig(gate_channels=("outcome", "reward"), gate_thresholds=(2.0,))
    )
    close(off.rewards, [[0, 0, 1], [0, 0, 0], [0, 0, 1]])
    # Then any estimator: GRPO on gated returns [1.3, 0, 2.5] (mean-norm).
    adv = compute_advantages("grpo", g, CreditConfig(norm="mean"))
    close(adv, [[1.3 - 3.8 / 3] * 3, [-3.8 / 3] * 3, [2.5 - 3.8 / 3] * 3])


def test_gated_prioritised_channels_and_weights():
    cfg = CreditConfig(
        gate_channels=("outcome", "tests_run", "modified"),
        gate_thresholds=(1.0, 1.0),
        gate_weights=(0.0, 1.0, 0.5),  # outcome acts as a pure gate
    )
    g = apply_transforms(["gated"], channel_batch(), cfg)
    # t0: outcome passes, tests_run total 1 passes -> tests_run + 0.5*modified = [1, 1, 0]
    # t1: outcome fails -> nothing counts (outcome weight 0) -> [0, 0, 0]
    # t2: outcome passes, tests_run total 0 fails -> only tests_run counts -> [0, 0, 0]
    close(g.rewards, [[1, 1, 0], [0, 0, 0], [0, 0, 0]])
    d = apply_transforms(["direct"], channel_batch(), cfg)
    close(d.rewards, [[1, 1, 0], [1, 2, 0], [0, 1, 0]])


def test_transform_errors():
    with pytest.raises(ValueError, match="unknown reward transform 'gate'.*direct, gated"):
        apply_transforms(["gate"], channel_batch(), CreditConfig())
    cfg = CreditConfig(gate_channels=("passed", "reward"))
    with pytest.raises(ValueError, match="'passed' is not in the batch.*outcome"):
        apply_transforms(["gated"], channel_batch(), cfg)


# ---------------------------------------------------------------------------------------------
# Config, registry and batch validation
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"norm": "zscore"}, "use 'std' or 'mean'"),
        ({"gamma": 1.5}, r"gamma=1.5 must be in \[0, 1\]"),
        ({"lam": -0.1}, r"lam=-0.1 must be in \[0, 1\]"),
        ({"eps": 0.0}, "small positive number"),
        ({"omega": -1.0}, "omega=-1.0 must be a finite number >= 0"),
        (
            {"gate_channels": ("a", "b", "c"), "gate_thresholds": (1.0,)},
            "one threshold per channel except the last",
        ),
        ({"gate_weights": (1.0,)}, "one weight per channel"),
        ({"gate_channels": ()}, "name at least one channel"),
        ({"gate_channels": ("a", "a"), "gate_thresholds": (1.0,)}, "repeats a channel"),
    ],
)
def test_invalid_configs_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CreditConfig(**kwargs)


def test_registry():
    assert {"grpo", "rloo", "gigpo", "ppo", "spa"} <= set(ESTIMATORS)
    assert {"gated", "direct"} <= set(TRANSFORMS)
    with pytest.raises(ValueError, match="unknown advantage estimator 'gipgo'.*gigpo, grpo"):
        get_estimator("gipgo")
    with pytest.raises(ValueError, match="already registered"):
        register_estimator("grpo")(lambda b, c: [])

    @register_estimator("test-zeros")
    def zeros(b: CreditBatch, c: CreditConfig) -> list[np.ndarray]:
        return [np.zeros(r.shape[0]) for r in b.rewards]

    try:
        close(compute_advantages("test-zeros", batch([[1, 2]]), CreditConfig()), [[0, 0]])
    finally:
        del ESTIMATORS["test-zeros"]


def test_estimator_output_is_checked():
    ESTIMATORS["test-bad"] = lambda b, c: [np.zeros(1) for _ in b.rewards]
    try:
        with pytest.raises(RuntimeError, match="returned shape"):
            compute_advantages("test-bad", batch([[1, 2]]), CreditConfig())
    finally:
        del ESTIMATORS["test-bad"]


def test_batch_validation():
    with pytest.raises(ValueError, match="2 rewards but 1 anchors"):
        batch([[0, 1]], anchors=[["a"]])
    with pytest.raises(ValueError, match="rewards of trajectory 't0' contains NaN"):
        batch([[0, float("nan")]])
    with pytest.raises(ValueError, match=r"give T=2 .* or T\+1=3"):
        batch([[0, 1]], values=[[1.0]])
    with pytest.raises(ValueError, match="groups has 1 entries for 2"):
        batch([[0], [1]], groups=["g"])
    with pytest.raises(ValueError, match=r"extras\['progress'\] of trajectory 't0' has 1 entries"):
        batch([[0, 1]], extras={"progress": [[1.0]]})


def test_empty_trajectories_and_empty_batch():
    b = batch(
        [[], [1.0], [0.0]],
        anchors=[[], ["a"], ["a"]],
        values=[[], [0.5], [0.5]],
        extras={"progress": [[], [1.0], [0.0]], "valid": [[], [1], [1]]},
    )
    for name in ("grpo", "rloo", "gigpo", "ppo", "spa"):
        adv = compute_advantages(name, b, CreditConfig())
        assert [a.shape for a in adv] == [(0,), (1,), (1,)]
    e = CreditBatch(rewards=[], anchors=[], groups=[], ids=[])
    for name in ("grpo", "rloo", "gigpo"):
        assert compute_advantages(name, e, CreditConfig()) == []


def test_discounted_returns_long_episode_is_stable():
    # gamma^-t rescaling would overflow here; the backward recursion does not.
    r = np.zeros(3000)
    r[-1] = 1.0
    (ret,) = discounted_returns([r], 0.5)
    assert ret[-1] == 1.0 and ret[-2] == 0.5 and ret[0] == 0.0 and np.all(np.isfinite(ret))


# ---------------------------------------------------------------------------------------------
# Property: invariance to the order of trajectories
# ---------------------------------------------------------------------------------------------


def random_batch(rng: np.random.Generator) -> CreditBatch:
    rewards, anchors, groups, values, prog, valid, trunc = [], [], [], [], [], [], []
    for g in range(int(rng.integers(1, 5))):
        for _ in range(int(rng.integers(1, 6))):
            t = int(rng.integers(0, 9))
            rewards.append(np.round(rng.normal(size=t), 2) * (rng.random(t) < 0.5))
            anchors.append([rng.choice(["", "a", "b", "c", "d"]) for _ in range(t)])
            groups.append(f"g{g}")
            values.append(rng.random(t + int(rng.integers(0, 2))))
            prog.append(rng.random(t))
            valid.append((rng.random(t) < 0.8).astype(float))
            trunc.append(bool(rng.random() < 0.3))
    n = len(rewards)
    return CreditBatch(
        rewards=rewards,
        anchors=anchors,
        groups=groups,
        ids=[f"id{i}" for i in range(n)],
        values=values,
        truncated=trunc,
        extras={"progress": prog, "valid": valid, "outcome": [r.clip(min=0) for r in rewards]},
    )


def permuted(b: CreditBatch, perm: np.ndarray) -> CreditBatch:
    p = perm.tolist()
    return CreditBatch(
        rewards=[b.rewards[i] for i in p],
        anchors=[b.anchors[i] for i in p],
        groups=[b.groups[i] for i in p],
        ids=[b.ids[i] for i in p],
        values=[b.values[i] for i in p] if b.values is not None else None,
        truncated=[b.truncated[i] for i in p] if b.truncated is not None else None,
        extras={k: [v[i] for i in p] for k, v in b.extras.items()},
    )


@pytest.mark.parametrize("seed", range(25))
@pytest.mark.parametrize("norm", ["std", "mean"])
def test_estimators_invariant_to_trajectory_order(seed, norm):
    rng = np.random.default_rng(seed)
    b = random_batch(rng)
    perm = rng.permutation(len(b))
    pb = permuted(b, perm)
    cfg = CreditConfig(norm=norm, gate_channels=("outcome", "reward"), gate_thresholds=(0.5,))
    for name in sorted(ESTIMATORS):
        want = compute_advantages(name, b, cfg)
        got = compute_advantages(name, pb, cfg)
        for j, i in enumerate(perm):
            np.testing.assert_allclose(got[j], want[i], rtol=1e-10, atol=1e-10, err_msg=name)
    for t in sorted(TRANSFORMS):
        want_r = apply_transforms([t], b, cfg).rewards
        got_r = apply_transforms([t], pb, cfg).rewards
        for j, i in enumerate(perm):
            np.testing.assert_allclose(got_r[j], want_r[i], rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# From trajectory records, and the CLI end to end
# ---------------------------------------------------------------------------------------------


def make_trajs() -> list[Trajectory]:
    def traj(i: int, group: str, rewards, anchors, *, won=False, truncated=False, valid=None):
        turns = [
            Turn(
                observation=f"obs {k}",
                action=f"act {k}",
                reward=r,
                anchor=a,
                valid=True if valid is None else valid[k],
                info={"progress": r / 2, "reward_channels": {"tests_run": float(k == 0)}},
            )
            for k, (r, a) in enumerate(zip(rewards, anchors))
        ]
        return Trajectory(
            id=f"ep{i}", group=group, env="test/Env-v0", turns=turns, won=won, truncated=truncated
        )

    return [
        traj(0, "task-a", [0, 0, 1], ["s0", "s1", "s2"], won=True),
        traj(1, "task-a", [0, 0, 0], ["s0", "s1", "s1"], truncated=True, valid=[True, False, True]),
        traj(2, "task-a", [0, 1], ["s0", ""], won=True),
        traj(3, "task-b", [5.0], ["s0"], won=True),
    ]


def test_from_trajectories():
    b = CreditBatch.from_trajectories(make_trajs())
    assert b.ids == ["ep0", "ep1", "ep2", "ep3"]
    assert b.groups == ["task-a", "task-a", "task-a", "task-b"]
    assert b.truncated == [False, True, False, False]
    assert b.values is None
    close(b.extras["valid"][1], [1, 0, 1])
    close(b.extras["won"], [[0, 0, 1], [0, 0, 0], [0, 1], [1]])
    close(b.extras["progress"][0], [0, 0, 0.5])
    close(b.extras["tests_run"][0], [1, 0, 0])
    cfg = CreditConfig(gamma=0.5, eps=EPS)
    close(compute_advantages("gigpo", b, cfg), compute_advantages("gigpo", gigpo_batch(), cfg))


def test_from_trajectories_channels_must_be_numbers():
    trajs = make_trajs()
    trajs[0].turns[1].info["reward_channels"] = {"tests_run": True}
    b = CreditBatch.from_trajectories(trajs)
    close(b.extras["tests_run"][0], [1, 1, 0])  # a bool counts as 1/0
    trajs[0].turns[2].info["reward_channels"] = {"outcome": "resolved"}
    with pytest.raises(ValueError, match="'outcome' has the value 'resolved'"):
        CreditBatch.from_trajectories(trajs)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run(
        [sys.executable, "-m", "agentgym.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def read_out(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_cli_credit_end_to_end(tmp_path: Path):
    src = tmp_path / "trajs.jsonl"
    write_trajectories(src, make_trajs())
    out = tmp_path / "adv.jsonl"
    p = run_cli(
        "credit",
        "--estimator",
        "gigpo",
        str(src),
        "--out",
        str(out),
        "--gamma",
        "0.5",
        "--eps",
        "1e-12",
    )
    assert p.returncode == 0, p.stderr
    rows = read_out(out)
    assert [r["id"] for r in rows] == ["ep0", "ep1", "ep2", "ep3"]
    want = compute_advantages("gigpo", gigpo_batch(), CreditConfig(gamma=0.5, eps=EPS))
    close([np.array(r["advantages"]) for r in rows], want)

    # Gated rewards with the "won" outcome gate (default channels won,reward) then mean-GRPO:
    # won: ep0, ep2, ep3 -> rewards gated open; ep1 lost -> 0. Group a returns [2, 0, 2].
    p = run_cli(
        "credit",
        "--estimator",
        "grpo",
        str(src),
        "--out",
        str(out),
        "--norm",
        "mean",
        "--transform",
        "gated",
        "--quiet",
    )
    assert p.returncode == 0, p.stderr and p.stdout == ""
    close(
        [np.array(r["advantages"]) for r in read_out(out)],
        [[2 / 3] * 3, [-4 / 3] * 3, [2 / 3] * 2, [0.0]],
    )

    # Errors are one line that names the problem; the old output file is left intact.
    p = run_cli("credit", "--estimator", "gipgo", str(src), "--out", str(out))
    assert p.returncode == 2 and "unknown advantage estimator 'gipgo'" in p.stderr
    p = run_cli("credit", "--estimator", "ppo", str(src), "--out", str(out))
    assert p.returncode == 2 and "needs per-turn value estimates" in p.stderr
    p = run_cli(
        "credit",
        "--estimator",
        "grpo",
        str(src),
        "--out",
        str(out),
        "--gate-channels",
        "won,tests_run,reward",
        "--transform",
        "gated",
    )
    assert p.returncode == 2 and "one threshold per channel" in p.stderr
    assert len(read_out(out)) == 4


def test_cli_credit_reports_each_bad_line(tmp_path: Path):
    """A garbage middle line, a JSON array line, an object that is no trajectory and invalid
    UTF-8 are each reported (line number and reason) and skipped; the exit status is non-zero
    unless --skip-bad, and the good records are still scored."""
    good = tmp_path / "good.jsonl"
    write_trajectories(good, make_trajs())
    lines = good.read_bytes().splitlines(keepends=True)
    src = tmp_path / "trajs.jsonl"
    src.write_bytes(
        lines[0]
        + b"this is not json\n"
        + lines[1]
        + b"[1, 2, 3]\n"
        + b'{"hello": "world"}\n'
        + lines[2]
        + b'{"id": "\xff\xfe"}\n'
        + b"".join(lines[3:])
    )
    out = tmp_path / "adv.jsonl"
    args = ("credit", "--estimator", "grpo", str(src), "--out", str(out), "--quiet")
    p = run_cli(*args)
    assert p.returncode == 1, p.stderr
    assert f"{src}:2: not JSON" in p.stderr
    assert f"{src}:4: a JSON list, not an object" in p.stderr
    assert f"{src}:5: not a trajectory record" in p.stderr
    assert f"{src}:7: not UTF-8" in p.stderr
    assert "Traceback" not in p.stderr and "--skip-bad" in p.stderr
    assert [r["id"] for r in read_out(out)] == ["ep0", "ep1", "ep2", "ep3"]
    p = run_cli(*args, "--skip-bad")
    assert p.returncode == 0 and p.stderr.count("skipped") == 4


def test_cli_bench_credit_json():
    p = run_cli(
        "bench",
        "credit",
        "--json",
        "--groups",
        "4",
        "--group-size",
        "4",
        "--turns",
        "10",
        "--repeats",
        "3",
    )
    assert p.returncode == 0, p.stderr
    res = json.loads(p.stdout)
    assert res["batch"]["total_turns"] == 160
    assert set(ESTIMATORS) <= set(res["median_ms"])
    assert res["gigpo_over_grpo"] > 0


def test_cli_defaults_match_credit_config():
    from agentgym.cli import build_parser
    from agentgym.trainers.credit_cli import _HELP, config_from_args

    args = build_parser().parse_args(["credit", "--estimator", "grpo", "x.jsonl", "--out", "y"])
    assert config_from_args(args) == CreditConfig()
    d = CreditConfig()
    for name, help_ in _HELP.items():  # the help text states the dataclass default
        stated = float(help_.rsplit("(default ", 1)[1].rstrip(")"))
        assert stated == getattr(d, name), name
    args = build_parser().parse_args(
        [
            "credit",
            "--estimator",
            "grpo",
            "x",
            "--out",
            "y",
            "--gamma",
            "0.5",
            "--norm",
            "mean",
            "--gate-channels",
            "won,tests_run,reward",
            "--gate-thresholds",
            "1,2",
            "--gate-weights",
            "0,1,1",
        ]
    )
    assert config_from_args(args) == CreditConfig(
        gamma=0.5,
        norm="mean",
        gate_channels=("won", "tests_run", "reward"),
        gate_thresholds=(1.0, 2.0),
        gate_weights=(0.0, 1.0, 1.0),
    )


def test_values_from_records_and_spa_critic_variant():
    trajs = make_trajs()[:1]
    for k, turn in enumerate(trajs[0].turns):
        turn.info["value"] = [0.5, 0.6, 0.7][k]
    b = CreditBatch.from_trajectories(trajs)
    cfg = CreditConfig(gamma=0.9, lam=0.8)
    close(compute_advantages("ppo", b, cfg), [[0.21712, 0.246, 0.3]])  # as in the GAE test
    # SPA rewards through the critic: r = c + beta*g = [0, 0, 0.5] + 1 = [1, 1, 1.5]
    b2 = b.replace(rewards=spa_rewards(b, CreditConfig()))
    close(b2.rewards, [[1.0, 1.0, 1.5]])
    # delta_2 = 1.5 - 0.7 = 0.8; delta_1 = 1 + 0.63 - 0.6 = 1.03; delta_0 = 1 + 0.54 - 0.5 = 1.04
    # A_2 = 0.8; A_1 = 1.03 + 0.72*0.8 = 1.606; A_0 = 1.04 + 0.72*1.606 = 2.19632
    close(compute_advantages("ppo", b2, cfg), [[2.19632, 1.606, 0.8]])


def test_learner_charges_the_format_penalty_per_malformed_turn():
    """The penalty the learner hands to SPA: --invalid-penalty on each malformed reply's turn."""
    from types import SimpleNamespace as NS

    from agentgym.trainers.learner import penalties

    trajs = [NS(turns=[NS(format_ok=True), NS(format_ok=False)]), NS(turns=[NS(format_ok=False)])]
    out = penalties(trajs, 0.5)
    close(out, [[0.0, 0.5], [0.5]])
