"""Asynchronous rollouts (``--async-staleness``) and the rollout watchdog, on real runs.

The training runs use test_train's sign-reading game and tiny model. The watchdog tests hang or
break the rollout side with real parts: an env whose reset blocks (for the whole loop), a policy
that sleeps or raises and an engine whose weight load sleeps (for the worker itself, driving the
real :func:`agentgym.rollout.rollout` over a real pool).
"""

from __future__ import annotations

import json
import math
import threading
import time
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from test_train import SignEnv, _records, _small, tiny_model  # noqa: E402,F401

import agentgym  # noqa: E402
from agentgym.pool import EnvPool  # noqa: E402
from agentgym.rollout import rollout  # noqa: E402
from agentgym.trainers.config import ConfigError, TrainConfig  # noqa: E402
from agentgym.trainers.rollout_worker import (  # noqa: E402
    HFEngine,
    RolloutError,
    RolloutTimeout,
    RolloutWorker,
)
from agentgym.trainers.train import train  # noqa: E402

#: When the hanging env started to hang (time.monotonic()), for the time-to-error checks.
HANG: dict[str, float] = {}


class HangingSignEnv(SignEnv):
    """The sign game, except that a training reset of task seed ``hang_seed`` blocks until the
    env is closed (an env server that stopped answering)."""

    def __init__(self, rooms: int = 1, split: str = "train", hang_seed: int = -1) -> None:
        super().__init__(rooms, split)
        self.split, self.hang_seed = split, hang_seed
        self._closed = threading.Event()

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        if self.split == "train" and seed == self.hang_seed:
            HANG["started"] = time.monotonic()
            self._closed.wait(600)
        return super().reset(seed=seed, options=options)

    def close(self) -> None:
        self._closed.set()


agentgym.register("test/HangingSigns-v0", "test_async:HangingSignEnv", max_turns=4, override=True)


def test_config_rules_say_the_fix() -> None:
    with pytest.raises(ConfigError, match="async_staleness=-1 must be >= 0"):
        TrainConfig(async_staleness=-1)
    with pytest.raises(ConfigError, match="--async-staleness 0 with --guard"):
        TrainConfig(async_staleness=1, guard=True)
    with pytest.raises(ConfigError, match="generate_timeout=0.0 must be > 0.*--generate-timeout"):
        TrainConfig(generate_timeout=0.0)
    with pytest.raises(ConfigError, match="use --rollout-engine hf or --rollout-engine vllm"):
        TrainConfig(rollout_engine="sglang")
    # dynamic sampling works with it: refill rounds happen inside the worker
    assert TrainConfig(async_staleness=2, dynamic_sampling=True).async_staleness == 2


def test_vllm_engine_needs_vllm_and_says_where_to_get_it() -> None:
    from agentgym.trainers.vllm_policy import vllm_unavailable_reason

    if vllm_unavailable_reason() is None:
        pytest.skip("vllm can run here")
    with pytest.raises(ConfigError) as e:
        TrainConfig(rollout_engine="vllm")
    msg = str(e.value)
    assert "\n" not in msg and "make test-vllm" in msg and ".venv-vllm" in msg
    assert "--rollout-engine hf" in msg


# ------------------------------------------------------------------------------------------------
# training runs
# ------------------------------------------------------------------------------------------------
def _trajectories(out: Path) -> list[Any]:
    return list(agentgym.read_trajectories(out / "trajectories.jsonl"))


def test_k1_trains_with_versions_at_most_one_update_old(
    tmp_path,
    tiny_model,  # noqa: F811
    one_torch_thread,
):
    out = tmp_path / "k1"
    steps = 4
    cfg = _small(out, tiny_model, steps=steps, async_staleness=1, keep_checkpoints=0, tis_cap=2.0)
    report = train(cfg)
    recs = [r for r in _records(out) if "train/success" in r]
    assert [r["step"] for r in recs] == list(range(1, steps + 1))
    for r in recs:
        assert math.isfinite(r["loss/loss"]) and r["loss/loss"] != 0.0
        assert 0.0 <= r["async/staleness"] <= 1.0
        assert r["time/wait_s"] >= 0.0
    assert recs[0]["async/staleness"] == 0.0  # step 1 plays with the starting weights
    # step 2 was collected while step 1 trained: with the weights of before that update
    assert max(r["async/staleness"] for r in recs) > 0.0
    # every turn and episode records its weights version, never more than one behind
    trajs = _trajectories(out)
    assert len(trajs) == len({t.id for t in trajs}) == steps * 2 * 2
    for t in trajs:
        step = int(t.id.split("-")[0][1:])
        version = t.meta["policy_version"]
        assert step - 2 <= version <= step - 1, (t.id, version)
        assert {u.tokens.policy_version for u in t.turns} == {version}
    assert report["success_final"] is not None
    # the update depends on the checkpoint before it and the recorded episodes only: a stale
    # step replays exactly (its behaviour log-probs are in the file, TIS rescored them)
    from agentgym.trainers.replay import format_table, replay

    stale = [r["step"] for r in recs if r["async/staleness"] > 0 and r["step"] > 1]
    result = replay(out, stale[0], rtol=1e-5, atol=1e-7)
    assert result.ok, format_table(result)
    assert {r.name: r for r in result.rows}["mismatch_abs"].logged > 0  # stale: not float noise


def test_k1_learns(tmp_path, tiny_model, one_torch_thread):  # noqa: F811
    """Learning parity, short: on a one-turn game that pays for replies of two words or more
    (WordsEnv, below), ten asynchronous steps raise the training success rate clearly (about
    0.45 -> 0.8 here; the synchronous loop does the same)."""
    out = tmp_path / "learn"
    cfg = _small(
        out,
        tiny_model,
        env="test/Words-v0",
        env_kwargs={},
        split_kwarg=None,
        steps=10,
        async_staleness=1,
        sft_episodes=0,
        groups_per_step=4,
        group_size=4,
        lr=2e-2,
        kl_coef=0.0,
        invalid_penalty=0.0,
        save_every=0,
        eval_episodes=4,
    )
    train(cfg)
    recs = [r for r in _records(out) if "train/success" in r]
    assert all(math.isfinite(r["loss/loss"]) for r in recs)
    success = [r["train/success"] for r in recs]
    first, last = sum(success[:3]) / 3, sum(success[-3:]) / 3
    assert last > first + 0.15, success


@pytest.mark.parametrize("staleness", [0, 1])
def test_hung_env_stops_the_run_in_time_and_resume_recollects(
    tmp_path,
    tiny_model,  # noqa: F811
    one_torch_thread,
    staleness,
):
    """A reset that never returns stops the run after step_timeout with an error naming it; the
    step-1 checkpoint is intact, and the resumed run discards the interrupted step's episodes
    (some were written before the hang) and plays them again: each episode is on file once."""
    out = tmp_path / "run"
    kw: dict[str, Any] = dict(
        env="test/HangingSigns-v0",
        num_envs=2,  # group 0 of step 2 ends (and is written) before group 1 resets
        steps=2,
        save_every=1,
        async_staleness=staleness,
        kl_coef=0.0,
    )
    HANG.clear()
    # task seeds of step 2 are 2 (group 0) and 3 (group 1)
    cfg = _small(out, tiny_model, env_kwargs={"rooms": 1, "hang_seed": 3}, step_timeout=2.0, **kw)
    with pytest.raises(RolloutTimeout) as e:
        train(cfg)
    waited = time.monotonic() - HANG["started"]
    msg = str(e.value)
    assert "env reset (reset_many)" in msg and "step 2" in msg and "step_timeout" in msg
    assert "\n" not in msg and "--resume" in msg
    assert 2.0 <= waited < 2.0 + 3.0, waited
    written = [t.id for t in _trajectories(out)]
    assert any(i.startswith("s2-g0") for i in written) and not any(
        i.startswith("s2-g1") for i in written
    )
    assert (out / "checkpoints" / "step_1" / "manifest.json").exists()
    assert not (out / "checkpoints" / "step_2").exists()
    report = train(_small(out, tiny_model, env_kwargs={"rooms": 1}, resume=True, **kw))
    assert report["resumed_from"] == 1
    ids = [t.id for t in _trajectories(out)]
    assert len(ids) == len(set(ids)) == 2 * 2 * 2
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps.count(2) >= 1 and sum(1 for s in steps if s == 1) >= 1


# ------------------------------------------------------------------------------------------------
# the worker on its own: a real rollout over a real pool, with policies that hang or raise
# ------------------------------------------------------------------------------------------------
class _ExpertLike:
    """A policy that reads the sign (no model): ``delay`` seconds per turn from turn ``at``
    of step ``at_step`` on, or an error there."""

    needs_expert = False
    name = "sign-reader"

    def __init__(self, *, sleep_s: float = 0.0, fail: bool = False, at_step: int = 2) -> None:
        self.sleep_s, self.fail, self.at_step = sleep_s, fail, at_step
        self.version: int | None = None

    def act(self, contexts):
        from agentgym.policies import PolicyOutput

        if self.version is not None and self.version + 1 >= self.at_step:
            if self.fail:
                raise RuntimeError("CUDA error: device-side assert triggered")
            time.sleep(self.sleep_s)
        outs = []
        for c in contexts:
            color = c.observation.text.split("take the ")[1].split(" door")[0]
            outs.append(PolicyOutput(action=f"open {color} door", response="", format_ok=True))
        return outs


def _worker(policy: Any, pool: EnvPool, **kw: Any) -> RolloutWorker:
    def collect(p, pl, step):
        return rollout(pl, p, num_groups=2, group_size=2, seed=10 * step, run_id=f"s{step}")

    args: dict[str, Any] = dict(
        first=1,
        last=3,
        staleness=0,
        generate_timeout=1.0,
        step_timeout=5.0,
        sync_timeout=1.0,
    )
    args.update(kw)
    return RolloutWorker(collect, HFEngine(policy, shared=True), pool, **args).start(None, 0)


@pytest.fixture
def pool():
    with EnvPool("test/Signs-v0", 2, backend="sync", env_kwargs={"rooms": 1}) as p:
        yield p


def test_worker_delivers_steps_in_order_with_their_version(pool) -> None:
    w = _worker(_ExpertLike(), pool)
    try:
        for step in (1, 2, 3):
            batch, waited = w.get(step)
            assert batch.step == step and batch.version == step - 1 and waited >= 0.0
            assert len(batch.got) == 4 and all(t.won for t in batch.got)
            w.publish(None, step)
    finally:
        w.close()


def test_hung_generation_is_named_within_its_timeout(pool) -> None:
    w = _worker(_ExpertLike(sleep_s=60.0), pool, generate_timeout=0.5)
    try:
        w.get(1)
        w.publish(None, 1)
        t0 = time.monotonic()
        with pytest.raises(RolloutTimeout, match=r"stuck in generation \(policy\.act\).*step 2"):
            w.get(2)
        assert time.monotonic() - t0 < 0.5 + 1.0
    finally:
        w.close(wait_s=0.0)


def test_an_error_inside_the_worker_is_raised_by_the_trainer(pool) -> None:
    w = _worker(_ExpertLike(fail=True), pool)
    try:
        w.get(1)
        w.publish(None, 1)
        with pytest.raises(RolloutError) as e:
            w.get(2)
        msg = str(e.value)
        assert msg.startswith("rollout worker failed while collecting step 2")
        assert "generation (policy.act)" in msg and "RuntimeError: CUDA error" in msg
        assert isinstance(e.value.__cause__, RuntimeError)
    finally:
        w.close()


class _SlowLoadEngine(HFEngine):
    """An engine whose weight load takes ``load_s`` seconds (a stuck transfer)."""

    def __init__(self, policy: Any, load_s: float) -> None:
        super().__init__(policy, shared=False)
        self.load_s = load_s

    def load(self, weights, timeout) -> None:
        time.sleep(self.load_s)


def test_a_stuck_weight_sync_is_named(pool) -> None:
    import torch

    model = torch.nn.Linear(2, 2)

    def collect(p, pl, step):
        return rollout(pl, p, num_groups=1, group_size=2, seed=step, run_id=f"s{step}")

    engine = _SlowLoadEngine(_ExpertLike(), load_s=60.0)
    w = RolloutWorker(
        collect,
        engine,
        pool,
        first=1,
        last=2,
        staleness=1,
        generate_timeout=1.0,
        step_timeout=1.0,
        sync_timeout=0.5,
    )
    try:
        w.start(model, 0)
        with pytest.raises(RolloutTimeout, match="weight sync to the rollout engine.*sync_timeout"):
            w.get(1)
    finally:
        w.close(wait_s=0.0)


class WordsEnv(agentgym.core.Env):
    """One turn: a reply of two words or more wins (the format is not asked for). About a third
    of the untrained tiny model's replies do, so a few updates move the rate."""

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        obs = agentgym.core.Observation(text="Which door?", task="Name a door.")
        return obs, {"task_id": f"words-{seed}"}

    def step(self, action: str):
        won = len(action.split()) >= 2
        obs = agentgym.core.Observation(text="Done.", task="Name a door.")
        return obs, float(won), True, False, {"won": won}


agentgym.register("test/Words-v0", "test_async:WordsEnv", max_turns=1, override=True)


def _tiny_bench_async(out: Path) -> list[str]:
    """`agentgym bench async --json` at the smallest size that still trains (add --steps)."""
    return [
        *("bench", "async", "--json", "--groups-per-step", "2", "--group-size", "2"),
        *("--num-envs", "4", "--sft-episodes", "4", "--out", str(out)),
        *("--set", "sft_epochs=1", "--set", "corpus_episodes=8", "--set", "eval_episodes=4"),
        *("--set", "max_new_tokens=8", "--set", "tiny_hidden_size=32"),
    ]


def test_bench_async_reports_step_time_and_wait_for_both_loops(tmp_path, capsys) -> None:
    """`agentgym bench async --json`, tiny: both loops train one start on Sokoban 5x5."""
    from agentgym.cli import main

    rc = main([*_tiny_bench_async(tmp_path), "--steps", "3"])
    assert rc == 0
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert r["env"] == "sokoban/Sokoban5x5-v0" and set(r["modes"]) == {"sync", "async_k1"}
    sync, k1 = r["modes"]["sync"], r["modes"]["async_k1"]
    for m in (sync, k1):
        assert m["steps_timed"] == 2 and m["step_s"] > 0
        assert 0.0 <= m["wait_fraction"] <= 1.0
    assert sync["staleness"] == 0.0 and 0.0 < k1["staleness"] <= 1.0
    assert r["speedup"] == pytest.approx(sync["step_s"] / k1["step_s"])


def test_bench_async_over_seeds_pairs_what_the_loops_learned(tmp_path, capsys) -> None:
    """`agentgym bench async --seeds 0 1`: one start model per seed, both loops per seed, the
    per-step curves over seeds and the paired async - sync differences (the numbers must be the
    ones in the runs' own metrics)."""
    from agentgym.benchmarks.stats import mean_ci
    from agentgym.cli import main

    rc = main([*_tiny_bench_async(tmp_path), "--seeds", "0", "1", "--steps", "2"])
    assert rc == 0
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert r["seeds"] == [0, 1] and r["modes"] == ["sync", "async_k1"]
    assert [p["env"] for p in r["per_seed"]] == ["sokoban/Sokoban5x5-v0"] * 2
    for mode in r["modes"]:
        runs = [tmp_path / f"seed{s}" / mode for s in (0, 1)]
        recs = [[x for x in _records(run) if "train/success" in x] for run in runs]
        assert all(len(x) == 2 for x in recs)
        for i in range(2):  # the curve is the mean over seeds of each step's logged value
            want = mean_ci([recs[0][i]["train/return"], recs[1][i]["train/return"]])
            assert r["curves"][mode]["train/return"][i]["mean"] == pytest.approx(want["mean"])
        final = [json.loads((run / "report.json").read_text())["success_final"] for run in runs]
        assert r["second_half_means"][mode]["heldout_final"] == {"0": final[0], "1": final[1]}
    res = r["paired"]["train/success"]
    diffs = [
        r["second_half_means"]["async_k1"]["train/success"][s]
        - r["second_half_means"]["sync"]["train/success"][s]
        for s in ("0", "1")
    ]
    assert res["n"] == 2 and res["diffs"] == pytest.approx(diffs)
    assert set(r["paired"]) == {"train/success", "train/return", "train/format_ok", "heldout_final"}


def test_bench_async_over_seeds_needs_two_seeds() -> None:
    from agentgym.benchmarks.asynchronous import bench_async_seeds

    with pytest.raises(ValueError, match="at least two distinct seeds"):
        bench_async_seeds(seeds=[3, 3])
