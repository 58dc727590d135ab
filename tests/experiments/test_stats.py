"""Intervals over seeds: the t interval equals the hand formula with the t table's quantile, the
percentile bootstrap is deterministic and matches the exact resampling distribution, pairing
counts the seeds it leaves out."""

from __future__ import annotations

import math

import pytest

from madcache.experiments.stats import (Interval, bootstrap_interval, paired_difference,
                                        sample_std, t_interval)

T_975_2 = 4.302653     # t_{0.975, 2}, from a t table (n = 3 values)
T_975_3 = 3.182446     # t_{0.975, 3} (n = 4)


def test_t_interval_is_the_hand_formula():
    interval = t_interval([3.0, 4.0, 2.0])                 # mean 3, s = 1
    half = T_975_2 * 1.0 / math.sqrt(3)
    assert interval.low == pytest.approx(3 - half, abs=1e-5)
    assert interval.high == pytest.approx(3 + half, abs=1e-5)
    values = [10.0, 10.5, 9.5, 8.5]                        # mean 9.625, s = 0.853913
    interval = t_interval(values)
    half = T_975_3 * sample_std(values) / 2
    assert (interval.low, interval.high) == pytest.approx((9.625 - half, 9.625 + half), abs=1e-5)
    assert t_interval([5.0]) is None and sample_std([5.0]) is None


def test_bootstrap_interval_is_deterministic_and_matches_the_resampling_distribution():
    values = [3.0, 4.0, 2.0]
    first = bootstrap_interval(values)
    assert first == bootstrap_interval(values)             # a seeded generator
    # The 27 equally likely resamples put 1/27 = 3.7% > 2.5% on each extreme mean (all 2s, all
    # 4s), so the 2.5th / 97.5th percentiles are exactly those extremes.
    assert (first.low, first.high) == (2.0, 4.0)
    assert first.low <= 3.0 <= first.high
    assert first.high - first.low < t_interval(values).high - t_interval(values).low
    wide = bootstrap_interval([1.0, 7.0, 2.0, 9.0, 4.0, 6.0])
    assert 1.0 < wide.low < 4.833 < wide.high < 9.0        # inside the range, around the mean
    assert bootstrap_interval([5.0]) is None


def test_interval_excludes_zero():
    assert Interval(0.5, 2.0).excludes_zero and Interval(-2.0, -0.1).excludes_zero
    assert not Interval(-0.5, 2.0).excludes_zero and not Interval(0.0, 1.0).excludes_zero
    assert Interval(1.0, 4.0).half_width == 1.5


def test_paired_difference_pairs_common_seeds_and_counts_the_rest():
    method = {0: 33.0, 1: 36.0, 2: 33.0, 5: 50.0}
    baseline = {0: 30.0, 1: 32.0, 2: 31.0, 3: 29.0}
    d = paired_difference(method, baseline, unpaired_method=1)
    assert d.seeds == (0, 1, 2) and d.differences == (3.0, 4.0, 2.0)
    assert (d.n, d.mean, d.std) == (3, 3.0, 1.0)
    assert (d.unpaired_method, d.unpaired_baseline) == (2, 1)
    assert d.t == t_interval([3.0, 4.0, 2.0]) and d.bootstrap == Interval(2.0, 4.0)
    none = paired_difference({1: 2.0}, {0: 1.0})
    assert (none.n, none.mean, none.t, none.unpaired_method, none.unpaired_baseline) == \
        (0, None, None, 1, 1)
