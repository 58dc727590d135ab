"""Intervals over seeds: the t interval equals the hand formula with the t table's quantile, the
percentile bootstrap is deterministic, matches the exact resampling distribution and the
pre-scipy resampling code, pairing counts the seeds it leaves out; the committed demo report's
numbers are reproduced; the power of a paired comparison (MDE, seeds for a ±3 half-width)
equals published values, numerical integration, simulation and the t table."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import integrate, stats

from madcache.experiments.cells import Cell
from madcache.experiments.stats import (
    Interval,
    bootstrap_interval,
    minimum_detectable_effect,
    paired_difference,
    paired_t_power,
    sample_std,
    seeds_for_half_width,
    t_interval,
)
from madcache.experiments.tables import paired_text

T_975_2 = 4.302653  # t_{0.975, 2}, from a t table (n = 3 values)
T_975_3 = 3.182446  # t_{0.975, 3} (n = 4)


def test_t_interval_is_the_hand_formula():
    interval = t_interval([3.0, 4.0, 2.0])  # mean 3, s = 1
    half = T_975_2 * 1.0 / math.sqrt(3)
    assert interval.low == pytest.approx(3 - half, abs=1e-5)
    assert interval.high == pytest.approx(3 + half, abs=1e-5)
    values = [10.0, 10.5, 9.5, 8.5]  # mean 9.625, s = 0.853913
    interval = t_interval(values)
    half = T_975_3 * sample_std(values) / 2
    assert (interval.low, interval.high) == pytest.approx((9.625 - half, 9.625 + half), abs=1e-5)
    assert t_interval([5.0]) is None and sample_std([5.0]) is None


def test_bootstrap_interval_is_deterministic_and_matches_the_resampling_distribution():
    values = [3.0, 4.0, 2.0]
    first = bootstrap_interval(values)
    assert first == bootstrap_interval(values)  # a seeded generator
    # The 27 equally likely resamples put 1/27 = 3.7% > 2.5% on each extreme mean (all 2s, all
    # 4s), so the 2.5th / 97.5th percentiles are exactly those extremes.
    assert (first.low, first.high) == (2.0, 4.0)
    assert first.low <= 3.0 <= first.high
    assert first.high - first.low < t_interval(values).high - t_interval(values).low
    wide = bootstrap_interval([1.0, 7.0, 2.0, 9.0, 4.0, 6.0])
    assert 1.0 < wide.low < 4.833 < wide.high < 9.0  # inside the range, around the mean
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
    assert (none.n, none.mean, none.t, none.unpaired_method, none.unpaired_baseline) == (
        0,
        None,
        None,
        1,
        1,
    )


# ----------------------------------------------------------------------------- scipy, old numbers


def old_bootstrap(values, resamples=10_000, seed=0):
    """The percentile bootstrap as madcache computed it before scipy.stats.bootstrap: the
    reference the library version must reproduce."""
    data = np.asarray(values, dtype=np.float64)
    picks = np.random.default_rng(seed).integers(0, len(data), size=(resamples, len(data)))
    return tuple(np.percentile(data[picks].mean(axis=1), [2.5, 97.5]))


DEMO_PRINTED = {  # docs/demo-report.md, the report as printed: (split, method) -> cell, paired
    ("val", "baseline"): ("35.90 ± 8.38 (n=4)", None),
    ("val_sm", "baseline"): ("24.95 ± 11.86 (n=4)", None),
    ("val", "md"): ("40.05 ± 8.49 (n=4)", "+4.15 [-4.02, +12.32] (n=4)"),
    ("val", "mad"): ("33.70 ± 8.59 (n=4)", "-2.20 [-4.54, +0.14] (n=4)"),
    ("val_sm", "md"): ("25.40 ± 19.88 (n=4)", "+0.45 [-17.03, +17.93] (n=4)"),
    ("val_sm", "mad"): ("39.25 ± 16.92 (n=4)", "+14.30 [-6.14, +34.74] (n=4)"),
}


def demo_differences(demo_report):
    """(split, method, paired difference to the baseline) from the demo's per-seed table."""
    for split, table in demo_report.per_seed.items():
        base = dict(enumerate(table["baseline"]))
        for method in ("md", "mad"):
            yield split, method, paired_difference(dict(enumerate(table[method])), base)


def test_the_committed_demo_report_is_reproduced(demo_report):
    """Cells and paired t intervals of val and SM val Q2A, recomputed from the per-seed table of
    docs/demo-report.md (its values are exact: accuracies on 500 questions, multiples of 0.2),
    equal the report printed there. (Its qa2r and q2ar numbers have no per-seed table.)"""
    for (split, method), (cell, _paired) in DEMO_PRINTED.items():
        values = demo_report.per_seed[split][method]
        assert Cell(values, ["run"] * len(values)).text() == cell
        assert f"| {cell} |" in demo_report.printed
    for split, method, difference in demo_differences(demo_report):
        paired = DEMO_PRINTED[(split, method)][1]
        assert paired_text(difference).startswith(paired + "; MDE ")
        assert paired in demo_report.printed


def test_t_interval_is_scipys_t_interval(demo_report):
    for values in [*(d.differences for _, _, d in demo_differences(demo_report)), [3.0, 4.0, 2.0]]:
        n, mean = len(values), float(np.mean(values))
        low, high = stats.t.interval(0.95, n - 1, loc=mean, scale=stats.sem(values))
        ours = t_interval(values)
        assert abs(ours.low - low) < 1e-12 and abs(ours.high - high) < 1e-12


def test_bootstrap_from_scipy_equals_the_old_code(demo_report):
    """scipy.stats.bootstrap draws the same resamples from the same generator; its quantile
    (scipy.stats.quantile) and numpy's percentile may differ in the last bits: 1.8e-15 at most
    over 300 random sets when this was written. Asserted: 1e-12."""
    sets = [list(d.differences) for _, _, d in demo_differences(demo_report)]
    generator = np.random.default_rng(7)
    sets += [list(generator.normal(0, 10, int(n))) for n in generator.integers(2, 12, 40)]
    worst = 0.0
    for values in sets:
        (low, high), new = old_bootstrap(values), bootstrap_interval(values)
        worst = max(worst, abs(new.low - low), abs(new.high - high))
    assert worst < 1e-12


# ----------------------------------------------------------------------------- power


def power_by_integration(effect, std, n, alpha=0.05):
    """P(|T| > c) from the definition T = (Z + nc) / sqrt(V / df), Z normal, V chi2(df):
    independent of scipy's noncentral t."""
    df, nc = n - 1, effect * math.sqrt(n) / std
    c = stats.t.ppf(1 - alpha / 2, df)

    def given(v):
        bound = c * math.sqrt(v / df)
        return (stats.norm.sf(bound - nc) + stats.norm.cdf(-bound - nc)) * stats.chi2.pdf(v, df)

    return integrate.quad(given, 0, np.inf, limit=200)[0]


def test_paired_t_power_matches_published_values():
    # G*Power 3.1, one-sample t test, two tails, alpha 0.05: d = 0.5 needs n = 34 (actual power
    # 0.8077775), d = 0.8 needs n = 15 (0.8213105).
    assert paired_t_power(0.5, 1.0, 34) == pytest.approx(0.8077775, abs=1e-7)
    assert paired_t_power(0.5, 1.0, 33) < 0.8
    assert paired_t_power(0.8, 1.0, 15) == pytest.approx(0.8213105, abs=1e-7)
    assert paired_t_power(0.0, 2.0, 4) == pytest.approx(0.05)  # no effect: alpha


@pytest.mark.parametrize("n", [2, 3, 4, 6, 10])
def test_mde_has_80_percent_power_by_integration(n):
    std = 2.5
    mde = minimum_detectable_effect(std, n)
    assert power_by_integration(mde, std, n) == pytest.approx(0.8, abs=1e-6)
    assert minimum_detectable_effect(1.0, n) * std == pytest.approx(mde, rel=1e-9)  # scales with s
    normal = (stats.norm.ppf(0.975) + stats.norm.ppf(0.8)) * std / math.sqrt(n)
    assert mde > normal  # the t-test needs more than the normal test


def test_mde_hand_values():
    """MDE(s = 1): n = 4 -> 2.128 (1.52x the normal approximation 2.8016 / 2 = 1.4008), n = 34
    -> 0.495 (just below d = 0.5, which has power 0.8078 there), n = 1000 -> the normal
    approximation 2.8016 / sqrt(1000) = 0.08859 within 0.2%."""
    assert minimum_detectable_effect(1.0, 4) == pytest.approx(2.12795, abs=1e-5)
    assert 0.49 < minimum_detectable_effect(1.0, 34) < 0.5
    assert minimum_detectable_effect(1.0, 1000) == pytest.approx(2.8016 / math.sqrt(1000), rel=2e-3)
    assert minimum_detectable_effect(0.0, 4) == 0.0
    assert minimum_detectable_effect(1.0, 1) is None
    with pytest.raises(ValueError):
        minimum_detectable_effect(1.0, 4, alpha=0.05, power=0.04)


def test_mde_has_80_percent_power_by_simulation():
    """Brute force: 200,000 paired t-tests of 4 normal differences at the MDE reject 80% of the
    time (standard error 0.0009)."""
    std, n = 3.0, 4
    mde = minimum_detectable_effect(std, n)
    d = np.random.default_rng(0).normal(mde, std, size=(200_000, n))
    t = d.mean(axis=1) / (d.std(axis=1, ddof=1) / math.sqrt(n))
    assert np.mean(np.abs(t) > 3.182446) == pytest.approx(0.8, abs=0.004)  # t_{0.975, 3}


def test_seeds_for_a_3_point_half_width():
    """Smallest n >= 2 with t_{0.975, n-1} s / sqrt(n) <= 3, from the t table: s = 1: n = 3
    (12.706 / 1.414 = 8.98 at n = 2, 4.303 / 1.732 = 2.48 at 3); s = 3: n = 7 (2.571 / 2.449 =
    1.050 > 1 at 6, 2.447 / 2.646 = 0.925 at 7); s = 6: n = 18 (2.120 / 4.123 = 0.514 > 0.5 at
    17, 2.110 / 4.243 = 0.497 at 18); s = 0: 2."""
    assert [seeds_for_half_width(s) for s in (0.0, 1.0, 3.0, 6.0)] == [2, 3, 7, 18]
    for std in (0.5, 2.0, 4.2, 10.0, 17.48):  # against a scan from n = 2
        scan = next(
            n for n in range(2, 10_000) if stats.t.ppf(0.975, n - 1) * std / math.sqrt(n) <= 3
        )
        assert seeds_for_half_width(std) == scan
    assert seeds_for_half_width(3.0, half_width=1.5) == seeds_for_half_width(6.0)


def test_paired_difference_power():
    d = paired_difference({0: 33.0, 1: 36.0, 2: 33.0}, {0: 30.0, 1: 32.0, 2: 31.0})  # s = 1
    assert d.mde == minimum_detectable_effect(1.0, 3) and d.seeds_needed == 3
    one = paired_difference({0: 33.0}, {0: 30.0})
    assert (one.mde, one.seeds_needed) == (None, None)
