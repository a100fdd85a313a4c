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


def test_send_recv_matches_blocking_calls_and_lets_fast_workers_go_on(corridor_id: str) -> None:
    """Asynchronous mode: results equal the blocking calls', and a worker whose envs are slow
    does not hold back the other worker's envs."""
    with EnvPool(corridor_id, num_envs=4, num_workers=2, backend="sync") as ref:
        expect_reset = ref.reset([0, 1, 2, 3])
        expect_step = ref.step(["right", "left", "look", "right"])
    with EnvPool(corridor_id, num_envs=4, num_workers=2, backend="process") as pool:
        pool.send({i: ("reset", i) for i in range(4)})
        got: dict[int, object] = {}
        while pool.pending:
            got.update(pool.recv())
        assert [got[i][0].text for i in range(4)] == [o.text for o, _ in expect_reset]
        assert [got[i][1]["task_id"] for i in range(4)] == [i["task_id"] for _, i in expect_reset]
        # envs 0-1 live on worker 0, 2-3 on worker 1; mixed commands travel in one batch
        pool.send({0: ("step", "right"), 1: ("step", "left"), 2: ("step", "look")})
        steps: dict[int, object] = {}
        while pool.pending:
            steps.update(pool.recv())
        assert [steps[i].observation.text for i in range(3)] == [
            s.observation.text for s in expect_step[:3]
        ]
        with pytest.raises(ValueError, match="unknown command"):
            pool.send({0: ("jump", None)})


def test_send_to_a_busy_worker_is_refused_and_recv_times_out(corridor_id: str) -> None:
    with EnvPool(
        corridor_id, num_envs=2, num_workers=1, backend="process", env_kwargs={"slow_s": 1.0}
    ) as pool:
        pool.reset([0, 0])
        pool.send({0: ("step", "right")})
        with pytest.raises(RuntimeError, match="share a worker that holds a command still running"):
            pool.send({1: ("step", "right")})
        t0 = time.perf_counter()
        assert pool.recv(timeout=0.1) == {}
        assert time.perf_counter() - t0 < 0.9
        res = pool.recv()
        assert set(res) == {0} and res[0].info["valid"]
        assert pool.pending == [] and pool.recv() == {}


def test_async_hang_is_replaced_after_step_timeout(corridor_id: str) -> None:
    with EnvPool(
        corridor_id,
        num_envs=2,
        num_workers=2,
        backend="process",
        step_timeout=0.5,
        env_kwargs={"slow_s": 8.0},
    ) as pool:
        pool.reset([0, 0])
        t0 = time.perf_counter()
        pool.send({0: ("step", "right"), 1: ("step", "right")})
        got: dict[int, object] = {}
        while pool.pending:
            got.update(pool.recv())
        assert time.perf_counter() - t0 < 6.0
        assert all(got[i].info.get("crashed") and got[i].truncated for i in (0, 1))


def test_auto_backend_keeps_fast_envs_in_process(corridor_id: str) -> None:
    import agentgym

    fast_id = "test/FastCorridor-v0"
    if fast_id not in agentgym.registry:
        agentgym.register(fast_id, "core_toy_env:Corridor", max_turns=12, fast=True)
    with EnvPool(fast_id, num_envs=4, num_workers=2) as pool:
        assert pool.backend == "sync" and set(pool.worker_pids) == {os.getpid()}
        pool.reset([0, 1, 2, 3])
    with EnvPool(corridor_id, num_envs=2, num_workers=2) as pool:
        assert pool.backend == "process" and os.getpid() not in pool.worker_pids
    with pytest.raises(ValueError, match="use auto, process, sync or ray"):
        EnvPool(corridor_id, num_envs=1, backend="threads")


@pytest.mark.parametrize("backend", ["process", "sync"])
def test_worker_stats_count_the_time_spent_in_batches(corridor_id: str, backend: str) -> None:
    with EnvPool(
        corridor_id, num_envs=3, num_workers=2, backend=backend, env_kwargs={"slow_s": 0.05}
    ) as pool:
        pool.reset([0, 0, 0])
        before = pool.worker_stats()
        pool.step_many({0: "right", 1: "right"})  # worker 0 hosts envs 0 and 1: two slow steps
        after = pool.worker_stats()
    assert [a["batches"] - b["batches"] for a, b in zip(after, before)] == [1, 0]
    assert after[0]["busy_s"] - before[0]["busy_s"] >= 0.1
    assert after[1]["busy_s"] == before[1]["busy_s"]


def _drain(pool: EnvPool) -> dict[int, object]:
    got: dict[int, object] = {}
    while pool.pending:
        got.update(pool.recv(timeout=30))
    return got


@pytest.mark.parametrize("backend", ["process", "sync"])
def test_a_queued_batch_runs_after_the_one_ahead_of_it(corridor_id: str, backend: str) -> None:
    """queue_depth=2: a worker takes a second batch while it runs one; answers come back in the
    order sent, equal to the blocking calls'; a third batch, or a second command to a running
    env, is refused with the fix."""
    with EnvPool(corridor_id, num_envs=4, num_workers=1, backend="sync") as ref:
        ref.reset([0, 1, 2, 3])
        expect = ref.step(["right", "left", "right", "dance"])
    with EnvPool(
        corridor_id,
        num_envs=4,
        num_workers=1,
        backend=backend,
        queue_depth=2,
        env_kwargs={"slow_s": 0.2},
    ) as pool:
        pool.reset([0, 1, 2, 3])
        pool.send({0: ("step", "right"), 1: ("step", "left")})
        pool.send({2: ("step", "right"), 3: ("step", "dance")})  # queued behind the first
        assert pool.pending == [0, 1, 2, 3]
        with pytest.raises(RuntimeError, match=r"have a command still running.*recv\(\)"):
            pool.send({0: ("step", "right")})
        got = _drain(pool)
        assert [got[i].observation.text for i in range(4)] == [s.observation.text for s in expect]
        # the next round, as a queued loop runs it: two batches in, a third waits for an answer
        pool.send({0: ("reset", 0), 1: ("reset", 1)})
        pool.send({2: ("step", "right")})
        with pytest.raises(RuntimeError, match=r"envs \[3\] share a worker that holds 2 batches"):
            pool.send({3: ("step", "right")})
        first = pool.recv(timeout=30)
        # the oldest batch answers first; a worker in another process is still on the step
        assert set(first) == ({0, 1} if backend == "process" else {0, 1, 2})
        pool.send({3: ("step", "right")})
        got = {**first, **_drain(pool)}
        assert got[0][1]["task_id"] == "corridor-0" and got[2].observation.anchor == "len=4;pos=2"
        assert got[3].observation.anchor == "len=5;pos=1"  # "dance" had not moved it
        assert pool.crashes == 0
    with pytest.raises(ValueError, match="queue_depth must be >= 1"):
        EnvPool(corridor_id, num_envs=1, queue_depth=0)


@pytest.mark.timeout(120, method="thread")  # a lost batch would leave recv() waiting for ever
def test_a_crash_or_hang_ends_every_batch_the_worker_held(corridor_id: str) -> None:
    """A worker that dies, or hangs past step_timeout, while holding a running and a queued
    batch: both batches' envs come back crashed, the worker is replaced, the pool goes on."""
    with EnvPool(corridor_id, num_envs=4, num_workers=1, backend="process", queue_depth=2) as pool:
        pool.reset([0, 1, 2, 3])
        pid = pool.worker_pids[0]
        pool.send({0: ("step", "crash"), 1: ("step", "right")})
        pool.send({2: ("step", "right"), 3: ("step", "right")})
        got = _drain(pool)
        assert sorted(got) == [0, 1, 2, 3]
        assert all(got[i].info.get("crashed") and got[i].truncated for i in range(4))
        assert pool.crashes == 1 and pool.worker_pids[0] != pid
        pool.reset([0, 1, 2, 3])
        assert pool.step(["right"] * 4)[3].info["valid"]
        # dead before a second batch could be queued: the batch it held ends with the new one
        pool.send({0: ("step", "right")})
        pool.crash_worker_of(0)
        pool.send({1: ("step", "right")})
        got = _drain(pool)
        assert sorted(got) == [0, 1] and all(got[i].info.get("crashed") for i in (0, 1))
        assert "before the command was sent" in got[0].info["error"] and pool.crashes == 2
    with EnvPool(
        corridor_id,
        num_envs=2,
        num_workers=1,
        backend="process",
        queue_depth=2,
        step_timeout=0.5,
        env_kwargs={"slow_s": 8.0},
    ) as pool:
        pool.reset([0, 0])
        t0 = time.perf_counter()
        pool.send({0: ("step", "right")})
        pool.send({1: ("step", "right")})
        got = _drain(pool)
        assert time.perf_counter() - t0 < 6.0
        assert all(
            got[i].info.get("crashed") and "timed out" in got[i].info["error"] for i in (0, 1)
        )


@pytest.mark.timeout(90, method="thread")  # a regression hangs for ever: end the run instead
def test_queued_large_batches_and_answers_do_not_block_each_other(corridor_id: str) -> None:
    """A queued batch of several MB goes in while the worker writes an answer of several MB:
    neither pipe end may wait for the other (the worker reads its batches on its own thread)."""
    big = "x" * (4 << 20)  # the corridor echoes an invalid action: a 4 MB observation
    with EnvPool(
        corridor_id,
        num_envs=4,
        num_workers=1,
        backend="process",
        queue_depth=2,
        env_kwargs={"slow_s": 0.2},
        step_timeout=60,
    ) as pool:
        pool.reset([0, 1, 2, 3])
        t0 = time.perf_counter()
        pool.send({0: ("step", big), 1: ("step", big)})
        pool.send({2: ("step", big), 3: ("step", big)})
        got = pool.recv(timeout=30)  # the first answer: 8 MB back
        pool.send({i: ("step", big) for i in got})  # 8 MB in, while the second answer goes out
        got.update(_drain(pool))
        assert time.perf_counter() - t0 < 30
        assert sorted(got) == [0, 1, 2, 3] and pool.crashes == 0
        assert all(len(got[i].observation.text) > 4 << 20 for i in range(4))
