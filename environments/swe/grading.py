"""Grading SWE tasks the way the SWE-bench harness does, inside hardened sandboxes.

For one prediction: start from the task's clean checkout (``base_commit``), apply the model patch
(``git apply``; if that fails, ``patch --fuzz``), restore the test infrastructure the patch
touched (see below), restore the files the test patch touches and apply it, run the task's test
command, and grade the per-test outcomes like the SWE-bench harness (:mod:`.log_parsers`): the
instance is *resolved* when every ``FAIL_TO_PASS`` test passes (``PASSED`` or ``XFAIL``) and
every ``PASS_TO_PASS`` test passes or is skipped. :func:`evaluate` does this for a predictions
file with parallel workers, writes a log and a JSON report per instance, and a
``summary.json``.

**Nothing is lost to output size.** The test output goes to a file in the sandbox's ``/tmp``
(outside the repository) and is read whole; patches travel as files, never through the capped
output of a command.

**Anti-gaming rule.** Grading trusts only what the task defines. Before the tests run, every
path the model patch created, changed or deleted that belongs to the test infrastructure is put
back as it is at ``base_commit`` (deleted when it did not exist there), and listed in the grade's
``tampered``:

* test files: the test patch's files, any ``test_*.py`` / ``*_test.py`` / ``tests.py``, anything
  under a ``tests/`` folder, and every ``conftest.py``;
* test configuration: ``pytest.ini``, ``.pytest.ini``, ``pytest.toml``, ``tox.ini`` (whole file),
  and the pytest sections of ``setup.cfg`` (``[tool:pytest]``) and ``pyproject.toml``
  (``[tool.pytest...]``; the whole file when the sections cannot be separated);
* what could replace the runner or run code at start-up: ``pytest``/``_pytest``/``pluggy``/``py``
  at the repository root, ``sitecustomize.py``, ``usercustomize.py``, ``*.pth``, package metadata
  (``*.egg-info``/``*.dist-info``: entry-point plugins), compiled bytecode (``__pycache__``,
  ``*.pyc``).

A pytest test command (``pytest ...``, ``python -m pytest ...``) is run through
``data/pytest_runner.py``: pytest and its plugins are loaded before the repository is on
``sys.path``, the cache provider is off, and each test's outcome is recorded in-process to a file
outside the repository instead of being read from the printed log, so printed ``PASSED`` lines
count for nothing. The runner also reports code under test that patched pytest's reporting
internals during the run (graded ``unresolved``). Other test commands (Django's ``runtests.py``,
SymPy's ``bin/test``) are the repository's own runners; their log is parsed with the repository's
parser after the restore above.

This module grades; the restore is in :mod:`.restore`, the test command and its per-test
records in :mod:`.testrun`, and the run's ``summary.json`` in :mod:`.report`.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import os
import shlex
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from agentgym.environments.swe import log_parsers, report
from agentgym.environments.swe.restore import (
    infrastructure_reason,
    patch_files,
    restore_infrastructure,
    restore_test_sections,
)
from agentgym.environments.swe.tasks import SWETask
from agentgym.environments.swe.testrun import (
    RUNNER,
    clip_log,
    pytest_command,
    pytest_status,
    read_text,
)

__all__ = [
    "GradeResult",
    "parse_pytest_log",
    "open_task_sandbox",
    "task_image",
    "model_patch",
    "grade",
    "evaluate",
    "load_predictions",
    "infrastructure_reason",
    "restore_test_sections",
    "pytest_command",
]

parse_pytest_log = log_parsers.parse_pytest_log


@dataclasses.dataclass(frozen=True)
class GradeResult:
    """The outcome of grading one prediction.

    ``status``: ``resolved`` | ``unresolved`` (tests ran, some required test failed, or the run
    timed out / exited with failure while no test failed) | ``empty_patch`` | ``patch_failed``
    (neither git apply nor patch could apply it) | ``test_patch_failed`` | ``error`` (the sandbox
    failed, or no test results were found; ``reason`` says why). ``tampered``: the test
    infrastructure the patch touched, restored before the run (see the module docstring).
    """

    instance_id: str
    status: str
    resolved: bool
    patch_applied: bool
    tests: dict[str, str]
    fail_to_pass: dict[str, list[str]]
    pass_to_pass: dict[str, list[str]]
    duration_s: float
    log: str = ""
    tampered: list[str] = dataclasses.field(default_factory=list)
    reason: str = ""
    exit_code: int | None = None

    def to_dict(self, with_log: bool = False) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if not with_log:
            d.pop("log")
        return d


def task_image(task: SWETask) -> tuple[str, bool]:
    """The image of ``task`` and whether the repository is already in it (its seed).

    A task with an ``image`` uses it; a task with an ``install`` step gets a layer image (repo +
    install, cached by content hash); otherwise the base image is used and the repository is
    copied into the workspace when the sandbox starts (no image build at all).
    """
    from agentgym.sandboxes.images import build_layer_image, ensure_base_image

    if task.image:
        return task.image, True
    if task.install:
        if not task.repo_dir:
            raise ValueError(f"{task.instance_id}: an install step needs repo_dir (--repos-dir)")
        return build_layer_image(task.repo_dir, install=task.install), True
    return ensure_base_image(), False


def open_task_sandbox(task: SWETask, *, snapshot: bool = True, **limits: Any) -> Any:
    """A started sandbox whose workspace is the task's repository at ``base_commit``.

    ``reset()`` on it restores exactly that state.
    """
    from agentgym.sandboxes.base import SandboxConfig, SandboxError
    from agentgym.sandboxes.docker_backend import DockerSandbox

    image, seeded = task_image(task)
    if not seeded and not (task.repo_dir and Path(task.repo_dir, ".git").is_dir()):
        raise FileNotFoundError(
            f"{task.instance_id}: no local checkout of {task.repo} (repo_dir={task.repo_dir!r}); "
            "pass --repos-dir with a git clone per instance, or give the task an image"
        )
    sb = DockerSandbox(
        SandboxConfig(image=image, labels={"agentgym.swe.task": task.instance_id}, **limits)
    )
    try:
        sb.start()
        if not seeded:
            sb.copy_in(task.repo_dir, sb.workdir)
        r = sb.exec(
            f"git checkout -q -f {shlex.quote(task.base_commit)} && git clean -fdxq", timeout=60
        )
        if not r.ok:
            raise SandboxError(
                f"{task.instance_id}: cannot check out base_commit {task.base_commit}: {r.stderr}"
            )
        if snapshot:
            sb.snapshot()
    except BaseException:
        sb.close()
        raise
    return sb


def model_patch(sb: Any, base_commit: str) -> str:
    """The workspace's changes against ``base_commit`` as a patch (new files included).

    A private index is used, so the agent's own git index is left alone; ``.gitignore`` is
    honoured (caches do not end up in the patch). The diff goes through a file, so a patch of any
    size comes back whole.
    """
    out = f"/tmp/.agentgym-patch-{uuid.uuid4().hex[:12]}"
    cmd = (
        f"export GIT_INDEX_FILE={out}.index; rm -f $GIT_INDEX_FILE; "
        f"git add -A . && git diff --cached --binary {shlex.quote(base_commit)} > {out}"
    )
    r = sb.exec(cmd, timeout=120)
    if r.exit_code != 0:
        return ""
    try:
        return sb.read_file(out).decode(errors="surrogateescape")
    finally:
        sb.exec(f"rm -f {out} {out}.index", timeout=30)


def grade(sb: Any, task: SWETask, patch: str, *, timeout: float = 300.0) -> GradeResult:
    """Grade ``patch`` for ``task`` in ``sb``, whose workspace must be the clean checkout."""
    t0 = time.perf_counter()
    log: list[str] = []
    tampered: list[str] = []

    def result(
        status: str,
        applied: bool,
        tests: dict[str, str] | None = None,
        reason: str = "",
        exit_code: int | None = None,
        judged: bool = False,
    ) -> GradeResult:
        """``judged``: the run is valid, so the per-test report decides (else ``status``)."""
        tests = tests or {}
        f2p, p2p = log_parsers.tests_report(tests, task.FAIL_TO_PASS, task.PASS_TO_PASS)
        resolved = judged and log_parsers.resolution(f2p, p2p) == "RESOLVED_FULL"
        if reason:
            log.append(f">>> {status}: {reason}")
        return GradeResult(
            instance_id=task.instance_id,
            status="resolved" if resolved else status,
            resolved=resolved,
            patch_applied=applied,
            tests=tests,
            fail_to_pass=f2p,
            pass_to_pass=p2p,
            duration_s=time.perf_counter() - t0,
            log="\n".join(log),
            tampered=tampered,
            reason=reason,
            exit_code=exit_code,
        )

    if not patch.strip():
        log.append(">>> empty model patch")
        return result("empty_patch", False)
    # A private folder outside the repository for the patches, the runner and the results.
    d = f"/tmp/.agentgym-grade-{uuid.uuid4().hex[:16]}"
    sb.exec(f"mkdir -p {d} && chmod 700 {d}", timeout=30)
    sb.write_file(f"{d}/model.patch", patch if patch.endswith("\n") else patch + "\n")
    r = sb.exec(
        f"git apply -v {d}/model.patch || patch --batch --fuzz=5 -p1 -i {d}/model.patch",
        timeout=120,
    )
    log += [">>> apply model patch", r.stdout, r.stderr]
    if not r.ok:
        return result("patch_failed", False)
    tampered += restore_infrastructure(sb, task, d, log)
    if task.test_patch.strip():
        files = " ".join(shlex.quote(f) for f in patch_files(task.test_patch))
        sb.write_file(f"{d}/test.patch", task.test_patch)
        # Like the SWE-bench harness: test files go back to base_commit before the test patch.
        r = sb.exec(
            f'for f in {files}; do git checkout -q {shlex.quote(task.base_commit)} -- "$f" '
            f'2>/dev/null || rm -f "$f"; done; git apply -v {d}/test.patch',
            timeout=120,
        )
        log += [">>> apply test patch", r.stdout, r.stderr]
        if not r.ok:
            return result("test_patch_failed", True)
    sb.write_file(f"{d}/runner.py", RUNNER.read_bytes())
    cmd = pytest_command(task.test_cmd, f"{d}/results.jsonl", f"{d}/runner.py")
    # `python` is mapped to python3 for images that lack it, as SWE-bench commands say `python`.
    script = (
        "command -v python >/dev/null 2>&1 || { mkdir -p "
        f'{d}/bin && ln -sf "$(command -v python3)" {d}/bin/python && export PATH={d}/bin:$PATH; }}; '
        f"( {cmd or task.test_cmd} ) > {d}/test.log 2>&1 < /dev/null; echo $? > {d}/exit_code"
    )
    r = sb.exec(script, timeout=timeout)
    output = read_text(sb, f"{d}/test.log") or ""
    log += [f">>> {task.test_cmd}" + (f"\n>>> run as: {cmd}" if cmd else ""), clip_log(output)]
    rc_text = (read_text(sb, f"{d}/exit_code") or "").strip()
    exit_code = int(rc_text) if rc_text.lstrip("-").isdigit() else None
    parser: Callable[[str], dict[str, str]] = log_parsers.parser_for(task.repo)
    started = finished = False
    patched: list[str] = []
    if cmd is None:
        tests = parser(output)
    else:
        records = []
        for line in (read_text(sb, f"{d}/results.jsonl") or "").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict):
                records.append(rec)
                if rec.get("event") == "finish":
                    finished = True
                    patched = [str(p) for p in rec.get("patched") or []]
                    if exit_code == 0 and rec.get("exitstatus"):
                        exit_code = int(rec["exitstatus"])
        started = any(rec.get("event") == "start" for rec in records)
        # Rendered as -rA lines for the repository's parser, so test ids match the harness's.
        lines = "\n".join(f"{s} {t}" for t, s in pytest_status(records).items())
        if parser not in log_parsers.PYTEST_FAMILY:
            parser = log_parsers.parse_pytest_log
        tests = parser(lines)
    sb.exec(f"rm -rf {d}", timeout=60)
    if r.timed_out or r.oom:
        what = f"timed out after {timeout:g}s" if r.timed_out else "ran out of memory"
        return result("unresolved", True, tests, f"the tests {what}", exit_code)
    if cmd is not None and not started:
        tail = output.strip()[-500:]
        return result(
            "error",
            True,
            {},
            f"no test results found: pytest did not start "
            f"(exit code {exit_code}); output ends with: {tail}",
            exit_code,
        )
    if not tests:
        tail = output.strip()[-500:]
        return result(
            "error",
            True,
            {},
            f"no test results found (exit code {exit_code}); the output ends with: {tail}",
            exit_code,
        )
    if patched:
        tampered.append("pytest internals patched during the run: " + ", ".join(patched))
        # The recorded outcomes passed through the patched code: none of them is evidence.
        return result("unresolved", True, {}, "code under test patched the test runner", exit_code)
    if cmd is not None and not finished:
        return result(
            "unresolved",
            True,
            tests,
            f"the test run ended before pytest finished (exit code {exit_code})",
            exit_code,
        )
    if exit_code != 0 and not any(s in ("FAILED", "ERROR") for s in tests.values()):
        return result(
            "unresolved",
            True,
            tests,
            f"the test command exited with {exit_code} while no test "
            "failed (graded unresolved, as swebench 5.x does)",
            exit_code,
        )
    return result("unresolved", True, tests, exit_code=exit_code, judged=True)


def load_predictions(path: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """``{instance_id: prediction}`` from a predictions file, in any of the harness's layouts:
    JSONL (one prediction per line), a JSON list, or a JSON object keyed by instance id
    (SWE-agent's ``preds.json``; a value without ``instance_id`` takes its key)."""
    text = Path(path).read_text(encoding="utf-8")
    stripped = text.lstrip()
    rows: list[Any]
    try:
        if stripped.startswith("{") and Path(path).suffix != ".jsonl":
            data = json.loads(text)
            if "instance_id" in data and "model_patch" in data:  # one prediction, not a map
                rows = [data]
            else:
                rows = [
                    {"instance_id": k, **v} if isinstance(v, dict) else v for k, v in data.items()
                ]
        elif stripped.startswith("["):
            rows = json.loads(text)
        else:
            rows = []
            for i, ln in enumerate(text.splitlines(), 1):
                if ln.strip():
                    try:
                        rows.append(json.loads(ln))
                    except json.JSONDecodeError as e:
                        raise ValueError(f"{path}, line {i}: not JSON ({e})") from e
    except json.JSONDecodeError as e:
        raise ValueError(
            f"{path} is not valid JSON ({e}); predictions are JSONL, a JSON list, or a JSON "
            "object keyed by instance_id"
        ) from e
    preds: dict[str, dict[str, Any]] = {}
    for r in rows:
        if not isinstance(r, dict) or "instance_id" not in r:
            raise ValueError(f"prediction without instance_id in {path}: {str(r)[:200]}")
        preds[r["instance_id"]] = r
    return preds


def _grade_one(task: SWETask, pred: dict[str, Any], timeout: float) -> GradeResult:
    t0 = time.perf_counter()
    patch = pred.get("model_patch") or ""
    if not patch.strip():  # nothing to apply: no sandbox needed
        return GradeResult(
            instance_id=task.instance_id,
            status="empty_patch",
            resolved=False,
            patch_applied=False,
            tests={},
            fail_to_pass={"success": [], "failure": list(task.FAIL_TO_PASS)},
            pass_to_pass={"success": [], "failure": list(task.PASS_TO_PASS)},
            duration_s=time.perf_counter() - t0,
            log=">>> empty model patch",
        )
    try:
        with open_task_sandbox(task, snapshot=False) as sb:
            return grade(sb, task, patch, timeout=timeout)
    except Exception as e:  # one broken instance must not stop the run
        return GradeResult(
            instance_id=task.instance_id,
            status="error",
            resolved=False,
            patch_applied=False,
            tests={},
            fail_to_pass={},
            pass_to_pass={},
            duration_s=time.perf_counter() - t0,
            log=f"{type(e).__name__}: {e}",
            reason=f"{type(e).__name__}: {e}",
        )


def evaluate(
    tasks: Sequence[SWETask],
    predictions: dict[str, dict[str, Any]],
    out_dir: str | os.PathLike[str],
    *,
    workers: int = 4,
    timeout: float = 300.0,
    instance_ids: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Grade every task that has a prediction; write logs, reports and ``summary.json``."""
    from agentgym.utils import atomic_write_json

    out = Path(out_dir)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    (out / "reports").mkdir(parents=True, exist_ok=True)
    wanted = set(instance_ids) if instance_ids else None
    todo = [
        t
        for t in tasks
        if t.instance_id in predictions and (wanted is None or t.instance_id in wanted)
    ]
    unknown = sorted(set(predictions) - {t.instance_id for t in tasks})
    t0 = time.perf_counter()
    results: list[GradeResult] = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, workers)) as ex:
        futs = [ex.submit(_grade_one, t, predictions[t.instance_id], timeout) for t in todo]
        for f in concurrent.futures.as_completed(futs):
            res = f.result()
            results.append(res)
            (out / "logs" / f"{res.instance_id}.log").write_text(res.log, encoding="utf-8")
            atomic_write_json(out / "reports" / f"{res.instance_id}.json", res.to_dict())
    results.sort(key=lambda r: r.instance_id)
    summary = report.summary(
        results,
        tasks,
        predictions,
        unknown=unknown,
        seconds=time.perf_counter() - t0,
        workers=workers,
    )
    atomic_write_json(out / "summary.json", summary)
    return summary
