"""Tests of the core CLI commands (envs, play, rollout, bench envs)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from agentgym.cli import main
from agentgym.trajectory import read_trajectories

ROOT = Path(__file__).resolve().parents[1]


def test_help_and_envs_json_through_the_installed_script() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "agentgym.cli", "envs", "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    specs = json.loads(out.stdout)
    assert isinstance(specs, list)
    for s in specs:
        assert {"id", "family", "entry_point", "max_turns"} <= set(s)


def test_rollout_expert_writes_trajectories(corridor_id: str, tmp_path: Path, capsys) -> None:
    out = tmp_path / "runs.jsonl"
    rc = main(
        [
            "rollout",
            corridor_id,
            "--policy",
            "expert",
            "--episodes",
            "6",
            "--group-size",
            "3",
            "--num-envs",
            "3",
            "--out",
            str(out),
            "--json",
            "--quiet",
        ]
    )
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["episodes"] == 6 and summary["success_rate"] == 1.0
    trajs = read_trajectories(out)
    assert len(trajs) == 6 and len({t.group for t in trajs}) == 2


def test_rollout_num_workers_packs_envs(corridor_id: str, capsys) -> None:
    argv = ["rollout", corridor_id, "--policy", "expert", "--episodes", "4", "--num-envs", "4"]
    assert main([*argv, "--num-workers", "2", "--json", "--quiet"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["workers"] == 2 and summary["success_rate"] == 1.0


def test_play_scripted(corridor_id: str, tmp_path: Path, capsys) -> None:
    actions = tmp_path / "actions.txt"
    actions.write_text("# comment\nright\nfly\nright\n")
    assert main(["play", corridor_id, "--seed", "0", "--actions", str(actions)]) == 0
    text = capsys.readouterr().out
    assert "(invalid action)" in text and "episode over: won" in text


def test_unknown_env_is_a_clean_error(capsys) -> None:
    assert main(["rollout", "nope/Nothing-v0"]) == 2
    assert "no environment registered as 'nope/Nothing-v0'" in capsys.readouterr().err


def test_unknown_policy_is_a_clean_error(corridor_id: str, capsys) -> None:
    assert main(["rollout", corridor_id, "--policy", "gpt9"]) == 2
    assert "unknown policy 'gpt9'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "said"),
    [
        (["--group-size", "0"], "--group-size 0: must be >= 1"),
        (["--episodes", "0"], "--episodes 0: must be >= 1"),
        (["--env-kwarg", "bogus=1"], "takes no env kwarg 'bogus' (it takes: num_tasks, slow_s"),
    ],
)
def test_rollout_user_errors_are_one_line(corridor_id: str, capsys, extra, said) -> None:
    assert main(["rollout", corridor_id, "--policy", "expert", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert said in err and len(err.splitlines()) == 1, err


def test_rollout_pools_have_a_step_timeout(corridor_id: str, capsys) -> None:
    """A hung env step ends its episode as crashed instead of hanging the command; the pool
    that `rollout` builds has a timeout by default."""
    from agentgym.cli import DEFAULT_STEP_TIMEOUT, build_parser

    assert build_parser().parse_args(["rollout", corridor_id]).step_timeout == DEFAULT_STEP_TIMEOUT
    argv = ["rollout", corridor_id, "--policy", "expert", "--episodes", "1", "--num-envs", "1"]
    argv += ["--env-kwarg", "slow_s=60", "--step-timeout", "2", "--json", "--quiet"]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["crashed"] == 1 and summary["seconds"] < 30


def test_bench_envs_reports_ratio(corridor_id: str, capsys) -> None:
    rc = main(["bench", "envs", "--env", corridor_id, "--num-envs", "4", "--steps", "5", "--json"])
    assert rc == 0
    d = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert d["speedup_vs_sequential"] > 0 and d["workers"] == 2
    assert d["sequential_steps_per_s"] > 0 and d["pool_steps_per_s"] > 0
    # where the time went: the workers' busy share, the machine's slowdown, the pool's own cost
    for key in ("worker_utilisation", "async_worker_utilisation"):
        assert 0 < d[key] <= 1.0
    assert d["in_worker_step_ms"] > 0 and d["own_overhead_ms_per_step"] >= 0
    # the baseline is measured on either side of each pool run; its drift is reported
    assert d["sequential_drift"] >= 1.0
    # the machine's own ceiling for two processes, and the share of it the pool delivers
    assert 0 < d["parallel_ceiling"] < 2.5
    # the queued asynchronous pool (the default) is measured against the unqueued one in the round
    assert d["async_queue_depth"] == 2 and d["async_unqueued_speedup_vs_sequential"] > 0
    assert d["async_unqueued_own_overhead_ms_per_step"] >= 0
    # the report rounds to 3 decimals, so the ratio of the rounded figures may differ by half a unit
    assert d["async_of_ceiling"] == pytest.approx(
        d["async_speedup_vs_sequential"] / d["parallel_ceiling"], rel=0.01, abs=6e-4
    )


def test_the_parallel_ceiling_runs_every_env_in_its_own_processes(corridor_id: str) -> None:
    from agentgym.benchmarks.envs import bench_ceiling

    c = bench_ceiling(corridor_id, 5, 3, 0, {}, workers=2)
    assert c["workers"] == 2 and c["steps"] == 5 * 3 and c["steps_per_s"] > 0
    with pytest.raises(RuntimeError, match="a ceiling worker failed"):
        bench_ceiling(corridor_id, 2, 3, 0, {"no_such_kwarg": 1}, workers=2)


def test_bracketed_baseline_is_the_mean_of_the_runs_around_a_pool_run() -> None:
    from agentgym.benchmarks.envs import _bracketed

    before = {"steps": 100, "seconds": 1.0, "steps_per_s": 100.0, "reset_s": 0.1}
    after = {"steps": 100, "seconds": 3.0, "steps_per_s": 100 / 3, "reset_s": 0.2}
    b = _bracketed([before, after])
    assert b["seconds"] == 2.0 and b["steps_per_s"] == 50.0


@pytest.mark.parametrize("args", [["--help"], ["rollout", "--help"]])
def test_help(args: list[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code == 0
