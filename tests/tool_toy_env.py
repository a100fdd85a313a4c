"""Small envs that declare tools, for the tool-call tests (real env code, no mocks).

``test/ToolDoors-v0``: rooms with three coloured doors; a sign names the one that leads on. The
env declares one tool, ``open_door(color)``, so a call arrives as ``{"tool": "open_door",
"color": "red"}``; the text form ``open red door`` keeps working (the expert plays it).

``test/ToolShell-v0``: one turn; the observation is a fixed request and the env declares a
``bash`` tool. It keeps the actions it received, so a test can see what reached the env.
"""

from __future__ import annotations

import json
import random
from typing import Any

import agentgym
from agentgym.core import Env, Observation

COLORS = ("red", "blue", "green")

DOOR_TOOLS = (
    {
        "type": "function",
        "function": {
            "name": "open_door",
            "description": "Open the door of one colour.",
            "parameters": {
                "type": "object",
                "properties": {"color": {"type": "string", "enum": list(COLORS)}},
                "required": ["color"],
            },
        },
    },
)

BASH_TOOLS = (
    {
        "type": "function",
        "function": {
            "name": "bash",
            "description": "Run a shell command",
            "parameters": {
                "type": "object",
                "properties": {"command": {"type": "string"}},
                "required": ["command"],
            },
        },
    },
)


def door_of(action: str) -> str | None:
    """The colour an action opens (JSON tool call or ``open <c> door``), else None."""
    text = action.strip()
    if text.startswith("{"):
        try:
            call = json.loads(text)
        except json.JSONDecodeError:
            return None
        ok = isinstance(call, dict) and call.get("tool") == "open_door"
        return call.get("color") if ok and call.get("color") in COLORS else None
    words = text.lower().split()
    if len(words) == 3 and words[0] == "open" and words[2] == "door" and words[1] in COLORS:
        return words[1]
    return None


class ToolDoors(Env):
    """``rooms`` rooms; reward 1 on getting through. ``obs_tools``: a per-observation override
    put on every observation (for the checker tests)."""

    def __init__(self, rooms: int = 2, obs_tools: Any = None, split: str = "train") -> None:
        self.rooms = rooms
        self.offset = 0 if split == "train" else 7919
        self.obs_tools = obs_tools
        self.path: list[str] = []
        self.room = 0
        self.seed = 0

    def _obs(self, text: str = "") -> Observation:
        sign = self.path[self.room]
        body = (f"{text} " if text else "") + f"Room {self.room + 1}. A sign says: {sign}."
        return Observation(
            text=body,
            task="Get through all the rooms.",
            anchor=f"{self.seed}:{self.room}",
            tools=self.obs_tools,
        )

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        self.seed = int(seed or 0) + self.offset
        rng = random.Random(self.seed)
        self.path = [rng.choice(COLORS) for _ in range(self.rooms)]
        self.room = 0
        return self._obs(), {"task_id": f"doors-{self.seed}"}

    def step(self, action: str):
        color = door_of(action)
        if color is None:
            text = f"Not a door: {action[:60]!r}. Call open_door with a color."
            return self._obs(text), 0.0, False, False, {"won": False, "valid": False}
        if color != self.path[self.room]:
            return self._obs("That door is locked."), 0.0, False, False, {"won": False}
        self.room += 1
        if self.room == self.rooms:
            self.room -= 1
            done = Observation(text="You made it out!", anchor=f"{self.seed}:end")
            return done, 1.0, True, False, {"won": True, "score": 1.0}
        return self._obs("The door opens."), 0.0, False, False, {"won": False}

    def expert_action(self) -> str | None:
        return f"open {self.path[self.room]} door"


class ToolShell(Env):
    """One turn: the observation is ``prompt``; the action must be a ``bash`` tool call."""

    received: list[str] = []  # class-level: the sync pool's env instances share it

    def __init__(self, prompt: str = "list the files") -> None:
        self.prompt = prompt

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        return Observation(text=self.prompt), {"task_id": "shell-0"}

    def step(self, action: str):
        ToolShell.received.append(action)
        try:
            call = json.loads(action)
        except json.JSONDecodeError:
            call = None
        ok = isinstance(call, dict) and call.get("tool") == "bash"
        text = "a.py b.py" if ok else "Not a bash tool call."
        return Observation(text=text), float(ok), ok, False, {"won": ok, "valid": ok}


agentgym.register(
    "test/ToolDoors-v0", "tool_toy_env:ToolDoors", max_turns=4, tools=DOOR_TOOLS, override=True
)
agentgym.register(
    "test/ToolShell-v0", "tool_toy_env:ToolShell", max_turns=2, tools=BASH_TOOLS, override=True
)
