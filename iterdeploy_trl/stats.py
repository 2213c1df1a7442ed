r"""Statistics of the package, in one place: intervals, paired tests, the bootstrap, multiple comparisons.

Pure functions over plain numbers; each docstring carries its formula. Who uses what:

- :func:`t_interval`: a mean over *independent* repeats (seeds, fresh sampling draws), x̄ ± t·s/√n;
- :func:`paired_t`: seed-level paired differences of two arms (the same seeds), interval and p-value;
- :func:`task_seed_bootstrap`: the same difference with the tasks resampled too (the task pool is a
  sample of tasks, not the population), paired by task and seed;
- :func:`percentile_interval`: the interval of any set of bootstrap replicates: the replicates' spread
  *is* a standard error already, so never put a t-interval over them (it divides by √B a second time);
- :func:`holm`: Holm–Bonferroni adjusted p-values over the family of comparisons a report tests;
- :func:`wilson_interval`: a binomial proportion (unanimous@k: the share of tasks every seed solved);
- :func:`difference_verdict`: the sentence a report states about one difference, in proportion to its
  intervals.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

LEVEL = 0.95  # two-sided confidence level of every interval unless a caller says otherwise
ALPHA = 0.05  # significance level of the (Holm-adjusted) tests
BOOTSTRAP_REPLICATES = 2000
BOOTSTRAP_SEED = 0  # the bootstrap's RNG seed: the same data give the same interval


@dataclass(frozen=True)
class TInterval:
    """A mean over n values with its Student-t interval [lo, hi] (lo = hi = mean when n = 1)."""

    n: int
    mean: float
    sd: float
    lo: float
    hi: float


@dataclass(frozen=True)
class PairedT:
    """A paired comparison over n pairs: mean difference, its t-interval and the two-sided p-value
    (None when n < 2: no test)."""

    n: int
    mean: float
    lo: float
    hi: float
    p: float | None


def _t_quantile(level: float, df: int) -> float:
    from scipy import stats

    return float(stats.t.ppf(0.5 + level / 2, df))


def t_interval(values: Sequence[float], level: float = LEVEL) -> TInterval:
    r"""Mean of independent values and its two-sided Student-t interval:

    x̄ ± t_{(1+level)/2, n−1} · s / √n,  s = √(Σ (x_i − x̄)² / (n − 1)).

    With one value there is no spread to measure: lo = hi = x̄ (sd 0); callers that must show "no interval"
    look at ``n``. ``ValueError`` on no values or a NaN (drop NaNs first, saying how many)."""
    xs = [float(v) for v in values]
    if not xs:
        raise ValueError("t_interval: no values")
    if any(math.isnan(x) for x in xs):
        raise ValueError(f"t_interval: NaN among the values {xs}; drop them first and report how many")
    mean = statistics.fmean(xs)
    if len(xs) == 1:
        return TInterval(1, mean, 0.0, mean, mean)
    sd = statistics.stdev(xs)
    half = _t_quantile(level, len(xs) - 1) * sd / math.sqrt(len(xs))
    return TInterval(len(xs), mean, sd, mean - half, mean + half)


def paired_t(diffs: Sequence[float], level: float = LEVEL) -> PairedT:
    r"""Paired t-test of differences d_i = a_i − b_i (one per seed, the same seed in both arms):

    d̄ ± t_{(1+level)/2, n−1} · s_d/√n;  T = d̄ / (s_d/√n),  p = 2 · P(t_{n−1} ≥ |T|).

    Zero spread (every d_i equal): p = 1 when d̄ = 0 and p = 0 otherwise (the limit of T → 0 or ∞).
    n < 2: no test (p None) and lo = hi = d̄."""
    ti = t_interval(diffs, level)
    if ti.n < 2:
        return PairedT(ti.n, ti.mean, ti.lo, ti.hi, None)
    if ti.sd == 0:
        return PairedT(ti.n, ti.mean, ti.lo, ti.hi, 1.0 if ti.mean == 0 else 0.0)
    from scipy import stats

    t = ti.mean / (ti.sd / math.sqrt(ti.n))
    p = float(2 * stats.t.sf(abs(t), ti.n - 1))
    return PairedT(ti.n, ti.mean, ti.lo, ti.hi, p)


def percentile_interval(replicates: Sequence[float], level: float = LEVEL) -> tuple[float, float]:
    r"""The bootstrap percentile interval: the (1−level)/2 and (1+level)/2 empirical quantiles of the
    replicates θ*_1..θ*_B (linear interpolation between order statistics: q_p = θ*_(⌊h⌋) +
    (h − ⌊h⌋)(θ*_(⌊h⌋+1) − θ*_(⌊h⌋)), h = p·(B − 1), 0-based). The replicates' spread is already the
    estimator's standard error: no √B division. ``ValueError`` on no replicates or a NaN."""
    import numpy as np

    xs = np.asarray([float(v) for v in replicates], dtype=float)
    if xs.size == 0:
        raise ValueError("percentile_interval: no replicates")
    if np.isnan(xs).any():
        raise ValueError(f"percentile_interval: {int(np.isnan(xs).sum())} NaN replicate(s); drop them first")
    lo, hi = np.quantile(xs, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def task_seed_bootstrap(diffs: Sequence[Sequence[float]], *, replicates: int = BOOTSTRAP_REPLICATES,
                        seed: int = BOOTSTRAP_SEED, level: float = LEVEL) -> tuple[float, float, float]:
    r"""Task-and-seed paired bootstrap of a difference in tasks solved. ``diffs[t][s]`` = y_A(t, s) −
    y_B(t, s), the two arms' outcomes (1 solved, 0 not) on task t under seed s (the same task and seed in
    both arms: paired). The estimate is the mean over seeds of the difference in tasks solved,

    θ = Σ_t (1/k) Σ_s D[t, s]   (n tasks, k seeds);

    each replicate draws n tasks and k seeds with replacement, independently (a two-way crossed
    bootstrap), θ*_b = Σ_{t ∈ T_b} (1/k) Σ_{s ∈ S_b} D[t, s], and the interval is
    :func:`percentile_interval` of θ*_1..θ*_B. The RNG is ``numpy.random.default_rng(seed)``: fixed seed,
    same data, same interval. Returns (θ, lo, hi)."""
    import numpy as np

    d = np.asarray(diffs, dtype=float)
    if d.ndim != 2 or d.shape[0] == 0 or d.shape[1] == 0:
        raise ValueError(f"task_seed_bootstrap: need a tasks × seeds matrix, got shape {d.shape}")
    n, k = d.shape
    estimate = float(d.mean(axis=1).sum())
    rng = np.random.default_rng(seed)
    task_counts = rng.multinomial(n, np.full(n, 1.0 / n), size=replicates)  # how often each task is drawn
    seed_counts = rng.multinomial(k, np.full(k, 1.0 / k), size=replicates)
    thetas = ((task_counts @ d) * seed_counts).sum(axis=1) / k
    lo, hi = percentile_interval(thetas, level)
    return estimate, lo, hi


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    r"""Holm–Bonferroni adjusted p-values, in the input's order. With the m tested p-values sorted,
    p_(1) ≤ … ≤ p_(m):

    p̃_(i) = max_{j ≤ i} min(1, (m − j + 1) · p_(j)).

    Rejecting where p̃ ≤ α controls the family-wise error rate at α. ``None`` (a comparison not tested)
    stays None and does not count in m."""
    tested = sorted((p, i) for i, p in enumerate(pvalues) if p is not None)
    m = len(tested)
    out: list[float | None] = [None] * len(pvalues)
    running = 0.0
    for j, (p, i) in enumerate(tested):
        running = max(running, min(1.0, (m - j) * p))
        out[i] = running
    return out


def wilson_interval(successes: int, n: int, level: float = LEVEL) -> tuple[float, float]:
    r"""Wilson score interval of a binomial proportion p̂ = x/n:

    (p̂ + z²/2n ± z·√(p̂(1 − p̂)/n + z²/4n²)) / (1 + z²/n),  z = Φ⁻¹((1 + level)/2).

    Used for unanimous@k (x tasks of n solved by every one of k seeds): the tasks are the sample, the k
    seeds fixed. ``ValueError`` unless 0 ≤ x ≤ n and n ≥ 1."""
    if n < 1 or not 0 <= successes <= n:
        raise ValueError(f"wilson_interval: need 0 <= successes <= n and n >= 1, got {successes} of {n}")
    from scipy import stats

    z = float(stats.norm.ppf(0.5 + level / 2))
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # x = 0 and x = n put an end exactly at 0 or 1 (centre − half is 0 there, up to rounding)
    lo = 0.0 if successes == 0 else max(0.0, centre - half)
    hi = 1.0 if successes == n else min(1.0, centre + half)
    return lo, hi


def difference_verdict(a: str, b: str, measure: str, total: int | None, mean: float,
                       intervals: Mapping[str, tuple[float, float] | None], p_adjusted: float | None,
                       alpha: float = ALPHA) -> str:
    r"""The sentence a report states about the difference ``a − b`` in ``measure`` (e.g. "held-out tasks
    solved"), in proportion to its intervals (``intervals``: name → (lo, hi), None where not computed).
    "no detectable difference" unless every interval lies on one side of 0 and the adjusted p is at most
    α (no test: no claim); else the direction and the size as the union of the intervals,
    [min lo, max hi] (the widest, most cautious range), out of ``total`` tasks."""
    given = {name: iv for name, iv in intervals.items() if iv is not None}
    of = f" of {total}" if total else ""
    shown = "; ".join(f"{name} [{lo:+.1f}, {hi:+.1f}]" for name, (lo, hi) in given.items())
    p_text = "not tested" if p_adjusted is None else f"Holm-adjusted p = {p_adjusted:.3g}"
    head = f"{a} − {b}, {measure}: {mean:+.1f}{of} ({shown or 'no interval'}; {p_text})"
    above = all(lo > 0 for lo, _ in given.values())
    below = all(hi < 0 for _, hi in given.values())
    if p_adjusted is None or p_adjusted > alpha or not given or not (above or below):
        return f"{head}: no detectable difference"
    lo, hi = min(iv[0] for iv in given.values()), max(iv[1] for iv in given.values())
    if above:
        return f"{head}: {a} ahead of {b} by {lo:.1f} to {hi:.1f}{of}"
    return f"{head}: {a} behind {b} by {-hi:.1f} to {-lo:.1f}{of}"
