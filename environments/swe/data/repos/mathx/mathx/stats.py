"""Descriptive statistics and small number helpers."""

from decimal import ROUND_HALF_UP, Decimal


def mean(xs):
    if not xs:
        raise ValueError("mean of an empty sequence")
    return sum(xs) / len(xs)


def median(xs):
    if not xs:
        raise ValueError("median of an empty sequence")
    s = sorted(xs)
    n = len(s)
    mid = n // 2
    if n % 2:
        return s[mid]
    return (s[mid - 1] + s[mid]) / 2


def variance(xs, sample=False):
    """Population variance, or the sample variance (n - 1 in the denominator)."""
    n = len(xs)
    if n < (2 if sample else 1):
        raise ValueError(f"variance needs at least {2 if sample else 1} values, got {n}")
    m = mean(xs)
    return sum((x - m) ** 2 for x in xs) / (n - 1 if sample else n)


def is_prime(n):
    if n < 2:
        return False
    i = 2
    while i * i <= n:
        if n % i == 0:
            return False
        i += 1
    return True


def round_half_up(x, ndigits=0):
    """Round like people do on paper: halves go away from zero (2.5 -> 3)."""
    q = Decimal(1).scaleb(-ndigits)
    return float(Decimal(str(x)).quantize(q, rounding=ROUND_HALF_UP))
