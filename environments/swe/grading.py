"""Grading SWE tasks the way the SWE-bench harness does, inside hardened sandboxes.

For one prediction: start from the task's clean checkout (``base_commit``), apply the model patch
(``git apply``; if that fails, ``patch --fuzz``), restore the files the test patch touches and
apply it, run the task's test command, and parse the per-test outcomes from pytest's ``-rA``
summary. The instance is *resolved* when every ``FAIL_TO_PASS`` and every ``PASS_TO_PASS`` test
passes. :func:`evaluate` does this for a predictions file with parallel workers, writes a log and
a JSON report per instance, and a ``summary.json``.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import os
import re
import shlex
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agentgym.environments.swe.tasks import SWETask

__all__ = [
    "GradeResult",
    "parse_pytest_log",
    "open_task_sandbox",
    "task_image",
    "model_patch",
    "grade",
    "evaluate",
    "load_predictions",
]

_STATUSES = ("PASSED", "FAILED", "ERROR", "SKIPPED", "XFAIL", "XPASS")
_LINE_RE = re.compile(rf"^({'|'.join(_STATUSES)}) (\S+)")
_DIFF_FILE_RE = re.compile(r"^diff --git a/(\S+) b/(\S+)", re.MULTILINE)
MODEL_PATCH = "/tmp/agentgym-model.patch"
TEST_PATCH = "/tmp/agentgym-test.patch"


@dataclasses.dataclass(frozen=True)
class GradeResult:
    """The outcome of grading one prediction.

    ``status``: ``resolved`` | ``unresolved`` (tests ran, some required test failed) |
    ``empty_patch`` | ``patch_failed`` (neither git apply nor patch could apply it) |
    ``test_patch_failed`` | ``error`` (the sandbox failed; see ``log``).
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

    def to_dict(self, with_log: bool = False) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if not with_log:
            d.pop("log")
        return d


def parse_pytest_log(text: str) -> dict[str, str]:
    """``{nodeid: status}`` from pytest's ``-rA`` short summary (``PASSED tests/x.py::t``)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        m = _LINE_RE.match(line.strip())
        if m:
            out[m.group(2)] = m.group(1)
    return out


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
    honoured (caches do not end up in the patch).
    """
    cmd = (
        "export GIT_INDEX_FILE=/tmp/.agentgym-index; rm -f $GIT_INDEX_FILE; "
        f"git add -A . && git diff --cached --binary {shlex.quote(base_commit)}"
    )
    r = sb.exec(cmd, timeout=60)
    return r.stdout if r.exit_code == 0 else ""


def _files(patch: str) -> list[str]:
    return sorted({b for _, b in _DIFF_FILE_RE.findall(patch)})


def grade(sb: Any, task: SWETask, patch: str, *, timeout: float = 300.0) -> GradeResult:
    """Grade ``patch`` for ``task`` in ``sb``, whose workspace must be the clean checkout."""
    t0 = time.perf_counter()
    log: list[str] = []

    def result(status: str, applied: bool, tests: dict[str, str] | None = None) -> GradeResult:
        tests = tests or {}

        def split(ids: Sequence[str]) -> dict[str, list[str]]:
            ok = [t for t in ids if tests.get(t) == "PASSED"]
            return {"success": ok, "failure": [t for t in ids if t not in ok]}

        f2p, p2p = split(task.FAIL_TO_PASS), split(task.PASS_TO_PASS)
        resolved = status == "unresolved" and not f2p["failure"] and not p2p["failure"]
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
        )

    if not patch.strip():
        log.append(">>> empty model patch")
        return result("empty_patch", False)
    sb.write_file(MODEL_PATCH, patch if patch.endswith("\n") else patch + "\n")
    r = sb.exec(
        f"git apply -v {MODEL_PATCH} || patch --batch --fuzz=5 -p1 -i {MODEL_PATCH}", timeout=60
    )
    log += [">>> apply model patch", r.stdout, r.stderr]
    if not r.ok:
        return result("patch_failed", False)
    if task.test_patch.strip():
        files = " ".join(shlex.quote(f) for f in _files(task.test_patch))
        sb.write_file(TEST_PATCH, task.test_patch)
        # Like the SWE-bench harness: test files go back to base_commit before the test patch.
        r = sb.exec(
            f'for f in {files}; do git checkout -q {shlex.quote(task.base_commit)} -- "$f" '
            f'2>/dev/null || rm -f "$f"; done; git apply -v {TEST_PATCH}',
            timeout=60,
        )
        log += [">>> apply test patch", r.stdout, r.stderr]
        if not r.ok:
            return result("test_patch_failed", True)
    r = sb.exec(task.test_cmd, timeout=timeout)
    log += [f">>> {task.test_cmd}", r.stdout, r.stderr]
    if r.timed_out or r.oom:
        log.append(f">>> tests {'timed out' if r.timed_out else 'ran out of memory'}")
    return result("unresolved", True, parse_pytest_log(r.stdout))


def load_predictions(path: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """``{instance_id: prediction}`` from a JSONL (or JSON list) predictions file."""
    text = Path(path).read_text(encoding="utf-8")
    rows = (
        json.loads(text)
        if text.lstrip().startswith("[")
        else [json.loads(ln) for ln in text.splitlines() if ln.strip()]
    )
    preds = {}
    for r in rows:
        if "instance_id" not in r:
            raise ValueError(f"prediction without instance_id in {path}: {str(r)[:200]}")
        preds[r["instance_id"]] = r
    return preds


def _grade_one(task: SWETask, pred: dict[str, Any], timeout: float) -> GradeResult:
    t0 = time.perf_counter()
    patch = pred.get("model_patch") or ""
    if not patch.strip():  # nothing to apply: no sandbox needed
        return GradeResult(
            task.instance_id,
            "empty_patch",
            False,
            False,
            {},
            {"success": [], "failure": list(task.FAIL_TO_PASS)},
            {"success": [], "failure": list(task.PASS_TO_PASS)},
            time.perf_counter() - t0,
            log=">>> empty model patch",
        )
    try:
        with open_task_sandbox(task, snapshot=False) as sb:
            return grade(sb, task, patch, timeout=timeout)
    except Exception as e:  # one broken instance must not stop the run
        return GradeResult(
            task.instance_id,
            "error",
            False,
            False,
            {},
            {},
            {},
            time.perf_counter() - t0,
            log=f"{type(e).__name__}: {e}",
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
    model = next(
        (p.get("model_name_or_path") for p in predictions.values() if p.get("model_name_or_path")),
        None,
    )
    n = len(results)
    summary = {
        "model_name_or_path": model,
        "total_instances": len(tasks),
        "submitted_instances": n,
        "completed_instances": sum(r.status not in ("error",) for r in results),
        "resolved_instances": sum(r.resolved for r in results),
        "resolved_rate": (sum(r.resolved for r in results) / n) if n else 0.0,
        "empty_patch_instances": sum(r.status == "empty_patch" for r in results),
        "error_instances": sum(r.status == "error" for r in results),
        "resolved_ids": [r.instance_id for r in results if r.resolved],
        "unresolved_ids": [r.instance_id for r in results if not r.resolved],
        "unknown_prediction_ids": unknown,
        "statuses": {r.instance_id: r.status for r in results},
        "seconds": time.perf_counter() - t0,
        "workers": workers,
    }
    atomic_write_json(out / "summary.json", summary)
    return summary
