"""Statistics of a multi-seed experiment: the spread of a figure over seeds, and paired differences.

Seeds pair the rows: in one seed every row is trained on the same data with the same draws, so the
difference of two rows in that seed removes what the seed does to both. An ordering "a > b" holds
when the mean of its paired differences is above zero by more than its standard error
(sd / sqrt(n), sd with n - 1): one standard error, a weak bar, stated as such.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def spread(values: Sequence[float]) -> dict:
    """{mean, sd (n - 1; 0 for one value), se, min, max, n, values} of per-seed figures."""
    values = [float(v) for v in values]
    n = len(values)
    if n == 0:
        raise ValueError("spread: no values")
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return {
        "mean": mean,
        "sd": sd,
        "se": sd / math.sqrt(n),
        "min": min(values),
        "max": max(values),
        "n": n,
        "values": values,
    }


def holds(mean: float, se: float, n: int) -> bool:
    """The rule: the mean paired difference is above zero by more than its standard error (n >= 2:
    one seed has no error to clear, so nothing holds on it). A tie within rounding does not hold."""
    return n >= 2 and mean - se > 1e-9 * max(1.0, abs(mean))


def paired(better: Sequence[float], worse: Sequence[float]) -> dict:
    """The paired differences better - worse (seed by seed) with their spread and whether the
    ordering "better > worse" holds."""
    if len(better) != len(worse):
        raise ValueError(f"paired: {len(better)} values against {len(worse)}: seeds must pair")
    out = spread([a - b for a, b in zip(better, worse)])
    out["holds"] = holds(out["mean"], out["se"], out["n"])
    return out
