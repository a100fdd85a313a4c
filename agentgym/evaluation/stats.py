"""Confidence intervals for evaluation summaries, in plain Python (no scipy).

* Rates (success, invalid actions, timeouts) use the **Wilson score interval** (Wilson 1927):
  unlike the normal ("Wald") interval it stays inside [0, 1] and is not degenerate at 0 % or
  100 %, which small agent evals hit all the time.
* Means (reward, turns) use the **Student-t interval** ``mean +- t_{1-a/2, n-1} * s / sqrt(n)``.
  It is exact for normal data and close for the bounded, skewed per-episode returns of agent
  evals once n is a few dozen; unlike a bootstrap it is deterministic and reproducible by hand.

Both treat episodes as independent draws. With ``--group-size G > 1`` the G members of a group play
the same task, so they are correlated and the intervals are somewhat too narrow; the summary says
so when it happens.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Estimate", "wilson_interval", "t_interval", "t_quantile", "rate", "mean"]


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its two-sided confidence interval.

    ``low``/``high`` are ``None`` when the interval is undefined (no data, or a mean of one value).
    """

    value: float
    low: float | None
    high: float | None
    n: int
    confidence: float = 0.95

    def to_dict(self) -> dict[str, float | int | None]:
        return {"value": self.value, "low": self.low, "high": self.high, "n": self.n}

    def fmt(self, percent: bool = False, digits: int = 2) -> str:
        """``"62.5% [40.9, 80.0]"`` or ``"3.10 [2.71, 3.49]"``."""
        if self.n == 0:
            return "n/a"
        if percent:
            v = f"{100 * self.value:.1f}%"
            ci = (
                f" [{100 * self.low:.1f}, {100 * self.high:.1f}]"
                if self.low is not None and self.high is not None
                else ""
            )
            return v + ci
        v = f"{self.value:.{digits}f}"
        if self.low is None or self.high is None:
            return v
        return f"{v} [{self.low:.{digits}f}, {self.high:.{digits}f}]"


def _norm_ppf(p: float) -> float:
    """Inverse standard normal CDF (Acklam's rational approximation, refined by one Newton step)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"probability must be in (0, 1), got {p}")
    a = (
        -3.969683028665376e01,
        2.209460984245205e02,
        -2.759285104469687e02,
        1.383577518672690e02,
        -3.066479806614716e01,
        2.506628277459239e00,
    )
    b = (
        -5.447609879822406e01,
        1.615858368580409e02,
        -1.556989798598866e02,
        6.680131188771972e01,
        -1.328068155288572e01,
    )
    c = (
        -7.784894002430293e-03,
        -3.223964580411365e-01,
        -2.400758277161838e00,
        -2.549732539343734e00,
        4.374664141464968e00,
        2.938163982698783e00,
    )
    d = (7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e00, 3.754408661907416e00)
    lo = 0.02425
    if p < lo:
        q = math.sqrt(-2 * math.log(p))
        x = (((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) / (
            (((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1
        )
    elif p > 1 - lo:
        q = math.sqrt(-2 * math.log(1 - p))
        x = -(((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) / (
            (((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1
        )
    else:
        q = p - 0.5
        r = q * q
        x = (
            (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5])
            * q
            / (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1)
        )
    e = 0.5 * math.erfc(-x / math.sqrt(2)) - p
    u = e * math.sqrt(2 * math.pi) * math.exp(x * x / 2)
    return x - u / (1 + x * u / 2)


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularised incomplete beta (Numerical Recipes 6.4)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    ln = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    front = math.exp(ln)
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def _t_cdf(t: float, df: float) -> float:
    x = df / (df + t * t)
    tail = 0.5 * _betainc(df / 2.0, 0.5, x)
    return 1.0 - tail if t > 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t with ``df`` degrees of freedom (bisection on the CDF)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"probability must be in (0, 1), got {p}")
    if df <= 0:
        raise ValueError(f"degrees of freedom must be > 0, got {df}")
    if p == 0.5:
        return 0.0
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while _t_cdf(hi, df) < p:
        hi *= 2.0
    for _ in range(200):
        mid = (lo + hi) / 2.0
        if _t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12:
            break
    return (lo + hi) / 2.0


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion ``successes / n``."""
    if n <= 0:
        raise ValueError(f"n must be > 0, got {n}")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be in [0, n={n}], got {successes}")
    z = _norm_ppf(1.0 - (1.0 - confidence) / 2.0)
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


def t_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """Student-t interval of the mean of ``values`` (needs at least two values)."""
    n = len(values)
    if n < 2:
        raise ValueError(f"a t interval needs at least 2 values, got {n}")
    m = sum(values) / n
    var = sum((v - m) ** 2 for v in values) / (n - 1)
    half = t_quantile(1.0 - (1.0 - confidence) / 2.0, n - 1) * math.sqrt(var / n)
    return m - half, m + half


def rate(successes: int, n: int, confidence: float = 0.95) -> Estimate:
    """A proportion with its Wilson interval (``n == 0`` gives an empty estimate)."""
    if n == 0:
        return Estimate(0.0, None, None, 0, confidence)
    lo, hi = wilson_interval(successes, n, confidence)
    return Estimate(successes / n, lo, hi, n, confidence)


def mean(
    values: Sequence[float],
    confidence: float = 0.95,
    *,
    lower: float | None = None,
    upper: float | None = None,
) -> Estimate:
    """A mean with its Student-t interval (undefined bounds for fewer than two values).

    ``lower`` / ``upper``: the range the quantity can take (e.g. ``lower=0`` for turn counts);
    the interval is clipped to it, so a few spread-out values never report an impossible bound.
    """
    vals = [float(v) for v in values]
    n = len(vals)
    if n == 0:
        return Estimate(0.0, None, None, 0, confidence)
    m = sum(vals) / n
    if n < 2:
        return Estimate(m, None, None, n, confidence)
    lo, hi = t_interval(vals, confidence)
    if lower is not None:
        lo = max(lo, lower)
    if upper is not None:
        hi = min(hi, upper)
    return Estimate(m, lo, hi, n, confidence)
