"""A tiny deterministic env for the core's own tests (pool, rollout, checker, CLI).

A corridor of ``length`` cells; the agent starts at 0 and must reach the goal cell.
``crash`` kills the hosting process (a real worker crash); ``raise`` raises (an env bug).
"""

from __future__ import annotations

import os
import signal
from typing import Any

from agentgym.core import Env, Observation


class Corridor(Env):
    def __init__(self, num_tasks: int = 4, slow_s: float = 0.0) -> None:
        self.num_tasks = num_tasks
        self.slow_s = slow_s
        self.length = 0
        self.pos = 0
        self.closed = 0

    def _obs(self, text: str) -> Observation:
        acts = ("left", "right", "look")
        return Observation(
            text=text,
            task=f"walk right to cell {self.length}",
            admissible_actions=acts,
            anchor=f"len={self.length};pos={self.pos}",
        )

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        task = (options or {}).get("task", (seed or 0) % self.num_tasks)
        self.length = 2 + int(task)
        self.pos = 0
        return self._obs(f"You are at cell 0 of {self.length}."), {"task_id": f"corridor-{task}"}

    def step(self, action: str):
        if self.slow_s:
            import time

            time.sleep(self.slow_s)
        if action == "crash":
            os.kill(os.getpid(), signal.SIGKILL)
        if action == "raise":
            raise RuntimeError("env bug on purpose")
        if action not in ("left", "right", "look"):
            obs = self._obs(f"'{action}' is not a valid action; use left, right or look.")
            return obs, 0.0, False, False, {"won": False, "score": 0.0, "valid": False}
        if action == "right":
            self.pos += 1
        elif action == "left":
            self.pos = max(0, self.pos - 1)
        won = self.pos >= self.length
        r = 1.0 if won else 0.0
        obs = self._obs("You reached the goal!" if won else f"You are at cell {self.pos}.")
        return obs, r, won, False, {"won": won, "score": r, "valid": True}

    def expert_action(self) -> str | None:
        return "right"

    def close(self) -> None:
        self.closed += 1
