"""Tests of the core: step API enforcement, registry, checker, trajectory records, packaging."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import agentgym
from agentgym.core import Env, Observation, ResetNeeded
from agentgym.trajectory import Trajectory, TrajectoryWriter, Turn, read_trajectories

ROOT = Path(__file__).resolve().parents[1]


def test_import_is_light() -> None:
    code = "import sys, agentgym; print(sorted(m for m in ('torch','textworld','docker','playwright','transformers','ray') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_make_enforces_turn_limit_as_truncation(corridor_id: str) -> None:
    env = agentgym.make(corridor_id, max_turns=3)
    obs, info = env.reset(seed=3)  # corridor of length 5: cannot be won in 3 turns
    assert info["task_id"] == "corridor-3"
    for _ in range(2):
        _, _, term, trunc, _ = env.step("right")
        assert not term and not trunc
    _, _, term, trunc, info = env.step("right")
    assert trunc and not term and info["turn_limit"]
    with pytest.raises(ResetNeeded):
        env.step("right")
    env.close()
    env.close()
    assert env.unwrapped.closed == 1  # idempotent close reaches the env once


def test_step_before_reset_and_non_string_action(corridor_id: str) -> None:
    with agentgym.make(corridor_id) as env:
        with pytest.raises(ResetNeeded):
            env.step("right")
        env.reset(seed=0)
        with pytest.raises(TypeError, match="actions are strings"):
            env.step(3)  # type: ignore[arg-type]


def test_overrides_and_spec(corridor_id: str) -> None:
    env = agentgym.make(corridor_id, num_tasks=1)
    assert env.spec is not None and env.spec.kwargs["num_tasks"] == 1
    assert env.unwrapped.num_tasks == 1
    assert agentgym.spec(corridor_id).kwargs["num_tasks"] == 4  # registry unchanged
    env.close()


def test_unknown_id_says_how_to_fix(corridor_id: str) -> None:
    with pytest.raises(agentgym.UnknownEnvError) as e:
        agentgym.make("test/Corridr-v0")
    msg = str(e.value)
    assert "Did you mean 'test/Corridor-v0'" in msg and "agentgym envs" in msg


def test_register_validates_input() -> None:
    with pytest.raises(ValueError, match="family/Name-vN"):
        agentgym.register("NoFamily", "x:y")
    with pytest.raises(ValueError, match="package.module:ClassName"):
        agentgym.register("x/Y-v0", "no_colon")
    with pytest.raises(ValueError, match="already registered"):
        agentgym.register("test/Dup-v0", "a:b")
        agentgym.register("test/Dup-v0", "a:b")


def test_missing_dependency_names_the_extra() -> None:
    agentgym.register(
        "test/Missing-v0", "not_a_real_module_xyz:Env", extras="webshop", override=True
    )
    with pytest.raises(ImportError, match=r"pip install 'agentgym\[webshop\]'"):
        agentgym.make("test/Missing-v0")


def test_check_env_passes_on_a_conforming_env(corridor_id: str) -> None:
    agentgym.check_env(agentgym.make(corridor_id))


class _Nondeterministic(Env):
    def __init__(self) -> None:
        self.n = 0

    def reset(self, *, seed=None, options=None):
        self.n += 1
        return Observation(text=f"reset number {self.n}"), {"task_id": "t"}

    def step(self, action):
        return Observation(text="x"), 0.0, False, False, {"won": False, "score": 0, "valid": True}


class _RaisesOnBadAction(_Nondeterministic):
    def reset(self, *, seed=None, options=None):
        return Observation(text="start", admissible_actions=("go",)), {"task_id": "t"}

    def step(self, action):
        if action != "go":
            raise ValueError("bad action")
        return Observation(text="x"), 0.0, True, False, {"won": True, "score": 1, "valid": True}


def test_check_env_catches_violations() -> None:
    with pytest.raises(agentgym.EnvCheckError, match="different first observations"):
        agentgym.check_env(_Nondeterministic())
    with pytest.raises(ValueError, match="bad action"):
        agentgym.check_env(_RaisesOnBadAction())


def test_check_env_over_every_registered_spec_is_in_its_family_tests() -> None:
    # Every built-in family runs check_env over its specs in tests/environments; this guards
    # that no family registers an id without a test module to do so.
    # Built-in = the entry point lives in agentgym's own package (test modules register toy
    # envs of their own, which this guard is not about).
    families = {
        s.family
        for s in agentgym.all_specs()
        if isinstance(s.entry_point, str) and s.entry_point.startswith("agentgym.")
    }
    assert {"textworld", "alfworld", "webshop", "swe"} <= families
    test_dir = ROOT / "tests" / "environments"
    for fam in families:
        assert any(test_dir.glob(f"test_{fam}*.py")), f"no tests/environments/test_{fam}*.py"


def _traj(i: int, reward: float = 1.0) -> Trajectory:
    return Trajectory(
        id=f"t{i}",
        group="g0",
        env="test/Corridor-v0",
        task="corridor-0",
        seed=0,
        turns=[Turn("o1", "right", 0.0, "a", True), Turn("o2", "right", reward, "b", True)],
        won=reward > 0,
    )


def test_trajectory_roundtrip_and_schema(tmp_path: Path) -> None:
    path = tmp_path / "runs.jsonl"
    with TrajectoryWriter(path) as w:
        w.write(_traj(0))
        w.write(_traj(1, 0.0))
    lines = path.read_text().splitlines()
    d = json.loads(lines[0])
    assert set(d) >= {"id", "group", "env", "task", "seed", "turns", "won", "return", "truncated"}
    assert set(d["turns"][0]) == {"observation", "action", "reward", "anchor", "valid", "info"}
    assert d["return"] == 1.0
    back = read_trajectories(path)
    assert [t.id for t in back] == ["t0", "t1"] and back[1].won is False
    assert back[0].to_dict() == d


def test_trajectory_writer_survives_torn_line(tmp_path: Path) -> None:
    path = tmp_path / "runs.jsonl"
    path.write_text(json.dumps(_traj(0).to_dict()) + "\n" + '{"id": "torn", "tu')
    with TrajectoryWriter(path) as w:
        w.write(_traj(2))
    ids = [t.id for t in read_trajectories(path)]
    assert ids == ["t0", "t2"]


def test_concurrent_writers_do_not_interleave(tmp_path: Path) -> None:
    path = tmp_path / "runs.jsonl"
    code = (
        "import sys; sys.path.insert(0, %r)\n"
        "from agentgym.trajectory import TrajectoryWriter\n"
        "w = TrajectoryWriter(%r)\n"
        "for i in range(300): w.write({'id': f'{sys.argv[1]}-{i}', 'turns': [{'observation': 'x' * 5000}]})\n"
    ) % (str(ROOT), str(path))
    procs = [subprocess.Popen([sys.executable, "-c", code, str(k)]) for k in range(3)]
    for p in procs:
        assert p.wait() == 0
    lines = path.read_text().splitlines()
    assert len(lines) == 900
    assert len({json.loads(x)["id"] for x in lines}) == 900


def test_wheel_installs_under_the_agentgym_namespace(tmp_path: Path) -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        pytest.skip(f"cannot build a wheel here: {out.stderr[-300:]}")
    import zipfile

    (wheel,) = tmp_path.glob("agentgym-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/", 1)[0] for n in names if not n.split("/", 1)[0].endswith(".dist-info")}
    assert tops == {"agentgym"}, tops
    assert "agentgym/environments/__init__.py" in names
    assert "agentgym/trainers/__init__.py" in names
    assert "agentgym/sandboxes/__init__.py" in names


def test_plugins_load_from_entry_points(tmp_path: Path) -> None:
    # A real installed distribution with an entry point in the agentgym.environments group.
    site = tmp_path / "site"
    pkg = site / "myplugin"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(
        "import agentgym\n"
        "def register_envs():\n"
        "    agentgym.register('myplugin/Corridor-v0', 'core_toy_env:Corridor', max_turns=5)\n"
    )
    dist = site / "myplugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: myplugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[agentgym.environments]\nmyplugin = myplugin:register_envs\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), str(ROOT / "tests")]))
    code = (
        "import agentgym\n"
        "assert 'myplugin/Corridor-v0' not in agentgym.registry\n"
        "print(agentgym.load_plugins())\n"
        "e = agentgym.make('myplugin/Corridor-v0'); e.reset(seed=1); print(e.spec.max_turns)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert "myplugin" in out.stdout and out.stdout.strip().endswith("5")
