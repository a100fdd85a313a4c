"""Evaluation: resumable runs with confidence intervals (``agentgym eval``) and HTML reports
(``agentgym report``).

Nothing heavy is imported here; :mod:`agentgym.evaluation.harness` and
:mod:`agentgym.evaluation.report` load their dependencies when used.
"""

from agentgym.evaluation.harness import (
    EvalConfig,
    EvalInterrupted,
    run_eval,
    summarize,
    write_summary,
)

__all__ = [
    "EvalConfig",
    "EvalInterrupted",
    "run_eval",
    "summarize",
    "write_summary",
    "render_report",
]


def render_report(run_dir, out=None, **kwargs):  # noqa: ANN001, ANN201 - thin lazy re-export
    """See :func:`agentgym.evaluation.report.render_report`."""
    from agentgym.evaluation.report import render_report as _render

    return _render(run_dir, out, **kwargs)
