"""Stability metrics on hand-made curves with known answers; bootstrap coverage on synthetic data."""

import pandas as pd
import pytest

from reports.stability import (
    collapse_count,
    max_drawdown,
    mean_level,
    non_finite,
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
