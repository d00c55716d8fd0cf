"""Aggregates over tasks x seeds in the way of rliable (Agarwal et al. 2021, "Deep RL at the
edge of the statistical precipice"), computed by the ``rliable`` package itself: IQM and mean
with stratified bootstrap intervals, the probability of improvement of each algorithm over each
other, and performance profiles. Input: one final score per (algorithm, task, seed)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import contextlib  # noqa: E402
import functools  # noqa: E402
import importlib.util  # noqa: E402
import sys  # noqa: E402
import types  # noqa: E402

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402


def _arch_without_its_init() -> None:
    """rliable's bootstrap is ``arch.bootstrap``; ``arch/__init__`` (7.x, the last rliable 1.2
    allows) also imports its volatility models, which fail under pandas 3 (a changed
    ``deprecate_kwarg``). Register the package without running its __init__, so that only
    ``arch.bootstrap`` (which imports cleanly) is loaded."""
    if "arch" in sys.modules:
        return
    spec = importlib.util.find_spec("arch")
    package = types.ModuleType("arch")
    package.__path__ = list(spec.submodule_search_locations)
    package.__spec__ = spec
    sys.modules["arch"] = package


_arch_without_its_init()

from rliable import library as rly  # noqa: E402

REPS = 2000  # bootstrap replications: stable to the 3rd decimal for these sizes


def reps_for(scores: dict[str, np.ndarray]) -> int:
    """REPS, or 1 when every algorithm has one run per task: a stratified bootstrap then
    redraws the same runs every time, so one replication gives its interval (the point) exactly
    and 2000 would only cost time."""
    return REPS if any(m.shape[0] > 1 for m in scores.values()) else 1


@contextlib.contextmanager
def numpy_seed(seed: int):
    """rliable's stratified bootstrap draws from numpy's global generator (its random_state
    argument is not used for the draws): seed that, and put it back afterwards."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


@functools.cache
def percentile_coverage(n: int, sims: int = 1000, reps: int = 400, seed: int = 0) -> float:
    """How often a 95% percentile-bootstrap interval of a mean of ``n`` runs covers the true
    mean (simulated, normal scores): well below 95% with few runs (0.76 at 3, 0.84 at 5)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1, (sims, n))
    idx = rng.integers(0, n, (sims, reps, n))
    means = np.take_along_axis(np.repeat(x[:, None, :], reps, 1), idx, 2).mean(-1)
    lo, hi = np.percentile(means, [2.5, 97.5], axis=1)
    return float(((lo <= 0) & (hi >= 0)).mean())


def score_matrices(finals: pd.DataFrame) -> dict[str, np.ndarray]:
    """{algorithm: [seeds x tasks]} from rows (algorithm, task, seed, value), the columns the
    same tasks in the same order for every algorithm (the tasks every algorithm has, by name:
    probability of improvement compares column with column); seeds that some task lacks are
    dropped, so every matrix is rectangular."""
    tasks = sorted(set.intersection(*(set(r["task"]) for _, r in finals.groupby("algorithm"))))
    out = {}
    for algo, rows in finals.groupby("algorithm"):
        wide = rows.pivot_table(index="seed", columns="task", values="value")
        out[str(algo)] = wide.reindex(columns=tasks).dropna().to_numpy()
    return out


def iqm_and_mean(scores: np.ndarray) -> np.ndarray:
    """[IQM, mean] of all runs and tasks: rliable's ``aggregate_iqm`` (scipy's ``trim_mean`` at
    25%: the same ``np.partition`` and slice, bitwise equal, tested) and ``aggregate_mean``
    without scipy's per-call wrapper (~0.25 ms, x 2000 replications x each algorithm)."""
    flat = np.ravel(scores)
    n = flat.size
    cut = int(0.25 * n)
    iqm = np.mean(np.partition(flat, (cut, n - cut - 1))[cut : n - cut])
    return np.array([iqm, np.mean(np.mean(scores, axis=0))])


def score_distribution(scores: np.ndarray, taus: np.ndarray) -> np.ndarray:
    """rliable's run-score performance profile (share of runs above each tau) as one array
    operation: its default ``np.vectorize`` over taus took ~10 s of a 15-run report."""
    return np.mean(np.ravel(scores)[:, None] > np.asarray(taus)[None, :], axis=0)


def aggregate_table(scores: dict[str, np.ndarray], seed: int = 0) -> pd.DataFrame:
    """IQM and mean with 95% stratified bootstrap intervals, per algorithm."""
    with numpy_seed(seed):
        point, interval = rly.get_interval_estimates(scores, iqm_and_mean, reps=reps_for(scores))
    rows = []
    for algo in scores:
        (iqm, mean), ci = point[algo], interval[algo]
        if reps_for(scores) == 1:  # one run per cell: no interval to give ("-")
            ci = np.full((2, 2), np.nan)
        rows.append(
            {
                "algorithm": algo,
                "runs": scores[algo].size,
                "IQM": iqm,
                "IQM low": ci[0, 0],
                "IQM high": ci[1, 0],
                "mean": mean,
                "mean low": ci[0, 1],
                "mean high": ci[1, 1],
            }
        )
    return pd.DataFrame(rows)


def probability_of_improvement(scores_x: np.ndarray, scores_y: np.ndarray) -> float:
    """rliable's ``metrics.probability_of_improvement`` without a Mann-Whitney call per task and
    replication (it took ~35 s of a 15-run report): per task the share of run pairs with x > y,
    ties counting half, which is the U statistic / (n_x n_y) it computes; 0.5 for a task whose
    runs are the same (as rliable); averaged over tasks. Equal to rliable's (tested)."""
    x, y = scores_x[:, None, :], scores_y[None, :, :]
    per_task = ((x > y) + 0.5 * (x == y)).mean(axis=(0, 1))
    same = (
        (scores_x == scores_y).all(axis=0)
        if scores_x.shape == scores_y.shape
        else np.zeros(scores_x.shape[1], bool)
    )
    return float(np.mean(np.where(same, 0.5, per_task)))


def improvement_table(scores: dict[str, np.ndarray], seed: int = 0) -> pd.DataFrame:
    """P(X > Y) for each ordered pair, with its 95% stratified bootstrap interval (rliable's
    bootstrap, the metric above). Each unordered pair is bootstrapped once: with ties counted
    half, P(Y > X) = 1 - P(X > Y) in every replication, so the reverse pair's interval is
    [1 - high, 1 - low] of the same replications (half the work, tested)."""
    names = list(scores)
    pairs = {(x, y): (scores[x], scores[y]) for i, x in enumerate(names) for y in names[i + 1 :]}
    with numpy_seed(seed):
        point, interval = rly.get_interval_estimates(
            pairs, probability_of_improvement, reps=reps_for(scores)
        )
    found = {}
    for (x, y), p in point.items():
        low, high = np.ravel(interval[(x, y)])[:2]
        if reps_for(scores) == 1:  # one run per cell: no interval to give ("-")
            low = high = np.nan
        found[(x, y)] = (float(p), float(low), float(high))
        found[(y, x)] = (1 - float(p), 1 - float(high), 1 - float(low))
    rows = [
        {"X": x, "Y": y, "P(X > Y)": p, "low": low, "high": high}
        for x in names
        for y in names
        if x != y
        for p, low, high in [found[(x, y)]]
    ]
    return pd.DataFrame(rows)


def profiles_figure(
    scores: dict[str, np.ndarray], title: str, aggregates: pd.DataFrame, seed: int = 0
):
    """Performance profiles (share of runs above tau) beside the IQM intervals."""
    lo = min(s.min() for s in scores.values())
    hi = max(s.max() for s in scores.values())
    taus = np.linspace(lo, hi, 101)
    with numpy_seed(seed):
        profiles, cis = rly.create_performance_profile(
            scores, taus, custom_profile_func=score_distribution, reps=reps_for(scores)
        )
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4), dpi=120)
    for algo, prof in profiles.items():
        (line,) = left.plot(taus, prof, label=algo)
        left.fill_between(taus, cis[algo][0], cis[algo][1], color=line.get_color(), alpha=0.15)
    left.set_xlabel("final score tau")
    left.set_ylabel("share of runs with score > tau")
    left.legend(frameon=False, fontsize=8)
    left.grid(alpha=0.3)
    y = np.arange(len(aggregates))
    err = [aggregates["IQM"] - aggregates["IQM low"], aggregates["IQM high"] - aggregates["IQM"]]
    right.errorbar(aggregates["IQM"], y, xerr=err, fmt="o", capsize=4)
    right.set_yticks(y, aggregates["algorithm"])
    right.set_xlabel("IQM (95% stratified bootstrap)")
    right.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    return fig
