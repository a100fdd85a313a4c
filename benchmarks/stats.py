"""Small-sample statistics over seeds for the benchmarks, in pure Python (no scipy).

A benchmark has a handful of seeds (2-10), so a normal interval (1.96 * std / sqrt(n)) is far too
narrow: with 3 seeds the right factor is 4.30. Everything here uses Student's t with n-1 degrees
of freedom, from :mod:`agentgym.evaluation.stats` (the CDF via the regularized incomplete beta
function, quantiles by bisection), so any df works and the values match the printed tables
(t_{0.975, 2} = 4.303, t_{0.975, 9} = 2.262).

* :func:`mean_ci` - mean, sample std and the 95% t interval of the mean over seeds;
* :func:`paired` - per-seed differences of two methods (same seed = same SFT start, so the runs
  pair up): mean difference, its t interval, the paired t-test p-value and the exact sign-flip
  permutation p-value.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Sequence
from typing import Any

from agentgym.evaluation.stats import _t_cdf, t_quantile

__all__ = ["t_cdf", "t_quantile", "mean_ci", "sign_flip_p", "paired", "verdict"]

#: Above this many seeds the sign-flip test samples assignments instead of enumerating 2^n.
EXACT_MAX_N = 16
_SAMPLES = 1 << 16


def t_cdf(t: float, df: float) -> float:
    """``P(T <= t)`` for Student's t with ``df`` degrees of freedom."""
    if math.isinf(t):
        return 1.0 if t > 0 else 0.0
    return _t_cdf(t, df)


def mean_ci(xs: Sequence[float], level: float = 0.95) -> dict[str, Any]:
    """``{"mean", "std", "n", "lo", "hi", "half"}`` of ``xs`` over seeds: sample std (ddof=1)
    and the Student t interval of the mean ``mean +- t_{(1+level)/2, n-1} * std / sqrt(n)``.
    One sample has no spread estimate: std 0 and no interval (``lo``/``hi``/``half`` None)."""
    n = len(xs)
    if n == 0:
        raise ValueError("mean_ci needs at least one value")
    m = sum(xs) / n
    if n == 1:
        return {"mean": m, "std": 0.0, "n": 1, "lo": None, "hi": None, "half": None}
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1))
    half = t_quantile(0.5 + level / 2.0, n - 1) * sd / math.sqrt(n)
    return {"mean": m, "std": sd, "n": n, "lo": m - half, "hi": m + half, "half": half}


def sign_flip_p(diffs: Sequence[float]) -> tuple[float, bool]:
    """Two-sided permutation p-value of the mean of paired differences, and whether it is exact.

    Under "no difference between the methods" each seed's difference is as likely to have either
    sign, so the p-value is the share of the 2^n sign assignments whose ``|mean|`` is at least
    the observed one (the observed assignment counts, so p >= 2 / 2^n when no difference is 0).
    Exact for n <= :data:`EXACT_MAX_N`; above, 65536 assignments drawn with a fixed seed.
    """
    n = len(diffs)
    if n == 0:
        raise ValueError("sign_flip_p needs at least one difference")
    observed = abs(sum(diffs)) - 1e-12 * max(1.0, sum(abs(d) for d in diffs))
    if n <= EXACT_MAX_N:
        signs: Any = itertools.product((1.0, -1.0), repeat=n)
        total, exact = 1 << n, True
    else:
        rng = random.Random(0)
        signs = ([rng.choice((1.0, -1.0)) for _ in range(n)] for _ in range(_SAMPLES))
        total, exact = _SAMPLES, False
    hits = sum(abs(sum(s * d for s, d in zip(sg, diffs))) >= observed for sg in signs)
    return hits / total, exact


def paired(a: dict[int, float], b: dict[int, float], level: float = 0.95) -> dict[str, Any] | None:
    """Paired comparison of ``a`` against ``b`` (``{seed: final success}``) on their common
    seeds: ``a - b`` per seed, its mean and t interval, the paired t-test p-value (two-sided,
    n-1 df) and the sign-flip permutation p-value. None when no seed is common."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return None
    diffs = [a[s] - b[s] for s in seeds]
    ci = mean_ci(diffs, level)
    n = len(diffs)
    if n < 2:
        p_t = None
    elif ci["std"] == 0.0:
        p_t = 1.0 if ci["mean"] == 0.0 else 0.0  # no spread: t is 0 or infinite
    else:
        t = ci["mean"] / (ci["std"] / math.sqrt(n))
        p_t = 2.0 * (1.0 - t_cdf(abs(t), n - 1))
    p_perm, exact = sign_flip_p(diffs)
    return {
        "seeds": seeds,
        "diffs": diffs,
        "n": n,
        "wins": sum(d > 0 for d in diffs),
        "losses": sum(d < 0 for d in diffs),
        "ties": sum(d == 0 for d in diffs),
        "mean_diff": ci["mean"],
        "std_diff": ci["std"],
        "lo": ci["lo"],
        "hi": ci["hi"],
        "p_ttest": p_t,
        "p_signflip": p_perm,
        "signflip_exact": exact,
    }


def verdict(a: str, b: str, res: dict[str, Any], alpha: float = 0.05) -> str:
    """One sentence on a :func:`paired` result, e.g. "gigpo beat grpo on 2 of 3 seeds (1 tie);
    mean difference +0.05 [-0.10, +0.20]; paired t p = 0.40, sign-flip p = 0.50: not
    significant at 0.05"."""
    n = res["n"]
    ties = f" ({res['ties']} tie{'s' if res['ties'] != 1 else ''})" if res["ties"] else ""
    words = f"{a} beat {b} on {res['wins']} of {n} seed{'s' if n != 1 else ''}{ties}"
    interval = (
        f" [{res['lo']:+.3f}, {res['hi']:+.3f}]"
        if res["lo"] is not None
        else " (no interval from one seed)"
    )
    words += f"; mean difference {res['mean_diff']:+.3f}{interval}"
    ps = [f"sign-flip p = {res['p_signflip']:.3g}"]
    if res["p_ttest"] is not None:
        ps.insert(0, f"paired t p = {res['p_ttest']:.3g}")
    significant = res["p_ttest"] is not None and res["p_ttest"] < alpha
    if significant:
        better = a if res["mean_diff"] > 0 else b
        end = f"significant at {alpha:g} ({better} higher)"
    else:
        end = f"not significant at {alpha:g}"
    min_p = 2.0 / (1 << n) if n <= EXACT_MAX_N else 0.0
    if min_p >= alpha:
        end += f" (with {n} seed{'s' if n != 1 else ''} the sign-flip p cannot go below {min_p:g})"
    return f"{words}; {', '.join(ps)}: {end}."
