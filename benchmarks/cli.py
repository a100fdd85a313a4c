"""``agentgym bench ...``: the sub-commands of every benchmark module, in one group."""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from typing import Any

__all__ = ["add_cli", "bench_parsers", "print_report", "MODULES"]

#: Benchmark modules, each with an ``add_cli(subparsers, groups)`` adding ``agentgym bench X``.
MODULES = (
    "agentgym.benchmarks.envs",
    "agentgym.benchmarks.memory",
    "agentgym.benchmarks.rollout",
    "agentgym.benchmarks.update",
    "agentgym.benchmarks.train",
    "agentgym.benchmarks.algos",
    "agentgym.benchmarks.asynchronous",
    "agentgym.benchmarks.gpu",
)


def bench_parsers(sub: Any, groups: dict[str, Any]) -> Any:
    """The ``agentgym bench`` sub-parsers, made by whichever benchmark module adds its command
    first: one help line for the group, whatever the order of :data:`MODULES`."""
    from agentgym.cli import subgroup

    return subgroup(sub, groups, "bench", "benchmarks (ratios against a same-run baseline)")


def print_report(
    report: dict[str, Any], as_json: bool, table: Callable[[dict[str, Any]], None]
) -> int:
    """A benchmark's report on stdout: one JSON line with ``--json`` (for scripts and CI),
    else ``table(report)`` for a reader; the command's exit status (0)."""
    if as_json:
        print(json.dumps(report))
    else:
        table(report)
    return 0


def add_cli(sub: Any, groups: dict[str, Any]) -> None:
    for name in MODULES:
        importlib.import_module(name).add_cli(sub, groups)
