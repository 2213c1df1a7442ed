"""iterdeploy_trl.stats against values computed by hand (the working is in each test's comments)."""

from __future__ import annotations

import math

import pytest

from iterdeploy_trl import stats


def test_t_interval_by_hand():
    # [1, 2, 3]: mean 2, s = 1, se = 1/√3; t_{0.975, 2} = 4.302653 (table) → half-width 2.484138
    ti = stats.t_interval([1.0, 2.0, 3.0])
    assert (ti.n, ti.mean, ti.sd) == (3, 2.0, 1.0)
    assert ti.lo == pytest.approx(2 - 2.484138, abs=1e-6) and ti.hi == pytest.approx(2 + 2.484138, abs=1e-6)
    one = stats.t_interval([5.0])
    assert (one.n, one.lo, one.hi) == (1, 5.0, 5.0)
    with pytest.raises(ValueError, match="NaN"):
        stats.t_interval([1.0, float("nan")])


def test_paired_t_p_value_by_hand():
    # d = [1, 2, 3]: T = 2 / (1/√3) = 2√3; with 2 degrees of freedom P(t ≥ T) = 1/2 − T / (2√(T² + 2))
    # = 1/2 − 2√3 / (2√14) = 0.0370900 → p = 0.0741799
    pt = stats.paired_t([1.0, 2.0, 3.0])
    assert pt.p == pytest.approx(1 - 2 * math.sqrt(3) / math.sqrt(14), rel=1e-9)
    assert pt.p == pytest.approx(0.0741799, abs=1e-7)
    assert stats.paired_t([0.0, 0.0, 0.0]).p == 1.0  # no difference at all
    assert stats.paired_t([2.0, 2.0]).p == 0.0  # the same non-zero difference under every seed
    assert stats.paired_t([3.0]).p is None  # one seed: no test


def test_percentile_interval_by_hand():
    # 0, 1, ..., 100: the 2.5% quantile sits at h = 0.025·100 = 2.5 → 2.5; the 97.5% one at 97.5
    assert stats.percentile_interval(range(101)) == pytest.approx((2.5, 97.5))
    # h = 0.025·4 = 0.1 → 10 + 0.1·(20 − 10) = 11; h = 3.9 → 40 + 0.9·(50 − 40) = 49
    assert stats.percentile_interval([50, 10, 40, 20, 30]) == pytest.approx((11.0, 49.0))


def test_holm_by_hand():
    # sorted 0.01, 0.03, 0.04, 0.20 (m = 4): 4·0.01 = 0.04; 3·0.03 = 0.09; 2·0.04 = 0.08 → max(0.09, 0.08) =
    # 0.09; 1·0.20 = 0.20. None is not tested and does not count in m.
    assert stats.holm([0.01, 0.04, None, 0.03, 0.20]) == pytest.approx([0.04, 0.09, None, 0.09, 0.20])
    assert stats.holm([0.5, 0.6]) == [1.0, 1.0]  # capped at 1
    assert stats.holm([]) == []


def test_wilson_interval_by_hand():
    # 8 of 10, z = 1.959964, z² = 3.841459: centre (0.8 + 0.192073)/1.384146 = 0.716741; half
    # 1.959964·√(0.016 + 0.009604)/1.384146 = 0.226580 → (0.490161, 0.943321)
    lo, hi = stats.wilson_interval(8, 10)
    assert lo == pytest.approx(0.490161, abs=1e-5) and hi == pytest.approx(0.943321, abs=1e-5)
    lo, hi = stats.wilson_interval(0, 10)  # none: lower end 0, upper z²/(n + z²) = 3.841459/13.841459
    assert lo == 0.0 and hi == pytest.approx(0.277533, abs=1e-5)
    assert stats.wilson_interval(0, 12)[0] == 0.0  # exactly (rounding left 3.3e-16 here)
    lo, hi = stats.wilson_interval(12, 12)  # all: upper end 1, lower n/(n + z²) = 12/15.841459
    assert hi == 1.0 and lo == pytest.approx(0.757506, abs=1e-5)
    with pytest.raises(ValueError, match="11 of 10"):
        stats.wilson_interval(11, 10)


def test_task_seed_bootstrap_by_hand():
    # One seed, two tasks, D = [[1], [0]]: θ = 1; a replicate is the number of times task 0 is drawn of 2,
    # 0, 1 or 2 with chances 1/4, 1/2, 1/4: both tails (1/4) exceed 2.5%, so the interval is [0, 2].
    assert stats.task_seed_bootstrap([[1], [0]]) == (1.0, 0.0, 2.0)
    # One task, two seeds, D = [[1, 0]]: θ = 1/2; a replicate is the share of seed 0 among 2 seeds drawn,
    # 0, 1/2 or 1 (chances 1/4, 1/2, 1/4) → [0, 1]. Resampling tasks only would give [1/2, 1/2].
    assert stats.task_seed_bootstrap([[1, 0]]) == (0.5, 0.0, 1.0)
    # Both resampled: D = [[1, 0], [0, 0]], θ = 1/2, θ* = c_task0 · c_seed0 / 2 with c ~ Binomial(2, 1/2)
    # each; P(θ* = 2) = 1/16 > 2.5% → hi 2; P(θ* = 0) = 7/16 → lo 0.
    assert stats.task_seed_bootstrap([[1, 0], [0, 0]]) == (0.5, 0.0, 2.0)
    # No spread at all (every task and seed the same): every replicate is the estimate
    assert stats.task_seed_bootstrap([[1, 1], [1, 1]]) == (2.0, 2.0, 2.0)
    # the fixed RNG seed: the same data give the same interval; another seed may move it
    d = [[1, 0, 1], [0, 0, 1], [1, 1, 1], [0, -1, 0], [-1, 0, 0]]
    assert stats.task_seed_bootstrap(d) == stats.task_seed_bootstrap(d)
    with pytest.raises(ValueError, match="tasks × seeds"):
        stats.task_seed_bootstrap([])


def test_difference_verdict_follows_the_intervals():
    both_above = {"seed t": (0.5, 3.0), "task-and-seed bootstrap": (1.0, 4.0)}
    text = stats.difference_verdict("a", "b", "held-out tasks solved", 50, 2.0, both_above, 0.01)
    assert text.endswith("a ahead of b by 0.5 to 4.0 of 50")
    below = {"seed t": (-3.0, -1.0), "task-and-seed bootstrap": (-4.0, -0.5)}
    assert stats.difference_verdict("a", "b", "m", 50, -2.0, below, 0.01).endswith("a behind b by 0.5 to 4.0 of 50")
    one_covers = {"seed t": (0.5, 3.0), "task-and-seed bootstrap": (-0.5, 4.0)}
    for intervals, p in ((one_covers, 0.01), (both_above, 0.2), (both_above, None)):
        text = stats.difference_verdict("a", "b", "m", 50, 2.0, intervals, p)
        assert text.endswith(": no detectable difference"), text

