"""Running a SWE task's tests for grading: a pytest command rewritten to go through
``data/pytest_runner.py``, the runner's per-test records turned into statuses, and the test log
read back and clipped."""

from __future__ import annotations

import os
import re
import shlex
from typing import Any

from agentgym.environments.swe.tasks import DATA_DIR

__all__ = ["LOG_KEEP", "RUNNER", "clip_log", "pytest_command", "pytest_status", "read_text"]

RUNNER = DATA_DIR / "pytest_runner.py"
#: Most bytes of test output kept in a grade's log (head and tail); results are parsed whole.
LOG_KEEP = 4 * 1024 * 1024

_ENV_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
_PYTHON_RE = re.compile(r"^python(\d+(\.\d+)?)?$")


def pytest_command(test_cmd: str, results: str, runner: str) -> str | None:
    """``test_cmd`` rewritten to run pytest through ``runner`` (results to ``results``), or
    None when it is not a plain pytest command (shell syntax, another runner)."""
    if re.search(r"[;&|<>`$()\n\\]", test_cmd):
        return None
    try:
        words = shlex.split(test_cmd)
    except ValueError:
        return None
    env = []
    while words and _ENV_RE.match(words[0]):
        env.append(words.pop(0))
    if not words:
        return None
    exe = os.path.basename(words[0])
    if exe in ("pytest", "py.test"):
        # The interpreter that the pytest script itself names.
        python = '$(sed -n "1s/^#! *//p" "$(command -v pytest)" 2>/dev/null || echo python3)'
        args = words[1:]
    elif _PYTHON_RE.match(exe) and words[1:3] == ["-m", "pytest"]:
        python, args = shlex.quote(words[0]), words[3:]
    else:
        return None
    if "no:cacheprovider" not in args:
        args = ["-p", "no:cacheprovider", *args]
    prefix = f"env {' '.join(shlex.quote(e) for e in env)} " if env else ""
    return f"{prefix}{python} -s {runner} {results} {' '.join(shlex.quote(a) for a in args)}"


def pytest_status(records: list[dict[str, Any]]) -> dict[str, str]:
    """Per-test status as pytest's ``-rA`` summary reports it (its sections are printed passed,
    skipped, xfailed, xpassed, error, failed, and a parser keeps a test's last line)."""
    rank = {"PASSED": 0, "SKIPPED": 1, "XFAIL": 2, "XPASS": 3, "ERROR": 4, "FAILED": 5}
    out: dict[str, str] = {}
    for rec in records:
        if rec.get("event") == "collect_error":
            status = "ERROR"
        elif rec.get("event") == "test":
            when, outcome, xfail = rec.get("when"), rec.get("outcome"), rec.get("wasxfail")
            if outcome == "failed":
                status = "FAILED" if when == "call" else "ERROR"
            elif outcome == "skipped":
                status = "XFAIL" if xfail else "SKIPPED"
            elif when == "call":
                status = "XPASS" if xfail else "PASSED"
            else:
                continue
        else:
            continue
        nodeid = str(rec.get("nodeid"))
        if nodeid not in out or rank[status] >= rank[out[nodeid]]:
            out[nodeid] = status
    return out


def read_text(sb: Any, path: str) -> str | None:
    try:
        return sb.read_file(path).decode(errors="replace")
    except (FileNotFoundError, OSError):
        return None


def clip_log(text: str, limit: int = LOG_KEEP) -> str:
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]}\n[... {len(text) - 2 * half} characters cut ...]\n{text[-half:]}"
