"""Half-open intervals ``(start, end)``: merging, overlap tests, lengths, membership."""


def merge(intervals):
    """Merge overlapping or touching intervals; the result is sorted."""
    out = []
    for start, end in sorted(intervals):
        if out and start <= out[-1][1]:
            out[-1][1] = max(out[-1][1], end)
        else:
            out.append([start, end])
    return [tuple(x) for x in out]


def overlaps(a, b):
    """True when the half-open intervals ``a`` and ``b`` share at least one point."""
    return a[0] < b[1] and b[0] < a[1]


def total_length(intervals):
    """The length of the union of ``intervals``."""
    return sum(end - start for start, end in merge(intervals))


def contains(intervals, point):
    """True when ``point`` lies in one of the half-open ``intervals``."""
    return any(start <= point < end for start, end in intervals)
