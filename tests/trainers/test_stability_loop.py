"""The stability tools wired into `agentgym train` (docs/stability.md, "In the training loop"):
``--dynamic-sampling`` and ``--guard`` on real tiny-model runs.

The env is a one-turn coin game defined here: on an even task seed every reply scores 0 (each
such group has equal returns), on an odd one a reply of odd length scores 1 (the untrained tiny
model's varied replies make most such groups informative). So a run draws both kinds of group.
The update's input is read by wrapping :meth:`Learner.learn` (the real method still runs): the
tests check the groups the learner was given, not only what the loop logged.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from test_train import _small, tiny_model  # noqa: E402,F401  (the small runs' settings and model)

import agentgym  # noqa: E402
from agentgym.core import Env, Observation  # noqa: E402
from agentgym.trainers.learner import Learner, apply_penalty  # noqa: E402
from agentgym.trainers.train import train  # noqa: E402


class CoinEnv(Env):
    """One turn. Even task seeds: reward 0 whatever the reply; odd: 1 for a reply of odd length."""

    def __init__(self, odd_pays: bool = True) -> None:
        self.odd_pays = odd_pays  # False: every group has equal returns
        self.fair = False

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        self.fair = self.odd_pays and int(seed or 0) % 2 == 1
        obs = Observation(text="You are in room 1. Call the coin.", task="Get through the room.")
        return obs, {"task_id": f"coin-{seed}"}

    def step(self, action: str):
        reward = float(self.fair and len(action) % 2 == 1)
        obs = Observation(text="The coin lands.", task="Get through the room.")
        return obs, reward, True, False, {"won": reward > 0}


agentgym.register("test/Coin-v0", "test_stability_loop:CoinEnv", max_turns=1, override=True)


@pytest.fixture
def learned(monkeypatch: pytest.MonkeyPatch) -> dict[int, list[Any]]:
    """Step -> the episodes each ``Learner.learn`` call was given."""
    seen: dict[int, list[Any]] = {}
    real = Learner.learn

    def spy(self: Learner, step: int, mine: Any) -> Any:
        seen[step] = list(mine)
        return real(self, step, mine)

    monkeypatch.setattr(Learner, "learn", spy)
    return seen


def _records(out: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def _steps(out: Path) -> dict[int, dict[str, Any]]:
    return {r["step"]: r for r in _records(out) if "train/success" in r}


def _group_returns(trajs: list[Any], penalty: float) -> list[list[float]]:
    by: dict[str, list[float]] = defaultdict(list)
    for t in apply_penalty(trajs, penalty):
        by[t.group].append(t.return_)
    return list(by.values())


def _uniform(returns: list[float]) -> bool:
    return max(returns) - min(returns) <= 1e-8


def _dyn_cfg(out: Path, model: str, **kw: Any) -> Any:
    base: dict[str, Any] = dict(
        env="test/Coin-v0",
        env_kwargs={},
        split_kwarg=None,
        sft_episodes=0,
        algo="grpo",
        kl_coef=0.0,
        steps=2,
        groups_per_step=4,
        group_size=2,
        save_every=0,
        dynamic_max_rounds=3,
    )
    base.update(kw)
    return _small(out, model, **base)


@pytest.mark.parametrize(
    ("kw", "said"),
    [
        (dict(algo="ppo", group_size=1, dynamic_sampling=True), "--group-size 4 or --no-dynamic"),
        (dict(dynamic_max_rounds=0), "pass e.g. --dynamic-max-rounds 3"),
        (dict(guard_patience=0), "pass e.g. --guard-patience 3"),
        (dict(guard_lr_factor=1.5), "must be in (0, 1]: pass e.g. --guard-lr-factor 0.5"),
        (dict(guard_entropy_min=2.0, guard_entropy_max=1.0), "raise --guard-entropy-max"),
    ],
)
def test_stability_settings_are_checked_with_the_fix(kw: dict[str, Any], said: str) -> None:
    from agentgym.trainers.config import ConfigError, TrainConfig

    with pytest.raises(ConfigError) as e:
        TrainConfig(**kw)
    assert said in str(e.value) and "\n" not in str(e.value)
    cfg = TrainConfig(guard_entropy_max=3.0, guard_patience=2).guard_config()
    assert (cfg.entropy_min, cfg.entropy_max, cfg.patience) == (0.05, 3.0, 2)


# ------------------------------------------------------------------------------------------------
# dynamic sampling
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("staleness", [0, 1])  # 1: the refill rounds run in the async worker
def test_dynamic_sampling_keeps_only_groups_with_unequal_returns(
    tmp_path,
    tiny_model,  # noqa: F811
    learned,
    staleness,
):
    out = tmp_path / "on"
    cfg = _dyn_cfg(out, tiny_model, dynamic_sampling=True, async_staleness=staleness)
    train(cfg)
    steps = _steps(out)
    print({s: {k: v for k, v in r.items() if k.startswith("dynamic/")} for s, r in steps.items()})
    assert sorted(learned) == sorted(s for s, r in steps.items() if not r["dynamic/skipped"])
    for step, mine in learned.items():
        groups = _group_returns(mine, cfg.invalid_penalty)
        assert groups and not any(_uniform(r) for r in groups), (step, groups)
        assert steps[step]["dynamic/kept"] == len(groups)
    drawn = sum(r["dynamic/drawn"] for r in steps.values())
    kept = sum(r["dynamic/kept"] for r in steps.values())
    assert drawn > kept  # some groups were uniform and dropped ...
    assert any(r["dynamic/rounds"] > 1 for r in steps.values())  # ... and refilled
    for r in steps.values():
        assert r["dynamic/kept"] <= cfg.groups_per_step <= r["dynamic/drawn"]
        assert r["dynamic/kept_fraction"] == pytest.approx(r["dynamic/kept"] / r["dynamic/drawn"])
        assert r["train/episodes"] == r["dynamic/drawn"] * cfg.group_size  # all played count
    # trajectories.jsonl: every episode played, once, labelled; refills played new tasks
    trajs = agentgym.read_trajectories(out / "trajectories.jsonl")
    assert len(trajs) == len({t.id for t in trajs}) == drawn * cfg.group_size
    assert sum(t.meta["dynamic"] == "kept" for t in trajs) == kept * cfg.group_size
    seeds = defaultdict(set)
    for t in trajs:
        seeds[t.group].add(t.seed)
    firsts = [next(iter(s)) for s in seeds.values()]
    assert all(len(s) == 1 for s in seeds.values()) and len(set(firsts)) == len(firsts)


def test_without_dynamic_sampling_the_update_sees_uniform_groups(tmp_path, tiny_model, learned):  # noqa: F811
    out = tmp_path / "off"
    cfg = _dyn_cfg(out, tiny_model)
    train(cfg)
    steps = _steps(out)
    assert not any(k.startswith("dynamic/") for r in steps.values() for k in r)
    assert sorted(learned) == [1, 2]
    groups = [g for mine in learned.values() for g in _group_returns(mine, cfg.invalid_penalty)]
    assert len(groups) == 2 * cfg.groups_per_step and any(_uniform(r) for r in groups)


def test_dynamic_sampling_skips_the_update_when_no_group_is_informative(
    tmp_path,
    tiny_model,  # noqa: F811
    learned,
    capsys,
):
    out = tmp_path / "none"
    cfg = _dyn_cfg(
        out,
        tiny_model,
        env_kwargs={"odd_pays": False},
        steps=1,
        dynamic_sampling=True,
        dynamic_max_rounds=2,
    )
    train(cfg)
    r = _steps(out)[1]
    assert learned == {}  # no update
    assert r["dynamic/skipped"] == 1 and r["dynamic/kept"] == 0
    assert r["dynamic/drawn"] == 2 * cfg.groups_per_step and r["dynamic/rounds"] == 2
    assert not any(k.startswith("loss/") for k in r)
    assert "step 1: no group with unequal returns in 8 drawn (2 rounds); no update" in (
        capsys.readouterr().err
    )


# ------------------------------------------------------------------------------------------------
# collapse guard
# ------------------------------------------------------------------------------------------------
def _guard_cfg(out: Path, model: str, **kw: Any) -> Any:
    """Every step is bad (no entropy reaches 1e9): with patience 2 the guard waits at step 1,
    restores the start (step 0) at step 2 and waits again at step 3."""
    base: dict[str, Any] = dict(
        steps=3,
        save_every=1,
        keep_checkpoints=3,
        guard=True,
        guard_entropy_min=1e9,
        guard_invalid_max=None,
        guard_success_drop=None,
        guard_patience=2,
        guard_lr_factor=0.5,
    )
    base.update(kw)
    return _dyn_cfg(out, model, **base)


def _weights(path: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(path / "model.safetensors")


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    import torch

    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _lrs(checkpoint: Path) -> list[float]:
    import torch

    state = torch.load(checkpoint / "state.pt", weights_only=False)
    return [g["lr"] for g in state["optimizer"]["param_groups"]]


def test_collapse_guard_restores_the_last_good_weights_and_lowers_the_lr(
    tmp_path,
    tiny_model,  # noqa: F811
    capsys,
):
    out = tmp_path / "guard"
    cfg = _guard_cfg(out, tiny_model)
    report = train(cfg)
    steps = _steps(out)
    assert [steps[s]["guard/restore"] for s in (1, 2, 3)] == [0, 1, 0]
    assert "entropy" in steps[1]["guard/reason"] and "(1/2 steps)" in steps[1]["guard/reason"]
    reason = steps[2]["guard/reason"]
    assert "entropy" in reason and "< 1e+09 for 2 steps: restoring step 0" in reason
    assert "lowering the learning rate to 0.005" in reason
    assert steps[2]["guard/restored_step"] == 0
    assert [steps[s]["guard/lr"] for s in (1, 2, 3)] == [0.01, 0.005, 0.005]
    assert report["guard/restores"] == 1 and steps[3]["guard/restores"] == 1
    assert f"guard: step 2: {reason}" in capsys.readouterr().err
    # Step 2's checkpoint holds what the restore left: the start weights (the snapshot of step 0,
    # this run has no SFT), no optimizer moments yet (there were none at step 0), the lower lr.
    start = _weights(Path(tiny_model))
    ck = out / "checkpoints"
    assert not _same(_weights(ck / "step_1"), start)  # step 1 did update the weights
    assert _same(_weights(ck / "step_2"), start)
    import torch

    assert torch.load(ck / "step_2" / "state.pt", weights_only=False)["optimizer"]["state"] == {}
    assert _lrs(ck / "step_1") == [0.01] * len(_lrs(ck / "step_1"))
    assert set(_lrs(ck / "step_2")) == set(_lrs(ck / "step_3")) == {0.005}
    assert not _same(_weights(ck / "step_3"), start)  # and training went on from there


def test_without_the_guard_nothing_is_restored(tmp_path, tiny_model):  # noqa: F811
    out = tmp_path / "noguard"
    report = train(_guard_cfg(out, tiny_model, guard=False, steps=2))
    steps = _steps(out)
    assert not any(k.startswith("guard/") for r in steps.values() for k in r)
    assert report["guard/restores"] is None
    ck = out / "checkpoints"
    assert not _same(_weights(ck / "step_2"), _weights(Path(tiny_model)))
    assert set(_lrs(ck / "step_2")) == {0.01}


def test_resume_keeps_the_guard_state(tmp_path, tiny_model, capsys):  # noqa: F811
    """Step 1 is the first bad step of two; the resumed run's step 2 is the second: the guard's
    streak came through the checkpoint, so it restores (a fresh guard would wait)."""
    out = tmp_path / "resume"
    train(_guard_cfg(out, tiny_model, steps=1))
    assert _steps(out)[1]["guard/bad_streak"] == 1
    report = train(_guard_cfg(out, tiny_model, steps=2, resume=True))
    assert report["resumed_from"] == 1 and report["guard/restores"] == 1
    r = _steps(out)[2]
    assert r["guard/restore"] == 1 and r["guard/restored_step"] == 1
    # the weights kept in memory after a resume are the checkpoint's (noted in the reason)
    assert "the weights kept are step 1's: resumed from it" in r["guard/reason"]
    assert "guard: step 2:" in capsys.readouterr().err
    ck = out / "checkpoints"
    assert _same(_weights(ck / "step_2"), _weights(ck / "step_1"))
    assert set(_lrs(ck / "step_2")) == {0.005}


# ------------------------------------------------------------------------------------------------
# under torchrun
# ------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_dynamic_sampling_and_guard_under_torchrun(tmp_path: Path) -> None:
    """Two gloo ranks, each filling its own share of groups with its own refill rounds (ranks may
    use different numbers of rounds), and the guard deciding alike on every rank: the run
    completes, the metrics add up over ranks and every episode is written once."""
    import shlex

    from test_distributed import _torchrun

    out = tmp_path / "run"
    flags = shlex.split(
        "--env test/Coin-v0 --env-modules test_stability_loop --split-kwarg none --num-envs 2 "
        "--backend sync --tiny-hidden-size 32 --tiny-vocab-size 320 --corpus-episodes 4 "
        "--sft-episodes 0 --steps 2 --groups-per-step 4 --group-size 2 --max-new-tokens 6 "
        "--eval-episodes 2 --eval-every 0 --save-every 1 --minibatch-size 8 --micro-batch-size 4 "
        "--algo grpo --lr 1e-2 --dynamic-sampling --guard --guard-entropy-min 1e9 "
        "--guard-invalid-max none --guard-success-drop none --guard-patience 2 "
        "--json --no-progress --no-tensorboard"
    )
    res = _torchrun(
        ["-m", "agentgym.cli", "train", "--out", str(out), *flags], cwd=tmp_path, timeout=600
    )
    assert res.returncode == 0, res.stderr[-5000:]
    steps = _steps(out)
    assert sorted(steps) == [1, 2]
    for r in steps.values():
        assert r["dynamic/kept"] <= 4 <= r["dynamic/drawn"]
        assert r["train/episodes"] == 2 * r["dynamic/drawn"]
    assert [steps[s]["guard/restore"] for s in (1, 2)] == [0, 1]
    assert steps[2]["guard/lr"] == pytest.approx(5e-3)
    report = json.loads(res.stdout.strip().splitlines()[-1])
    assert report["guard/restores"] == 1
    trajs = agentgym.read_trajectories(out / "trajectories.jsonl")
    drawn = sum(r["dynamic/drawn"] for r in steps.values())
    assert len(trajs) == len({t.id for t in trajs}) == 2 * drawn
    assert len({t.seed for t in trajs}) == drawn  # one task seed per group, none shared


def test_turn_weight_episode_gives_every_episode_one_episode_weight() -> None:
    """``--turn-weight episode``: a group's episode advantages (zero mean over its episodes)
    also have zero mean over its turns once each turn is scaled by mean turns / its episode's
    turns; weighting every turn once leaves the long failed episode dominating."""
    from agentgym.trainers.learner import learnable_turns, samples_of
    from agentgym.trajectory import TokenRecord, Trajectory, Turn

    def episode(name: str, turns: int, won: bool) -> Trajectory:
        tok = TokenRecord((1, 2), (3, 4), (-0.1, -0.2))
        return Trajectory(
            id=name,
            group="g",
            env="test",
            turns=[Turn(observation="o", action="a", tokens=tok) for _ in range(turns)],
            won=won,
        )

    trajs = [episode("win", 2, True), episode("lose", 8, False)]
    advantages = [[1.0] * 2, [-1.0] * 8]  # the episode advantage on every turn
    assert learnable_turns(trajs) == 5.0
    plain = samples_of(trajs, advantages)
    assert [s.advantage for s in plain] == [1.0] * 2 + [-1.0] * 8
    assert sum(s.advantage for s in plain) == -6.0  # turn-weighted: failure dominates
    even = samples_of(trajs, advantages, turn_weight="episode")
    assert [s.advantage for s in even] == [2.5] * 2 + [-0.625] * 8
    assert sum(s.advantage for s in even) == pytest.approx(0.0)
    assert [(s.traj, s.turn) for s in even] == [
        (t.id, k) for t in trajs for k in range(len(t.turns))
    ]
    # the mean over all ranks' episodes, when given, sets the scale
    assert (
        samples_of(trajs[:1], advantages[:1], turn_weight="episode", mean_turns=5.0)[0].advantage
        == 2.5
    )
