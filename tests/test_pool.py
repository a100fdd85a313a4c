"""Tests of the env pool and the multi-turn rollout (process and sync backends)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import psutil
import pytest

from agentgym.policies import ExpertPolicy, PolicyOutput, RandomPolicy, TurnContext
from agentgym.pool import EnvPool
from agentgym.rollout import rollout, summarize
from agentgym.trajectory import TrajectoryWriter, read_trajectories

ROOT = Path(__file__).resolve().parents[1]


def _children() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


@pytest.mark.parametrize("backend", ["process", "sync"])
def test_group_resets_give_identical_starts(corridor_id: str, backend: str) -> None:
    with EnvPool(corridor_id, num_envs=6, num_workers=2, backend=backend) as pool:
        res = pool.reset([7, 7, 7, 2, 2, 2])
        texts = [(o.text, o.anchor, i["task_id"]) for o, i in res]
        assert texts[0] == texts[1] == texts[2] and texts[3] == texts[4] == texts[5]
        assert texts[0] != texts[3]
        steps = pool.step(["right"] * 6)
        assert all(s.info["valid"] for s in steps)
        assert len({s.observation.anchor for s in steps[:3]}) == 1


def test_workers_host_several_envs_and_close_leaves_no_processes(corridor_id: str) -> None:
    before = _children()
    pool = EnvPool(corridor_id, num_envs=16, num_workers=2)
    pids = pool.worker_pids
    assert len(pids) == 2 and all(psutil.pid_exists(p) for p in pids)
    pool.reset(list(range(16)))
    pool.close()
    pool.close()
    time.sleep(0.1)
    assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != "zombie" for p in pids)
    assert _children() - before == set()


class _ScriptedPolicy:
    """Sends ``crash`` from the env at ``crash_index`` on its 2nd turn, else walks right."""

    name = "scripted"
    needs_expert = False

    def __init__(self, crash_action: str) -> None:
        self.crash_action = crash_action
        self.fired = False

    def act(self, contexts: Sequence[TurnContext]) -> list[PolicyOutput]:
        out = []
        for ctx in contexts:
            if not self.fired and ctx.turn == 1:
                self.fired = True
                out.append(PolicyOutput(action=self.crash_action))
            else:
                out.append(PolicyOutput(action="right"))
        return out


@pytest.mark.parametrize("crash_action", ["crash", "raise"])
def test_crashed_worker_is_replaced_and_episode_marked(corridor_id: str, crash_action: str) -> None:
    with EnvPool(corridor_id, num_envs=4, num_workers=2) as pool:
        pids_before = pool.worker_pids
        trajs = rollout(pool, _ScriptedPolicy(crash_action), num_groups=3, group_size=4, seed=0)
        assert len(trajs) == 12  # the run went on
        crashed = [t for t in trajs if t.crashed]
        assert crashed and all(t.truncated and not t.won for t in crashed)
        assert all(t.won for t in trajs if not t.crashed)
        if crash_action == "crash":
            # A real SIGKILL takes the whole worker (2 envs): both episodes are marked.
            assert len(crashed) == 2 and pool.crashes == 1
            assert pool.worker_pids != pids_before
            assert "worker process died" in crashed[0].turns[-1].info["error"]
        else:
            assert len(crashed) == 1 and pool.crashes == 0  # env rebuilt in-process
            assert "env bug on purpose" in crashed[0].turns[-1].info["error"]


def test_step_timeout_replaces_a_hung_worker(corridor_id: str) -> None:
    with EnvPool(
        corridor_id, num_envs=2, num_workers=2, step_timeout=0.5, env_kwargs={"slow_s": 8.0}
    ) as pool:
        pool.reset([0, 0])
        t0 = time.perf_counter()
        res = pool.step(["right", "right"])
        # 0.5 s timeout + a fresh worker's start-up, far less than the 8 s hang
        assert time.perf_counter() - t0 < 6.0
        assert all(r.info.get("crashed") and r.truncated for r in res)
        assert "timed out" in res[0].info["error"]


def test_rollout_groups_ids_and_writer(corridor_id: str, tmp_path: Path) -> None:
    out = tmp_path / "runs.jsonl"
    with EnvPool(corridor_id, num_envs=3, num_workers=2) as pool, TrajectoryWriter(out) as w:
        trajs = rollout(
            pool, ExpertPolicy(), num_groups=4, group_size=2, seed=10, writer=w, run_id="r"
        )
    assert sorted(t.id for t in trajs) == sorted(f"r-g{g}-m{m}" for g in range(4) for m in range(2))
    by_group: dict[str, set[str]] = {}
    for t in trajs:
        by_group.setdefault(t.group, set()).add(t.task)
        assert t.won and not t.truncated
        assert len(t.turns) == 2 + (t.seed % 4)  # corridor length
        assert t.turns[0].anchor == f"len={2 + t.seed % 4};pos=0"
    assert all(len(tasks) == 1 for tasks in by_group.values())
    assert {t.id for t in read_trajectories(out)} == {t.id for t in trajs}


def test_rollout_skip_resumes_without_repeats(corridor_id: str) -> None:
    with EnvPool(corridor_id, num_envs=2, backend="sync") as pool:
        first = rollout(pool, RandomPolicy(0), num_groups=3, group_size=2, run_id="x")
        keep = {t.id for t in first[:3]}
        rest = rollout(pool, RandomPolicy(0), num_groups=3, group_size=2, run_id="x", skip=keep)
    assert {t.id for t in rest} == {t.id for t in first} - keep


def test_random_policy_mostly_fails_within_turn_limit(corridor_id: str) -> None:
    with EnvPool(corridor_id, num_envs=4, num_workers=2) as pool:
        trajs = rollout(pool, RandomPolicy(1), num_groups=10, group_size=2, seed=100)
    s = summarize(trajs)
    assert s.episodes == 20 and s.success_rate < 0.8


def test_killed_parent_leaves_no_orphans(corridor_id: str, tmp_path: Path) -> None:
    code = (
        "import sys, time; sys.path[:0] = [%r, %r]\n"
        "import agentgym\n"
        "agentgym.register('test/Corridor-v0', 'core_toy_env:Corridor', max_turns=12)\n"
        "from agentgym.pool import EnvPool\n"
        "pool = EnvPool('test/Corridor-v0', num_envs=4, num_workers=2)\n"
        "print(' '.join(map(str, pool.worker_pids)), flush=True)\n"
        "while True: time.sleep(0.05)\n"
    ) % (str(ROOT), str(ROOT / "tests"))
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()  # type: ignore[union-attr]
    workers = [int(x) for x in line.split()]
    assert len(workers) == 2 and all(psutil.pid_exists(p) for p in workers)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 10
    while time.time() < deadline and any(psutil.pid_exists(p) for p in workers):
        time.sleep(0.1)
    alive = [p for p in workers if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"]
    assert alive == [], f"orphan env workers: {alive}"
