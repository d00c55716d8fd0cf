"""The tests behind the claims' verdicts, as pure functions of per-seed numbers, each returning
a p-value of its stated one-sided alternative (or of equivalence), so that every verdict rule
can reach "holds" and "contradicted" at its pre-registered seed count, and the claims can be
corrected together (Holm). Vectorised over trials where a simulation calls them.

- ``paired_t_one_sided``: mean of per-seed differences > 0 (Student t; exact for normal data).
- ``spread_less``: the spread of ``a`` is smaller than that of ``b`` (Brown-Forsythe for two
  groups, one-sided: Welch's t on the absolute deviations from each group's median).
- ``page_trend``: a rising trend over ordered conditions, seeds as blocks (Page's L, exact
  null distribution; checked against scipy's exact test).
- ``tost``: |mean difference| < margin (two one-sided t-tests, 90% interval); a pair with no
  spread has the difference itself as its interval.
- ``holm``: Holm-adjusted p-values.
"""

from __future__ import annotations

import functools
import itertools
import math

import numpy as np
from scipy import stats


def paired_t_one_sided(d):
    """p of H1: mean(d) > 0 over the last axis (per trial when ``d`` is [trials, n]); with no
    spread, 0 when every d > 0 and 1 otherwise."""
    d = np.asarray(d, float)
    n = d.shape[-1]
    mean, sd = d.mean(axis=-1), d.std(ddof=1, axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = stats.t.sf(mean / (sd / math.sqrt(n)), n - 1)
    p = np.where(sd > 0, p, np.where(d.min(axis=-1) > 0, 0.0, 1.0))
    return float(p) if p.ndim == 0 else p


def spread_less(a, b) -> float:
    """p of H1: the spread of ``a`` is smaller than that of ``b`` (one-sided Brown-Forsythe:
    Welch's t on |x - median| of each group)."""
    da = np.abs(np.asarray(a, float) - np.median(a, axis=-1, keepdims=True))
    db = np.abs(np.asarray(b, float) - np.median(b, axis=-1, keepdims=True))
    return np.asarray(stats.ttest_ind(da, db, axis=-1, equal_var=False, alternative="less").pvalue)


def page_trend(x):
    """p of H1: values rise over the columns (conditions in their order), rows = seeds (blocks),
    per trial when ``x`` is [trials, n, k]. Page's L = sum of column index x within-row rank,
    its p exact: the null distribution of L is the n-fold convolution of one row's (every
    order of the ranks equally likely), as scipy's exact method computes it."""
    x = np.asarray(x, float)
    n, k = x.shape[-2], x.shape[-1]
    big_l = (stats.rankdata(x, axis=-1) * np.arange(1, k + 1)).sum(axis=(-2, -1))
    support, probs = _page_null(n, k)
    tail = np.cumsum(probs[::-1])[::-1]  # P(L >= support[i])
    at = np.searchsorted(support, np.asarray(big_l) - 1e-9)
    p = np.where(at < len(support), tail[np.minimum(at, len(support) - 1)], 0.0)
    return float(p) if p.ndim == 0 else p


@functools.cache
def _page_null(n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(values, probabilities) of Page's L under the null, for n rows of k conditions."""
    one = np.zeros(k * k * (k + 1) // 2 + 1)
    for perm in itertools.permutations(range(1, k + 1)):
        one[sum(j * r for j, r in enumerate(perm, 1))] += 1
    one /= one.sum()
    dist = np.array([1.0])
    for _ in range(n):
        dist = np.convolve(dist, one)
    values = np.flatnonzero(dist > 0)
    return values.astype(float), dist[values]


def tost(d, margin: float, alpha: float = 0.05) -> dict[str, float]:
    """Equivalence of mean(d) to 0 within +-``margin``: the 1 - 2 alpha t-interval and the TOST
    p (the larger of the two one-sided p-values); no spread: the interval is the point and p is
    0 inside the margin, 1 outside."""
    d = np.asarray(d, float)
    n, mean = len(d), float(d.mean())
    sd = float(d.std(ddof=1)) if n > 1 else math.nan
    if not sd > 0:
        inside = abs(mean) < margin
        return {"mean": mean, "low": mean, "high": mean, "p": 0.0 if inside else 1.0}
    half = stats.t.ppf(1 - alpha, n - 1) * sd / math.sqrt(n)
    return {"mean": mean, "low": mean - half, "high": mean + half, "p": tost_p(d, margin)}


def tost_p(d, margin: float):
    """``tost``'s p over the last axis (per trial when ``d`` is [trials, n])."""
    d = np.asarray(d, float)
    n = d.shape[-1]
    mean, sd = d.mean(axis=-1), d.std(ddof=1, axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        se = sd / math.sqrt(n)
        p = np.maximum(
            stats.t.sf((mean + margin) / se, n - 1), stats.t.cdf((mean - margin) / se, n - 1)
        )
    p = np.where(sd > 0, p, np.where(np.abs(mean) < margin, 0.0, 1.0))
    return float(p) if p.ndim == 0 else p


def holm(pvalues: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values (NaN stays NaN)."""
    p = np.asarray(pvalues, float)
    ok = np.flatnonzero(~np.isnan(p))
    order = ok[np.argsort(p[ok], kind="stable")]
    m, out, running = len(order), p.copy(), 0.0
    for i, j in enumerate(order):
        running = max(running, min(1.0, (m - i) * p[j]))
        out[j] = running
    return out.tolist()


def format_p(p: float) -> str:
    """Two significant figures (``2.4e-05``, ``0.039``), or the exact value of a multiple of
    1/2^16 (``0.0625``, ``0.03125``: the exact sign-flip test's p-values); "-" for NaN."""
    if p is None or not math.isfinite(p):
        return "-"
    return f"{p:.6g}" if (p * 2**16).is_integer() else f"{p:.2g}"
