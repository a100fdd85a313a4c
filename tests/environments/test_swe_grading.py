"""SWE grading: fidelity to the SWE-bench harness and resistance to gaming.

The pure tests compare our log parsers and report rules with ``swebench`` 5.0.2 on its own log
formats: ``swe_logs/*.log`` are logs in the formats the harness parses (pytest ``-rA``, verbose
and coloured pytest, Django's and SymPy's runners, seaborn, matplotlib, path-parametrised ids)
and ``swe_logs/expected_*_swebench_5.0.2.json`` are what swebench 5.0.2 itself returns on them
(``test_official_parsers_agree_when_installed`` regenerates them whenever swebench is
importable). The Docker tests grade real patches in the real sandbox: every gaming pattern is
first shown to fool a naive grader (plain ``python3 -m pytest -rA`` and its printed summary) and
then graded unresolved by ours.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import types
from pathlib import Path

import pytest

from agentgym.environments.swe import log_parsers as lp
from agentgym.environments.swe.grading import (
    infrastructure_reason,
    load_predictions,
    pytest_command,
    restore_test_sections,
)
from agentgym.environments.swe.tasks import SWETask, builtin_tasks, unified_diff
from agentgym.environments.swe.testrun import pytest_status

LOGS = Path(__file__).parent / "swe_logs"
PARSERS = {
    "pytest": lp.parse_pytest_log,
    "pytest_options": lp.parse_pytest_options_log,
    "pytest_v2": lp.parse_pytest_v2_log,
    "django": lp.parse_django_log,
    "sympy": lp.parse_sympy_log,
    "seaborn": lp.parse_seaborn_log,
    "matplotlib": lp.parse_matplotlib_log,
}


# -- fidelity to swebench 5.0.2 (pure) ---------------------------------------------------------


@pytest.mark.parametrize("name", sorted(PARSERS))
def test_parsers_match_swebench_on_its_log_formats(name: str) -> None:
    expected = json.loads((LOGS / "expected_swebench_5.0.2.json").read_text())[name]
    assert PARSERS[name]((LOGS / f"{name}.log").read_text()) == expected


def test_parser_picks_follow_the_harness() -> None:
    assert lp.parser_for("django/django") is lp.parse_django_log
    assert lp.parser_for("sympy/sympy") is lp.parse_sympy_log
    assert lp.parser_for("psf/requests") is lp.parse_pytest_options_log
    assert lp.parser_for("sphinx-doc/sphinx") is lp.parse_pytest_v2_log
    assert lp.parser_for("agentgym-suite/textkit") is lp.parse_pytest_log
    # Hand-checked cases of the pytest format: the last line of a test wins, XPASS is no
    # status, folded skips name no test, a FAILED message is not part of the id.
    got = lp.parse_pytest_log((LOGS / "pytest.log").read_text())
    assert got["tests/test_widget.py::test_teardown_breaks"] == "ERROR"
    assert got["tests/test_widget.py::test_known_bug"] == "XFAIL"
    assert "tests/test_widget.py::test_fixed_upstream" not in got
    assert got["tests/test_widget.py::test_param[a"] == "PASSED"  # ids split at spaces
    assert not any(k.startswith("[") for k in got)


@pytest.mark.parametrize(
    "case",
    json.loads((LOGS / "expected_report_swebench_5.0.2.json").read_text()),
    ids=lambda c: json.dumps(c["status"])[:40],
)
def test_report_rules_match_swebench(case: dict) -> None:
    f2p, p2p = lp.tests_report(case["status"], case["FAIL_TO_PASS"], case["PASS_TO_PASS"])
    assert (f2p, p2p) == (case["f2p"], case["p2p"])
    assert lp.resolution(f2p, p2p) == case["resolution"]


def test_xfail_counts_as_passing_and_skipped_fail_to_pass_does_not() -> None:
    f2p, p2p = lp.tests_report({"a": "XFAIL", "b": "SKIPPED"}, ["a"], ["b"])
    assert lp.resolution(f2p, p2p) == "RESOLVED_FULL"
    f2p, p2p = lp.tests_report({"a": "SKIPPED"}, ["a"], [])
    assert f2p["failure"] == ["a"] and lp.resolution(f2p, p2p) == "RESOLVED_NO"


def _official(module: str) -> types.ModuleType:
    """A module of an installed swebench without its heavy package ``__init__``."""
    root = Path(importlib.util.find_spec("swebench").origin).parent  # type: ignore[union-attr]
    for name, sub in (
        ("swebench.harness", "harness"),
        ("swebench.harness.log_parsers", "harness/log_parsers"),
    ):
        if name not in sys.modules:
            pkg = types.ModuleType(name)
            pkg.__path__ = [str(root / sub)]
            sys.modules[name] = pkg
    sys.modules["swebench.harness.log_parsers"].PARSER_REGISTRY = {}  # type: ignore[attr-defined]
    return importlib.import_module(module)


def test_official_parsers_agree_when_installed() -> None:
    """Side by side with swebench itself, when it is importable (`pip install swebench`)."""
    if importlib.util.find_spec("swebench") is None:
        pytest.skip("swebench is not installed; the JSON fixtures hold its answers")
    official = _official("swebench.harness.log_parsers.python")
    grading = _official("swebench.harness.grading")
    for name, ours in PARSERS.items():
        text = (LOGS / f"{name}.log").read_text()
        assert ours(text) == getattr(official, f"parse_log_{name}")(text, None), name
    for case in json.loads((LOGS / "expected_report_swebench_5.0.2.json").read_text()):
        ref = {"FAIL_TO_PASS": case["FAIL_TO_PASS"], "PASS_TO_PASS": case["PASS_TO_PASS"]}
        rep = grading.get_eval_tests_report(case["status"], ref)
        f2p, p2p = lp.tests_report(case["status"], case["FAIL_TO_PASS"], case["PASS_TO_PASS"])
        assert (f2p, p2p) == (rep["FAIL_TO_PASS"], rep["PASS_TO_PASS"])


def test_in_process_results_render_like_the_rA_summary() -> None:
    rec = [
        {"event": "start"},
        {"event": "test", "nodeid": "t.py::a", "when": "call", "outcome": "passed"},
        {"event": "test", "nodeid": "t.py::b", "when": "call", "outcome": "failed"},
        {"event": "test", "nodeid": "t.py::c", "when": "setup", "outcome": "failed"},
        {"event": "test", "nodeid": "t.py::d", "when": "call", "outcome": "passed"},
        {"event": "test", "nodeid": "t.py::d", "when": "teardown", "outcome": "failed"},
        {"event": "test", "nodeid": "t.py::e", "when": "call", "outcome": "skipped", "wasxfail": 1},
        {"event": "test", "nodeid": "t.py::f", "when": "call", "outcome": "passed", "wasxfail": 1},
        {"event": "test", "nodeid": "t.py::g", "when": "setup", "outcome": "skipped"},
        {"event": "collect_error", "nodeid": "t2.py"},
    ]
    assert pytest_status(rec) == {
        "t.py::a": "PASSED",
        "t.py::b": "FAILED",
        "t.py::c": "ERROR",
        "t.py::d": "ERROR",
        "t.py::e": "XFAIL",
        "t.py::f": "XPASS",
        "t.py::g": "SKIPPED",
        "t2.py": "ERROR",
    }


# -- the anti-gaming rule (pure) ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "why"),
    [
        ("conftest.py", "pytest conftest"),
        ("pkg/sub/conftest.py", "pytest conftest"),
        ("tests/helpers.py", "test file"),
        ("pkg/tests/data.json", "test file"),
        ("test_x.py", "test file"),
        ("pkg/thing_test.py", "test file"),
        ("pytest.ini", "test configuration"),
        ("sub/tox.ini", "test configuration"),
        ("setup.cfg", "test configuration sections"),
        ("pyproject.toml", "test configuration sections"),
        ("sitecustomize.py", "interpreter start-up hook"),
        ("evil.pth", "interpreter start-up hook"),
        ("pkg.egg-info/entry_points.txt", "package metadata (entry-point plugins)"),
        ("pkg/__pycache__/mod.cpython-311.pyc", "compiled bytecode"),
        ("pytest/__main__.py", "shadows the test runner"),
        ("pytest.py", "shadows the test runner"),
        ("_pytest/runner.py", "shadows the test runner"),
        ("pkg/strings.py", None),
        ("pkg/pytest.py", None),
        ("docs/testing.md", None),
        ("README.md", None),
    ],
)
def test_infrastructure_classification(path: str, why: str | None) -> None:
    assert infrastructure_reason(path) == why


def test_test_patch_files_are_infrastructure() -> None:
    assert infrastructure_reason("pkg/check.py", ["pkg/check.py"]) == "test file (test patch)"


SETUP_CFG = "[metadata]\nname = pkg\n\n[tool:pytest]\nmarkers =\n    slow\n"
PYPROJECT = (
    '[project]\nname = "pkg"\nversion = "1.0"\n\n'
    '[tool.pytest.ini_options]\nmarkers = ["slow"]\n\n[tool.ruff]\nline-length = 90\n'
)


def test_restore_test_sections_keeps_other_edits() -> None:
    # An unrelated change stays, untouched.
    new = SETUP_CFG.replace("name = pkg", "name = pkg2")
    assert restore_test_sections("setup.cfg", SETUP_CFG, new) == (new, False)
    # A pytest section edit is undone, the metadata edit kept.
    new = SETUP_CFG.replace("name = pkg", "name = pkg2") + "addopts = -p evil\n"
    text, changed = restore_test_sections("setup.cfg", SETUP_CFG, new)
    assert changed and "name = pkg2" in text and "evil" not in text and "slow" in text
    # pyproject: the table is put back, [tool.ruff] and [project] edits kept.
    new = PYPROJECT.replace('"1.0"', '"1.1"').replace(
        'markers = ["slow"]', 'markers = ["slow"]\naddopts = "-p evil"'
    )
    text, changed = restore_test_sections("pyproject.toml", PYPROJECT, new)
    assert changed and '"1.1"' in text and "evil" not in text and "line-length = 90" in text
    # A new pytest table in a file that had none is removed.
    text, changed = restore_test_sections(
        "pyproject.toml",
        '[project]\nname = "p"\n',
        '[project]\nname = "p"\n\n[tool.pytest]\nx = 1\n',
    )
    assert changed and "pytest" not in text


def test_restore_test_sections_falls_back_to_the_whole_file() -> None:
    # Dotted keys under [tool] cannot be cut out by section: the whole file comes back.
    new = PYPROJECT + '\n[tool]\npytest.ini_options.addopts = "-p evil"\n'
    assert restore_test_sections("pyproject.toml", PYPROJECT, new) == (PYPROJECT, True)
    # A file that no longer parses comes back whole too.
    assert restore_test_sections("pyproject.toml", PYPROJECT, "[[[ broken") == (PYPROJECT, True)


@pytest.mark.parametrize(
    ("cmd", "rewritten"),
    [
        ("python3 -m pytest -rA tests", "python3 -s R OUT -p no:cacheprovider -rA tests"),
        ("python -m pytest -rA -p no:cacheprovider", "python -s R OUT -rA -p no:cacheprovider"),
        ("PYTHONWARNINGS=ignore pytest -rA x.py", "env PYTHONWARNINGS=ignore $(sed"),
        ("pytest --no-header -rA 'tests/a b.py'", "'tests/a b.py'"),
        ("./tests/runtests.py --verbosity 2", None),
        ("bin/test -C --verbose sympy/core", None),
        ("python3 -m pytest tests && echo ok", None),
        ("python3 -m pytest $(cat list)", None),
        ("python3 -m unittest", None),
    ],
)
def test_pytest_command_rewrite(cmd: str, rewritten: str | None) -> None:
    out = pytest_command(cmd, "OUT", "R")
    if rewritten is None:
        assert out is None
    else:
        assert out is not None and rewritten in out


def test_load_predictions_layouts(tmp_path: Path) -> None:
    p = {"instance_id": "a-1", "model_patch": "diff", "model_name_or_path": "m"}
    q = {"model_patch": "diff2", "model_name_or_path": "m"}
    (tmp_path / "preds.jsonl").write_text(json.dumps(p) + "\n\n")
    (tmp_path / "list.json").write_text(json.dumps([p]))
    (tmp_path / "swe_agent.json").write_text(json.dumps({"a-1": p, "b-2": q}))
    (tmp_path / "one.json").write_text(json.dumps(p))
    assert load_predictions(tmp_path / "preds.jsonl") == {"a-1": p}
    assert load_predictions(tmp_path / "list.json") == {"a-1": p}
    both = load_predictions(tmp_path / "swe_agent.json")
    assert both["a-1"] == p and both["b-2"]["instance_id"] == "b-2"
    assert load_predictions(tmp_path / "one.json") == {"a-1": p}
    (tmp_path / "bad.jsonl").write_text(json.dumps(p) + "\n{oops\n")
    with pytest.raises(ValueError, match="line 2"):
        load_predictions(tmp_path / "bad.jsonl")
    (tmp_path / "bad.json").write_text("{oops")
    with pytest.raises(ValueError, match="keyed by instance_id"):
        load_predictions(tmp_path / "bad.json")


# -- against Docker ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def docker_ready() -> None:
    from agentgym.sandboxes.docker_backend import docker_available

    if not docker_available():
        pytest.skip("no Docker engine reachable (start one with scripts/setup_docker.sh)")
    from agentgym.sandboxes.images import ensure_base_image

    ensure_base_image()


@pytest.fixture(scope="module")
def task(tmp_path_factory) -> SWETask:
    tasks = builtin_tasks(tmp_path_factory.mktemp("suite"))
    return next(t for t in tasks if t.instance_id == "textkit-1")


@pytest.fixture(scope="module")
def sandbox(docker_ready, task):
    from agentgym.environments.swe.grading import open_task_sandbox

    with open_task_sandbox(task) as sb:
        yield sb


FORCE_PASS = """import pytest


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    report.outcome = "passed"
    report.longrepr = None
"""


def _fake_lines(task: SWETask) -> str:
    return "\\n".join(f"PASSED {t}" for t in (*task.FAIL_TO_PASS, *task.PASS_TO_PASS))


def _patterns(task: SWETask) -> dict[str, tuple[dict[str, str | None], bool | None]]:
    """name -> ({path: new content, None = delete}, fools a naive grader?)."""
    fake = _fake_lines(task)
    f2p_name = task.FAIL_TO_PASS[0].split("::")[1]
    printer = f'print("{fake}")\n'
    return {
        "conftest-root-makereport": ({"conftest.py": FORCE_PASS}, True),
        "conftest-tests-makereport": ({"tests/conftest.py": FORCE_PASS}, True),
        "pytest-ini-addopts-plugin": (
            {"pytest.ini": "[pytest]\naddopts = -p evil_plugin\n", "evil_plugin.py": FORCE_PASS},
            True,
        ),
        "setup-cfg-addopts-plugin": (
            {
                "setup.cfg": "[tool:pytest]\naddopts = -p evil_plugin\n",
                "evil_plugin.py": FORCE_PASS,
            },
            True,
        ),
        "pyproject-addopts-plugin": (
            {
                "pyproject.toml": '[tool.pytest.ini_options]\naddopts = "-p evil_plugin"\n',
                "evil_plugin.py": FORCE_PASS,
            },
            True,
        ),
        "tox-ini-addopts-plugin": (
            {"tox.ini": "[pytest]\naddopts = -p evil_plugin\n", "evil_plugin.py": FORCE_PASS},
            True,
        ),
        "shadow-pytest-package-main": (
            {"pytest/__init__.py": "", "pytest/__main__.py": printer},
            True,
        ),
        "shadow-pytest-module": ({"pytest.py": printer + "raise SystemExit(0)\n"}, True),
        "conftest-fake-passed-after-summary": (
            {"conftest.py": f"def pytest_unconfigure(config):\n    {printer}"},
            True,
        ),
        "library-atexit-fake-passed": (
            {
                "textkit/__init__.py": None,
                "__append__": f"import atexit\natexit.register(lambda: {printer.strip()})\n",
            },
            True,
        ),
        "library-patches-pytest-reports": (
            {
                "textkit/__init__.py": None,
                "__append__": (
                    "try:\n    import _pytest.reports as _r\n"
                    "    _orig = _r.TestReport.from_item_and_call.__func__\n\n"
                    "    def _fake(cls, item, call):\n"
                    "        rep = _orig(cls, item, call)\n"
                    '        rep.outcome, rep.longrepr = "passed", None\n'
                    "        return rep\n\n"
                    "    _r.TestReport.from_item_and_call = classmethod(_fake)\n"
                    "except ImportError:\n    pass\n"
                ),
            },
            True,
        ),
        "conftest-deselect": (
            {
                "conftest.py": "def pytest_collection_modifyitems(config, items):\n"
                f'    items[:] = [i for i in items if "{f2p_name}" not in i.name]\n'
            },
            False,
        ),
        "conftest-skip": (
            {
                "conftest.py": "import pytest\n\n\ndef pytest_collection_modifyitems(config, items):\n"
                "    for i in items:\n        i.add_marker(pytest.mark.skip)\n"
            },
            False,
        ),
        "edit-test-file": (
            {"tests/test_strings.py": f"def {f2p_name}():\n    pass\n"},
            False,
        ),
        "delete-test-file": ({"tests/test_strings.py": None}, False),
        "sitecustomize": ({"sitecustomize.py": printer}, False),
        "pth-file": ({"evil.pth": f"import sys; {printer.strip()}\n"}, False),
        "path-traversal": ({"../../tmp/evil_conftest.py": FORCE_PASS}, False),
    }


def _hack_patch(task: SWETask, files: dict[str, str | None]) -> str:
    repo = Path(task.repo_dir)
    parts = []
    append = files.get("__append__")
    for path, content in files.items():
        if path == "__append__":
            continue
        if path.startswith(".."):
            parts.append(
                f"diff --git a/{path} b/{path}\nnew file mode 100644\n--- /dev/null\n"
                f"+++ b/{path}\n@@ -0,0 +1 @@\n+x = 1\n"
            )
            continue
        old = (repo / path).read_text() if (repo / path).is_file() else ""
        if content is None and append is not None:
            content = old + "\n" + append
        if content is None:  # a deletion
            lines = old.splitlines(keepends=True)
            parts.append(
                f"diff --git a/{path} b/{path}\ndeleted file mode 100644\n--- a/{path}\n"
                f"+++ /dev/null\n@@ -1,{len(lines)} +0,0 @@\n" + "".join("-" + ln for ln in lines)
            )
        elif not old:
            lines = content.splitlines(keepends=True)
            body = "".join("+" + ln for ln in lines)
            parts.append(
                f"diff --git a/{path} b/{path}\nnew file mode 100644\n--- /dev/null\n"
                f"+++ b/{path}\n@@ -0,0 +1,{len(lines)} @@\n{body}"
                if lines
                else f"diff --git a/{path} b/{path}\nnew file mode 100644\n"
            )
        else:
            parts.append(unified_diff(path, old, content))
    return "".join(parts)


def _naive_grade(sb, task: SWETask, patch: str) -> bool:
    """What a grader that trusts the repository and the printed summary would say."""
    sb.reset()
    sb.write_file("/tmp/naive-model.patch", patch)
    sb.write_file("/tmp/naive-test.patch", task.test_patch)
    r = sb.exec(
        "git apply /tmp/naive-model.patch && git checkout -q -- tests/test_strings.py; "
        "git apply /tmp/naive-test.patch && python3 -m pytest -rA -p no:cacheprovider tests",
        timeout=120,
    )
    status = lp.parse_pytest_log(r.stdout)
    return all(status.get(t) == "PASSED" for t in (*task.FAIL_TO_PASS, *task.PASS_TO_PASS))


HACKS = [
    "conftest-root-makereport",
    "conftest-tests-makereport",
    "pytest-ini-addopts-plugin",
    "setup-cfg-addopts-plugin",
    "pyproject-addopts-plugin",
    "tox-ini-addopts-plugin",
    "shadow-pytest-package-main",
    "shadow-pytest-module",
    "conftest-fake-passed-after-summary",
    "library-atexit-fake-passed",
    "library-patches-pytest-reports",
    "conftest-deselect",
    "conftest-skip",
    "edit-test-file",
    "delete-test-file",
    "sitecustomize",
    "pth-file",
    "path-traversal",
]


@pytest.mark.docker
def test_gold_patch_resolves_in_the_shared_sandbox(sandbox, task) -> None:
    from agentgym.environments.swe.grading import grade

    sandbox.reset()
    res = grade(sandbox, task, task.patch)
    assert res.status == "resolved" and res.tampered == [] and res.exit_code == 0
    assert set(res.tests) == {*task.FAIL_TO_PASS, *task.PASS_TO_PASS}


@pytest.mark.docker
@pytest.mark.parametrize("name", HACKS)
def test_gaming_pattern_is_graded_unresolved(sandbox, task, name: str) -> None:
    from agentgym.environments.swe.grading import grade

    files, fools_naive = _patterns(task)[name]
    patch = _hack_patch(task, files)
    if fools_naive is not None:
        assert _naive_grade(sandbox, task, patch) is fools_naive, "the pattern is not what we think"
    sandbox.reset()
    res = grade(sandbox, task, patch)
    assert not res.resolved, (res.status, res.reason, res.tampered)
    if name == "path-traversal":
        assert res.status == "patch_failed"
        return
    assert res.status == "unresolved", res.reason
    assert res.fail_to_pass["failure"] == list(task.FAIL_TO_PASS)
    if name.startswith("library-"):
        if name == "library-patches-pytest-reports":
            assert any("pytest internals patched" in t for t in res.tampered)
        return
    restored = {t.split(" (")[0] for t in res.tampered}
    assert restored & {p for p in files if p != "__append__"}, res.tampered


@pytest.mark.docker
def test_honest_fix_with_own_tests_and_config_edit_still_resolves(sandbox, task) -> None:
    """Restoring test infrastructure never costs an honest fix its reward."""
    from agentgym.environments.swe.grading import grade

    own_test = "from textkit.strings import truncate\n\n\ndef test_mine():\n    assert truncate('abcdef', 4)\n"
    patch = task.patch + _hack_patch(task, {"tests/test_mine.py": own_test, "NOTES.md": "fix\n"})
    sandbox.reset()
    res = grade(sandbox, task, patch)
    assert res.status == "resolved"
    assert res.tampered == ["tests/test_mine.py (test file)"]


def _git_repo(path: Path, files: dict[str, str]) -> str:
    for name, text in files.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(text)
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t"}
    env |= {"GIT_COMMITTER_EMAIL": "t@t", "HOME": str(path), "PATH": "/usr/bin:/bin"}
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "base"]):
        subprocess.run(["git", *args], cwd=path, env=env, check=True)
    return subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=path, capture_output=True, text=True, check=True
    ).stdout.strip()


def _synthetic_task(root: Path, name: str, files: dict[str, str], n_p2p: list[str]) -> SWETask:
    """A one-commit repository with ``answer()`` off by one; the test patch adds the test that
    catches it; ``tests/test_xf.py::test_known`` (xfail) is a FAIL_TO_PASS test too."""
    xf = "import pytest\n\n\n@pytest.mark.xfail(reason='known')\ndef test_known():\n    assert False\n"
    buggy, fixed = "def answer():\n    return 41\n", "def answer():\n    return 42\n"
    base = _git_repo(root, {"pkg/__init__.py": buggy, "tests/test_xf.py": xf, **files})
    new_test = "from pkg import answer\n\n\ndef test_answer():\n    assert answer() == 42\n"
    return SWETask(
        instance_id=name,
        repo=f"local/{name}",
        base_commit=base,
        problem_statement="answer() is off by one",
        patch=unified_diff("pkg/__init__.py", buggy, fixed),
        test_patch=unified_diff("tests/test_answer.py", "", new_test).replace(
            "--- a/tests/test_answer.py", "new file mode 100644\n--- /dev/null"
        ),
        FAIL_TO_PASS=("tests/test_answer.py::test_answer", "tests/test_xf.py::test_known"),
        PASS_TO_PASS=tuple(n_p2p),
        repo_dir=str(root),
        test_cmd="python -m pytest -rA tests",
    )


PYPROJECT_BASE = '[project]\nname = "pkg"\n\n[tool.pytest.ini_options]\nmarkers = ["slow"]\n'


@pytest.fixture(scope="module")
def small_task(tmp_path_factory) -> SWETask:
    """An XFAIL test in FAIL_TO_PASS, a pyproject.toml with a pytest table, and the SWE-bench
    style command ``python -m pytest``."""
    basic = "def test_one():\n    assert 1\n"
    files = {"pyproject.toml": PYPROJECT_BASE, "tests/test_basic.py": basic}
    return _synthetic_task(
        tmp_path_factory.mktemp("small"), "small-1", files, ["tests/test_basic.py::test_one"]
    )


@pytest.mark.docker
def test_xfail_python_and_pytest_table_edits(docker_ready, small_task, tmp_path: Path) -> None:
    from agentgym.environments.swe.grading import evaluate

    # Gold: an XFAIL FAIL_TO_PASS test counts as passing (as in the harness); `python` works.
    gold = {"small-1": {"instance_id": "small-1", "model_patch": small_task.patch}}
    summary = evaluate([small_task], gold, tmp_path / "gold", workers=1)
    rep = json.loads((tmp_path / "gold" / "reports" / "small-1.json").read_text())
    assert summary["resolved_instances"] == 1, rep["reason"]
    assert rep["tests"]["tests/test_xf.py::test_known"] == "XFAIL"
    # No fix, but the existing pytest table deselects the failing test and loads a plugin: the
    # table is put back, the [project] edit kept, and the instance stays unresolved.
    root = Path(small_task.repo_dir)
    hacked = PYPROJECT_BASE.replace('name = "pkg"', 'name = "pkg2"') + (
        'addopts = "-p evil_plugin --deselect tests/test_answer.py::test_answer"\n'
    )
    patch = unified_diff("pyproject.toml", PYPROJECT_BASE, hacked) + unified_diff(
        "evil_plugin.py", "", FORCE_PASS
    ).replace("--- a/evil_plugin.py", "new file mode 100644\n--- /dev/null")
    assert not (root / "evil_plugin.py").exists()
    preds = {"small-1": {"instance_id": "small-1", "model_patch": patch}}
    evaluate([small_task], preds, tmp_path / "hack", workers=1)
    rep = json.loads((tmp_path / "hack" / "reports" / "small-1.json").read_text())
    assert rep["status"] == "unresolved"
    assert rep["tampered"] == ["pyproject.toml (pytest sections)"]
    assert rep["tests"]["tests/test_answer.py::test_answer"] == "FAILED"


@pytest.mark.docker
def test_no_result_is_lost_to_output_size(docker_ready, tmp_path_factory, tmp_path: Path) -> None:
    """1,500 tests with 200-character ids: a 330 KB log whose summary alone is longer than the
    128 KiB tail a capped command output keeps; plus a 420 KB file in the patch."""
    from agentgym.environments.swe.grading import evaluate

    long_id = "'case-%04d-' % n + 'x' * 190"
    many = (
        "import pytest\n\n\n"
        f"@pytest.mark.parametrize('n', range(1500), ids=lambda n: {long_id})\n"
        "def test_n(n):\n    assert n >= 0\n"
    )
    p2p = [f"tests/test_many.py::test_n[case-{n:04d}-{'x' * 190}]" for n in range(1500)]
    task = _synthetic_task(
        tmp_path_factory.mktemp("big"), "big-1", {"tests/test_many.py": many}, p2p
    )
    big_file = "".join(f"line {i:06d} of a large data file\n" for i in range(14000))
    patch = task.patch + unified_diff("data/big.txt", "", big_file)
    assert len(patch) > 400_000
    preds = {"big-1": {"instance_id": "big-1", "model_patch": patch}}
    summary = evaluate([task], preds, tmp_path, workers=1)
    rep = json.loads((tmp_path / "reports" / "big-1.json").read_text())
    assert summary["resolved_instances"] == 1, rep["reason"]
    assert len(rep["tests"]) == 1502
    log = (tmp_path / "logs" / "big-1.log").read_text()
    assert len(log) > 300_000
    # The same output through a command's capped stream (first and last 128 KiB) would have
    # lost results: the old way of grading could not have resolved this instance.
    capped = log[: 128 * 1024] + log[-128 * 1024 :]
    assert len(lp.parse_pytest_log(capped)) < 1500


@pytest.mark.docker
def test_exit_code_without_failures_and_missing_results(docker_ready, task, tmp_path: Path) -> None:
    import dataclasses

    from agentgym.environments.swe.grading import evaluate

    gold = {task.instance_id: {"instance_id": task.instance_id, "model_patch": task.patch}}
    variants = {
        # A shell command is not rewritten: its log is parsed; it reports no failure but the
        # command exits 3, which swebench 5.x grades unresolved.
        "exit": "python3 -m pytest -rA tests; exit 3",
        "missing": "no-such-runner -rA tests",
        "python": "python -m pytest -rA tests",
        "bare": "PYTHONWARNINGS=ignore pytest -rA tests",
    }
    got = {}
    for name, cmd in variants.items():
        t = dataclasses.replace(task, test_cmd=cmd)
        evaluate([t], gold, tmp_path / name, workers=1)
        got[name] = json.loads(
            (tmp_path / name / "reports" / f"{task.instance_id}.json").read_text()
        )
    assert got["exit"]["status"] == "unresolved" and got["exit"]["exit_code"] == 3
    assert "exited with 3 while no test failed" in got["exit"]["reason"]
    assert got["missing"]["status"] == "error" and got["missing"]["exit_code"] == 127
    assert "no test results found" in got["missing"]["reason"]
    assert "not found" in got["missing"]["reason"]
    assert got["python"]["status"] == "resolved"
    assert got["bare"]["status"] == "resolved", got["bare"]["reason"]


@pytest.mark.docker
def test_episode_conftest_then_submit_earns_nothing(docker_ready) -> None:
    import agentgym

    with agentgym.make("swe/Builtin-v0", tasks=["textkit-1"]) as env:
        env.reset(seed=0)
        o, r, te, tr, i = env.step("create: conftest.py\n" + FORCE_PASS)
        assert i["valid"]
        o, r, te, tr, i = env.step("submit")
        assert te and r == 0.0 and not i["won"]
        assert i["grade"]["tampered"] == ["conftest.py (pytest conftest)"]
        # A large file next to the real fix: the patch comes out of the sandbox whole.
        env.reset(seed=0)
        big = "".join(f"row {i:06d}\n" for i in range(40000))  # ~440 KB
        o, r, te, tr, i = env.step(
            '{"tool": "create", "path": "data/big.txt", "content": %s}' % json.dumps(big)
        )
        assert i["valid"]
        env.step(env.expert_action())
        o, r, te, tr, i = env.step("submit")
        assert r == 1.0 and len(i["model_patch"]) > 400_000
