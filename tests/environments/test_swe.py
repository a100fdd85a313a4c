"""The SWE family: tool-call parsing, the built-in suite, SWEEnv episodes and `agentgym swe eval`.

The Docker tests share one base image (built only if missing) and run the grading in parallel.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from agentgym.environments.swe.env import parse_tool_call
from agentgym.environments.swe.grading import parse_pytest_log
from agentgym.environments.swe.tasks import SWETask, builtin_tasks, load_tasks, unified_diff


@pytest.fixture(scope="module")
def tasks(tmp_path_factory) -> list[SWETask]:
    return builtin_tasks(tmp_path_factory.mktemp("suite"))


@pytest.fixture(scope="module")
def docker_ready() -> None:
    from agentgym.sandboxes.docker_backend import docker_available

    if not docker_available():
        pytest.skip("no Docker engine reachable (start one with scripts/setup_docker.sh)")
    from agentgym.sandboxes.images import ensure_base_image

    ensure_base_image()


# -- pure parts ------------------------------------------------------------------------------


def test_parse_tool_calls() -> None:
    assert parse_tool_call("bash: ls -la")[0] == {"tool": "bash", "command": "ls -la"}
    assert parse_tool_call("bash: cat <<EOF\na\nEOF")[0]["command"] == "cat <<EOF\na\nEOF"
    assert parse_tool_call("view: a/b.py:3-9")[0] == {
        "tool": "view",
        "path": "a/b.py",
        "start": 3,
        "end": 9,
    }
    assert parse_tool_call("view: a/b.py")[0] == {"tool": "view", "path": "a/b.py"}
    assert parse_tool_call("create: x.py\nprint(1)\n")[0]["content"] == "print(1)"
    call = parse_tool_call("replace: m.py\n<<<<<<< OLD\nx = 1\n=======\nx = 2\n>>>>>>> NEW")[0]
    assert call == {"tool": "replace", "path": "m.py", "old": "x = 1", "new": "x = 2"}
    assert parse_tool_call("submit")[0] == {"tool": "submit"}
    assert parse_tool_call('{"tool": "bash", "command": "pwd"}')[0]["command"] == "pwd"
    for bad in [
        "",
        "xyzzy",
        "rm: -rf /",
        '{"tool": "fly"}',
        "{not json",
        "replace: m.py\nx",
        '{"tool": "bash"}',
    ]:
        call, err = parse_tool_call(bad)
        assert call is None and err, bad


def test_declared_tools_are_valid_and_are_the_json_form() -> None:
    """The spec declares the five actions as OpenAI tools; check_env's schema check accepts
    them (the Docker test runs check_env on the env itself), and a model's Hermes call of each,
    read by the policies' parser, is a valid tool call for the env."""
    import dataclasses

    import agentgym
    from agentgym.checker import EnvCheckError, check_env
    from agentgym.environments.swe.tools import SWE_TOOLS
    from agentgym.tools import reply_action, tool_names

    assert agentgym.spec("swe/Builtin-v0").tools == SWE_TOOLS
    assert agentgym.spec("swe/Dataset-v0").tools == SWE_TOOLS
    import tool_toy_env  # noqa: F401  (a Docker-free env to carry the tools through check_env)

    carrier = agentgym.spec("test/ToolDoors-v0")
    check_env(agentgym.make(dataclasses.replace(carrier, tools=SWE_TOOLS)))
    broken = [dict(t) for t in SWE_TOOLS]
    broken[1] = {"type": "function", "function": {**SWE_TOOLS[1]["function"], "name": "view file"}}
    with pytest.raises(EnvCheckError, match=r"spec tools\[1\].function.name is 'view file'"):
        check_env(agentgym.make(dataclasses.replace(carrier, tools=tuple(broken))))

    examples = {
        "bash": {"command": "python3 -m pytest -q"},
        "view": {"path": "pkg/mod.py", "start": 3, "end": 9},
        "create": {"path": "notes.txt", "content": "a\nb\n"},
        "replace": {"path": "pkg/mod.py", "old": "x = 1", "new": "x = 2"},
        "submit": {},
    }
    assert sorted(examples) == sorted(tool_names(SWE_TOOLS))
    for tool in SWE_TOOLS:
        name, params = tool["function"]["name"], tool["function"]["parameters"]
        args = examples[name]
        assert set(args) <= set(params["properties"])
        reply = f"<tool_call>{json.dumps({'name': name, 'arguments': args})}</tool_call>"
        action, ok, problem = reply_action(reply)
        assert ok and not problem
        assert parse_tool_call(action) == ({"tool": name, **args}, "")
        for k in params["required"]:  # each required argument is required by the env too
            rest = {a: v for a, v in args.items() if a != k}
            assert parse_tool_call(json.dumps({"tool": name, **rest}))[0] is None, (name, k)
    call, err = parse_tool_call('{"tool": "view", "path": "a.py", "start": "three"}')
    assert call is None and "'start' must be a line number" in err


def test_parse_pytest_log() -> None:
    log = (
        "PASSED tests/t.py::test_a\nFAILED tests/t.py::test_b - AssertionError: x\n"
        "ERROR tests/t.py::test_c\n==== 1 failed ====\n"
    )
    assert parse_pytest_log(log) == {
        "tests/t.py::test_a": "PASSED",
        "tests/t.py::test_b": "FAILED",
        "tests/t.py::test_c": "ERROR",
    }


def test_builtin_suite_is_swe_bench_format(tasks: list[SWETask], tmp_path: Path) -> None:
    assert len(tasks) >= 20
    assert len({t.repo for t in tasks}) >= 5
    assert len({t.instance_id for t in tasks}) == len(tasks)
    for t in tasks:
        assert t.FAIL_TO_PASS and t.PASS_TO_PASS
        assert not set(t.FAIL_TO_PASS) & set(t.PASS_TO_PASS)
        assert t.patch.startswith("diff --git") and t.test_patch.startswith("diff --git")
        assert len(t.base_commit) == 40
        log = subprocess.run(
            ["git", "log", "--oneline"], cwd=t.repo_dir, capture_output=True, text=True, check=True
        ).stdout
        assert len(log.splitlines()) == 1  # the history does not reveal the fix
    # base_commit is reproducible: building again elsewhere gives the same commits.
    again = builtin_tasks(tmp_path / "again")
    assert [t.base_commit for t in again] == [t.base_commit for t in tasks]
    # JSONL round trip (SWE-bench ships the test lists as JSON strings: accepted too).
    path = tmp_path / "tasks.jsonl"
    rows = [t.to_dict() for t in tasks]
    rows[0]["FAIL_TO_PASS"] = json.dumps(rows[0]["FAIL_TO_PASS"])
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert load_tasks(path) == tasks


# -- against Docker ----------------------------------------------------------------------------


@pytest.mark.docker
def test_env_passes_check_env(docker_ready) -> None:
    import agentgym
    from agentgym.checker import check_env

    check_env(agentgym.make("swe/Builtin-v0", tasks=["mathx-1"]))


@pytest.mark.docker
def test_hermes_tool_calls_drive_the_env(docker_ready) -> None:
    import agentgym
    from agentgym.tools import reply_action

    with agentgym.make("swe/Builtin-v0") as env:
        env.reset(options={"task": "intervals-4"})
        args = {"path": "intervals/ranges.py", "start": 20, "end": 24}
        action, ok, _ = reply_action(
            f"<tool_call>{json.dumps({'name': 'view', 'arguments': args})}</tool_call>"
        )
        o, r, te, tr, i = env.step(action)
        assert ok and i["valid"] and "lines 20-24" in o.text
        action, ok, problem = reply_action('<tool_call>{"name": "bash", "arguments": {</tool_call>')
        o, r, te, tr, i = env.step(action)  # a malformed call: the policy sends no action
        assert not ok and problem and not i["valid"] and not te and "empty action" in o.text


@pytest.mark.docker
def test_episode_with_tools_and_expert(docker_ready) -> None:
    import agentgym

    with agentgym.make("swe/Builtin-v0") as env:
        obs, info = env.reset(options={"task": "intervals-4"})
        assert info["task_id"] == "intervals-4" and "intervals/ranges.py" in obs.text
        clean = obs.anchor
        o, r, te, tr, i = env.step("view: intervals/ranges.py:20-24")
        assert i["valid"] and "  22  " in o.text.replace("   ", "  ") and o.anchor == clean
        o, r, te, tr, i = env.step("bash: python3 -m pytest -q tests 2>&1 | tail -1")
        assert "passed" in o.text and i["reward_channels"]["tests_run"] and not te
        o, r, te, tr, i = env.step(
            "replace: intervals/ranges.py\n<<<<<<< OLD\nno such text\n=======\nx\n>>>>>>> NEW"
        )
        assert not i["valid"] and "does not occur" in o.text
        assert i["metrics"] == {"completion": 0.0, "modification": 0.0, "resolution": 0.0}
        o, r, te, tr, i = env.step('{"tool": "create", "path": "notes.txt", "content": "hi"}')
        assert i["valid"] and i["reward_channels"]["repo_modified"] and o.anchor != clean
        assert i["metrics"] == {"completion": 0.0, "modification": 1.0, "resolution": 0.0}
        o, r, te, tr, i = env.step("bash: yes | head -c 100000")
        assert len(o.text) <= env.unwrapped.max_obs_chars + 100 and "cut" in o.text
        # Submitting a wrong change: tests fail, no reward.
        o, r, te, tr, i = env.step("submit")
        assert te and r == 0.0 and i["outcome"] == "tests_fail"
        assert i["reward_channels"] == {
            "resolved": 0.0,
            "submitted": 1.0,
            "tool_valid": 1.0,
            "repo_modified": 1.0,
            "tests_run": 1.0,
        }
        assert i["metrics"] == {"completion": 1.0, "modification": 1.0, "resolution": 0.0}
        # Same task again: the warm sandbox is reset to the clean checkout.
        obs, _ = env.reset(options={"task": "intervals-4"})
        assert obs.anchor == clean
        steps = 0
        while True:
            o, r, te, tr, i = env.step(env.expert_action())
            steps += 1
            if te or tr:
                break
        assert steps == 2 and r == 1.0 and i["won"]
        assert i["outcome"] == "resolved" and i["reward_channels"]["resolved"] == 1.0
        assert i["grade"]["fail_to_pass"]["failure"] == []
        # Submitting without changes: an empty patch.
        env.reset(options={"task": "csvlite-2"})
        o, r, te, tr, i = env.step("submit")
        assert te and r == 0.0 and i["outcome"] == "empty_patch"
        assert i["reward_channels"]["repo_modified"] == 0.0


@pytest.mark.docker
def test_verify_expert_runs_the_tests_before_submitting(docker_ready) -> None:
    import agentgym
    from agentgym.environments.swe.env import EXPERT_TEST_ACTION

    with pytest.raises(ValueError, match="unknown expert"):
        agentgym.make("swe/Builtin-v0", expert="oracle")
    with agentgym.make("swe/Builtin-v0", tasks=["textkit-1"], expert="verify") as env:
        env.reset(seed=0)
        actions, infos = [], []
        while True:
            actions.append(env.expert_action())
            o, r, te, tr, i = env.step(actions[-1])
            infos.append(i)
            if te or tr:
                break
        assert actions[0].startswith("bash: git apply") and actions[1:] == [
            EXPERT_TEST_ACTION,
            "submit",
        ]
        assert r == 1.0 and i["outcome"] == "resolved"
        assert [x["reward_channels"]["tests_run"] for x in infos] == [0.0, 1.0, 1.0]
        assert [x["reward_channels"]["repo_modified"] for x in infos] == [1.0, 1.0, 1.0]
        assert [x["metrics"]["completion"] for x in infos] == [0.0, 0.0, 1.0]


@pytest.mark.docker
def test_noop_patch_leaves_fail_to_pass_failing(docker_ready, tasks, tmp_path: Path) -> None:
    """The planted bug is real: with a patch that changes nothing relevant, tests run and the
    FAIL_TO_PASS tests fail while PASS_TO_PASS pass (one task per repository)."""
    from agentgym.environments.swe.grading import evaluate

    subset = {t.repo: t for t in tasks}.values()
    preds = {}
    for t in subset:
        readme = (Path(t.repo_dir) / "README.md").read_text()
        preds[t.instance_id] = {
            "instance_id": t.instance_id,
            "model_patch": unified_diff("README.md", readme, readme + "x\n"),
        }
    summary = evaluate(list(subset), preds, tmp_path, workers=4)
    assert summary["resolved_instances"] == 0 and summary["error_instances"] == 0
    for t in subset:
        rep = json.loads((tmp_path / "reports" / f"{t.instance_id}.json").read_text())
        assert rep["status"] == "unresolved" and rep["patch_applied"]
        assert rep["fail_to_pass"]["success"] == [], t.instance_id
        assert rep["pass_to_pass"]["failure"] == [], t.instance_id


@pytest.mark.docker
def test_swe_eval_cli_gold_resolves_all_and_empty_none(docker_ready, tmp_path: Path) -> None:
    export = subprocess.run(
        [
            sys.executable,
            "-m",
            "agentgym.cli",
            "swe",
            "export",
            "--out",
            str(tmp_path / "tasks.jsonl"),
            "--gold",
            str(tmp_path / "gold.jsonl"),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "wrote" in export.stdout
    empty = [
        {
            "instance_id": json.loads(ln)["instance_id"],
            "model_patch": "",
            "model_name_or_path": "empty",
        }
        for ln in (tmp_path / "tasks.jsonl").read_text().splitlines()
    ]
    (tmp_path / "empty.jsonl").write_text("".join(json.dumps(p) + "\n" for p in empty))
    for name, want in (("gold", 1.0), ("empty", 0.0)):
        out = tmp_path / f"out-{name}"
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "agentgym.cli",
                "swe",
                "eval",
                "--dataset",
                str(tmp_path / "tasks.jsonl"),
                "--predictions",
                str(tmp_path / f"{name}.jsonl"),
                "--out",
                str(out),
                "--workers",
                "4",
            ],
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert r.returncode == 0, r.stderr
        summary = json.loads((out / "summary.json").read_text())
        assert summary["submitted_instances"] >= 20
        assert summary["resolved_rate"] == want, summary["statuses"]
        assert summary["error_instances"] == 0
        assert len(list((out / "logs").glob("*.log"))) == summary["submitted_instances"]
        assert "resolved" in r.stdout  # the table
