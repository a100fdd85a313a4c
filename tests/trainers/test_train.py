"""End-to-end tests of the training loop: config rules, resume, and the `agentgym train` CLI.

The env here is a small deterministic game defined in this file (real engine code, no mocks):
a corridor of rooms, each with three coloured doors; a sign in every room names the right door.
An expert reads the sign; a random policy rarely gets through. It registers as
``test/Signs-v0`` and the CLI test imports this module with ``--env-modules test_train``.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import random
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import agentgym
from agentgym.core import Env, Observation

COLORS = ("red", "blue", "green")


class SignEnv(Env):
    """``rooms`` rooms; the sign of room k names the door that leads on. Reward 1 on the win."""

    def __init__(self, rooms: int = 2, split: str = "train") -> None:
        self.rooms = rooms
        self.offset = 0 if split == "train" else 7919
        self.path: list[str] = []
        self.room = 0
        self.task_seed = 0

    def _obs(self, text: str = "") -> Observation:
        sign = self.path[self.room]
        body = (f"{text} " if text else "") + (
            f"You are in room {self.room + 1}. A sign says: take the {sign} door."
        )
        return Observation(
            text=body,
            task="Get through all the rooms.",
            admissible_actions=tuple(f"open {c} door" for c in COLORS),
            anchor=f"{self.task_seed}:{self.room}",
        )

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        s = int(seed or 0) + self.offset
        if options and "task" in options:
            s = int(options["task"])
        rng = random.Random(s)
        self.task_seed = s
        self.path = [rng.choice(COLORS) for _ in range(self.rooms)]
        self.room = 0
        return self._obs(), {"task_id": f"signs-{s}"}

    def _info(self, won: bool, valid: bool, passed: int) -> dict[str, Any]:
        # An env metric (like SWE's completion/modification/resolution): rooms passed, 0..1.
        metrics = {"rooms_passed": passed / self.rooms}
        return {"won": won, "score": float(won), "valid": valid, "metrics": metrics}

    def step(self, action: str):
        words = action.strip().lower().split()
        if len(words) != 3 or words[0] != "open" or words[2] != "door" or words[1] not in COLORS:
            obs = self._obs(f"'{action}' is not an action here.")
            return obs, 0.0, False, False, self._info(False, False, self.room)
        if words[1] != self.path[self.room]:
            return (
                self._obs("That door is locked."),
                0.0,
                False,
                False,
                self._info(False, True, self.room),
            )
        self.room += 1
        if self.room == self.rooms:
            self.room -= 1
            obs = Observation(
                text="You made it out!",
                task="Get through all the rooms.",
                anchor=f"{self.task_seed}:end",
            )
            return obs, 1.0, True, False, self._info(True, True, self.rooms)
        return (
            self._obs("The door opens."),
            0.0,
            False,
            False,
            self._info(False, True, self.room),
        )

    def expert_action(self) -> str | None:
        return f"open {self.path[self.room]} door"


agentgym.register("test/Signs-v0", "test_train:SignEnv", max_turns=4, override=True)


# ------------------------------------------------------------------------------------------------
# config
# ------------------------------------------------------------------------------------------------
# torch is imported lazily: env workers import this module to build SignEnv, and must stay light.
from agentgym.trainers.cli import add_config_flags, config_from_args  # noqa: E402
from agentgym.trainers.train import TrainConfig, train  # noqa: E402

needs_torch = pytest.mark.skipif(
    importlib.util.find_spec("torch") is None or importlib.util.find_spec("transformers") is None,
    reason="needs torch and transformers (pip install 'agentgym[train]')",
)

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent


def test_env_passes_the_checker():
    with agentgym.make("test/Signs-v0") as env:
        agentgym.check_env(env)


def test_config_cross_field_rules_say_the_fix():
    with pytest.raises(ValueError, match="group_size >= 2.*--group-size"):
        TrainConfig(algo="grpo", group_size=1)
    with pytest.raises(ValueError, match="group_size >= 2"):
        TrainConfig(algo="gigpo", group_size=1)
    with pytest.raises(ValueError, match="unknown: use one of gigpo, grpo, rloo"):
        TrainConfig(algo="dpo")
    with pytest.raises(ValueError, match="micro_batch_size=32 exceeds"):
        TrainConfig(minibatch_size=16, micro_batch_size=32)
    with pytest.raises(ValueError, match="unknown config key"):
        TrainConfig.from_dict({"stepz": 3})
    with pytest.raises(ValueError, match="use --turn-weight turn or --turn-weight episode"):
        TrainConfig(turn_weight="trajectory")


def test_every_field_is_documented_and_has_a_flag(tmp_path):
    import argparse
    import dataclasses

    parser = argparse.ArgumentParser()
    add_config_flags(parser)
    for f in dataclasses.fields(TrainConfig):
        assert f.metadata.get("help"), f"{f.name} has no help text"
    cfg_file = tmp_path / "run.yaml"
    cfg_file.write_text("group-size: 5\nlr: 0.001\nalgo: grpo\nenv_kwargs: {rooms: 3}\n")
    args = parser.parse_args(
        [
            "--config",
            str(cfg_file),
            "--lr",
            "0.5",
            "--no-tensorboard",
            "--dual-clip",
            "none",
            "--env-modules",
            "a",
            "--env-modules",
            "b",
        ]
    )
    cfg = config_from_args(args)
    assert cfg.group_size == 5 and cfg.algo == "grpo" and cfg.env_kwargs == {"rooms": 3}
    assert cfg.lr == 0.5  # the flag beats the file
    assert cfg.tensorboard is False and cfg.dual_clip is None
    assert cfg.env_modules == ["a", "b"]
    assert cfg.seed == TrainConfig().seed  # untouched fields keep their defaults
    toml = tmp_path / "run.toml"
    toml.write_text('algo = "rloo"\ngroup_size = 3\n')
    assert config_from_args(parser.parse_args(["--config", str(toml)])).algo == "rloo"


@pytest.mark.parametrize(
    "path", sorted((Path(__file__).parents[2] / "examples").glob("*.yaml")), ids=lambda p: p.name
)
def test_example_configs_are_valid_runs(path):
    """Every shipped example config loads into a TrainConfig that passes the cross-field rules
    (a typo in a key, a value of the wrong type or an inconsistent pair fails here, not an hour
    into a user's run)."""
    import argparse

    parser = argparse.ArgumentParser()
    add_config_flags(parser)
    cfg = config_from_args(parser.parse_args(["--config", str(path)]))
    assert cfg.steps > 0 and cfg.eval_episodes >= 64 and cfg.env != TrainConfig().env


# ------------------------------------------------------------------------------------------------
# runs
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from agentgym.trainers.tiny_model import init_model

    texts = [
        f"You are in room {k}. A sign says: take the {c} door. <action>open {c} door</action> "
        "Task: Get through all the rooms. Admissible actions: open red door, open blue door"
        for k in range(3)
        for c in COLORS
    ] * 4
    return str(
        init_model(
            tmp_path_factory.mktemp("tiny"),
            texts,
            vocab_size=400,
            hidden_size=32,
            num_layers=2,
            seed=0,
        )
    )


def _small(out: Path, model: str, **kw: Any) -> TrainConfig:
    base = dict(
        out=str(out),
        env="test/Signs-v0",
        env_kwargs={"rooms": 1},
        backend="sync",
        num_envs=4,
        model=model,
        sft_episodes=2,
        sft_epochs=1,
        steps=2,
        groups_per_step=2,
        group_size=2,
        max_new_tokens=6,
        eval_episodes=2,
        eval_every=0,
        save_every=1,
        minibatch_size=8,
        micro_batch_size=4,
        entropy_coef=0.01,
        kl_coef=0.05,
        lr=1e-2,
        progress=False,
        tensorboard=False,
    )
    base.update(kw)
    return TrainConfig(**base)


def _records(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


@needs_torch
def test_resume_gives_the_same_next_step_loss(tmp_path, tiny_model):
    full = tmp_path / "full"
    train(_small(full, tiny_model))
    part = tmp_path / "part"
    train(_small(part, tiny_model, steps=1))
    assert (part / "checkpoints" / "step_1" / "state.pt").exists()
    report = train(_small(part, tiny_model, steps=2, resume=True))
    assert report["resumed_from"] == 1
    a = [r for r in _records(full) if r.get("step") == 2 and "loss/loss" in r]
    b = [r for r in _records(part) if r.get("step") == 2 and "loss/loss" in r]
    assert len(a) == len(b) == 1
    assert a[0]["loss/loss"] != 0.0 and a[0]["loss/kl"] > 0.0  # a live loss, not a trivial zero
    for key in ("loss/loss", "loss/kl", "loss/entropy", "train/reply_tokens", "train/return"):
        assert b[0][key] == pytest.approx(a[0][key], rel=1e-6, abs=1e-9), key
    # the step-1 line written before the interruption is kept once, not duplicated
    assert sum(1 for r in _records(part) if r.get("step") == 1 and "train/success" in r) == 1
    assert sum(1 for r in _records(part) if r.get("final")) == 1
    import torch
    from safetensors.torch import load_file

    wa = load_file(full / "model" / "model.safetensors")
    wb = load_file(part / "model" / "model.safetensors")
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-6, atol=1e-7, msg=k)


@needs_torch
def test_linear_lr_schedule_anneals_the_rate_the_optimizer_uses(tmp_path, tiny_model):
    """--lr-schedule linear: update k of n runs at lr * (n - k + 1) / n; the rate logged is the one
    the optimizer stepped with, and a resumed run takes the rate from the step and its own step
    count (here 2 steps, then resumed to 3), not from a counter."""
    out = tmp_path / "lin"
    train(_small(out, tiny_model, steps=2, lr=0.03, lr_schedule="linear", kl_coef=0.0))
    train(_small(out, tiny_model, steps=3, lr=0.03, lr_schedule="linear", kl_coef=0.0, resume=True))
    lrs = {r["step"]: r["train/lr"] for r in _records(out) if "train/lr" in r}
    assert lrs == pytest.approx({1: 0.03, 2: 0.015, 3: 0.01})
    const = tmp_path / "const"
    train(_small(const, tiny_model, steps=2, lr=0.03, kl_coef=0.0))
    assert [r["train/lr"] for r in _records(const) if "train/lr" in r] == [0.03, 0.03]
    cfg = TrainConfig(steps=4, lr=1.0, lr_schedule="linear")
    assert [cfg.step_lr(k) for k in (1, 2, 3, 4)] == [1.0, 0.75, 0.5, 0.25]
    assert cfg.step_lr(2, base=0.5) == 0.375  # the collapse guard's lowered rate is the base
    with pytest.raises(ValueError, match="--lr-schedule constant or --lr-schedule linear"):
        TrainConfig(lr_schedule="cosine")


@needs_torch
def test_replies_cut_by_the_token_budget_are_counted_and_warned_once(tmp_path, tiny_model, capsys):
    """A reply that uses all of max_new_tokens without an eos is cut off: the turn records
    finish_reason "length", the step and the evaluation report the share (train/reply_cut,
    eval/reply_cut) and the run says once on stderr which setting to raise."""
    out = tmp_path / "cut"
    train(_small(out, tiny_model, steps=2, max_new_tokens=1, kl_coef=0.0, eval_every=1))
    recs = _records(out)
    steps = [r for r in recs if "train/reply_cut" in r]
    assert len(steps) == 2
    # one token cannot hold "<action>...</action>" and an eos: every reply is cut
    assert all(r["train/reply_cut"] == 1.0 for r in steps)
    evals = [r["eval/reply_cut"] for r in recs if "eval/reply_cut" in r]
    assert len(evals) >= 3 and set(evals) == {1.0}  # the SFT start, step 1 and the final one
    turns = [
        t
        for ln in (out / "trajectories.jsonl").read_text().splitlines()
        for t in json.loads(ln)["turns"]
    ]
    assert turns and {t["info"]["policy"]["finish_reason"] for t in turns} == {"length"}
    err = capsys.readouterr().err
    assert err.count("raise --max-new-tokens") == 1, err
    assert "max_new_tokens=1 tokens" in err


def test_finish_reasons_tell_cut_replies_from_ended_ones():
    from agentgym.rollout import EpisodeStats
    from agentgym.trainers.hf_policy import finish_reasons
    from agentgym.trajectory import Trajectory, Turn

    eos = {2}
    got = finish_reasons([[5, 6, 2], [5, 6, 7], [5, 2], [], [7]], 3, eos)
    # ended by eos (even at the budget), cut at the budget, ended early, empty (budget 3 unused)
    assert got == ["stop", "length", "stop", "stop", "stop"]
    assert finish_reasons([[]], 0, eos) == ["length"]
    turns = [Turn(observation="o", action="a", info={"policy": {"finish_reason": f}}) for f in got]
    s = EpisodeStats.of([Trajectory(id="x", group="g", env="e", turns=turns)])
    assert s.cut == 1 and s.counts()["cut"] == 1
    assert s.to_dict()["reply_cut_rate"] == pytest.approx(1 / 5)


@needs_torch
def test_lora_kl_reference_is_the_sft_policy(tmp_path, tiny_model):
    """With LoRA the SFT stage trains the adapters, and the KL term compares with the SFT
    policy (base + SFT adapters merged), not the bare base model: the first RL update starts at
    the reference, so its KL (measured before its one optimizer step) is zero."""
    out = tmp_path / "lora_kl"
    train(_small(out, tiny_model, steps=1, lora_r=4, kl_coef=0.1, minibatch_size=256, sft_epochs=8))
    assert (out / "sft_model" / "adapter_config.json").exists()
    rec = next(r for r in _records(out) if r.get("step") == 1 and "loss/kl" in r)
    assert rec["loss/optimizer_steps"] == 1
    assert abs(rec["loss/kl"]) < 1e-7, rec["loss/kl"]
    assert rec["loss/entropy"] > 0  # a live policy, not an empty batch


def test_resume_without_checkpoint_says_what_to_do(tmp_path, tiny_model):
    with pytest.raises(FileNotFoundError, match="start without --resume"):
        train(_small(tmp_path / "none", tiny_model, resume=True))


@needs_torch
def test_agentgym_train_cli_end_to_end(tmp_path):
    out = tmp_path / "run"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
        "AGENTGYM_CACHE": str(tmp_path / "cache"),
        "HF_HUB_OFFLINE": "1",
    }
    flags = shlex.split(
        "--env test/Signs-v0 --env-modules test_train --num-envs 1 --backend sync --tiny-hidden-size 32 "
        "--tiny-vocab-size 320 --corpus-episodes 4 --sft-episodes 4 --sft-epochs 2 --steps 2 "
        "--groups-per-step 2 --group-size 2 --max-new-tokens 6 --eval-episodes 2 --eval-every 1 "
        "--save-every 1 --minibatch-size 8 --micro-batch-size 8 --algo grpo --json --no-progress"
    )
    cmd = [sys.executable, "-m", "agentgym.cli", "train", "--out", str(out), *flags]
    cmd += ["--env-kwargs", '{"rooms": 1}']
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads(res.stdout.strip().splitlines()[-1])
    assert report["algo"] == "grpo" and report["steps"] == 2
    for key in ("success_initial", "success_sft", "success_final", "wall_time_s", "seed"):
        assert key in report
    # each success rate has its 95% Wilson interval; the RL gain is over the SFT start, with an
    # interval over the paired evaluation episodes
    for key in ("initial", "sft", "final"):
        lo, hi = report[f"success_{key}_ci95"]
        assert 0.0 <= lo <= report[f"success_{key}"] <= hi <= 1.0
    assert report["rl_gain_over"] == "sft"
    assert report["rl_gain"] == pytest.approx(report["success_final"] - report["success_sft"])
    lo, hi = report["rl_gain_ci95"]
    assert -1.0 <= lo <= report["rl_gain"] <= hi <= 1.0
    assert "outcomes" not in report["eval"]
    for name in (
        "metrics.jsonl",
        "report.json",
        "curve.png",
        "config.json",
        "trajectories.jsonl",
        "model/config.json",
        "sft_model/config.json",
        "init_model/tokenizer.json",
        "checkpoints/step_2/state.pt",
        "checkpoints/step_2/model.safetensors",
    ):
        assert (out / name).exists(), name
    assert (out / "tb").is_dir() and any((out / "tb").iterdir())
    recs = _records(out)
    assert [r["step"] for r in recs if "train/success" in r] == [1, 2]
    assert any("eval/success" in r and r["step"] == 1 for r in recs)
    for r in recs:  # every evaluation carries its band (curve.png draws it)
        if "eval/success" in r:
            assert r["eval/success_lo"] <= r["eval/success"] <= r["eval/success_hi"], r
            assert 0.0 <= r["eval/invalid"] <= 1.0 and r["eval/turns"] >= 1.0, r
    # The env's per-episode metrics are logged as rates next to success (every won episode
    # passed all rooms, so the rate is at least the success rate).
    for r in recs:
        for split in ("train", "eval"):
            if f"{split}/success" in r:
                assert r[f"{split}/success"] <= r[f"{split}/rooms_passed"] <= 1.0, r
    assert all("train/rooms_passed" in r for r in recs if "train/success" in r)
    assert "rooms_passed" in report["eval"]["metrics"]
    assert report["eval"]["seconds"] > 0  # the final evaluation is timed
    assert (out / "curve.png").read_bytes()[:4] == b"\x89PNG"
    trajs = agentgym.read_trajectories(out / "trajectories.jsonl")
    assert len(trajs) == 2 * 2 * 2 and all(t.env == "test/Signs-v0" for t in trajs)


@pytest.mark.parametrize(
    ("config", "flags", "said"),
    [
        ('steps: "two"\n', [], "steps='two' must be an integer: set steps (or --steps) to e.g. 40"),
        ("", ["--lr", "-1"], "lr=-1.0 must be > 0 (a learning rate): pass e.g. --lr 0.0005"),
        ("algo: [grpo\n", [], "is not valid YAML"),
        (
            "",
            ["--env-kwargs", '{"bogus": 1}'],
            "takes no env kwarg 'bogus' (it takes: rooms, split",
        ),
        ("steps: 2\nsteps_per_epoch: 3\n", [], "unknown config key(s) ['steps_per_epoch']"),
    ],
)
def test_config_errors_are_one_line_before_any_model(tmp_path, capsys, config, flags, said):
    from agentgym.cli import main

    argv = ["train", "--out", str(tmp_path / "run"), "--env", "test/Signs-v0", "--no-progress"]
    if config:
        (tmp_path / "run.yaml").write_text(config)
        argv += ["--config", str(tmp_path / "run.yaml")]
    assert main([*argv, *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert said in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "run" / "init_model").exists()  # failed before building a model


@needs_torch
def test_resume_after_a_corrupt_checkpoint_keeps_trajectories_once(tmp_path, tiny_model, capsys):
    """A checkpoint cut short is skipped (and said so); the resumed steps' episodes replace the
    interrupted run's instead of being appended twice; the wall time sums both parts."""
    part = tmp_path / "part"
    first = train(_small(part, tiny_model, steps=2, kl_coef=0.0))
    weights = part / "checkpoints" / "step_2" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # the kill hit this write
    capsys.readouterr()
    report = train(_small(part, tiny_model, steps=2, kl_coef=0.0, resume=True))
    err = capsys.readouterr().err
    assert (
        "--resume: using" in err and "step_1" in err and "skipped step_2: model.safetensors" in err
    )
    assert report["resumed_from"] == 1
    ids = [t.id for t in agentgym.read_trajectories(part / "trajectories.jsonl")]
    assert len(ids) == len(set(ids)) == 2 * 2 * 2  # steps x groups x group size, once each
    assert len(report["wall_time_parts_s"]) == 2
    assert report["wall_time_s"] == pytest.approx(sum(report["wall_time_parts_s"]), abs=0.2)
    assert report["wall_time_s"] >= first["wall_time_s"]


def test_docs_list_every_setting_with_its_default() -> None:
    """docs/training.md's settings table is `config_markdown()` verbatim (regenerate it with
    ``python -c "from agentgym.trainers.train import config_markdown; print(config_markdown())"``)."""
    from agentgym.trainers.train import config_markdown

    doc = (Path(__file__).resolve().parents[2] / "docs" / "training.md").read_text()
    assert config_markdown() in doc


@needs_torch
def test_bench_algos_writes_table_plot_and_results(tmp_path, tiny_model):
    """`agentgym bench algos` end to end on two methods: one shared SFT start, a run per
    method, then the table (95% intervals, paired comparison, step-group fraction), the plots
    and results.json; re-running, also through the CLI with --config, reuses the cached runs."""
    from agentgym.benchmarks.algos import main, run_bench

    base = {
        k: v
        for k, v in dataclasses.asdict(_small(tmp_path, tiny_model, steps=1)).items()
        if k not in ("out", "seed")
    }
    base.update(eval_every=1, save_every=0, kl_coef=0.0)
    logs: list[str] = []
    pair = [("gigpo", "grpo+gated")]

    def bench() -> dict:
        methods = ["gigpo", "grpo+gated", "grpo", "rloo"]
        return run_bench(
            tmp_path / "b", methods=methods, seeds=[0], base=base, compare=pair, log=logs.append
        )

    res = bench()
    assert [r["method"] for r in res["runs"]] == ["gigpo", "grpo+gated", "grpo", "rloo"]
    assert set(res["table"]) == {"gigpo", "grpo+gated", "grpo", "rloo"}
    assert "1" in res["table"]["gigpo"]
    assert set(res["table"]["gigpo"]["1"]) == {"mean", "std", "n", "lo", "hi", "half"}
    # Every method logs the step-group statistics each step (Signs anchors recur in a group).
    rec = [json.loads(x) for x in (tmp_path / "b" / "grpo+gated_seed0" / "metrics.jsonl").open()]
    fracs = [r["credit/nonsingleton_frac"] for r in rec if "credit/nonsingleton_frac" in r]
    assert len(fracs) == 1 and 0.0 < fracs[0] <= 1.0
    assert res["step_groups"]["grpo+gated"]["nonsingleton_frac"] == pytest.approx(fracs[0])
    final = res["final"]["gigpo"]
    assert final["n"] == 1 and final["mean"] == res["runs"][0]["success_final"]
    p = res["paired"]["gigpo:grpo+gated"]
    assert p["n"] == 1 and p["p_signflip"] == 1.0 and p["p_ttest"] is None
    assert p["mean_diff"] == pytest.approx(
        res["runs"][0]["success_final"] - res["runs"][1]["success_final"]
    )
    gated = json.loads((tmp_path / "b" / "grpo+gated_seed0" / "report.json").read_text())
    assert gated["estimator"]["transform"] == ["gated"]
    for name in (
        "table.md",
        "results.json",
        "success.png",
        "train_success.png",
        "rooms_passed.png",  # the env's own per-episode metric, held-out and training
        "train_rooms_passed.png",
    ):
        assert (tmp_path / "b" / name).stat().st_size > 0
    table = (tmp_path / "b" / "table.md").read_text()
    assert "| grpo+gated |" in table and "Env metric `rooms_passed`" in table
    assert "(greedy, test split), mean ± 95% CI half-width (Student t) over 1 seed:" in table
    assert "| non-singleton turns |" in table and p["verdict"] in table
    assert p["verdict"].startswith("gigpo beat grpo+gated on ")
    # gigpo, grpo and rloo ran: the published ordering is stated (tested by seed even though
    # only gigpo:grpo+gated was asked for).
    assert res["ordering"].startswith("Published ordering GiGPO > GRPO > RLOO (final held-out")
    assert "paired t-tests" not in res["ordering"]  # one seed: no t-test to report
    assert res["ordering"] in table and set(res["paired"]) == {"gigpo:grpo+gated"}
    assert set(res["env_metric_tables"]) == {"eval/rooms_passed", "train/rooms_passed"}
    again = bench()
    assert again["table"] == res["table"] and len(logs) == 5  # SFT + 4 runs, nothing retrained
    assert again["paired"] == res["paired"]
    # The CLI with the same settings from a --config file (its steps overridden by --steps):
    # the cached runs match, so nothing is trained (the bench's own defaults, 4 steps, would
    # not match and be refused).
    cfg_file = tmp_path / "bench.json"
    cfg_file.write_text(json.dumps({**base, "steps": 3}))
    stamp = (tmp_path / "b" / "gigpo_seed0" / "report.json").stat().st_mtime_ns
    argv = ["--out", str(tmp_path / "b"), "--methods", "gigpo,grpo+gated,grpo,rloo"]
    argv += ["--seeds", "0"]
    argv += ["--config", str(cfg_file), "--steps", "1", "--compare", "gigpo:grpo+gated"]
    assert main(argv) == 0
    assert (tmp_path / "b" / "gigpo_seed0" / "report.json").stat().st_mtime_ns == stamp
    cli = json.loads((tmp_path / "b" / "results.json").read_text())
    assert cli["table"] == res["table"] and cli["paired"] == res["paired"]
    cfg_file.write_text(json.dumps({**base, "nonsense": 1}))
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['nonsense'\]: remove them"):
        main(argv)
    with pytest.raises(ValueError, match="--compare gigpo:ppo: ppo not among the methods run"):
        run_bench(
            tmp_path / "b", methods=["gigpo"], seeds=[0], base=base, compare=[("gigpo", "ppo")]
        )
    # A cached run made with other settings is refused, not mixed into the table.
    with pytest.raises(ValueError, match=r"gigpo_seed0 was trained with other settings \(lr: "):
        run_bench(
            tmp_path / "b", methods=["gigpo"], seeds=[0], base={**base, "lr": 1.0}, log=logs.append
        )
    # ... but a setting only another estimator reads (SPA's grounding weight, the critic's lr)
    # does not make GiGPO's cached run stale: it is read back, not retrained.
    only_others = {**base, "spa_beta": 0.1, "progress_epochs": 5, "value_lr": 0.5}
    run_bench(tmp_path / "b", methods=["gigpo"], seeds=[0], base=only_others, log=logs.append)
    assert (tmp_path / "b" / "gigpo_seed0" / "report.json").stat().st_mtime_ns == stamp


def test_success_summary_pairs_the_evaluation_episodes():
    """The RL gain's interval is over per-episode differences of the same seeds."""
    from agentgym.trainers.metrics import success_summary

    state = {
        "success_initial": 0.0,
        "outcomes_initial": [0] * 8,
        "success_sft": 0.25,
        "outcomes_sft": [1, 1, 0, 0, 0, 0, 0, 0],
    }
    final = {"success_rate": 0.75, "outcomes": [1, 1, 1, 1, 1, 1, 0, 0]}
    s = success_summary(state, final)
    assert s["rl_gain"] == pytest.approx(0.5) and s["rl_gain_over"] == "sft"
    # diffs [0,0,1,1,1,1,0,0]: mean 0.5, sd 0.5345, t(0.975, 7) = 2.3646 -> half-width 0.4469
    lo, hi = s["rl_gain_ci95"]
    assert lo == pytest.approx(0.5 - 0.4469, abs=1e-3) and hi == pytest.approx(
        0.5 + 0.4469, abs=1e-3
    )
    assert s["success_initial_ci95"][0] == 0.0 and 0.0 < s["success_initial_ci95"][1] < 0.5
    # no SFT: the gain is over the initial model
    s = success_summary({"success_initial": 0.0, "outcomes_initial": [0] * 8}, final)
    assert s["rl_gain_over"] == "initial" and s["rl_gain"] == pytest.approx(0.75)
    assert s["success_sft_ci95"] is None


@needs_torch
def test_sampled_evaluation_is_repeatable_and_leaves_training_sampling_alone(tmp_path, tiny_model):
    """--eval-temperature samples the evaluation from a generator of its own: two runs evaluate
    identically, and the training episodes are those of a greedily evaluated run (the training
    sampler's state is not consumed by the evaluation)."""
    import agentgym

    def run(name, temp):
        cfg = _small(
            tmp_path / name,
            tiny_model,
            steps=2,
            eval_every=1,
            eval_episodes=4,
            eval_temperature=temp,
        )
        rep = train(cfg)
        trajs = agentgym.read_trajectories(tmp_path / name / "trajectories.jsonl")
        return rep, [(t.id, [u.action for u in t.turns]) for t in trajs]

    a, ta = run("a", 1.0)
    b, tb = run("b", 1.0)
    g, tg = run("g", 0.0)
    assert a["eval"]["temperature"] == 1.0 and a["eval"]["greedy"] is False
    assert g["eval"]["greedy"] is True
    assert (a["success_sft"], a["success_final"]) == (b["success_sft"], b["success_final"])
    assert ta == tb == tg
    with pytest.raises(ValueError, match="eval_temperature=-1"):
        TrainConfig(eval_temperature=-1.0)


# ------------------------------------------------------------------------------------------------
# the default run
# ------------------------------------------------------------------------------------------------
@needs_torch
def test_the_default_settings_run_end_to_end_on_their_own_env(tmp_path):
    """`agentgym train`'s defaults, budgets shrunk: the built-in lake, its own tiny model, the
    default stability settings, and a report with every number the README quotes."""
    out = tmp_path / "default"
    report = train(
        TrainConfig(
            out=str(out),
            steps=2,
            sft_episodes=8,
            sft_epochs=2,
            corpus_episodes=8,
            eval_episodes=16,
            eval_every=1,
            progress=False,
            tensorboard=False,
        )
    )
    assert report["config"]["env"] == "frozenlake/FrozenLake4x4Local-v0"
    for key in ("success_initial", "success_sft", "success_final", "rl_gain"):
        assert 0.0 <= abs(report[key]) <= 1.0, key
    lo, hi = report["rl_gain_ci95"]
    assert lo <= report["rl_gain"] <= hi
    assert (out / "curve.png").stat().st_size > 0
    recs = _records(out)
    steps = [r for r in recs if "train/success" in r]
    assert [r["step"] for r in steps] == [1, 2]
    assert all(r["train/lr"] == 5e-4 and "dynamic/kept" not in r for r in steps)


@needs_torch
@pytest.mark.slow
def test_the_default_run_lifts_held_out_success_by_rl(tmp_path):
    """The whole default run at seed 0 (about 3-6 minutes on 2 cores): RL, not SFT, makes the
    gain, by at least 0.20 with a paired interval above 0.20 (measured +0.57 [0.51, 0.63])."""
    report = train(TrainConfig(out=str(tmp_path / "run"), progress=False, tensorboard=False))
    assert report["success_initial"] == 0.0
    assert report["rl_gain"] >= 0.20 and report["rl_gain_ci95"][0] > 0.20, report
