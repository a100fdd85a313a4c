"""Policy retries of the evaluation harness: a policy call that failed with a transient error
(connection refused, timeouts, HTTP 429/5xx) is retried with exponential backoff, so a server
that restarts does not end the run."""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Sequence
from typing import Any

from agentgym.policies import Policy, PolicyOutput, TurnContext

__all__ = ["RetryingPolicy", "is_transient"]


def is_transient(err: BaseException) -> bool:
    """Whether a policy error is worth retrying (server down or overloaded, network trouble)."""
    flag = getattr(err, "transient", None)
    if flag is not None:
        return bool(flag)
    return isinstance(err, (ConnectionError, TimeoutError))


class RetryingPolicy:
    """Retries ``policy.act`` on transient errors with exponential backoff (+-25 % jitter).

    ``retries`` is the number of extra attempts; the delay before attempt ``k`` (1-based) is
    ``backoff_s * 2**(k-1)``. Non-transient errors and the last failure propagate.
    """

    def __init__(
        self, policy: Policy, *, retries: int = 3, backoff_s: float = 2.0, log: Any = None
    ) -> None:
        self.policy = policy
        self.name = getattr(policy, "name", type(policy).__name__)
        self.needs_expert = bool(getattr(policy, "needs_expert", False))
        self.retries = retries
        self.backoff_s = backoff_s
        self.retried = 0
        self._log = log or (lambda msg: print(msg, file=sys.stderr))
        self._rng = random.Random(0)

    def act(self, contexts: Sequence[TurnContext]) -> list[PolicyOutput]:
        attempt = 0
        while True:
            try:
                return self.policy.act(contexts)
            except Exception as e:
                if not is_transient(e) or attempt >= self.retries:
                    raise
                attempt += 1
                self.retried += 1
                delay = self.backoff_s * 2 ** (attempt - 1) * self._rng.uniform(0.75, 1.25)
                self._log(
                    f"policy call failed ({type(e).__name__}: {e}); "
                    f"retry {attempt}/{self.retries} in {delay:.1f}s"
                )
                time.sleep(delay)
