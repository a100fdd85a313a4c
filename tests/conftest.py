"""Shared test configuration: a private cache dir and the core's toy env."""

from __future__ import annotations

import os
import tempfile

import pytest

# Generated games, indexes and images go to a per-session cache unless the caller pins one
# (CI pins it so reruns reuse what was built).
os.environ.setdefault("AGENTGYM_CACHE", tempfile.mkdtemp(prefix="agentgym-test-cache-"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def corridor_id() -> str:
    import agentgym

    env_id = "test/Corridor-v0"
    if env_id not in agentgym.registry:
        agentgym.register(env_id, "core_toy_env:Corridor", max_turns=12, kwargs={"num_tasks": 4})
    return env_id


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):  # type: ignore[no-untyped-def]
    """In CI, a docker or browser test that skips is a failure.

    Locally such tests skip with a reason when no engine or browser is available; CI installs both
    (`make test`), so a skip there means the set-up broke and the real parts went untested.
    """
    outcome = yield
    report = outcome.get_result()
    strict = os.environ.get("CI") and not os.environ.get("AGENTGYM_ALLOW_SKIPS")
    if strict and report.skipped and any(m in item.keywords for m in ("docker", "browser")):
        report.outcome = "failed"
        report.longrepr = (
            f"skipped in CI, where Docker and Chromium must be available: {report.longrepr}"
        )


@pytest.fixture(scope="module")
def one_torch_thread():  # type: ignore[no-untyped-def]
    """Torch on one thread for a module: tiny models run faster so, and the machines are shared."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
