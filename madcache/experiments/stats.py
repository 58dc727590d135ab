"""Intervals over seeds for reports: the 95% interval of a mean, paired differences, and the
power of a paired comparison. Every quantile and resampling comes from `scipy.stats`.

Two intervals of a mean over n values (seeds):

- **t interval**: mean ± t_{0.975, n-1} · s / sqrt(n) (s the sample std, ddof = 1; the quantile
  from `scipy.stats.t.ppf`). Exact when the values are normal, and honest for the 3-10 seeds a
  sweep has: it widens as n shrinks.
- **percentile bootstrap** (`scipy.stats.bootstrap`, method "percentile"): the 2.5th and 97.5th
  percentiles of the means of `RESAMPLES` resamples (with replacement) of the n values, drawn by
  `numpy.random.default_rng(SEED)`, so the same values always give the same interval. With few
  values it is too narrow (n = 3 has only 10 distinct resample means), which is why reports show
  the t interval and list this one beside it.

Neither exists for a single value (no spread to estimate): both are None.

Power of a paired comparison of n pairs with paired sample std s (two-sided, alpha = `ALPHA`):

- **minimum detectable effect (MDE)**: the true mean difference a two-sided paired t-test at
  level `ALPHA` detects with probability `POWER`: the delta with P(|T| > t_{1-alpha/2, n-1}) =
  `POWER` for T ~ noncentral t(df = n-1, nc = delta · sqrt(n) / s) (`scipy.stats.nct`), solved
  by `scipy.optimize.brentq`. The normal approximation is (z_{1-alpha/2} + z_{power}) · s /
  sqrt(n); the exact one is larger, by a lot for few seeds (n = 4: 1.52x, n = 2: 5.8x).
- **seeds for a ±`HALF_WIDTH` half-width**: the smallest n >= 2 with t_{0.975, n-1} · s /
  sqrt(n) <= `HALF_WIDTH`, the observed s taken as the true one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import optimize, stats

LEVEL = 0.95
RESAMPLES = 10_000
SEED = 0
ALPHA = 0.05  # two-sided test level of the MDE
POWER = 0.80  # power of the MDE
HALF_WIDTH = 3.0  # points: the target half-width of a paired t interval (seeds needed)


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


def t_half_width(std: float, n: int, *, level: float = LEVEL) -> float:
    """t_{(1+level)/2, n-1} · std / sqrt(n): the half-width of the t interval of a mean of n >= 2
    values with sample std `std`."""
    return float(stats.t.ppf(0.5 + level / 2, n - 1)) * std / math.sqrt(n)


def t_interval(values: Sequence[float], *, level: float = LEVEL) -> Interval | None:
    """The t interval of the mean of `values`; None for fewer than two values."""
    std = sample_std(values)
    if std is None:
        return None
    mean = sum(values) / len(values)
    half = t_half_width(std, len(values), level=level)
    return Interval(mean - half, mean + half)


def bootstrap_interval(
    values: Sequence[float], *, level: float = LEVEL, resamples: int = RESAMPLES, seed: int = SEED
) -> Interval | None:
    """The percentile bootstrap interval of the mean of `values` (`scipy.stats.bootstrap`,
    deterministic: a generator seeded with `seed`); None for fewer than two values."""
    if len(values) < 2:
        return None
    result = stats.bootstrap(
        (np.asarray(values, dtype=np.float64),),
        np.mean,
        vectorized=True,
        n_resamples=resamples,
        confidence_level=level,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    interval = result.confidence_interval
    return Interval(float(interval.low), float(interval.high))


# ----------------------------------------------------------------------------- power


def paired_t_power(effect: float, std: float, n: int, *, alpha: float = ALPHA) -> float:
    """The power of a two-sided paired t-test at level `alpha` over n >= 2 pairs whose
    differences have mean `effect` and std `std` > 0: P(|T| > t_{1-alpha/2, n-1}) with
    T ~ noncentral t(n-1, effect · sqrt(n) / std)."""
    return _power_at(effect * math.sqrt(n) / std, n - 1, alpha)


def _power_at(noncentrality: float, df: int, alpha: float) -> float:
    critical = float(stats.t.ppf(1 - alpha / 2, df))
    # P(T < -c) as P(T' > c), T' ~ nct(df, -nc): nct.cdf(-c, 1, 8) is NaN in scipy 1.17.
    return float(
        stats.nct.sf(critical, df, noncentrality) + stats.nct.sf(critical, df, -noncentrality)
    )


def minimum_detectable_effect(
    std: float, n: int, *, alpha: float = ALPHA, power: float = POWER
) -> float | None:
    """The smallest true mean difference that a two-sided paired t-test at level `alpha` over n
    pairs with paired std `std` detects with probability `power` (exact, by the noncentral t);
    None for fewer than two pairs, 0 when the pairs do not vary."""
    if not 0 < alpha < power < 1:
        raise ValueError(f"need 0 < alpha < power < 1, got alpha={alpha}, power={power}")
    if n < 2:
        return None
    if std == 0:
        return 0.0
    high = 1.0  # the power rises from alpha (no effect) towards 1
    while _power_at(high, n - 1, alpha) < power:
        high *= 2
    noncentrality = optimize.brentq(
        lambda nc: _power_at(nc, n - 1, alpha) - power, 0.0, high, xtol=1e-12, rtol=1e-12
    )
    return noncentrality * std / math.sqrt(n)


def seeds_for_half_width(
    std: float, *, half_width: float = HALF_WIDTH, level: float = LEVEL
) -> int:
    """The smallest n >= 2 whose t interval, at paired std `std`, is at most ± `half_width`:
    t_{(1+level)/2, n-1} · std / sqrt(n) <= half_width."""
    if half_width <= 0:
        raise ValueError(f"half_width must be > 0, got {half_width}")
    # t > z for every df, so no n below the normal answer can do: start the search there (one
    # lower, against rounding).
    z = float(stats.norm.ppf(0.5 + level / 2))
    n = max(2, math.ceil((z * std / half_width) ** 2) - 1)
    while t_half_width(std, n, level=level) > half_width:
        n += 1
    return n


@dataclass(frozen=True)
class PairedDifference:
    """A method minus the baseline over the seeds both have: d_s = method_s - baseline_s."""

    seeds: tuple[int, ...]  # the paired seeds, ascending
    differences: tuple[float, ...]  # d_s in the order of `seeds`
    unpaired_method: int  # the method's runs left out (no baseline run of that seed)
    unpaired_baseline: int  # the baseline's runs left out

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

    @property
    def mde(self) -> float | None:
        """The minimum detectable effect at these n pairs and their std (ALPHA, POWER)."""
        std = self.std
        return None if std is None else minimum_detectable_effect(std, self.n)

    @property
    def seeds_needed(self) -> int | None:
        """The seeds a t interval of ± HALF_WIDTH points needs at this paired std."""
        std = self.std
        return None if std is None else seeds_for_half_width(std)


def paired_difference(
    method: Mapping[int, float],
    baseline: Mapping[int, float],
    *,
    unpaired_method: int = 0,
    unpaired_baseline: int = 0,
) -> PairedDifference:
    """Pair two {seed: value} maps on their common seeds; the other seeds are counted (added to
    the `unpaired_*` runs the caller already left out, e.g. runs without a usable seed)."""
    common = sorted(set(method) & set(baseline))
    return PairedDifference(
        seeds=tuple(common),
        differences=tuple(method[s] - baseline[s] for s in common),
        unpaired_method=unpaired_method + len(set(method) - set(common)),
        unpaired_baseline=unpaired_baseline + len(set(baseline) - set(common)),
    )
