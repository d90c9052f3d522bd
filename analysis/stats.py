"""Means over seeds with 95% confidence intervals (Student t).

For n values x_1..x_n with mean m and sample standard deviation s (n - 1 in the denominator):

    m ± t_{0.975, n-1} * s / sqrt(n)

For a setting's accuracy the values are the final accuracies of its seeds (one run per seed).
For a comparison with fp32 they are the per-seed paired differences: a run's final accuracy
minus that of the fp32 run with the same seed, strategy and settings (only the quantizer, its
bits and entropy coding differ); the interval is then the paired t interval. With two seeds
t_{0.975, 1} = 12.706, so an interval is wide unless the seeds agree closely.

With fewer than two values there is no interval: its bounds are NaN (shown as "n/a"), never
0, and whether it excludes zero is unknown (None).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

CONFIDENCE = 0.95


@dataclass(frozen=True)
class Interval:
    mean: float  # NaN with no values
    low: float  # NaN with fewer than two values
    high: float
    n: int  # the values it is computed from (NaNs left out)
    confidence: float = CONFIDENCE

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2 if self.available else math.nan

    @property
    def available(self) -> bool:
        return self.n >= 2

    @property
    def excludes_zero(self) -> bool | None:
        """True when the whole interval lies above or below 0; None when there is none."""
        if not self.available:
            return None
        return bool(self.low > 0 or self.high < 0)


def t_quantile(n: int, confidence: float = CONFIDENCE) -> float:
    """t_{(1 + confidence) / 2, n - 1}: the multiplier of the standard error for n values."""
    if n < 2:
        raise ValueError(f"a t interval needs at least 2 values, got {n}")
    return float(stats.t.ppf((1 + confidence) / 2, n - 1))


def t_interval(values, confidence: float = CONFIDENCE) -> Interval:
    """The Student t interval of the mean of `values` (NaNs left out; see the module doc)."""
    x = np.asarray(list(values), dtype=float)
    x = x[~np.isnan(x)]
    n = len(x)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0, confidence)
    mean = float(x.mean())
    if n < 2:
        return Interval(mean, math.nan, math.nan, 1, confidence)
    half = t_quantile(n, confidence) * float(x.std(ddof=1)) / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n, confidence)
