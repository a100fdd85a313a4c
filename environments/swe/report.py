"""The summary of a SWE evaluation run (``summary.json``), in the SWE-bench harness's keys
plus the reasons behind errors and what the anti-gaming restore put back."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from agentgym.environments.swe.tasks import SWETask

if TYPE_CHECKING:
    from agentgym.environments.swe.grading import GradeResult

__all__ = ["summary"]


def summary(
    results: Sequence[GradeResult],
    tasks: Sequence[SWETask],
    predictions: dict[str, dict[str, Any]],
    *,
    unknown: list[str],
    seconds: float,
    workers: int,
) -> dict[str, Any]:
    """The run's ``summary.json``: counts, resolved and unresolved ids, per-instance notes."""
    model = next(
        (p.get("model_name_or_path") for p in predictions.values() if p.get("model_name_or_path")),
        None,
    )
    n = len(results)
    return {
        "model_name_or_path": model,
        "total_instances": len(tasks),
        "submitted_instances": n,
        "completed_instances": sum(r.status not in ("error",) for r in results),
        "resolved_instances": sum(r.resolved for r in results),
        "resolved_rate": (sum(r.resolved for r in results) / n) if n else 0.0,
        "empty_patch_instances": sum(r.status == "empty_patch" for r in results),
        "error_instances": sum(r.status == "error" for r in results),
        "resolved_ids": [r.instance_id for r in results if r.resolved],
        "unresolved_ids": [r.instance_id for r in results if not r.resolved],
        "unknown_prediction_ids": unknown,
        "statuses": {r.instance_id: r.status for r in results},
        # Why an instance errored or failed without a failing test, and what was restored.
        "notes": {
            r.instance_id: "; ".join(
                x
                for x in (r.reason, "restored: " + ", ".join(r.tampered) if r.tampered else "")
                if x
            )
            for r in results
            if r.reason or r.tampered
        },
        "seconds": seconds,
        "workers": workers,
    }
