"""Tests of the Ray backend of EnvPool (agentgym.ray_pool) on a real local Ray instance.

The env is the core's toy Corridor (tests/core_toy_env.py); Ray actors import it because the
backend hands the driver's sys.path to its actors. One local Ray instance serves the module.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

ray = pytest.importorskip("ray")

import agentgym  # noqa: E402
from agentgym.policies import ExpertPolicy, PolicyOutput, RandomPolicy, TurnContext  # noqa: E402
from agentgym.pool import EnvPool  # noqa: E402
from agentgym.rollout import rollout  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def local_ray():
    from agentgym import ray_pool

    started = ray_pool.ensure_ray()
    yield
    if started:
        ray_pool.shutdown()


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _wait_gone(pids: list[int], timeout: float = 15.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = [p for p in pids if _alive(p)]
        if not left:
            return []
        time.sleep(0.2)
    return [p for p in pids if _alive(p)]


def _comparable(trajs: list[Any]) -> list[dict[str, Any]]:
    out = []
    for t in sorted(trajs, key=lambda t: t.id):
        d = t.to_dict()
        for turn in d["turns"]:
            turn["info"].pop("policy_s", None)  # wall-clock timing
        out.append(d)
    return out


@pytest.mark.parametrize("policy_name", ["random", "expert"])
def test_ray_and_process_backends_give_identical_trajectories(local_ray, corridor_id, policy_name):
    results = {}
    for backend in ("process", "ray"):
        policy = RandomPolicy(7) if policy_name == "random" else ExpertPolicy(7)
        with EnvPool(corridor_id, 4, num_workers=2, backend=backend) as pool:
            trajs = rollout(pool, policy, num_groups=5, group_size=2, seed=3, run_id="cmp")
        results[backend] = _comparable(trajs)
    assert len(results["ray"]) == 10
    assert sum(len(t["turns"]) for t in results["ray"]) > 10
    assert results["ray"] == results["process"]


def test_public_api_works_unchanged(local_ray, corridor_id):
    with EnvPool(corridor_id, 5, num_workers=2, backend="ray") as pool:
        assert len(pool) == 5
        pids = pool.worker_pids
        assert len(set(pids)) == 2 and os.getpid() not in pids
        obs = pool.reset([0, 1, 2, 3, 0])
        assert [o.anchor for o, _ in obs] == [f"len={2 + s};pos=0" for s in (0, 1, 2, 3, 0)]
        assert obs[1][1]["task_id"] == "corridor-1"
        res = pool.step(["right", "left", "dance", "right", "right"])
        assert [r.observation.anchor for r in res] == [
            "len=2;pos=1",
            "len=3;pos=0",
            "len=4;pos=0",
            "len=5;pos=1",
            "len=2;pos=1",
        ]
        assert res[2].info["valid"] is False and not res[2].done
        assert pool.step_many({0: "right"})[0].terminated
        again = pool.reset_many({0: (None, {"task": 3}), 4: 1})
        assert again[0][0].anchor == "len=5;pos=0" and again[4][0].anchor == "len=3;pos=0"
        assert pool.call_many("expert_action", [0, 3]) == {0: "right", 3: "right"}
        assert pool.call_many("no_such_method", [1]) == {1: None}
        with pytest.raises(IndexError):
            pool.step_many({9: "right"})
        assert pool.crashes == 0
    pool.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        pool.step_many({0: "right"})


class _KillingPolicy:
    """Plays ``right``; on turn ``at`` of its first call with env 0 active, kills env 0's actor."""

    needs_expert = False
    name = "killer"

    def __init__(self, kill) -> None:
        self.kill = kill
        self.calls = 0

    def act(self, contexts: list[TurnContext]) -> list[PolicyOutput]:
        self.calls += 1
        if self.calls == 2:
            self.kill()
        return [PolicyOutput(action="right", response="<action>right</action>") for _ in contexts]


@pytest.mark.parametrize("how", ["sigkill", "ray.kill"])
def test_actor_killed_mid_rollout_is_replaced(local_ray, corridor_id, how):
    with EnvPool(corridor_id, 4, num_workers=2, backend="ray") as pool:
        victim = pool._workers[0]
        old_pid = victim.pid

        def kill() -> None:
            if how == "sigkill":
                os.kill(old_pid, signal.SIGKILL)
            else:
                ray.kill(victim.actor, no_restart=True)

        # Task 3 is a 5-cell corridor: episodes are still running when the actor dies.
        trajs = rollout(pool, _KillingPolicy(kill), num_groups=4, group_size=2, seed=3)
        assert len(trajs) == 8
        crashed = [t for t in trajs if t.crashed]
        assert len(crashed) == 2  # the two episodes of the killed actor (envs 0 and 1)
        assert all(t.truncated and not t.won for t in crashed)
        assert all(t.won for t in trajs if not t.crashed)
        assert pool.crashes == 1
        assert pool.worker_pids[0] != old_pid and _alive(pool.worker_pids[0])
        # The replacement serves new episodes.
        assert pool.reset_many({0: 0})[0][0].anchor == "len=2;pos=0"
    assert _wait_gone([old_pid]) == []


def test_env_errors_inside_an_actor(local_ray, corridor_id):
    with EnvPool(corridor_id, 2, num_workers=1, backend="ray") as pool:
        pool.reset([0, 1])
        res = pool.step(["raise", "right"])
        assert res[0].info["crashed"] and "env bug on purpose" in res[0].info["error"]
        assert res[1].observation.anchor == "len=3;pos=1"  # the other env kept its state
        pid = pool.worker_pids[0]
        res = pool.step_many({1: "crash"})  # the env kills its own actor process
        assert res[1].info["crashed"] and pool.crashes == 1
        assert pool.worker_pids[0] != pid
        assert pool.reset([1, 1])[0][0].anchor == "len=3;pos=0"


def test_step_timeout_replaces_a_hung_actor(local_ray, corridor_id):
    with EnvPool(
        corridor_id,
        2,
        num_workers=1,
        backend="ray",
        step_timeout=1.0,
        env_kwargs={"slow_s": 30.0},
    ) as pool:
        pids = pool.worker_pids
        pool.reset([0, 0])
        t0 = time.monotonic()
        res = pool.step(["right", "right"])
        assert time.monotonic() - t0 < 10
        assert all(r.info["crashed"] and "timed out" in r.info["error"] for r in res)
        assert pool.crashes == 1 and set(pool.worker_pids).isdisjoint(pids)
    assert _wait_gone(pids) == []


def test_waiting_for_actors_does_not_spin(local_ray, corridor_id):
    with EnvPool(corridor_id, 1, backend="ray", env_kwargs={"slow_s": 1.5}) as pool:
        pool.reset([0])
        cpu0, t0 = time.process_time(), time.monotonic()
        pool.step(["right"])
        wall, cpu = time.monotonic() - t0, time.process_time() - cpu0
    assert wall >= 1.0
    assert cpu < 0.25 * wall, f"the driver burned {cpu:.2f}s CPU while waiting {wall:.2f}s"


def test_queued_batches_on_actors_answer_in_order_without_spinning(local_ray, corridor_id):
    """queue_depth=2 on Ray actors: the actor runs its two calls in the order sent; the driver
    sleeps while it waits (a call whose result was taken leaves no wake-up behind)."""
    with EnvPool(
        corridor_id, 4, num_workers=1, backend="ray", queue_depth=2, env_kwargs={"slow_s": 0.6}
    ) as pool:
        pool.reset([0, 1, 2, 3])
        cpu0, t0 = time.process_time(), time.monotonic()
        pool.send({0: ("step", "right"), 1: ("step", "left")})
        pool.send({2: ("step", "right"), 3: ("step", "dance")})
        first = pool.recv(timeout=30)
        assert set(first) == {0, 1}
        pool.send({0: ("step", "right")})  # queued behind the batch of envs 2 and 3
        got = {**first}
        while pool.pending:
            got.update(pool.recv(timeout=30))
        wall, cpu = time.monotonic() - t0, time.process_time() - cpu0
        assert got[0].observation.anchor == "len=2;pos=2" and got[0].terminated
        assert [got[i].observation.anchor for i in (1, 2, 3)] == [
            "len=3;pos=0",
            "len=4;pos=1",
            "len=5;pos=0",
        ]
        assert pool.crashes == 0
    assert wall >= 2.0  # five slow steps, two at a time
    assert cpu < 0.25 * wall, f"the driver burned {cpu:.2f}s CPU while waiting {wall:.2f}s"


def test_close_ends_every_actor_process(local_ray, corridor_id):
    pool = EnvPool(corridor_id, 4, num_workers=2, backend="ray")
    pids = pool.worker_pids
    assert all(_alive(p) for p in pids)
    pool.reset([0] * 4)
    pool.close()
    assert _wait_gone(pids) == []


def test_more_actors_than_cores_do_not_deadlock(local_ray, corridor_id):
    n = (os.cpu_count() or 1) + 1  # one actor more than there are cores
    with EnvPool(corridor_id, n, num_workers=n, backend="ray") as pool:
        assert len(set(pool.worker_pids)) == n
        trajs = rollout(pool, ExpertPolicy(0), num_groups=n, seed=0)
    assert len(trajs) == n and all(t.won for t in trajs)


def test_build_error_names_the_env(local_ray, corridor_id):
    with pytest.raises(RuntimeError, match=r"could not build test/Corridor-v0 in a Ray actor"):
        EnvPool(corridor_id, 2, num_workers=1, backend="ray", env_kwargs={"no_such_kwarg": 1})


def test_bad_ray_option_is_reported(local_ray, corridor_id):
    with pytest.raises(ValueError, match="num_cpus must be >= 0"):
        EnvPool(corridor_id, 1, backend="ray", ray_options={"num_cpus": -1})
    with pytest.raises(TypeError, match="no_such_option"):
        EnvPool(corridor_id, 1, backend="ray", ray_options={"no_such_option": 1})


def test_existing_connection_is_kept(local_ray):
    from agentgym import ray_pool

    ctx = ray.get_runtime_context()
    assert ray_pool.ensure_ray() is False  # already connected: nothing new started
    assert ray.get_runtime_context().get_node_id() == ctx.get_node_id()


_CLUSTER_DRIVER = """
import json, os, sys
sys.path.insert(0, {tests!r})
import agentgym, ray
from agentgym.pool import EnvPool
from agentgym.policies import ExpertPolicy
from agentgym.rollout import rollout
agentgym.register("test/Corridor-v0", "core_toy_env:Corridor", max_turns=12)
with EnvPool("test/Corridor-v0", 4, num_workers=2, backend="ray") as pool:
    trajs = rollout(pool, ExpertPolicy(0), num_groups=4, seed=0)
    node = ray.get_runtime_context().gcs_address
print(json.dumps({{"won": sum(t.won for t in trajs), "gcs": node}}))
"""


def _tree(pid: int) -> list[psutil.Process]:
    with contextlib.suppress(psutil.NoSuchProcess):
        p = psutil.Process(pid)
        return [p, *p.children(recursive=True)]
    return []


@pytest.mark.slow
def test_connects_to_a_running_cluster_through_ray_address(corridor_id):
    """`ray start --head` then RAY_ADDRESS=HOST:PORT: a separate driver's pool joins that cluster.

    The head runs with ``--block`` and is stopped by ending its process tree, never with
    ``ray stop`` (which would end every Ray instance on the machine).
    """
    ray_bin = str(Path(sys.executable).with_name("ray"))
    port = 46379
    # Ray 2.5x+ authenticates with a token (~/.ray/auth_token, made on first use); a driver that
    # connects by address must be told to send it, or GCS answers InvalidAuthToken.
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token"}
    # Ray's Unix socket paths must stay short: a pytest tmp_path is too long for them.
    temp_dir = tempfile.mkdtemp(prefix="agr-", dir="/tmp")
    head = subprocess.Popen(
        [ray_bin, "start", "--head", "--block", f"--port={port}", "--num-cpus=2",
         "--include-dashboard=false", f"--temp-dir={temp_dir}",
         "--object-store-memory=100000000", "--disable-usage-stats"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        script = Path(temp_dir) / "driver.py"
        script.write_text(_CLUSTER_DRIVER.format(tests=str(ROOT / "tests")))
        out = None
        for _ in range(3):  # the head may still be starting
            out = subprocess.run(
                [sys.executable, str(script)],
                env={**env, "RAY_ADDRESS": f"127.0.0.1:{port}"},
                capture_output=True, text=True, timeout=180,
            )  # fmt: skip
            if out.returncode == 0:
                break
            time.sleep(5)
        assert out is not None and out.returncode == 0, out.stderr[-3000:]
        res = json.loads(out.stdout.strip().splitlines()[-1])
        assert res["won"] == 4 and res["gcs"].endswith(f":{port}")
    finally:
        procs = _tree(head.pid)
        for p in procs:
            with contextlib.suppress(psutil.Error):
                p.kill()
        psutil.wait_procs(procs, timeout=10)
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.mark.slow
def test_64_envs_memory_ray_vs_process(local_ray, corridor_id):
    """64 envs (8 per worker) on a small machine: no deadlock, same episodes, memory measured.

    The TextWorld numbers of docs/scaling.md come from ``agentgym bench memory`` (the same
    function on textworld/Simple-v0); this test keeps the toy env so that it needs no games.
    """
    from agentgym.benchmarks.memory import measure_pool_memory

    rows = {
        b: measure_pool_memory(corridor_id, 64, backend=b, num_workers=8, episodes=128)
        for b in ("process", "ray")
    }
    for b, r in rows.items():
        print(b, r)
        assert r["episodes"] == 128 and r["crashed"] == 0
        assert r["workers"] == 8 and r["rss_per_env_mib"] > 0 and r["uss_mib"] > 0
    assert rows["ray"]["trajectory_digest"] == rows["process"]["trajectory_digest"]


def _ids() -> set[str]:
    return {s.id for s in agentgym.all_specs()}


@pytest.mark.slow
def test_textworld_same_trajectories_on_both_backends(local_ray):
    """The real TextWorld engine inside Ray actors plays exactly what it plays in processes."""
    pytest.importorskip("textworld")
    env_id = "textworld/Custom-w2-o3-q4-v0"
    if env_id not in _ids():
        pytest.skip(f"{env_id} is not registered")
    kwargs = {"num_games": 2}
    results = {}
    for backend in ("process", "ray"):
        with EnvPool(env_id, 4, num_workers=2, backend=backend, env_kwargs=kwargs) as pool:
            trajs = rollout(pool, RandomPolicy(1), num_groups=3, group_size=2, seed=0, run_id="tw")
        results[backend] = _comparable(trajs)
    assert sum(len(t["turns"]) for t in results["ray"]) >= 6
    assert results["ray"] == results["process"]
