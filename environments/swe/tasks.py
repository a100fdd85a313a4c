"""SWE tasks in the SWE-bench instance format, and the built-in task suite.

A task (:class:`SWETask`) has the SWE-bench fields ``instance_id``, ``repo``, ``base_commit``,
``problem_statement``, ``patch`` (the gold fix), ``test_patch``, ``FAIL_TO_PASS`` and
``PASS_TO_PASS``, plus what running it offline needs: ``repo_dir`` (a local git checkout;
``--repos-dir`` points at a folder of them), ``install`` (a command run once when the task image is
built) and ``test_cmd`` (defaults to pytest with ``-rA`` so per-test outcomes can be parsed).

The built-in suite lives in ``data/``: five small Python libraries (``data/repos/<name>``, each
correct and tested) and ``data/suite.yaml``, which plants one bug per task. For every task,
:func:`builtin_tasks` writes the buggy tree into a fresh git repository (one commit with a fixed
author and date, so ``base_commit`` is the same on every machine), and derives the gold
``patch`` (buggy -> fixed) and ``test_patch`` (the new tests) as unified diffs. The git history
holds only the buggy commit, so an agent cannot read the fix from it.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = [
    "SWETask",
    "DEFAULT_TEST_CMD",
    "builtin_tasks",
    "load_tasks",
    "save_tasks",
    "unified_diff",
    "DATA_DIR",
]

DATA_DIR = Path(__file__).parent / "data"
DEFAULT_TEST_CMD = "python3 -m pytest -rA -p no:cacheprovider"
_GIT_ENV = {
    "GIT_AUTHOR_NAME": "agentgym",
    "GIT_AUTHOR_EMAIL": "suite@agentgym.invalid",
    "GIT_COMMITTER_NAME": "agentgym",
    "GIT_COMMITTER_EMAIL": "suite@agentgym.invalid",
    "GIT_AUTHOR_DATE": "2024-01-01T00:00:00+0000",
    "GIT_COMMITTER_DATE": "2024-01-01T00:00:00+0000",
    "GIT_CONFIG_NOSYSTEM": "1",
    "HOME": "/nonexistent",
}


@dataclasses.dataclass(frozen=True)
class SWETask:
    """One SWE-bench style instance (field names follow SWE-bench)."""

    instance_id: str
    repo: str
    base_commit: str
    problem_statement: str
    patch: str
    test_patch: str
    FAIL_TO_PASS: tuple[str, ...]
    PASS_TO_PASS: tuple[str, ...]
    repo_dir: str | None = None
    install: str | None = None
    test_cmd: str = DEFAULT_TEST_CMD
    image: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["FAIL_TO_PASS"] = list(self.FAIL_TO_PASS)
        d["PASS_TO_PASS"] = list(self.PASS_TO_PASS)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], repos_dir: str | None = None) -> SWETask:
        missing = [k for k in ("instance_id", "repo", "base_commit", "FAIL_TO_PASS") if k not in d]
        if missing:
            raise ValueError(f"task {d.get('instance_id', d)!r} lacks the fields {missing}")

        def tests(v: Any) -> tuple[str, ...]:
            # SWE-bench ships these lists as JSON strings.
            if isinstance(v, str):
                v = json.loads(v) if v.strip() else []
            return tuple(v or ())

        repo_dir = d.get("repo_dir")
        if repo_dir is None and repos_dir is not None:
            for cand in (d["instance_id"], d["repo"].replace("/", "__"), d["repo"].split("/")[-1]):
                if (Path(repos_dir) / cand).is_dir():
                    repo_dir = str(Path(repos_dir) / cand)
                    break
        return cls(
            instance_id=d["instance_id"],
            repo=d["repo"],
            base_commit=d["base_commit"],
            problem_statement=d.get("problem_statement", ""),
            patch=d.get("patch", ""),
            test_patch=d.get("test_patch", ""),
            FAIL_TO_PASS=tests(d["FAIL_TO_PASS"]),
            PASS_TO_PASS=tests(d.get("PASS_TO_PASS", [])),
            repo_dir=repo_dir,
            install=d.get("install") or None,
            test_cmd=d.get("test_cmd") or DEFAULT_TEST_CMD,
            image=d.get("image") or None,
        )


def unified_diff(path: str, old: str, new: str) -> str:
    """A ``git apply``-able diff of one file from ``old`` to ``new`` (``""`` if equal)."""
    if old == new:
        return ""
    lines = list(
        difflib.unified_diff(
            old.splitlines(keepends=True), new.splitlines(keepends=True), f"a/{path}", f"b/{path}"
        )
    )
    for i, ln in enumerate(lines):
        if not ln.endswith("\n"):
            lines[i] = ln + "\n\\ No newline at end of file\n"
    return f"diff --git a/{path} b/{path}\n" + "".join(lines)


def _test_ids(test_file: str, source: str) -> list[str]:
    """pytest node ids of the top-level ``test_*`` functions in ``source``."""
    tree = ast.parse(source)
    return [
        f"{test_file}::{n.name}"
        for n in tree.body
        if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")
    ]


def _git(args: list[str], cwd: Path) -> str:
    proc = subprocess.run(
        ["git", *args], cwd=cwd, capture_output=True, text=True, env={**os.environ, **_GIT_ENV}
    )
    if proc.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} failed in {cwd}: {proc.stderr.strip()}")
    return proc.stdout.strip()


def _load_suite() -> dict[str, Any]:
    import yaml

    with open(DATA_DIR / "suite.yaml", encoding="utf-8") as f:
        return yaml.safe_load(f)


def _suite_version() -> str:
    import hashlib

    h = hashlib.sha256((DATA_DIR / "suite.yaml").read_bytes())
    for p in sorted((DATA_DIR / "repos").rglob("*")):
        if p.is_file() and "__pycache__" not in p.parts:
            h.update(p.relative_to(DATA_DIR).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()[:12]


def builtin_tasks(root: str | os.PathLike[str] | None = None) -> list[SWETask]:
    """The built-in suite, with each task's git repository materialised under ``root``.

    ``root`` defaults to ``cache_dir("swe", "suite-<hash of the data>")``; repositories that
    already exist there are reused.
    """
    from agentgym.utils import cache_dir

    suite = _load_suite()
    base = Path(root) if root is not None else cache_dir("swe", f"suite-{_suite_version()}")
    tasks = []
    for spec in suite["tasks"]:
        repo = spec["repo"]
        repo_cfg = suite["repos"][repo]
        src_root = DATA_DIR / "repos" / repo
        target = src_root / spec["file"]
        fixed_text = target.read_text(encoding="utf-8")
        if fixed_text.count(spec["fixed"]) != 1:
            raise ValueError(
                f"suite task {spec['instance_id']}: the 'fixed' snippet must occur exactly once "
                f"in {target} (found {fixed_text.count(spec['fixed'])}); fix data/suite.yaml"
            )
        buggy_text = fixed_text.replace(spec["fixed"], spec["buggy"])
        test_path = src_root / spec["test_file"]
        test_old = test_path.read_text(encoding="utf-8")
        test_new = test_old.rstrip("\n") + "\n\n\n" + spec["tests"].rstrip("\n") + "\n"
        dest = base / spec["instance_id"]
        if not (dest / ".git").is_dir():
            # A private temp name + rename: concurrent builders (threads, processes) never see
            # a half-written repository, and the first rename wins.
            tmp = base / f".{spec['instance_id']}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
            shutil.copytree(src_root, tmp, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            (tmp / spec["file"]).write_text(buggy_text, encoding="utf-8")
            _git(["init", "-q", "-b", "main"], tmp)
            _git(["add", "-A"], tmp)
            _git(["commit", "-q", "-m", f"{repo}: snapshot"], tmp)
            try:
                os.replace(tmp, dest)
            except OSError:
                if not (dest / ".git").is_dir():
                    raise
                shutil.rmtree(tmp, ignore_errors=True)
        commit = _git(["rev-parse", "HEAD"], dest)
        pass_to_pass = []
        for tf in sorted((src_root / "tests").glob("test_*.py")):
            rel = tf.relative_to(src_root).as_posix()
            pass_to_pass += _test_ids(rel, tf.read_text(encoding="utf-8"))
        tasks.append(
            SWETask(
                instance_id=spec["instance_id"],
                repo=f"agentgym-suite/{repo}",
                base_commit=commit,
                problem_statement=spec["problem_statement"].strip() + "\n",
                patch=unified_diff(spec["file"], buggy_text, fixed_text),
                test_patch=unified_diff(spec["test_file"], test_old, test_new),
                FAIL_TO_PASS=tuple(_test_ids(spec["test_file"], spec["tests"])),
                PASS_TO_PASS=tuple(pass_to_pass),
                repo_dir=str(dest),
                install=repo_cfg.get("install"),
                test_cmd=repo_cfg.get("test_cmd", DEFAULT_TEST_CMD),
            )
        )
    return tasks


def load_tasks(dataset: str | os.PathLike[str], repos_dir: str | None = None) -> list[SWETask]:
    """Tasks from ``"builtin"`` or a JSONL/JSON file of SWE-bench instances."""
    if str(dataset) == "builtin":
        return builtin_tasks()
    path = Path(dataset)
    if not path.exists():
        raise FileNotFoundError(
            f"dataset {str(dataset)!r} not found; pass 'builtin' or a JSONL file of SWE-bench "
            "instances (write the built-in one with `agentgym swe export --out tasks.jsonl`)"
        )
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        rows = json.loads(text)
    else:
        rows = [json.loads(ln) for ln in text.splitlines() if ln.strip()]
    tasks = [SWETask.from_dict(r, repos_dir=repos_dir) for r in rows]
    ids = [t.instance_id for t in tasks]
    dup = {i for i in ids if ids.count(i) > 1}
    if dup:
        raise ValueError(f"dataset {dataset} has duplicate instance_ids: {sorted(dup)}")
    return tasks


def save_tasks(tasks: Iterable[SWETask], path: str | os.PathLike[str]) -> None:
    from agentgym.utils import atomic_write

    with atomic_write(path) as f:
        for t in tasks:
            f.write(json.dumps(t.to_dict()) + "\n")
