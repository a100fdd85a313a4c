"""SWEEnv: fix a bug in a real repository with tools, inside a hardened Docker sandbox.

Each episode is one SWE-bench style task (:mod:`.tasks`). The agent acts with tool calls, one
per turn, written either as JSON or in a tagged form::

    {"tool": "bash", "command": "python3 -m pytest -q"}      bash: python3 -m pytest -q
    {"tool": "view", "path": "pkg/mod.py", "start": 1, "end": 40}
                                                             view: pkg/mod.py:1-40
    {"tool": "create", "path": "notes.txt", "content": "..."}
                                                             create: notes.txt
                                                             <content on the following lines>
    {"tool": "replace", "path": "pkg/mod.py", "old": "...", "new": "..."}
                                                             replace: pkg/mod.py
                                                             <<<<<<< OLD
                                                             exact old text
                                                             =======
                                                             new text
                                                             >>>>>>> NEW
    {"tool": "submit"}                                       submit

The same tools are declared as OpenAI function schemas (:data:`~.tools.SWE_TOOLS`, on the
spec's ``tools``), so a chat model can call them natively: its call arrives as the JSON form.
``replace`` needs ``old`` to occur exactly once. Tool output is cut to ``max_obs_chars`` (head and
tail kept). An action that is not a valid tool call is answered with the syntax and
``valid=False``; it does not end the episode.

``submit`` ends the episode: the patch (``git diff`` of the workspace against ``base_commit``,
new files included) is graded like the SWE-bench harness (:func:`.grading.grade`) in the same
sandbox after it is reset to the clean checkout. Reward is 1.0 when the task is resolved.

``info["reward_channels"]`` carries numeric per-turn signals for gated/shaped rewards
(:mod:`agentgym.trainers.credit`): ``resolved`` and ``submitted`` (1.0 on the submit turn when
the task is resolved / always), ``tool_valid`` (the tool call parsed and ran without a tool
error), ``repo_modified`` (the working tree differs from ``base_commit`` after the turn) and
``tests_run`` (this turn ran pytest/unittest). ``info["outcome"]`` names how the episode ended:
``none`` before the end, then ``empty_patch``, ``patch_failed``, ``tests_fail`` or
``resolved``. ``info["metrics"]`` (every turn; the last turn's values are the episode's):
``completion`` (submitted), ``modification`` (non-empty patch: the working tree differs from
``base_commit``), ``resolution`` (resolved). An episode cut by the turn limit therefore counts
as not completed, and as modified when it left changes behind.

The observation's anchor is ``swe:<instance_id>:<sha256 of the working-tree diff>``: two
states have the same anchor exactly when the repository files are identical, whatever the
history or the last tool output (which the anchor leaves out on purpose, so that GiGPO can group
e.g. two agents who both looked around without editing anything).
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from typing import Any

from agentgym.core import Env, Observation
from agentgym.environments.swe.tasks import SWETask, load_tasks
from agentgym.environments.swe.tools import SWE_TOOLS

__all__ = ["SWEEnv", "parse_tool_call", "ToolCall", "TOOLS_HELP", "SWE_TOOLS"]

TOOLS_HELP = """\
Tools (one per turn), as JSON or in the tagged form:
  bash: <command>                     run a shell command in the repository (no network)
  view: <path>[:<start>-<end>]        show a file with line numbers
  create: <path>                      create/overwrite a file; content on the following lines
  replace: <path>                     replace one exact occurrence of a text:
  <<<<<<< OLD
  exact text to replace
  =======
  new text
  >>>>>>> NEW
  submit                              finish; your changes are graded by the hidden tests
JSON: {"tool": "bash", "command": "..."}, {"tool": "view", "path": "...", "start": 1, "end": 40},
{"tool": "create", "path": "...", "content": "..."},
{"tool": "replace", "path": "...", "old": "...", "new": "..."}, {"tool": "submit"}"""

ToolCall = dict[str, Any]
#: The ``verify`` expert's test run (the repository's own tests, not the hidden ones).
EXPERT_TEST_ACTION = "bash: python3 -m pytest -q 2>&1 | tail -3"
_REPLACE_RE = re.compile(r"^<<<<<<< ?OLD\n(.*?)\n?=======\n(.*?)\n?>>>>>>> ?NEW\s*$", re.DOTALL)
_VIEW_RE = re.compile(r"^(.+?)(?::(\d+)-(\d+))?$")
_TESTS_RE = re.compile(r"\bpytest\b|\bunittest\b")


def parse_tool_call(action: str) -> tuple[ToolCall | None, str]:
    """``(call, "")`` for a valid tool call, else ``(None, what is wrong)``."""
    text = action.strip()
    if not text:
        return None, "empty action"
    if text.startswith("{"):
        try:
            call = json.loads(text)
        except json.JSONDecodeError as e:
            return None, f"invalid JSON tool call: {e}"
        if not isinstance(call, dict) or not isinstance(call.get("tool"), str):
            return None, 'a JSON tool call needs a "tool" field'
        return _check(call)
    head, _, rest = text.partition("\n")
    name, sep, arg = head.partition(":")
    name = name.strip().lower()
    if name == "submit" and not arg.strip():
        return {"tool": "submit"}, ""
    if not sep:
        return None, f"unknown tool call {head[:60]!r}"
    arg = arg.strip()
    if name == "bash":
        return _check({"tool": "bash", "command": (arg + ("\n" + rest if rest else "")).strip()})
    if name == "view":
        m = _VIEW_RE.match(arg)
        if not m:
            return None, "view needs a path: view: pkg/mod.py[:10-40]"
        call: ToolCall = {"tool": "view", "path": m.group(1).strip()}
        if m.group(2):
            call.update(start=int(m.group(2)), end=int(m.group(3)))
        return _check(call)
    if name == "create":
        return _check({"tool": "create", "path": arg, "content": rest})
    if name == "replace":
        m = _REPLACE_RE.match(rest.strip("\n"))
        if not m:
            return None, (
                "replace needs the old and new text in a block:\n"
                "replace: <path>\n<<<<<<< OLD\n...\n=======\n...\n>>>>>>> NEW"
            )
        return _check({"tool": "replace", "path": arg, "old": m.group(1), "new": m.group(2)})
    return None, f"unknown tool {name!r}"


#: Each tool's required arguments, from its declared schema (one source of truth for both forms).
_REQUIRED = {t["function"]["name"]: t["function"]["parameters"]["required"] for t in SWE_TOOLS}
#: Arguments that may be empty strings (a file's content, a replacement that deletes).
_MAY_BE_EMPTY = ("content", "new")


def _check(call: ToolCall) -> tuple[ToolCall | None, str]:
    tool = call["tool"]
    if tool not in _REQUIRED:
        return None, f"unknown tool {tool!r}; tools: {', '.join(_REQUIRED)}"
    for k in _REQUIRED[tool]:
        if not isinstance(call.get(k), str) or (k not in _MAY_BE_EMPTY and not call[k]):
            return None, f"{tool} needs a non-empty string {k!r}"
    for k in ("start", "end"):
        v = call.get(k)
        if tool == "view" and v is not None and (type(v) is not int or v < 1):
            return None, f"view's {k!r} must be a line number (an integer >= 1), got {v!r}"
    return call, ""


def _file_error(e: Exception) -> str:
    """A file tool's failure as the agent should read it: what happened and what to do."""
    from agentgym.sandboxes.base import FileTooLarge

    if isinstance(e, FileTooLarge):
        return f"{e}. Use bash to work on part of it (head, sed -n '10,40p', grep -n)."
    if isinstance(e, TimeoutError):
        return f"{e}. Use bash (ls -l, file) to see what it is."
    return str(e)


def _clip(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]}\n[... {len(text) - 2 * half} characters cut ...]\n{text[-half:]}"


class SWEEnv(Env):
    """Repository-level bug fixing with bash/view/replace/create/submit tools.

    Args:
        dataset: ``"builtin"`` or a JSONL file of SWE-bench instances.
        repos_dir: a folder with a git checkout per instance (for datasets without ``repo_dir``).
        tasks: restrict to these instance ids.
        max_obs_chars: tool output longer than this is cut (head and tail kept).
        exec_timeout / test_timeout: seconds per tool command / for the grading test run.
        memory, cpus, pids_limit: sandbox limits.
        expert: the demonstration :meth:`expert_action` plays: ``"apply"`` (apply the gold patch,
            submit) or ``"verify"`` (apply it, run the repository's tests, submit: a 3-turn
            demonstration closer to how an agent works, used for SFT before RL on the suite).
    """

    metadata = {"family": "swe"}

    def __init__(
        self,
        dataset: str = "builtin",
        *,
        repos_dir: str | None = None,
        tasks: list[str] | None = None,
        max_obs_chars: int = 4000,
        exec_timeout: float = 60.0,
        test_timeout: float = 300.0,
        memory: str = "1g",
        cpus: float = 1.0,
        pids_limit: int = 256,
        expert: str = "apply",
    ) -> None:
        if expert not in ("apply", "verify"):
            raise ValueError(f"unknown expert {expert!r}: use 'apply' or 'verify'")
        self.expert = expert
        all_tasks = load_tasks(dataset, repos_dir=repos_dir)
        if tasks:
            by_id = {t.instance_id: t for t in all_tasks}
            unknown = [i for i in tasks if i not in by_id]
            if unknown:
                raise ValueError(f"unknown task ids {unknown}; known: {sorted(by_id)[:10]}...")
            all_tasks = [by_id[i] for i in tasks]
        if not all_tasks:
            raise ValueError(f"dataset {dataset!r} has no tasks")
        self.tasks: list[SWETask] = all_tasks
        self.max_obs_chars = max_obs_chars
        self.exec_timeout = exec_timeout
        self.test_timeout = test_timeout
        self.limits = {"memory": memory, "cpus": cpus, "pids_limit": pids_limit}
        self._sb: Any = None
        self._sb_task: str | None = None
        self.task: SWETask | None = None
        self._done = True
        self._closed = False
        self._expert_applied = False

    # -- episode -------------------------------------------------------------------------

    def _pick(self, seed: int | None, options: dict[str, Any] | None) -> SWETask:
        choice = (options or {}).get("task")
        if choice is not None:
            if isinstance(choice, int):
                return self.tasks[choice % len(self.tasks)]
            for t in self.tasks:
                if t.instance_id == choice:
                    return t
            raise ValueError(f"unknown task {choice!r}; use an index or an instance_id")
        if seed is None:
            return random.choice(self.tasks)
        return self.tasks[seed % len(self.tasks)]

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Observation, dict[str, Any]]:
        from agentgym.environments.swe.grading import open_task_sandbox

        task = self._pick(seed, options)
        if self._sb is not None and self._sb_task == task.instance_id and not self._sb.closed:
            self._sb.reset()  # warm reuse: back to the clean checkout
        else:
            if self._sb is not None:
                self._sb.close()
            self._sb = open_task_sandbox(task, **self.limits)
            self._sb_task = task.instance_id
        self.task = task
        self._done = False
        self._expert_applied = False
        self._expert_tested = False
        files = self._sb.exec("git ls-files", timeout=30).stdout.strip()
        text = (
            f"Repository {task.repo} is checked out in /workspace (commit "
            f"{task.base_commit[:12]}).\nFiles:\n{_clip(files, self.max_obs_chars)}\n\n{TOOLS_HELP}"
        )
        task_text = (
            f"Fix this issue in {task.repo}. Hidden tests check your fix when you submit.\n\n"
            f"{task.problem_statement}"
        )
        self._task_text = task_text
        obs = Observation(text=text, task=task_text, anchor=self._anchor(""))
        return obs, {"task_id": task.instance_id, "repo": task.repo}

    def _patch(self) -> str:
        from agentgym.environments.swe.grading import model_patch

        assert self.task is not None
        return model_patch(self._sb, self.task.base_commit)

    def _anchor(self, patch: str) -> str:
        assert self.task is not None
        return f"swe:{self.task.instance_id}:{hashlib.sha256(patch.encode()).hexdigest()[:16]}"

    def step(self, action: str) -> tuple[Observation, float, bool, bool, dict[str, Any]]:
        if self.task is None or self._done:
            from agentgym.core import ResetNeeded

            raise ResetNeeded("call reset() before step()")
        if action == self._expert_apply_action():
            self._expert_applied = True
        elif self._expert_applied and action == EXPERT_TEST_ACTION:
            self._expert_tested = True
        call, error = parse_tool_call(action)
        channels = {
            "resolved": 0.0,
            "submitted": 0.0,
            "tool_valid": float(call is not None),
            "repo_modified": 0.0,
            "tests_run": 0.0,
        }
        info: dict[str, Any] = {
            "won": False,
            "score": 0.0,
            "valid": call is not None,
            "outcome": "none",
            "reward_channels": channels,
        }
        if call is None:
            patch = self._patch()
            self._progress(info, patch)
            text = f"Invalid tool call: {error}.\n\n{TOOLS_HELP}"
            return self._obs(text, patch), 0.0, False, False, info
        if call["tool"] == "submit":
            return self._submit(info)
        text, ok = self._run_tool(call)
        info["valid"] = ok
        channels["tool_valid"] = float(ok)
        channels["tests_run"] = float(
            call["tool"] == "bash" and bool(_TESTS_RE.search(call["command"]))
        )
        patch = self._patch()
        self._progress(info, patch)
        return self._obs(text, patch), 0.0, False, False, info

    @staticmethod
    def _progress(info: dict[str, Any], patch: str) -> None:
        """A turn's ``repo_modified`` channel and metrics from the working-tree diff (not
        completed, not resolved: ``_submit`` sets those)."""
        modified = float(bool(patch.strip()))
        info["reward_channels"]["repo_modified"] = modified
        info["metrics"] = {"completion": 0.0, "modification": modified, "resolution": 0.0}

    def _obs(self, text: str, patch: str) -> Observation:
        return Observation(
            text=_clip(text, self.max_obs_chars), task=self._task_text, anchor=self._anchor(patch)
        )

    def _run_tool(self, call: ToolCall) -> tuple[str, bool]:
        sb = self._sb
        tool = call["tool"]
        if tool == "bash":
            r = sb.exec(call["command"], timeout=self.exec_timeout)
            parts = [r.stdout]
            if r.stderr:
                parts.append(r.stderr)
            status = f"[exit code {r.exit_code}]"
            if r.timed_out:
                status = f"[timed out after {self.exec_timeout:g}s; the command was killed]"
            elif r.oom:
                status = "[killed: out of memory]"
            return "".join(
                p if p.endswith("\n") or not p else p + "\n" for p in parts
            ) + status, True
        path = call["path"]
        if tool == "view":
            try:
                data = sb.read_file(path).decode(errors="replace")
            except OSError as e:  # missing, FIFO/device, too large, timed out: all observations
                return f"view: {_file_error(e)}", False
            lines = data.splitlines()
            start = max(1, int(call.get("start", 1)))
            end = min(len(lines), int(call.get("end", len(lines))))
            body = "\n".join(f"{i:5d}  {lines[i - 1]}" for i in range(start, end + 1))
            return f"{path} (lines {start}-{end} of {len(lines)}):\n{body}", True
        if tool == "create":
            content = call["content"]
            if content and not content.endswith("\n"):
                content += "\n"
            try:
                sb.write_file(path, content)
            except OSError as e:
                return f"create: {_file_error(e)}", False
            return f"Wrote {path} ({len(content.splitlines())} lines).", True
        # replace
        try:
            data = sb.read_file(path).decode()
        except (OSError, UnicodeDecodeError) as e:
            return f"replace: {_file_error(e)}", False
        n = data.count(call["old"])
        if n != 1:
            where = "does not occur" if n == 0 else f"occurs {n} times"
            return (
                f"replace: the old text {where} in {path}; it must match exactly once "
                "(check whitespace, or include more context)."
            ), False
        try:
            sb.write_file(path, data.replace(call["old"], call["new"]))
        except OSError as e:
            return f"replace: {_file_error(e)}", False
        return f"Replaced 1 occurrence in {path}.", True

    def _submit(self, info: dict[str, Any]) -> tuple[Observation, float, bool, bool, dict]:
        from agentgym.environments.swe.grading import grade

        assert self.task is not None
        patch = self._patch()
        self._sb.reset()  # grade from the clean checkout, like the harness
        res = grade(self._sb, self.task, patch, timeout=self.test_timeout)
        self._done = True
        outcome = {
            "resolved": "resolved",
            "empty_patch": "empty_patch",
            "patch_failed": "patch_failed",
        }.get(res.status, "tests_fail")
        self._progress(info, patch)  # repo_modified / modification, as on every turn
        info["reward_channels"].update(resolved=float(res.resolved), submitted=1.0, tests_run=1.0)
        info["metrics"].update(completion=1.0, resolution=float(res.resolved))
        info.update(
            outcome=outcome,
            won=res.resolved,
            score=float(res.resolved),
            valid=True,
            grade=res.to_dict(),
            model_patch=patch,
        )
        f2p = res.fail_to_pass
        text = (
            f"Submitted. Status: {res.status}. "
            f"FAIL_TO_PASS passing: {len(f2p.get('success', []))}/{len(self.task.FAIL_TO_PASS)}"
            f", PASS_TO_PASS passing: {len(res.pass_to_pass.get('success', []))}/"
            f"{len(self.task.PASS_TO_PASS)}."
        )
        obs = Observation(text=text, task=self._task_text, anchor=self._anchor(patch))
        return obs, float(res.resolved), True, False, info

    def expert_action(self) -> str | None:
        """Apply the gold patch with a bash tool call, (``verify``: run the tests,) submit."""
        if self.task is None or self._done:
            return None
        if not self._expert_applied:
            return self._expert_apply_action()
        if self.expert == "verify" and not self._expert_tested:
            return EXPERT_TEST_ACTION
        return "submit"

    def _expert_apply_action(self) -> str:
        assert self.task is not None
        return "bash: git apply <<'AGENTGYM_EOF'\n" + self.task.patch + "AGENTGYM_EOF"

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._sb is not None:
            self._sb.close()
            self._sb = None
