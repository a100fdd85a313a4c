"""What runs inside an env worker: :class:`EnvHost` holds envs and executes command batches.

The process, sync and Ray backends of :class:`~agentgym.pool.EnvPool` all run the same host, so
the crash semantics are shared: an env that raises is rebuilt and its episode reported with
:func:`crash_result`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
import traceback
from collections.abc import Mapping
from typing import Any

from agentgym.core import Observation, StepResult
from agentgym.registration import EnvSpec, make

__all__ = ["EnvHost", "Batch", "Answer", "crash_result"]

# A command batch: (command, [(local_env_index, argument), ...]).
Batch = tuple[str, list[tuple[int, Any]]]
# The answer: one (ok, value-or-traceback) per item, in order.
Answer = list[tuple[bool, Any]]


def crash_result(error: str) -> StepResult:
    """The result reported for an episode whose env or worker crashed."""
    return StepResult(
        observation=Observation(text=f"[environment error] {error.strip().splitlines()[-1]}"),
        reward=0.0,
        terminated=False,
        truncated=True,
        info={"won": False, "score": 0.0, "valid": False, "crashed": True, "error": error},
    )


class EnvHost:
    """Hosts envs and executes command batches; runs inside a worker (process, actor or thread)."""

    def __init__(self, env_spec: EnvSpec, n: int, env_kwargs: Mapping[str, Any]) -> None:
        self.spec = env_spec
        self.kwargs = dict(env_kwargs)
        self.envs = [make(env_spec, **self.kwargs) for _ in range(n)]
        self.busy_s = 0.0  # seconds spent running batches (the rest of a worker's life is waiting)
        self.batches = 0

    def run(self, batch: Batch) -> Answer:
        cmd, items = batch
        if cmd == "stats":
            return [(True, {"busy_s": self.busy_s, "batches": self.batches}) for _ in items]
        t0 = time.perf_counter()
        try:
            return self._run(cmd, items)
        finally:
            self.busy_s += time.perf_counter() - t0
            self.batches += 1

    def _run(self, cmd: str, items: list[tuple[int, Any]]) -> Answer:
        out: Answer = []
        for i, arg in items:
            try:
                out.append((True, self._one(cmd, i, arg)))
            except Exception:
                out.append((False, traceback.format_exc()))
                # The env may be in any state now: rebuild it so the slot stays usable.
                with contextlib.suppress(Exception):
                    self.envs[i].close()
                self.envs[i] = make(self.spec, **self.kwargs)
        return out

    def _one(self, cmd: str, i: int, arg: Any) -> Any:
        env = self.envs[i]
        if cmd == "mixed":  # one command per env in the same round trip: arg = (cmd, arg)
            cmd, arg = arg
        if cmd == "reset":
            seed, options = arg
            return env.reset(seed=seed, options=options)
        if cmd == "step":
            return StepResult(*env.step(arg))
        if cmd == "call":
            name, args, kwargs = arg
            return getattr(env, name)(*args, **kwargs)
        if cmd == "crash":  # test hook: kill this worker process abruptly
            os.kill(os.getpid(), signal.SIGKILL)
        raise ValueError(f"unknown pool command {cmd!r}")

    def close(self) -> None:
        for env in self.envs:
            with contextlib.suppress(Exception):
                env.close()
