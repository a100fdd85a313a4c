"""Tests of ``agentgym eval``: confidence intervals, resume after SIGKILL, timeouts, retries."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import eval_toy_env  # noqa: F401 - registers evaltoy/Words-v0
import pytest

from agentgym.cli import main
from agentgym.evaluation import stats
from agentgym.evaluation.harness import (
    EvalConfig,
    RetryingPolicy,
    load_episodes,
    run_eval,
    summarize,
    summary_markdown,
)
from agentgym.policies import PolicyOutput
from agentgym.registration import register, registry
from agentgym.rollout import EpisodeStats
from agentgym.trajectory import Trajectory, Turn, read_trajectories

TESTS = Path(__file__).parent
ENV = eval_toy_env.ENV_ID


# ---------------------------------------------------------------------------- statistics by hand
def test_wilson_matches_hand_computation() -> None:
    # p = 0.7, n = 10, z = 1.959964: centre = (0.7 + z^2/20) / (1 + z^2/10) = 0.644498,
    # half = z * sqrt(0.021 + z^2/400) / (1 + z^2/10) = 0.247710.
    lo, hi = stats.wilson_interval(7, 10)
    assert lo == pytest.approx(0.396778, abs=1e-5)
    assert hi == pytest.approx(0.892209, abs=1e-5)
    # 0/10: [0, z^2/(n+z^2)] = [0, 0.277533]
    assert stats.wilson_interval(0, 10) == (0.0, pytest.approx(0.277533, abs=1e-5))
    assert stats.wilson_interval(10, 10) == (pytest.approx(0.722467, abs=1e-5), 1.0)
    with pytest.raises(ValueError, match="successes"):
        stats.wilson_interval(11, 10)


def test_t_interval_matches_tables() -> None:
    assert stats.t_quantile(0.975, 3) == pytest.approx(3.182446, abs=1e-5)
    assert stats.t_quantile(0.975, 10) == pytest.approx(2.228139, abs=1e-5)
    assert stats.t_quantile(0.025, 5) == pytest.approx(-2.570582, abs=1e-5)
    # [1, 2, 3, 4]: mean 2.5, s = 1.290994, se = 0.645497, half = 3.182446 * se = 2.054260
    lo, hi = stats.t_interval([1, 2, 3, 4])
    assert (lo, hi) == (pytest.approx(0.445740, abs=1e-5), pytest.approx(4.554260, abs=1e-5))
    one = stats.mean([3.0])
    assert one.value == 3.0 and one.low is None and one.high is None
    # [2, 10]: mean 6, se 4, half = 12.706205 * 4: the raw interval starts below zero turns
    raw, clipped = stats.mean([2, 10]), stats.mean([2, 10], lower=0.0, upper=50.0)
    assert raw.low == pytest.approx(6 - 50.82482, abs=1e-4) and clipped.low == 0.0
    assert raw.high == pytest.approx(6 + 50.82482, abs=1e-4) and clipped.high == 50.0
    assert stats.rate(0, 0).n == 0


def _rec(i: int, won: bool, turns: list[bool], task_type: str, ret: float) -> dict:
    return {
        "id": f"r-g{i}-m0",
        "group": f"r-g{i}",
        "won": won,
        "return": ret,
        "turns": [
            {"observation": "o", "action": "a", "reward": 0.0, "valid": v, "info": {}}
            for v in turns
        ],
        "meta": {"task_type": task_type},
    }


def test_summary_on_hand_built_records() -> None:
    recs = [
        _rec(0, True, [True, True], "pick", 1.0),
        _rec(1, False, [True, False, False], "pick", 0.0),
        _rec(2, True, [True], "heat", 1.0),
        _rec(3, True, [False, True, True, True], "heat", 0.5),
    ]
    s = summarize(recs)
    assert s["success_rate"]["value"] == 0.75
    lo, hi = stats.wilson_interval(3, 4)
    assert (s["success_rate"]["low"], s["success_rate"]["high"]) == (lo, hi)
    assert s["mean_turns"]["value"] == 2.5
    assert s["mean_reward"]["value"] == pytest.approx(0.625)
    assert s["invalid_action_rate"]["value"] == pytest.approx(3 / 10)
    assert s["invalid_action_rate"]["n"] == 10
    assert set(s["by_task_type"]) == {"pick", "heat"}
    assert s["by_task_type"]["heat"]["success_rate"]["value"] == 1.0
    assert s["by_task_type"]["pick"]["mean_turns"]["value"] == 2.5


def test_summary_env_metrics_from_the_last_turn() -> None:
    """An env's info["metrics"] (e.g. SWE completion/modification/resolution) are read from each
    episode's last turn; an episode without them counts 0."""
    recs = [_rec(i, i == 0, [True, True], "t", 0.0) for i in range(4)]
    recs[0]["turns"][-1]["info"] = {"metrics": {"completion": 1.0, "resolution": 1.0}}
    recs[1]["turns"][-1]["info"] = {"metrics": {"completion": 1.0, "resolution": 0.0}}
    recs[2]["turns"][0]["info"] = {"metrics": {"completion": 1.0}}  # not the last turn
    s = summarize(recs)
    assert s["env_metrics"]["completion"]["value"] == pytest.approx(0.5)
    assert s["env_metrics"]["resolution"]["value"] == pytest.approx(0.25)
    assert s["env_metrics"]["completion"]["n"] == 4
    md = summary_markdown(s)
    assert "| completion (env metric, mean per episode) | 0.500 |" in md
    assert "env_metrics" not in summarize(recs[2:])


def test_summary_counts_are_episode_stats() -> None:
    """The summary's counts are EpisodeStats of the records, the type training and rollout use:
    a turn the harness stopped (never sent to the env) is no turn of the agent in either."""
    stopped = Turn("o", "a", valid=False, info={"timed_out": True, "executed": False})
    trajs = [
        Trajectory(
            "e-g0-m0",
            "e-g0",
            "x",
            turns=[Turn("o", "a", valid=False), stopped],
            truncated=True,
            meta={"timed_out": True},
        ),
        Trajectory("e-g1-m0", "e-g1", "x", turns=[Turn("o", "a", reward=1.0)], won=True),
        Trajectory("e-g2-m0", "e-g2", "x", turns=[Turn("o", "a")] * 3, crashed=True),
    ]
    trajs[1].turns[0].policy["finish_reason"] = "length"  # a reply cut by its token budget
    c = EpisodeStats.of(trajs)
    assert (c.turns, c.invalid, c.format_ok, c.cut) == (5, 1, 5, 1)
    assert (c.won, c.crashed, c.truncated, c.timed_out) == (1, 1, 1, 1)
    s = summarize([t.to_dict() for t in trajs])
    assert [s[k] for k in ("won", "turns", "crashed", "truncated", "timed_out")] == [1, 5, 1, 1, 1]
    assert s["invalid_action_rate"]["value"] == pytest.approx(1 / 5)
    assert s["mean_turns"]["value"] == pytest.approx(5 / 3)
    assert s["timeout_rate"]["value"] == pytest.approx(1 / 3)
    assert s["reply_cut_rate"]["value"] == pytest.approx(1 / 5)
    assert "| replies cut by the token budget (per turn) | 20.0% |" in summary_markdown(s)
    assert s["mean_reward"]["value"] == pytest.approx(c.mean_return)


# ---------------------------------------------------------------------------- end to end
def test_eval_expert_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    rc = main(
        [
            "eval",
            "--env",
            ENV,
            "--policy",
            "expert",
            "--episodes",
            "8",
            "--group-size",
            "2",
            "--parallel",
            "3",
            "--out",
            str(out),
            "--quiet",
            "--json",
        ]
    )
    assert rc == 0
    s = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert s["episodes"] == 8 and s["success_rate"]["value"] == 1.0
    assert s["mean_turns"]["value"] == 1.0 and s["pass@2"]["value"] == 1.0
    assert set(s["by_task_type"]) == {"even", "odd"}
    recs = load_episodes(out)
    cfg = json.loads((out / "config.json").read_text())
    assert sorted(r["id"] for r in recs) == sorted(EvalConfig.from_dict(cfg).episode_ids())
    # members of a group played the same task
    by_group: dict[str, set[str]] = {}
    for r in recs:
        by_group.setdefault(r["group"], set()).add(r["task"])
    assert all(len(t) == 1 for t in by_group.values())
    md = (out / "summary.md").read_text()
    assert "| success rate | 100.0% |" in md and "## By task type" in md
    # a second run into the same folder without --resume is refused, with the fix in the message
    rc = main(["eval", "--env", ENV, "--episodes", "8", "--out", str(out), "--quiet"])
    assert rc == 2 and "--resume" in capsys.readouterr().err
    # resuming with a different seed is refused too
    rc = main(["eval", "--env", ENV, "--seed", "5", "--out", str(out), "--resume", "--quiet"])
    assert rc == 2 and "seed" in capsys.readouterr().err
    # resuming a finished run plays nothing
    rc = main(["eval", "--out", str(out), "--resume", "--quiet", "--json"])
    assert rc == 0 and len(load_episodes(out)) == 8


def _count_lines(p: Path) -> int:
    return sum(1 for ln in p.read_text().splitlines() if ln.strip()) if p.exists() else 0


def test_resume_after_sigkill(tmp_path: Path) -> None:
    out = tmp_path / "run"
    n = 16
    cmd = [
        sys.executable,
        "-m",
        "agentgym.cli",
        "eval",
        "--import",
        "eval_toy_env",
        "--env",
        ENV,
        "--policy",
        "random",
        "--episodes",
        str(n),
        "--parallel",
        "2",
        "--out",
        str(out),
        "--env-kwarg",
        "slow_tasks=[0,1,2,3]",
        "--env-kwarg",
        "slow_s=0.1",
        "--quiet",
    ]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.Popen(
        cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    eps = out / "episodes.jsonl"
    deadline = time.monotonic() + 90
    while _count_lines(eps) < 4 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)
    first = [r["id"] for r in load_episodes(out)]
    assert 4 <= len(first) < n, "the run should have been killed mid-way"
    rc = subprocess.run(cmd + ["--resume"], env=env, capture_output=True, timeout=120)
    assert rc.returncode == 0, rc.stderr.decode()
    lines = [json.loads(ln) for ln in eps.read_text().splitlines() if ln.strip().endswith("}")]
    ids = [r["id"] for r in lines]
    assert len(ids) == len(set(ids)) == n, "an episode was lost or played twice"
    assert ids[: len(first)] == first
    cfg = json.loads((out / "config.json").read_text())
    assert set(ids) == set(EvalConfig.from_dict(cfg).episode_ids())
    assert len(cfg["sessions"]) == 2
    s = json.loads((out / "summary.json").read_text())
    assert s["episodes"] == n


class _NeverWins:
    """Always says a word the door does not know (so episodes run to the turn limit)."""

    name = "never"
    needs_expert = False

    def act(self, contexts):
        return [
            PolicyOutput(action="open sesame", response="<action>open sesame</action>")
            for _ in contexts
        ]


def test_per_episode_timeout(tmp_path: Path) -> None:
    # parallel=1: with several envs in lockstep, an episode's wall clock also counts the time its
    # batch-mates take (documented), and this test wants only the slow task to time out.
    cfg = EvalConfig(
        env=ENV,
        episodes=8,
        parallel=1,
        timeout_s=0.5,
        env_kwargs={"slow_tasks": [1], "slow_s": 0.3},
    )
    s = run_eval(cfg, tmp_path / "run", progress=False, policy=_NeverWins())
    recs = load_episodes(tmp_path / "run")
    assert len(recs) == 8 and s["episodes"] == 8
    timed = {r["id"] for r in recs if r["meta"].get("timed_out")}
    slow = {r["id"] for r in recs if r["task"] == "word-1"}
    assert timed == slow and len(slow) == 2
    for r in recs:
        if r["id"] in timed:
            assert r["truncated"] and not r["won"]
            last = r["turns"][-1]
            assert last["info"]["timed_out"] and last["info"]["executed"] is False
            assert len(r["turns"]) < 5
        else:
            assert len(r["turns"]) == 5 and r["turns"][-1]["info"].get("turn_limit")
    assert s["timed_out"] == 2 and s["timeout_rate"]["value"] == 0.25
    # the not-executed turn is not counted as a turn of the agent
    assert s["invalid_action_rate"]["value"] == 1.0
    c = EpisodeStats.of(read_trajectories(tmp_path / "run" / "episodes.jsonl"))
    assert c.timed_out == 2 and c.turns == s["turns"] == sum(len(r["turns"]) for r in recs) - 2


class _Flaky:
    name = "flaky"
    needs_expert = False

    def __init__(self, failures: int, exc: type[Exception] = ConnectionError) -> None:
        self.failures = failures
        self.exc = exc
        self.calls = 0

    def act(self, contexts):
        self.calls += 1
        if self.calls <= self.failures:
            raise self.exc("server went away")
        return [PolicyOutput(action="alpha") for _ in contexts]


def test_retrying_policy_backoff() -> None:
    flaky = _Flaky(2)
    logs: list[str] = []
    p = RetryingPolicy(flaky, retries=3, backoff_s=0.01, log=logs.append)
    assert p.act([object()])[0].action == "alpha"  # type: ignore[list-item]
    assert flaky.calls == 3 and p.retried == 2 and "retry 2/3" in logs[-1]
    with pytest.raises(ConnectionError):
        RetryingPolicy(_Flaky(5), retries=2, backoff_s=0.001, log=logs.append).act([])
    bad = _Flaky(1, ValueError)
    with pytest.raises(ValueError):
        RetryingPolicy(bad, retries=3, backoff_s=0.001, log=logs.append).act([])
    assert bad.calls == 1  # not transient: no retry


def test_policy_down_stops_cleanly_and_resumes(tmp_path: Path) -> None:
    from agentgym.evaluation.harness import EvalInterrupted

    class DiesAfter:
        name = "dies"
        needs_expert = False

        def __init__(self, ok_calls: int) -> None:
            self.left = ok_calls

        def act(self, contexts):
            if self.left <= 0:
                raise ConnectionRefusedError("connection refused")
            self.left -= 1
            return [PolicyOutput(action="open sesame") for _ in contexts]

    cfg = EvalConfig(env=ENV, episodes=6, parallel=2, retries=1, backoff_s=0.01)
    with pytest.raises(EvalInterrupted, match="--resume"):
        run_eval(cfg, tmp_path / "run", progress=False, policy=DiesAfter(7))
    got = len(load_episodes(tmp_path / "run"))
    assert 0 < got < 6
    s = run_eval(cfg, tmp_path / "run", resume=True, progress=False, policy=_NeverWins())
    assert s["episodes"] == 6
    ids = [r["id"] for r in load_episodes(tmp_path / "run")]
    assert len(ids) == len(set(ids)) == 6


@pytest.mark.slow
@pytest.mark.parametrize("family", ["textworld", "alfworld", "webshop", "swe"])
def test_eval_on_builtin_families(family: str, tmp_path: Path, monkeypatch) -> None:
    import agentgym

    monkeypatch.setenv("AGENTGYM_CACHE", str(tmp_path / "cache"))
    specs = [s for s in agentgym.all_specs() if s.family == family]
    if not specs:
        pytest.skip(f"no {family} environments registered")
    if family == "swe":
        pytest.importorskip("docker")
        try:
            import docker

            docker.from_env().ping()
        except Exception:
            pytest.skip("no Docker daemon")
    s = run_eval(
        EvalConfig(env=specs[0].id, policy="expert", episodes=2, parallel=2, timeout_s=300),
        tmp_path / "run",
        progress=False,
    )
    assert s["episodes"] == 2
    if family == "swe":  # the expert submits the gold patch: every rate is 1
        assert {k: v["value"] for k, v in s["env_metrics"].items()} == {
            "completion": 1.0,
            "modification": 1.0,
            "resolution": 1.0,
        }


def test_eval_plays_the_held_out_split_by_default(tmp_path: Path, capsys) -> None:
    """A spec with a held-out split is evaluated on it unless --split says otherwise, and the
    summary names the split."""
    env_id = "evaltoy/WordsTrain-v0"
    if env_id not in registry:
        register(
            env_id,
            entry_point="eval_toy_env:WordsEnv",
            max_turns=5,
            kwargs={"split": "train"},
            eval_split="heldout",
        )
    args = ["eval", "--env", env_id, "--policy", "expert", "--episodes", "2", "--quiet"]
    assert main([*args, "--out", str(tmp_path / "a"), "--json"]) == 0
    s = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert s["split"] == "heldout"
    assert json.loads((tmp_path / "a" / "config.json").read_text())["split"] == "heldout"
    assert "(heldout split)" in (tmp_path / "a" / "summary.md").read_text()
    assert main([*args, "--out", str(tmp_path / "b"), "--split", "train", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["split"] == "train"
