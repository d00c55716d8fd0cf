"""Tests that are valid for the few seeds a comparison has.

Seeds are paired (same prompts and initialisation per seed), so two algorithms are compared by
the per-seed differences d_1..d_n of their final metric:
- ``sign_flip_test``: the exact permutation test of mean(d) = 0 under random signs, all 2^n
  patterns up to n = 16 (Monte Carlo above). Its smallest two-sided p is 2 / 2^n: 0.25 with 3
  seeds, so no difference can be "significant" at 0.05 with fewer than 6 seeds, whatever the data.
- ``paired_t``: the paired t-interval of mean(d) (scipy).
- ``seeds_needed``: seeds for 80% power of the sign-flip test (the test the verdict uses) to
  detect a difference, from the spread of d: simulated, exact patterns up to 16 seeds; beyond,
  the paired t-test's power (noncentral t), which the sign-flip test's approaches as n grows.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from scipy import stats

EXACT_UP_TO = 16


def sign_patterns(n: int) -> np.ndarray:
    """All 2^n sign vectors, [2^n, n] of +-1."""
    bits = (np.arange(2**n)[:, None] >> np.arange(n)) & 1
    return 1 - 2 * bits


def sign_flip_test(d, n_mc: int = 200_000, seed: int = 0) -> float:
    """Two-sided p of mean(d) = 0: the share of sign patterns whose |mean| is at least the
    observed one (exact up to n = 16; Monte Carlo with the observed pattern counted above)."""
    d = np.asarray(d, float)
    n, observed = len(d), abs(d.mean())
    if n == 0:
        return 1.0
    tol = 1e-12 * max(1.0, np.abs(d).max())
    if n <= EXACT_UP_TO:
        return float((np.abs(sign_patterns(n) @ d / n) >= observed - tol).mean())
    signs = np.random.default_rng(seed).choice([-1.0, 1.0], size=(n_mc, n))
    hits = (np.abs(signs @ d / n) >= observed - tol).sum()
    return float((hits + 1) / (n_mc + 1))


def smallest_p(n: int) -> float:
    """The smallest two-sided p the sign-flip test can give with n pairs."""
    return min(1.0, 2 / 2**n) if n <= EXACT_UP_TO else 0.0


def paired_t(d, level: float = 0.95) -> dict[str, float]:
    """Mean difference, its t-interval and the t-test's two-sided p (NaN below 2 pairs or with
    no spread)."""
    d = np.asarray(d, float)
    n = len(d)
    if n < 2 or d.std(ddof=1) == 0:
        return {
            "mean_diff": float(d.mean()) if n else math.nan,
            "t_low": math.nan,
            "t_high": math.nan,
            "t_p": math.nan,
        }
    res = stats.ttest_1samp(d, 0.0)
    ci = res.confidence_interval(level)
    return {
        "mean_diff": float(d.mean()),
        "t_low": float(ci.low),
        "t_high": float(ci.high),
        "t_p": float(res.pvalue),
    }


def seeds_needed(
    diff: float, sd: float, alpha: float = 0.05, power: float = 0.8, most: int = 10_000
) -> int | None:
    """Fewest paired seeds at which the two-sided sign-flip test at ``alpha`` detects ``diff``
    with ``power``, given a per-seed spread ``sd`` of the differences (normal). None if no spread
    is known or there is nothing to detect. The test's p does not change when d is scaled, so
    its power depends on diff / sd and n alone (simulated, cached on two decimals)."""
    if not (sd > 0) or diff == 0 or not math.isfinite(diff):
        return None
    effect = round(abs(diff) / sd, 2)
    floor = next(n for n in range(2, 64) if smallest_p(n) < alpha)
    for n in range(floor, EXACT_UP_TO + 1):
        # the sign-flip test's power stays within 0.01 of the t-test's or below it (simulated,
        # n = 6-16): below t-power - 0.05 there is no need to simulate
        if t_power(effect, n, alpha) >= power - 0.05 and sign_flip_power(effect, n, alpha) >= power:
            return n
    for n in range(EXACT_UP_TO + 1, most + 1):
        if t_power(effect, n, alpha) >= power:
            return n
    return None


@functools.lru_cache(maxsize=4096)
def sign_flip_power(effect: float, n: int, alpha: float = 0.05, trials: int = 2000) -> float:
    """The share of ``trials`` simulated experiments (d ~ N(effect, 1), n pairs, seeded) in which
    the exact two-sided sign-flip test gives p < alpha."""
    rng = np.random.default_rng(n)
    d = rng.normal(effect, 1.0, (trials, n))
    patterns = sign_patterns(n).astype(float).T / n  # [n, 2^n]
    observed = np.abs(d.mean(axis=1, keepdims=True))
    tol = 1e-12 * np.maximum(1.0, np.abs(d).max(axis=1, keepdims=True))
    rejected = 0
    for chunk in range(0, trials, 128):  # [128, 2^n] at a time: 64 MB at n = 16
        means = np.abs(d[chunk : chunk + 128] @ patterns)
        hits = means >= observed[chunk : chunk + 128] - tol[chunk : chunk + 128]
        rejected += int((hits.mean(axis=1) < alpha).sum())
    return rejected / trials


def t_power(effect: float, n: int, alpha: float = 0.05) -> float:
    """Power of the two-sided paired t-test at standardised effect ``effect`` with n pairs."""
    crit = stats.t.ppf(1 - alpha / 2, n - 1)
    nc = effect * math.sqrt(n)
    lower = stats.nct.cdf(-crit, n - 1, nc)  # NaN far out in the tail, where it is ~0
    return float(stats.nct.sf(crit, n - 1, nc) + (lower if math.isfinite(lower) else 0.0))


def sign_flip_verdict(p: float, n: int, alpha: float = 0.05) -> str:
    """What the sign-flip test says of one difference (``p`` raw or Holm-adjusted)."""
    from reports.claim_tests import format_p

    if smallest_p(n) > alpha:
        return (
            f"cannot be distinguished with {n} seeds by the sign-flip test (its smallest p is "
            f"{format_p(smallest_p(n))}; see the t-test's p)"
        )
    if p < alpha:
        return f"differ (sign-flip p = {format_p(p)})"
    return f"no difference detected (sign-flip p = {format_p(p)})"


def compare_pair(a, b, alpha: float = 0.05, target: float | None = None) -> dict:
    """Everything the report says about a - b paired by seed, with its verdict."""
    d = np.asarray(a, float) - np.asarray(b, float)
    n = len(d)
    p = sign_flip_test(d)
    sd = float(d.std(ddof=1)) if n > 1 else math.nan
    row = {"n_seeds": n, **paired_t(d), "p_sign_flip": p, "smallest_p": smallest_p(n)}
    row["verdict"] = sign_flip_verdict(p, n, alpha)
    row["seeds_for_observed"] = seeds_needed(row["mean_diff"], sd, alpha)
    if target is not None:
        row["seeds_for_target"] = seeds_needed(target, sd, alpha)
    return row
