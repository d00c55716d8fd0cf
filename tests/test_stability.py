"""Stability metrics on hand-made curves with known answers; bootstrap coverage on synthetic data."""

import math

import numpy as np
import pandas as pd
import pytest

from reports.stability import (
    bootstrap_ci,
    collapse_count,
    max_drawdown,
    mean_level,
    non_finite,
    paired_difference,
    run_stability,
    spikes,
)


def test_collapse_count_counts_episodes_not_points():
    assert collapse_count([0.5, 0.6, 0.7, 0.6, 0.55, 0.5, 0.72, 0.6, 0.7], drop=0.1) == 2
    assert collapse_count([0.1, 0.2, 0.3], drop=0.05) == 0
    assert collapse_count([0.5, 0.3, 0.2, 0.1], drop=0.1) == 1  # one long slump


def test_max_drawdown():
    assert max_drawdown([0.2, 0.6, 0.3, 0.5, 0.1, 0.9]) == pytest.approx(0.5)
    assert max_drawdown([1, 2, 3]) == 0


def test_spikes_against_running_median():
    values = [1.0] * 6 + [11.0, 1.0, 9.0, 50.0, float("nan")]
    assert spikes(values, factor=10) == 2  # 11 and 50; 9 is below 10x; NaN is not a spike
    assert spikes([100.0, 1, 1], factor=10, warmup=0) == 0  # nothing before the first value


def test_non_finite_and_mean_level():
    assert non_finite([1, float("nan"), float("inf"), 2]) == 2
    assert mean_level([0, 10, 20], [0.0, 1.0, 1.0]) == pytest.approx(0.75)  # (5 + 10) / 20


def test_run_stability_table():
    h = pd.DataFrame(
        [("r", "eval/t/accuracy", s, v) for s, v in [(0, 0.5), (10, 0.7), (20, 0.4), (30, 0.8)]]
        + [("r", "train/grad_norm", s, v) for s, v in enumerate([1.0] * 6 + [20.0])]
        + [("r", "train/loss", 1, float("nan")), ("r", "perf/skipped_steps", 30, 2.0)],
        columns=["run_id", "key", "step", "value"],
    )
    row = run_stability(h, "eval/t/accuracy", drop=0.1).iloc[0]
    assert (row.collapses, row.grad_spikes, row.non_finite) == (1, 1, 3)
    assert row.max_drawdown == pytest.approx(0.3) and (row.best, row.final) == (0.8, 0.8)


def test_bootstrap_interval_covers_the_mean_about_95_percent():
    rng = np.random.default_rng(0)
    hits = 0
    for i in range(200):
        lo, hi = bootstrap_ci(rng.normal(1.0, 1.0, size=30), n=2000, seed=i)
        hits += lo <= 1.0 <= hi
    assert 0.88 <= hits / 200 <= 0.99  # percentile bootstrap undercovers a little at n=30


def test_paired_difference_detects_a_shift_and_not_noise():
    rng = np.random.default_rng(1)
    base = rng.normal(0.5, 0.1, size=10)
    shifted = paired_difference(base + 0.05, base)
    assert (
        shifted["mean_diff"] == pytest.approx(0.05)
        and shifted["ci_low"] > 0
        and shifted["p_value"] < 0.01
    )
    same = paired_difference(base + rng.normal(0, 0.01, size=10), base)
    assert same["ci_low"] < 0 < same["ci_high"] and same["p_value"] > 0.05
    assert not math.isnan(same["p_value"])
