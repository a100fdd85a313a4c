"""The anti-gaming restore of SWE grading: before the tests run, every path of the test
infrastructure that the model patch created, changed or deleted is put back as it is at
``base_commit`` (see :mod:`.grading` for the list and why)."""

from __future__ import annotations

import configparser
import re
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agentgym.environments.swe.tasks import SWETask

__all__ = [
    "infrastructure_reason",
    "patch_files",
    "restore_infrastructure",
    "restore_test_sections",
]

_DIFF_FILE_RE = re.compile(r"^diff --git a/(\S+) b/(\S+)", re.MULTILINE)


def patch_files(patch: str) -> list[str]:
    """The files a patch touches (their paths after the change)."""
    return sorted({b for _, b in _DIFF_FILE_RE.findall(patch)})


_TEST_NAME_RE = re.compile(r"^(test_.*\.py|.*_test\.py|tests\.py|conftest\.py)$")
_WHOLE_CONFIG = {"pytest.ini", ".pytest.ini", "pytest.toml", ".pytest.toml", "tox.ini"}
_SECTION_CONFIG = {"setup.cfg", "pyproject.toml"}
#: Top-level names that would stand in for the test runner's own modules.
_RUNNER_MODULES = {"pytest", "_pytest", "pluggy", "py"}


def infrastructure_reason(path: str, test_patch_files: Sequence[str] = ()) -> str | None:
    """Why ``path`` (relative to the repository) belongs to the test infrastructure, or None.

    ``setup.cfg`` and ``pyproject.toml`` answer ``"test configuration sections"``: only their
    pytest sections are restored (:func:`restore_test_sections`).
    """
    parts = path.split("/")
    name = parts[-1]
    if path in test_patch_files:
        return "test file (test patch)"
    if name == "conftest.py":
        return "pytest conftest"
    if _TEST_NAME_RE.match(name) or "tests" in parts[:-1]:
        return "test file"
    if name in _WHOLE_CONFIG:
        return "test configuration"
    if name in _SECTION_CONFIG:
        return "test configuration sections"
    if name in ("sitecustomize.py", "usercustomize.py") or name.endswith(".pth"):
        return "interpreter start-up hook"
    if any(p.endswith((".egg-info", ".dist-info")) for p in parts[:-1]):
        return "package metadata (entry-point plugins)"
    if "__pycache__" in parts or name.endswith((".pyc", ".pyo")):
        return "compiled bytecode"
    top = parts[0][:-3] if len(parts) == 1 and parts[0].endswith(".py") else parts[0]
    if top in _RUNNER_MODULES and (len(parts) > 1 or name.endswith(".py")):
        return "shadows the test runner"
    return None


_HEADER_RE = re.compile(r"^\s*\[\[?\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")


def _section_name(name: str) -> str:
    return re.sub(r"[\s\"']", "", name)


def _is_test_section(kind: str, name: str) -> bool:
    name = _section_name(name)
    if kind == "pyproject.toml":
        return name == "tool.pytest" or name.startswith("tool.pytest.")
    return name in ("tool:pytest", "pytest")


def _pytest_config(kind: str, text: str) -> Any:
    """The pytest settings in a ``setup.cfg`` / ``pyproject.toml`` text (comparable values)."""
    if kind == "pyproject.toml":
        try:
            import tomllib
        except ImportError:  # Python 3.10
            import tomli as tomllib  # type: ignore[no-redef]
        return tomllib.loads(text).get("tool", {}).get("pytest")
    cp = configparser.ConfigParser(interpolation=None, strict=False)
    cp.read_string(text)
    return {s: dict(cp[s]) for s in cp.sections() if _is_test_section(kind, s)}


def _blocks(text: str) -> list[tuple[str | None, str]]:
    """``text`` cut at section headers: ``[(section name or None, block text), ...]``."""
    out: list[tuple[str | None, list[str]]] = [(None, [])]
    for line in text.splitlines(keepends=True):
        m = _HEADER_RE.match(line)
        if m:
            out.append((m.group(1), []))
        out[-1][1].append(line)
    return [(n, "".join(lines)) for n, lines in out if lines]


def restore_test_sections(kind: str, base: str, new: str) -> tuple[str, bool]:
    """``(text, changed)``: ``new`` with its pytest sections put back as in ``base``.

    ``kind`` is ``"setup.cfg"`` or ``"pyproject.toml"``. When the sections cannot be separated
    (a file that no longer parses, pytest settings written as dotted keys or inline tables), the
    whole ``base`` text comes back.
    """
    try:
        want = _pytest_config(kind, base)
    except (ValueError, ImportError, configparser.Error):
        return base, base != new
    try:
        if _pytest_config(kind, new) == want:
            return new, False
    except (ValueError, ImportError, configparser.Error):
        return base, True
    kept = [b for n, b in _blocks(new) if n is None or not _is_test_section(kind, n)]
    back = [b for n, b in _blocks(base) if n is not None and _is_test_section(kind, n)]
    if kept and back and not kept[-1].endswith("\n"):
        kept[-1] += "\n"
    text = "".join(kept + back)
    try:
        if _pytest_config(kind, text) == want:
            return text, True
    except (ValueError, configparser.Error):
        pass
    return base, True


def _touched_paths(sb: Any, base: str, d: str) -> list[str]:
    """Every path that differs from ``base`` (tracked changes, deletions, untracked and ignored
    files); listed through a file so that no path is lost to output size."""
    r = sb.exec(
        "git -c core.quotepath=off diff --name-only -z --no-renames "
        f"{shlex.quote(base)} > {d}/touched && git ls-files -z --others >> {d}/touched",
        timeout=120,
    )
    if r.exit_code != 0:
        raise RuntimeError(f"could not list the files the patch changed: {r.stderr.strip()}")
    raw = sb.read_file(f"{d}/touched").decode(errors="surrogateescape")
    return sorted({p for p in raw.split("\0") if p})


def restore_infrastructure(sb: Any, task: SWETask, d: str, log: list[str]) -> list[str]:
    """Put the test infrastructure the model patch touched back as at ``base_commit``."""
    base = shlex.quote(task.base_commit)
    test_files = patch_files(task.test_patch)
    whole: list[str] = []
    sections: list[str] = []
    tampered: list[str] = []
    for path in _touched_paths(sb, task.base_commit, d):
        why = infrastructure_reason(path, test_files)
        if why == "test configuration sections":
            sections.append(path)
        elif why is not None:
            whole.append(path)
            tampered.append(f"{path} ({why})")
    for path in sections:
        q = shlex.quote(path)
        r = sb.exec(f"git show {base}:{q} > {d}/cfg.base", timeout=60)
        try:
            new = sb.read_file(path).decode(errors="surrogateescape")
        except FileNotFoundError:
            new = None
        if r.exit_code != 0 or new is None:  # created or deleted by the patch
            whole.append(path)
            tampered.append(f"{path} (test configuration)")
            continue
        base_text = sb.read_file(f"{d}/cfg.base").decode(errors="surrogateescape")
        text, changed = restore_test_sections(Path(path).name, base_text, new)
        if changed:
            sb.write_file(path, text.encode(errors="surrogateescape"))
            tampered.append(f"{path} (pytest sections)")
    if whole:
        sb.write_file(f"{d}/restore", "\0".join(whole) + "\0")
        r = sb.exec(
            "while IFS= read -r -d '' f; do rm -rf -- \"$f\"; "
            f'if git cat-file -e {base}:"$f" 2>/dev/null; then git checkout -q {base} -- "$f" '
            '|| exit 1; else rmdir -p --ignore-fail-on-non-empty "$(dirname -- "$f")" '
            f"2>/dev/null; fi; done < {d}/restore; true",
            timeout=120,
        )
        if r.exit_code != 0:
            raise RuntimeError(f"could not restore the test infrastructure: {r.stderr.strip()}")
    if tampered:
        log.append(">>> restored before the test run:\n" + "\n".join(tampered))
    return tampered
