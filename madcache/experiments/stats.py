"""Intervals over seeds for reports: the 95% interval of a mean, and paired differences.

Two intervals of a mean over n values (seeds):

- **t interval**: mean ± t_{0.975, n-1} · s / sqrt(n) (s the sample std, ddof = 1; the quantile
  from `scipy.stats.t`). Exact when the values are normal, and honest for the 3-10 seeds a sweep
  has: it widens as n shrinks.
- **percentile bootstrap**: the 2.5th and 97.5th percentiles of the means of `RESAMPLES`
  resamples (with replacement) of the n values, drawn by `numpy.random.default_rng(SEED)`, so the
  same values always give the same interval. With few values it is too narrow (n = 3 has only 10
  distinct resample means), which is why reports show the t interval and list this one beside it.

Neither exists for a single value (no spread to estimate): both are None.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

LEVEL = 0.95
RESAMPLES = 10_000
SEED = 0


@dataclass(frozen=True)
class Interval:
    low: float
    high: float

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0.0 or self.high < 0.0

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2


def sample_std(values: Sequence[float]) -> float | None:
    """Sample standard deviation (ddof = 1); None for fewer than two values."""
    if len(values) < 2:
        return None
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def t_interval(values: Sequence[float], *, level: float = LEVEL) -> Interval | None:
    """The t interval of the mean of `values`; None for fewer than two values."""
    from scipy.stats import t

    std = sample_std(values)
    if std is None:
        return None
    n = len(values)
    mean = sum(values) / n
    half = float(t.ppf(0.5 + level / 2, n - 1)) * std / math.sqrt(n)
    return Interval(mean - half, mean + half)


def bootstrap_interval(values: Sequence[float], *, level: float = LEVEL,
                       resamples: int = RESAMPLES, seed: int = SEED) -> Interval | None:
    """The percentile bootstrap interval of the mean of `values` (deterministic: a generator
    seeded with `seed`); None for fewer than two values."""
    if len(values) < 2:
        return None
    data = np.asarray(values, dtype=np.float64)
    picks = np.random.default_rng(seed).integers(0, len(data), size=(resamples, len(data)))
    means = data[picks].mean(axis=1)
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(means, [tail, 100 - tail])
    return Interval(float(low), float(high))


@dataclass(frozen=True)
class PairedDifference:
    """A method minus the baseline over the seeds both have: d_s = method_s - baseline_s."""

    seeds: tuple[int, ...]            # the paired seeds, ascending
    differences: tuple[float, ...]    # d_s in the order of `seeds`
    unpaired_method: int              # the method's runs left out (no baseline run of that seed)
    unpaired_baseline: int            # the baseline's runs left out

    @property
    def n(self) -> int:
        return len(self.differences)

    @property
    def mean(self) -> float | None:
        return sum(self.differences) / self.n if self.n else None

    @property
    def std(self) -> float | None:
        return sample_std(self.differences)

    @property
    def t(self) -> Interval | None:
        return t_interval(self.differences)

    @property
    def bootstrap(self) -> Interval | None:
        return bootstrap_interval(self.differences)


def paired_difference(method: Mapping[int, float], baseline: Mapping[int, float], *,
                      unpaired_method: int = 0, unpaired_baseline: int = 0) -> PairedDifference:
    """Pair two {seed: value} maps on their common seeds; the other seeds are counted (added to
    the `unpaired_*` runs the caller already left out, e.g. runs without a usable seed)."""
    common = sorted(set(method) & set(baseline))
    return PairedDifference(
        seeds=tuple(common), differences=tuple(method[s] - baseline[s] for s in common),
        unpaired_method=unpaired_method + len(set(method) - set(common)),
        unpaired_baseline=unpaired_baseline + len(set(baseline) - set(common)))
