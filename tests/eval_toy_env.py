"""A tiny deterministic env for the evaluation, report and serving tests.

Importing this module registers ``evaltoy/Words-v0``. Spawned env workers import it by its entry
point, so it lives in an importable module rather than inside a test file.

Task ``k`` (chosen by ``seed % 4``): say the secret word ``WORDS[k]``, one of the admissible
actions. The right word wins (reward 1, terminated); a wrong admissible word costs nothing and the
episode goes on; anything else is invalid. Tasks 0 and 2 have task type ``even``, 1 and 3 ``odd``.
``slow_tasks`` makes every step of those tasks sleep ``slow_s`` seconds (timeout tests); with
``images=True`` every observation carries a small PNG (screenshot tests).
"""

from __future__ import annotations

import struct
import time
import zlib
from typing import Any

from agentgym.core import Env, Observation
from agentgym.registration import register, registry

WORDS = ("alpha", "beta", "gamma", "delta")
ENV_ID = "evaltoy/Words-v0"


def tiny_png(shade: int) -> bytes:
    """A valid 4x4 grey PNG."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    raw = b"".join(b"\x00" + bytes([shade % 256]) * 4 for _ in range(4))
    ihdr = struct.pack(">IIBBBBB", 4, 4, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


class WordsEnv(Env):
    def __init__(
        self,
        slow_tasks: list[int] | None = None,
        slow_s: float = 0.0,
        images: bool = False,
        split: str = "test",
    ) -> None:
        self.slow_tasks = set(slow_tasks or [])
        self.slow_s = slow_s
        self.images = images
        self.split = split
        self.task = 0
        self.tried: list[str] = []

    def _obs(self, text: str) -> Observation:
        return Observation(
            text=text,
            task=f"Say the secret word (hint: it has {len(WORDS[self.task])} letters).",
            admissible_actions=WORDS,
            anchor=f"{self.task}:{','.join(sorted(self.tried))}",
            image=tiny_png(40 * len(self.tried)) if self.images else None,
        )

    def reset(self, *, seed=None, options=None):
        if options and "task" in options:
            self.task = int(options["task"]) % len(WORDS)
        else:
            self.task = (seed or 0) % len(WORDS)
        self.tried = []
        info = {
            "task_id": f"word-{self.task}",
            "task_type": "even" if self.task % 2 == 0 else "odd",
        }
        return self._obs("You stand before a locked door. Speak the word."), info

    def step(self, action: str) -> tuple[Observation, float, bool, bool, dict[str, Any]]:
        if self.task in self.slow_tasks:
            time.sleep(self.slow_s)
        a = action.strip().lower()
        if a not in WORDS:
            return (
                self._obs(f"'{action}' is not a word the door knows."),
                0.0,
                False,
                False,
                {"won": False, "score": 0.0, "valid": False},
            )
        self.tried.append(a)
        if a == WORDS[self.task]:
            return (
                self._obs("The door opens."),
                1.0,
                True,
                False,
                {"won": True, "score": 1.0, "valid": True},
            )
        return (
            self._obs(f"Nothing happens when you say {a}."),
            0.0,
            False,
            False,
            {"won": False, "score": 0.0, "valid": True},
        )

    def expert_action(self) -> str | None:
        return WORDS[self.task]


if ENV_ID not in registry:
    register(
        ENV_ID,
        entry_point="eval_toy_env:WordsEnv",
        max_turns=5,
        description="say the secret word (evaluation tests)",
    )
