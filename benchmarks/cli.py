"""``agentgym bench ...``: the sub-commands of every benchmark module, in one group."""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["add_cli", "MODULES"]

#: Benchmark modules, each with an ``add_cli(subparsers, groups)`` adding ``agentgym bench X``.
MODULES = (
    "agentgym.benchmarks.envs",
    "agentgym.benchmarks.memory",
    "agentgym.benchmarks.rollout",
    "agentgym.benchmarks.update",
    "agentgym.benchmarks.algos",
    "agentgym.benchmarks.gpu",
)


def add_cli(sub: Any, groups: dict[str, Any]) -> None:
    for name in MODULES:
        importlib.import_module(name).add_cli(sub, groups)
